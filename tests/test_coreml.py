"""Core ML targets on tiny random T5 variants: real conversion, saved and reloaded, checked by structure.

Core ML models execute only on macOS (`MLModel.predict`): everywhere else these tests
convert, save, reload the spec with coremltools and assert what it contains; the
parity test runs on macOS only. Each artifact is exported once per session
(~10-20 s each on a loaded 2-core machine): three Core ML packages and one .pte.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose

from toolchain.artifact import open_artifact
from toolchain.checkpoint import load_checkpoint

from helpers import ROOT

pytestmark = pytest.mark.slow  # converts tiny checkpoints and the demo to Core ML

pytest.importorskip("coremltools", reason="coremltools not installed")

ON_MAC = sys.platform == "darwin"
COMPONENTS = ("encoder", "decoder", "embeddings", "lm_head")


def _recipe(base: Path, name: str, quant: dict[str, str]) -> Path:
    q = "{" + ", ".join(f"{c}: {s}" for c, s in quant.items()) + "}"
    p = base / f"{name}.yaml"
    p.write_text(f"format_version: 1\nname: {name}\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                 f"quantization: {q}\ngroup_size: 32\n"
                 f"tolerance: {{max_abs_logit_diff: 1.0, min_sequence_match: 0.0, max_accuracy_drop: 1.0}}\n")
    return p


def _export(ck: Path, recipe: Path, target: str, out: Path) -> Path:
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    return export(load_checkpoint(ck), load_recipe(str(recipe)), load_target(target), out).path


@pytest.fixture(scope="session")
def cml(checkpoints, small_recipe, tmp_path_factory) -> dict[str, Path]:
    """A tied T5 v1.0 in fp16 (ane) and int4, an untied T5 v1.1 in fp32 (cpu)."""
    base = tmp_path_factory.mktemp("coreml")
    # int4 linears and embeddings, int8 head on a tied model: the head must be untied to differ.
    int4 = _recipe(base, "int4", {"encoder": "8da4w", "decoder": "int4-weight", "embeddings": "int4-weight",
                                  "lm_head": "8da8w"})
    return {
        "ane": _export(checkpoints["v1.0"], small_recipe, "coreml-ane", base / "ane"),
        "cpu": _export(checkpoints["v1.1-untied"], small_recipe, "coreml-cpu", base / "cpu"),
        "int4": _export(checkpoints["v1.0"], int4, "coreml-ane", base / "int4"),
    }


def _spec(art):
    import coremltools as ct

    return ct.utils.load_spec(str(art.file(art.manifest["programs"]["decode"]["file"])))


def _io(features, state=False):
    from coremltools.proto import FeatureTypes_pb2 as ft

    out = {}
    for f in features:
        arr = f.type.stateType.arrayType if state else f.type.multiArrayType
        out[f.name] = (tuple(arr.shape), ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType))
    return out


@pytest.mark.parametrize("kind, ftype", [("ane", "FLOAT16"), ("cpu", "FLOAT32")])
def test_reloaded_spec_has_two_functions_and_state(cml, checkpoints, kind, ftype):
    """One multifunction package: encode returns cross K/V; decode keeps its KV cache as state
    and takes no encoder hidden states."""
    art = open_artifact(cml[kind])  # checks the sha256 of every file inside the package
    spec = _spec(art)
    funcs = {f.name: f for f in spec.description.functions}
    assert set(funcs) == {"encode", "decode"} and set(spec.mlProgram.functions) == {"encode", "decode"}
    enc_in, enc_out = _io(funcs["encode"].input), _io(funcs["encode"].output)
    dec_in, dec_out = _io(funcs["decode"].input), _io(funcs["decode"].output)
    states = _io(funcs["decode"].state, state=True)
    s, t, h, dh, layers = 24, 12, 4, 8, 2
    assert enc_in == {"input_ids": ((1, s), "INT32"), "attention_mask": ((1, s), "INT32")}
    assert not funcs["encode"].state
    cross = ["cross_bias"] + [f"cross_{kv}_{i}" for i in range(layers) for kv in "kv"]
    assert list(dec_in) == ["token", "position", *cross]
    assert dec_in["token"] == ((1, 1), "INT32") and dec_in["position"] == ((1,), "INT32")
    assert list(enc_out) == cross
    for name in cross:  # encode's outputs feed decode as they are: same shape, same dtype
        assert enc_out[name] == dec_in[name] and enc_out[name][1] == ftype
    assert dec_in["cross_k_0"][0] == (h, dh, s) and dec_in["cross_v_0"][0] == (h, s, dh)
    assert dec_out == {"logits": ((1, 45), ftype)}
    # Core ML states are fp16 only: on the fp32 target the cache is cast around read/update.
    assert states == {f"cache_{kv}_{i}": ((h, dh, t) if kv == "k" else (h, t, dh), "FLOAT16")
                      for i in range(layers) for kv in "kv"}
    d_model = json.loads((checkpoints["v1.0"] / "config.json").read_text())["d_model"]
    assert all(shape != (1, s, d_model) for shape, _ in dec_in.values())

    # The manifest says the same, and lists every file of the package.
    m = art.manifest
    pkg = art.path / "model.mlpackage"
    on_disk = sorted(str(p.relative_to(art.path)) for p in pkg.rglob("*") if p.is_file())
    assert sorted(f for f in m["files"] if f != "tokenizer.json") == on_disk
    assert "model.mlpackage/Data/com.apple.CoreML/model.mlmodel" in on_disk
    dec = m["programs"]["decode"]
    assert dec["function"] == "decode" and dec["file"] == "model.mlpackage"
    assert [st["name"] for st in dec["states"]] == list(states) and dec["kv_cache"].startswith("Core ML state")
    assert dec["inputs"][0]["dtype"] == "int64" and dec["inputs"][0]["runtime_dtype"] == "int32"
    c = m["coreml"]
    assert c["minimum_deployment_target"] == "iOS18"
    ops = c["functions"]["decode"]["ops"]
    assert ops.get("read_state") and ops.get("write_state") and ops["linear"] >= 8 * layers
    assert "read_state" not in c["functions"]["encode"]["ops"]
    assert set(c["weights_bytes"]) <= {ftype.lower(), "int32"}  # nothing compressed in these builds
    assert {"coremltools", "torch"} <= set(m["tool_versions"])


def test_fp16_build_keeps_masks_finite_and_notes_the_neural_engine(cml):
    """-1e9 mask tables are clamped for fp16, so decode has no fp32 op (which would leave the ANE)."""
    c = open_artifact(cml["ane"]).manifest["coreml"]
    assert c["compute_precision"] == "float16" and c["compute_units"] == "CPU_AND_NE"
    assert c["fp16_clamped_buffers"] == ["decode.self_bias_full"]  # the per-step bias + causal mask table
    notes = c["ane_notes"]
    assert not any(n.startswith("decode: fp32 compute") for n in notes), notes
    assert any("gather" in n for n in notes)


def test_untied_head_is_its_own_weight(cml):
    m = open_artifact(cml["cpu"]).manifest  # T5 v1.1 with a distinct lm_head
    q = m["quantization"]
    assert q["lm_head"]["tensors"] == 1 and q["embeddings"]["tensors"] == 1
    # Gated FF (wi_0, wi_1, wo): encoder 2 layers x 7 + the decoder's cross K/V projections (run in
    # encode); decoder 2 layers x (fused q/k/v, o, cross q, cross o, wi_0, wi_1, wo).
    assert q["encoder"]["tensors"] == 18 and q["decoder"]["tensors"] == 14


def test_quantized_recipe_shrinks_weights(cml):
    fp16, q = (open_artifact(cml[k]).manifest for k in ("ane", "int4"))
    w = q["coreml"]["weights_bytes"]
    assert "int4" in w and "int8" in w  # int4 linears and embedding, int8 (untied) head
    assert q["coreml"]["weights_total_bytes"] < 0.6 * fp16["coreml"]["weights_total_bytes"]
    assert q["sizes"]["model_bytes"] < 0.75 * fp16["sizes"]["model_bytes"]
    c = q["quantization"]
    assert c["lm_head"]["tensors"] == 1 and c["lm_head"]["coreml"] == "int8"
    assert c["embeddings"]["coreml"] == "int4" and c["decoder"]["coreml"] == "int4"
    assert c["encoder"]["coreml"] == "int4" and c["encoder"]["tensors"] == 16
    ops = q["coreml"]["functions"]["decode"]["ops"]
    # decoder linears (2 layers x fused q/k/v, o, cross q, cross o, wi, wo), head, embedding
    assert ops["constexpr_blockwise_shift_scale"] == 12 + 2
    # Position-bias tables are never compressed: fp16 bytes stay above their size.
    assert w["float16"] >= 2 * (4 * 24 * 24 + 4 * 12 * 12)


@pytest.mark.parametrize("target, scheme", [("coreml-ane", "static-int8"), ("coreml-cpu", "fp16")])
def test_unsupported_scheme_is_rejected(checkpoints, tmp_path, target, scheme):
    from toolchain.cli import main

    bad = _recipe(tmp_path, "bad", {"encoder": scheme})
    result = CliRunner().invoke(main, ["export", str(checkpoints["v1.0"]), "-t", target, "-r", str(bad),
                                       "-o", str(tmp_path / "out")])
    lines = [line for line in result.output.strip().splitlines() if line]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert scheme in lines[0] and "8da8w" in lines[0] and "int4-weight" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_verify_structure_checks_without_executing(cml, tmp_path):
    import shutil

    from toolchain.backends.coreml.structure import verify_structure

    rep = verify_structure(open_artifact(cml["int4"]))
    assert rep["passed"], rep["failures"]
    assert rep["numerics"] == "not run: needs macOS"
    assert rep["functions"]["decode"]["states"] == 4 and rep["functions"]["encode"]["states"] == 0
    # A manifest that disagrees with the package is caught.
    copy = tmp_path / "art"
    shutil.copytree(cml["int4"], copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["programs"]["decode"]["cache"] = m["programs"]["decode"]["cache"][:-1]
    (copy / "manifest.json").write_text(json.dumps(m))
    bad = verify_structure(open_artifact(copy))
    assert not bad["passed"] and "decode states" in bad["failures"][0]


@pytest.mark.skipif(ON_MAC, reason="checks the refusal off macOS")
def test_open_refuses_off_macos(cml):
    from toolchain import backends
    from toolchain.errors import InputError

    with pytest.raises(InputError, match="execute only on macOS"):
        backends.get("coreml").open_session(open_artifact(cml["ane"]), threads=1)


@pytest.mark.skipif(not ON_MAC, reason="Core ML predict needs macOS")
@pytest.mark.parametrize("kind, variant, atol", [("cpu", "v1.1-untied", 1e-2), ("ane", "v1.0", 5e-2)])
def test_runtime_matches_eager_on_macos(cml, checkpoints, kind, variant, atol):
    from toolchain import backends
    from toolchain.generate import greedy

    from helpers import reference

    art = open_artifact(cml[kind])
    session = backends.get("coreml").open_session(art, threads=1)
    r = art.recipe
    model = load_checkpoint(checkpoints[variant]).load_model()
    for length in (4, 24):
        rng = np.random.default_rng(100 + length)
        ids = [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]
        ref_tokens, ref_logits = reference(model, ids, r.max_output_len)
        for _ in range(2):  # a fresh state per input: nothing leaks between inputs
            gen = greedy(session, ids, max_input_len=r.max_input_len, max_output_len=r.max_output_len,
                         start_id=0, eos_id=1, pad_id=0, keep_logits=True, force_length=True)
            assert_allclose(np.stack(gen.logits), ref_logits, atol=atol, rtol=atol)


def test_executorch_coreml_pte_has_the_delegate_blob(checkpoints, small_recipe, tmp_path):
    """executorch-coreml: both methods lowered whole to CoreMLBackend; the Core ML model is in the .pte."""
    from toolchain import backends
    from toolchain.backends.executorch_coreml.structure import delegate_blobs
    from toolchain.export import build_parts
    from toolchain.specs import load_recipe, load_target

    src, recipe = load_checkpoint(checkpoints["v1.0"]), load_recipe(str(small_recipe))
    backend = backends.get("executorch-coreml")
    parts = build_parts(src, recipe, cache_mode=backend.capabilities.cache_mode)
    low = backend.lower(parts, recipe, load_target("executorch-coreml"), tmp_path)
    assert low.files == ["model.pte"]
    blobs = delegate_blobs((tmp_path / "model.pte").read_bytes())
    assert set(blobs) == {"encode", "decode"}
    for method, entries in blobs.items():
        assert [e["id"] for e in entries] == ["CoreMLBackend"] and entries[0]["function"] == method
        assert entries[0]["model_bytes"] > 50_000  # the multifunction mlpackage, not just a reference
        d = low.report["delegation"][method]
        assert d["delegated_fraction"] == 1.0 and d["runtime_ops"] == [], d


def test_cli_does_not_import_coremltools():
    code = ("import sys; import toolchain.cli, toolchain.backends; "
            "print([m for m in ('coremltools', 'toolchain.backends.coreml') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
