"""T5's encoder position bias computed in the program (arch/t5.RelativeBias; on LiteRT its row
lookups, backends/litert/bias.GatheredBias) instead of stored as an [H, S, S] constant: bit-equal
to the stored table, the same tokens and logits as transformers in eager and in every runtime
that runs here, and the constant gone from the file. The real threshold (256 KiB: t5-small
past 90 tokens) is lowered to 0 so tiny models take the path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from toolchain import backends
from toolchain.arch import t5
from toolchain.arch.layers import NEG
from toolchain.artifact import open_artifact
from toolchain.backends.litert import bias as lrt_bias
from toolchain.calibrate import EagerSession
from toolchain.checkpoint import load_checkpoint
from toolchain.generate import greedy

from helpers import reference

S, T = 24, 12
# fp32 runtime vs eager: kernels and summation order only (the bias itself is bit-equal).
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _toeplitz(diagonals: torch.Tensor) -> torch.Tensor:
    """[H, 2S-1] -> [H, S, S] by indexing: bias[h, i, j] = diagonals[h, S-1 + j - i]."""
    s = (diagonals.shape[1] + 1) // 2
    i = torch.arange(s)
    return diagonals[:, s - 1 + i[None, :] - i[:, None]]


@pytest.mark.parametrize("heads,length", [(1, 1), (2, 2), (3, 7), (8, 64)])
def test_computed_bias_is_bit_equal(heads, length):
    torch.manual_seed(length)
    full = _toeplitz(torch.randn(heads, 2 * length - 1))
    computed = t5.RelativeBias.of(full)
    assert computed.diagonals.numel() == heads * 2 * length  # [H, 1, 2S]: the diagonals, padded by one
    assert torch.equal(computed(), full)


@pytest.mark.parametrize("heads,length", [(1, 1), (2, 2), (3, 7), (4, 24), (8, 64), (2, 96)])
def test_gathered_bias_is_bit_equal(heads, length):
    """LiteRT's construction (litert/bias.py): any S (7: chunks of 1; 24 and 96: of 8), with
    or without the key mask it takes its runtime zero from (0 for real tokens, NEG for padding)."""
    torch.manual_seed(length)
    full = _toeplitz(torch.randn(heads, 2 * length - 1))
    gathered = lrt_bias.gathered_or_constant(full)
    assert isinstance(gathered, lrt_bias.GatheredBias)
    assert gathered.chunk == max(b for b in range(1, lrt_bias.CHUNK_MAX + 1) if length % b == 0)
    mask = torch.zeros(1, 1, length)
    mask[..., length // 2:] = NEG
    assert torch.equal(gathered(), full)
    assert torch.equal(gathered(mask), full)
    assert torch.equal(gathered(mask.flip(-1)), full)
    if length > 1:
        other = torch.randn(heads, length, length)  # not Toeplitz: stored as it is
        assert lrt_bias.gathered_or_constant(other) is other


def test_threshold_and_non_toeplitz(monkeypatch):
    torch.manual_seed(0)
    full = _toeplitz(torch.randn(4, 2 * S - 1))
    assert t5.encoder_bias(full) is full  # 9 KB: stored
    monkeypatch.setattr(t5, "STORED_BIAS_MAX_BYTES", 0)
    assert isinstance(t5.encoder_bias(full), t5.RelativeBias)
    other = torch.randn(4, S, S)  # not constant along diagonals: stays a constant, never approximated
    assert t5.encoder_bias(other) is other


def test_real_t5_bias_is_computed_past_the_threshold(checkpoints, monkeypatch):
    """The table transformers computes (buckets, max distance, bidirectional) is Toeplitz, and the
    split with it computed gives transformers' logits and tokens."""
    src = load_checkpoint(checkpoints["v1.1-untied"])
    model = src.load_model()
    stored = src.adapter.build(model, S, T)
    assert isinstance(stored.encode.self_bias_full, torch.Tensor)
    monkeypatch.setattr(t5, "STORED_BIAS_MAX_BYTES", 0)
    parts = src.adapter.build(model, S, T)
    assert isinstance(parts.encode.self_bias_full, t5.RelativeBias)
    assert torch.equal(parts.encode.table("full"), stored.encode.self_bias_full)
    ids = [9, 4, 12, 30, 8, 17, 22, 5, 1]
    ref_tokens, ref_logits = reference(model, ids, T)
    gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                 keep_logits=True, force_length=True)
    assert_allclose(np.stack(gen.logits), ref_logits, atol=parts.tolerance["eager"], rtol=1e-4)
    assert gen.tokens == ref_tokens


