"""The recipe's ``cross_attention: memory`` (toolchain/arch/memory.py): encode returns the encoder
states once instead of every decoder layer's cross K/V, and decode applies the K/V projections
per step. Same logits and tokens as transformers in eager (every family) and in every runtime
that runs here, with the shorter encode programs too; smaller encode outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from toolchain import backends
from toolchain.artifact import open_artifact
from toolchain.calibrate import EagerSession
from toolchain.checkpoint import load_checkpoint
from toolchain.export import export
from toolchain.generate import greedy, pad
from toolchain.specs import load_recipe, load_target

from helpers import reference, tiny_checkpoint

S, T = 24, 12
TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32: the reassociated products differ by rounding only
# Families besides T5 (checkpoints["..."]): (model_type, variant, overrides); one layer each.
OTHERS = {"bart": ("bart", "bart", dict(encoder_layers=1, decoder_layers=2)),
          "t5gemma": ("t5gemma", "t5gemma", dict(module=dict(num_hidden_layers=1,
                                                              layer_types=["sliding_attention"])))}


def _recipe(tmp_path, name: str, extra: str = "", quant: str = "{}") -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"format_version: 1\nname: {name}\ndescription: test\nmax_input_len: {S}\nmax_output_len: {T}\n"
                 f"quantization: {quant}\ncross_attention: memory\n{extra}"
                 "tolerance: {max_abs_logit_diff: 0.001}\n")
    return str(p)


def _ids(length: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]


@pytest.mark.parametrize("variant", ["v1.0", "v1.1-untied"])
@pytest.mark.parametrize("cache_mode", ["buffer", "slot", "io"])
def test_eager_memory_split_matches_transformers(checkpoints, variant, cache_mode):
    src = load_checkpoint(checkpoints[variant])
    model = src.load_model()
    parts = src.adapter.build(model, S, T, cache_mode).with_memory_cross()
    assert parts.encode_output_names() == ["cross_bias", "memory_t", "memory"]
    assert not list(parts.encode.cross_k) and not list(parts.encode.cross_v)  # moved into decode
    for length in (5, S):
        ids = _ids(length, length)
        ref_tokens, ref_logits = reference(model, ids, T)
        gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                     keep_logits=True, force_length=True)
        assert_allclose(np.stack(gen.logits), ref_logits, **TOL)
        assert gen.tokens == ref_tokens


def test_encode_outputs_are_the_states(checkpoint):
    src = load_checkpoint(checkpoint)
    kv = src.adapter.build(src.load_model(), S, T)
    mem = src.adapter.build(src.load_model(), S, T).with_memory_cross()
    ids, mask = pad([5, 6, 1], S, 0)
    with torch.no_grad():
        outs = mem.encode(torch.from_numpy(ids), torch.from_numpy(mask))
    d = mem.memory_dim
    assert [tuple(o.shape) for o in outs] == [(1, 1, S), (1, d, S), (1, S, d)]
    assert torch.equal(outs[1], outs[2].transpose(1, 2)) and all(o.is_contiguous() for o in outs)
    assert d == kv.num_heads * kv.head_dim  # so L layers' K and V hold L times the values of the two states
    assert sum(t.numel() for t in mem.decode_inputs()[3:]) * kv.num_layers == \
        sum(t.numel() for t in kv.decode_inputs()[3:])
    names = mem.weight_components()
    assert not any("cross_" in n for n in names["encode"])
    assert sum(n.endswith(("k_abs.weight", "v_abs.weight")) for n in names["decode"]) == 2 * mem.num_layers


@pytest.mark.slow
@pytest.mark.parametrize("family", list(OTHERS))
def test_other_families_eager(family, tmp_path):
    model_type, variant, overrides = OTHERS[family]
    src = load_checkpoint(tiny_checkpoint(tmp_path / family, model_type, variant, seed=20, train_steps=25,
                                          **overrides))
    model = src.load_model()
    parts = src.adapter.build(model, S, T).with_memory_cross()
    ids = _ids(9, 3)
    ref_tokens, ref_logits = reference(model, ids, T)
    gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T,
                 start_id=parts.decoder_start_token_id, eos_id=parts.eos_token_id, pad_id=parts.pad_token_id,
                 keep_logits=True, force_length=True)
    assert_allclose(np.stack(gen.logits), ref_logits, **TOL)
    assert gen.tokens == ref_tokens


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch-xnnpack", "litert-cpu", "onnx-cpu"])
def test_runtimes_match_eager(checkpoints, target, tmp_path):
    """fp32 in each runtime, with shorter encode programs where the target has them."""
    lengths = "encode_lengths: [8]\n" if target != "litert-cpu" else ""
    ck = checkpoints["v1.1-untied"]
    art = open_artifact(export(load_checkpoint(ck), load_recipe(_recipe(tmp_path, "mem", lengths)),
                               load_target(target), tmp_path / "art").path)
    assert art.recipe.cross_attention == "memory"
    names = [o["name"] for o in art.manifest["programs"]["encode"]["outputs"]]
    assert names == ["cross_bias", "memory_t", "memory"]
    session = backends.for_target(art.target).open_session(art, threads=2)
    model = load_checkpoint(ck).load_model()
    for length in (4, 8, S):
        ids = _ids(length, length)
        ref_tokens, ref_logits = reference(model, ids, T)
        gen = greedy(session, ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                     keep_logits=True, force_length=True)
        assert_allclose(np.stack(gen.logits), ref_logits, **TOL)
        assert gen.tokens == ref_tokens


@pytest.mark.slow
def test_coreml_structure_expects_the_states(checkpoint, tmp_path):
    """Where the runtime cannot run here (Core ML off macOS) verify checks structure, and its
    rule on decode's cross inputs follows the recipe: the two states, nothing per layer."""
    from toolchain.verify import verify_artifact

    art = open_artifact(export(load_checkpoint(checkpoint), load_recipe(_recipe(tmp_path, "mem")),
                               load_target("coreml-cpu"), tmp_path / "cm").path)
    report = verify_artifact(art)
    assert report["passed"], report
    assert report["structure_only"]
    assert "decode takes the encoder states once (cross_attention: memory)" in report["checked"]
