"""Recipe encode_lengths: shorter encode programs beside the full one (executorch-xnnpack:
methods of one .pte; onnx-cpu: more graphs on one weights.data).

An input runs the shortest encode that holds it; decode is the same program whatever encode
ran, so every length must give eager's logits and tokens. Other targets refuse the key."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from toolchain import backends
from toolchain.artifact import open_artifact
from toolchain.checkpoint import load_checkpoint
from toolchain.errors import InputError
from toolchain.export import export
from toolchain.generate import greedy
from toolchain.specs import load_recipe, load_target

from helpers import reference

pytestmark = pytest.mark.slow  # exports several encode programs per runtime

TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32 runtime vs eager: kernels and summation order only


def _recipe(tmp_path, name: str, lengths: list[int]) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"format_version: 1\nname: {name}\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                 f"quantization: {{}}\nencode_lengths: {lengths}\ntolerance: {{max_abs_logit_diff: 0.001}}\n")
    return str(p)


TARGETS = {"executorch-xnnpack": ("executorch", "weights.ptd"), "onnx-cpu": ("onnx", "weights.data")}


@pytest.fixture(scope="module", params=list(TARGETS))
def pair(request, checkpoint, tmp_path_factory):
    """(target, artifact with encode_lengths [8, 16], the same without) of one checkpoint."""
    tmp = tmp_path_factory.mktemp("lengths")
    src, target = load_checkpoint(checkpoint), load_target(request.param)
    arts = [export(src, load_recipe(_recipe(tmp, name, lengths)), target, tmp / name).path
            for name, lengths in (("lens", [8, 16]), ("plain", []))]
    return request.param, *arts


def test_every_length_matches_eager(pair, checkpoint):
    target, bucketed, _ = pair
    art = open_artifact(bucketed)
    assert [e["length"] for e in art.manifest["programs"]["encode"]["lengths"]] == [8, 16]
    session = backends.get(TARGETS[target][0]).open_session(art, threads=2)
    model = load_checkpoint(checkpoint).load_model()
    rng = np.random.default_rng(7)
    # 3 and 8 -> the 8-token encode (8: exactly full), 9 and 16 -> 16, 17 and 24 -> the full one.
    for length, ran in [(3, 8), (8, 8), (9, 16), (16, 16), (17, 24), (24, 24)]:
        ids = [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]
        ref_tokens, ref_logits = reference(model, ids, 12)
        gen = greedy(session, ids, max_input_len=24, max_output_len=12, start_id=0, eos_id=1, pad_id=0,
                     keep_logits=True, force_length=True)
        assert session.encode_length == ran
        assert_allclose(np.stack(gen.logits), ref_logits, **TOL)
        assert gen.tokens == ref_tokens


def test_weights_stored_once(pair):
    """The shorter encodes' linears are the full encode's tensors, so the weights file holds
    them once (compared with the same checkpoint and lengths without encode_lengths)."""
    target, bucketed, plain = pair
    data = TARGETS[target][1]
    w1, w3 = (open_artifact(p).manifest["files"][data]["bytes"] for p in (plain, bucketed))
    # Only the encoders' relative-position bias tables are new (fp32 [H, L, L] per length),
    # plus alignment; a second copy of the fp32 encoder linears alone would add ~64 KB each.
    heads = 4
    tables = sum(heads * n * n * 4 for n in (8, 16))
    assert w1 < w3 < w1 + tables + 2048, (w1, w3, tables)


@pytest.mark.parametrize("target", ["litert-cpu", "coreml-cpu", "executorch-ethos-u85"])
def test_other_targets_refuse(target, tmp_path):
    recipe, t = load_recipe(_recipe(tmp_path, "lens", [8])), load_target(target)
    with pytest.raises(InputError, match="encode_lengths .* is not supported by"):
        backends.for_target(t).check(recipe, t)


def test_probe_and_inspect_show_the_lengths(pair):
    """probe --input-len N measures the encode an N-token input really runs, and says which;
    inspect lists the shorter encodes."""
    from helpers import invoke, probe_json

    for n, ran in [(5, 8), (12, 16), (20, 24)]:
        r = probe_json(pair[1], "--runs", 1, "--warmup", 0, "--input-len", n, "--output-len", 2)
        assert (r["input_len"], r["encoder_len"]) == (n, ran)
    code, out = invoke("inspect", pair[1])
    assert code == 0 and "for inputs up to 8 tokens" in out and "for inputs up to 16 tokens" in out, out