def _export(ck: Path, recipe: Path, target: str, out: Path) -> Path:
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    return export(load_checkpoint(ck), load_recipe(str(recipe)), load_target(target), out).path


def _encode_constants(tflite: Path) -> list[list[int]]:
    """Shapes of the constant tensors (those with stored data) of a flatbuffer's encode signature."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite.read_bytes()))
    sig = next(s for s in model.signatureDefs if s.signatureKey.decode() == "encode")
    sg = model.subgraphs[sig.subgraphIndex]
    return [list(t.shape) for t in sg.tensors
            if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)]


@pytest.mark.slow
@pytest.mark.parametrize("target,runtime", [("executorch-xnnpack", "executorch"), ("litert-cpu", "litert"),
                                            ("onnx-cpu", "onnx")])
def test_runtimes_run_the_computed_bias(checkpoints, small_recipe, tmp_path, monkeypatch, target, runtime):
    """Each runtime converts the broadcast multiply / reshape / slice (LiteRT: its row lookups,
    litert/bias.py), matches eager, and ExecuTorch's and LiteRT's files lose the [H, S, S]
    constant (keep the [H, 2S] diagonals)."""
    ck = checkpoints["v1.0"]
    stored = open_artifact(_export(ck, small_recipe, target, tmp_path / "stored"))
    monkeypatch.setattr(t5, "STORED_BIAS_MAX_BYTES", 0)
    art = open_artifact(_export(ck, small_recipe, target, tmp_path / "computed"))
    heads = json.loads((ck / "config.json").read_text())["num_heads"]
    # The [H, S, S] fp32 constant goes; the [H, 2S] diagonals, a [1, S, 1] of ones and the few
    # operators that use them (shape and slice parameters: < 4 KB in every format) come in.
    # onnxscript's optimizer folds constant subgraphs whose output has at most 512*512 values, so
    # at this size ONNX stores the table again (at 8 heads x 512 tokens it is 8x over that limit).
    # LiteRT (litert/bias.py): a chunk table [H*(2S-B), B] (B = 8 here) and three int32 index
    # vectors come in, with ~25 operators and ~40 tensor entries (~8 KB of flatbuffer: at this size
    # as much as the 9 KB table; at t5-small's 8 heads x 512 tokens the file is 8.1 MB smaller).
    # The index grid depends on the key mask, so the converter cannot fold the lookup back into a
    # constant: none holds H*S*S values any more.
    saved = stored.model_bytes - art.model_bytes
    if runtime == "executorch":
        assert saved >= heads * S * S * 4 - 4096, (stored.model_bytes, art.model_bytes)
    elif runtime == "litert":
        chunk = lrt_bias.CHUNK_MAX
        assert saved >= heads * S * S * 4 - heads * (2 * S - chunk) * chunk * 4 - 8192, (stored.model_bytes,
                                                                                          art.model_bytes)
        assert [heads, S, S] in _encode_constants(stored.file("model.tflite"))
        shapes = _encode_constants(art.file("model.tflite"))
        assert [heads * (2 * S - chunk), chunk] in shapes
        assert not [s for s in shapes if int(np.prod(s)) >= heads * S * S], shapes
    session = backends.get(runtime).open_session(art, threads=2)
    model = load_checkpoint(ck).load_model()
    for length in (4, S):
        rng = np.random.default_rng(length)
        ids = [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]
        ref_tokens, ref_logits = reference(model, ids, T)
        gen = greedy(session, ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                     keep_logits=True, force_length=True)
        assert_allclose(np.stack(gen.logits), ref_logits, **TOL)
        assert gen.tokens == ref_tokens
