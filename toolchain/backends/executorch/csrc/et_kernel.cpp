// Registers edgeseq::rel_attention.out with the ExecuTorch runtime (the kernel registry lives in
// libexecutorch.so, shared by the Python bindings and the native runner: loading this library
// into either process is what makes programs that use the op loadable there).
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "rel_attention.h"

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

// q, k, v, out: [S, H*Dh] or [1, S, H*Dh]; diagonals [H, 2S-1]; key_bias [S] (any leading 1s).
Tensor& rel_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& diagonals, const Tensor& key_bias, int64_t heads, Tensor& out) {
  const auto rank = q.dim();
  ET_KERNEL_CHECK_MSG(ctx, rank == 2 || (rank == 3 && q.size(0) == 1), InvalidArgument, out,
                      "rel_attention: q must be [S, H*Dh] or [1, S, H*Dh]");
  const int64_t S = q.size(rank - 2), HD = q.size(rank - 1);
  ET_KERNEL_CHECK_MSG(ctx, heads > 0 && HD % heads == 0, InvalidArgument, out,
                      "rel_attention: %" PRId64 " columns do not split into %" PRId64 " heads", HD, heads);
  for (const Tensor* t : {&q, &k, &v, &diagonals, &key_bias}) {
    ET_KERNEL_CHECK_MSG(ctx, t->scalar_type() == ScalarType::Float, InvalidArgument, out, "rel_attention: fp32 only");
    ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensor_is_contiguous(*t), InvalidArgument, out,
                        "rel_attention: inputs must be contiguous");
  }
  ET_KERNEL_CHECK_MSG(ctx, k.numel() == q.numel() && v.numel() == q.numel(), InvalidArgument, out,
                      "rel_attention: q, k, v differ in size");
  ET_KERNEL_CHECK_MSG(ctx, diagonals.numel() == heads * (2 * S - 1) && key_bias.numel() == S, InvalidArgument,
                      out, "rel_attention: diagonals must be [H, 2S-1] and key_bias [S]");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, out);
  edgeseq::RelAttentionArgs args{q.const_data_ptr<float>(), k.const_data_ptr<float>(), v.const_data_ptr<float>(),
                                 diagonals.const_data_ptr<float>(), key_bias.const_data_ptr<float>(),
                                 out.mutable_data_ptr<float>(), S, heads, HD / heads};
  edgeseq::rel_attention(args, [](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    executorch::extension::parallel_for(0, n, 1, [&](int64_t b, int64_t e) { fn(b, e); });
  });
  return out;
}

}  // namespace

EXECUTORCH_LIBRARY(edgeseq, "rel_attention.out", rel_attention_out);

extern "C" __attribute__((visibility("default"))) const char* edgeseq_rel_attention_isa() { return edgeseq::rel_attention_isa(); }
