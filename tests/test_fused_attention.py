"""The recipe's ``encoder_attention: fused``: each encoder self-attention layer as one
``edgeseq::rel_attention`` op (arch/rel_attention.py), its ExecuTorch kernel built from
backends/executorch/csrc (kernels.py). The kernel against the op's fp32 reference in the real
ExecuTorch runtime (the bf16 inner loops where the CPU has AVX512-BF16; the fp32 vector loops
always, in a process where EDGESEQ_REL_ATTENTION=fp32 turns the bf16 ones off),
the fused split against transformers in eager and in executorch-xnnpack, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from toolchain import backends
from toolchain.arch.layers import NEG
from toolchain.arch.rel_attention import reference, rel_attention
from toolchain.artifact import open_artifact
from toolchain.calibrate import EagerSession
from toolchain.checkpoint import load_checkpoint
from toolchain.errors import InputError
from toolchain.export import check_fits, export
from toolchain.generate import greedy
from toolchain.specs import load_recipe, load_target

from helpers import reference as hf_reference
from helpers import tiny_checkpoint, tiny_t5

S, T = 24, 12


def _recipe(tmp_path, quant: str = "{}", extra: str = "") -> str:
    p = tmp_path / "fused.yaml"
    p.write_text(f"format_version: 1\nname: fused\ndescription: test\nmax_input_len: {S}\nmax_output_len: {T}\n"
                 f"quantization: {quant}\nencoder_attention: fused\n{extra}"
                 "tolerance: {max_abs_logit_diff: 0.05}\n")
    return str(p)


def _run_op(args: tuple[torch.Tensor, ...], heads: int) -> torch.Tensor:
    """The op alone in an ExecuTorch program (no delegate), run by the runtime the Session uses."""
    from executorch.exir import to_edge

    from toolchain.backends.executorch import kernels
    from toolchain.backends.executorch.session import runtime_lib

    class Op(torch.nn.Module):
        def forward(self, q, k, v, d, kb):  # type: ignore[no-untyped-def]
            return rel_attention(q, k, v, d, kb, heads)

    kernels.load()
    program = to_edge(torch.export.export(Op(), args)).to_executorch().buffer
    module = runtime_lib()._load_for_executorch_from_buffer(program)  # `program` outlives it (no copy)
    return module.run_method("forward", args)[0]


@pytest.mark.parametrize("s,h,dh", [(37, 4, 64), (130, 2, 32), (24, 2, 8)])
def test_kernel_matches_reference(s, h, dh):
    from toolchain.backends.executorch import kernels

    gen = torch.Generator().manual_seed(s)
    q, k, v = (torch.randn(s, h * dh, generator=gen) * 0.5 for _ in range(3))
    diagonals = torch.randn(h, 2 * s - 1, generator=gen) * 2
    key_bias = torch.zeros(s)
    key_bias[-3:] = NEG  # padded keys, as the encode's key mask marks them
    out = _run_op((q, k, v, diagonals, key_bias), h)
    want = reference(q, k, v, diagonals, key_bias, h)
    assert out.shape == want.shape
    bf16 = kernels.load() == "avx512-bf16" and dh in (32, 64)
    if bf16:  # bf16 products: against the reference on bf16-rounded operands tightly, on fp32 loosely
        r = [x.bfloat16().float() for x in (q, k, v)]
        assert_allclose(out, reference(*r, diagonals, key_bias, h), atol=2e-2, rtol=0)
        assert_allclose(out, want, atol=6e-2, rtol=0)
    else:
        assert_allclose(out, want, atol=2e-5, rtol=1e-5)
    # the padded keys get no weight: changing their values changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[-3:], v2[-3:] = 100.0, -100.0
    assert torch.equal(_run_op((q, k2, v2, diagonals, key_bias), h), out)


@pytest.mark.parametrize("variant", ["v1.0", "v1.1"])
def test_eager_fused_matches_transformers(variant, tmp_path):
    src = load_checkpoint(tiny_t5(tmp_path / "t5", variant, seed=3, train_steps=10))
    model = src.load_model()
    parts = src.adapter.build(model, S, T)
    parts.encode.fuse_relative_attention()
    names = [n for n, _ in parts.encode.named_buffers()]
    assert "fused_diagonals_full" in names and not any(n.startswith("self_bias") for n in names)  # no [H, S, S]
    for ids in ([5, 6, 7, 1], [int(x) for x in np.arange(3, 3 + S - 1) % 40 + 3] + [1]):
        ref_tokens, ref_logits = hf_reference(model, ids, T)
        gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                     keep_logits=True, force_length=True)
        assert_allclose(np.stack(gen.logits), ref_logits, atol=1e-4, rtol=1e-4)
        assert gen.tokens == ref_tokens


FP32_LOOPS = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from numpy.testing import assert_allclose
from toolchain.arch.layers import NEG
from toolchain.arch.rel_attention import reference
from toolchain.backends.executorch import kernels
from test_fused_attention import _run_op

isa = kernels.load()
assert isa.startswith("fp32-"), isa
for s, h, dh in [(130, 2, 64), (37, 3, 32), (19, 2, 16)]:
    gen = torch.Generator().manual_seed(s)
    q, k, v = (torch.randn(s, h * dh, generator=gen) * 0.5 for _ in range(3))
    diagonals = torch.randn(h, 2 * s - 1, generator=gen) * 2
    key_bias = torch.zeros(s)
    key_bias[-3:] = NEG
    out = _run_op((q, k, v, diagonals, key_bias), h)
    assert_allclose(out, reference(q, k, v, diagonals, key_bias, h), atol=2e-5, rtol=1e-5, err_msg=str((s, h, dh)))
    k2, v2 = k.clone(), v.clone()
    k2[-3:], v2[-3:] = 100.0, -100.0
    assert torch.equal(_run_op((q, k2, v2, diagonals, key_bias), h), out)
print(isa)
"""


