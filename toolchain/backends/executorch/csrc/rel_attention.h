// edgeseq::rel_attention: one encoder self-attention layer in one kernel, for T5-style
// relative-position biases (see rel_attention.cpp for layouts and numerics).
#pragma once
#include <cstdint>
#include <functional>

namespace edgeseq {

struct RelAttentionArgs {
  const float* q;         // [S, H*Dh], token-major: the q projection's output as it comes
  const float* k;         // [S, H*Dh]
  const float* v;         // [S, H*Dh]
  const float* diagonals; // [H, 2S-1]: bias[h, i, j] = diagonals[h, S-1 + j - i] (Toeplitz)
  const float* key_bias;  // [S]: added to every query's scores (0 for tokens, very negative for padding)
  float* out;             // [S, H*Dh]: softmax(q k^T + bias) v per head, heads concatenated
  int64_t S, H, Dh;
};

// Runs fn(begin, end) over [0, n) in pieces, possibly in parallel (the caller's threadpool).
using ParallelFor = std::function<void(int64_t n, const std::function<void(int64_t, int64_t)>& fn)>;

// Which inner loops this CPU gets: "avx512-bf16" (bf16 products, fp32 accumulation) or "fp32".
const char* rel_attention_isa();

void rel_attention(const RelAttentionArgs& a, const ParallelFor& pfor);

}  // namespace edgeseq