def test_fp32_vector_loops_match_reference():
    """The fp32 blocks (vector extensions: the clone this CPU resolves to) at the head sizes the
    bf16 loops take, forced on with EDGESEQ_REL_ATTENTION=fp32 (read once per process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    r = subprocess.run([sys.executable, "-c", FP32_LOOPS, str(tests)], capture_output=True, text=True, timeout=600,
                       cwd=tests.parent, env={**os.environ, "EDGESEQ_REL_ATTENTION": "fp32"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].startswith("fp32-")


@pytest.mark.slow
def test_executorch_fused_matches_transformers(tmp_path):
    """d_kv 32: the bf16 inner loops on CPUs that have them; with a shorter encode program too."""
    ck = tiny_t5(tmp_path / "t5", "v1.0", seed=4, train_steps=20, d_kv=32)
    src = load_checkpoint(ck)
    model = src.load_model()
    art = open_artifact(export(src, load_recipe(_recipe(tmp_path, extra="encode_lengths: [8]\n")),
                               load_target("executorch-xnnpack"), tmp_path / "out").path)
    assert art.manifest["recipe"]["encoder_attention"] == "fused"
    assert "edgeseq::rel_attention" in art.manifest["delegation"]["encode"]["runtime_ops"]
    session = backends.for_target(art.target).open_session(art, threads=2)
    assert session.kernel_isa == "avx512-bf16" or session.kernel_isa.startswith("fp32")
    atol = 5e-2 if session.kernel_isa == "avx512-bf16" else 1e-3
    for ids in ([5, 6, 7, 1], [int(x) for x in np.arange(3, 3 + 15) % 40 + 3] + [1]):  # encode_8, then encode
        ref_tokens, ref_logits = hf_reference(model, ids, T)
        gen = greedy(session, ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                     keep_logits=True, force_length=True)
        assert_allclose(np.stack(gen.logits), ref_logits, atol=atol, rtol=0)
        assert gen.tokens == ref_tokens


@pytest.mark.parametrize("target", ["litert-cpu", "onnx-cpu"])
def test_other_runtimes_refuse(checkpoint, target, tmp_path):
    with pytest.raises(InputError, match="encoder_attention: fused .* not supported by .*executorch"):
        check_fits(load_checkpoint(checkpoint), load_recipe(_recipe(tmp_path)), load_target(target))


def test_non_toeplitz_families_refuse(tmp_path):
    src = load_checkpoint(tiny_checkpoint(tmp_path / "bart", "bart", "bart", seed=1, train_steps=2,
                                          encoder_layers=1, decoder_layers=1))
    with pytest.raises(InputError, match="relative-position attention only"):
        export(src, load_recipe(_recipe(tmp_path)), load_target("executorch-xnnpack"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
