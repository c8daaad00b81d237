"""onnx-cpu artifacts (ONNX Runtime, CPU EP) of tiny random T5 variants and of the demo: parity, graph checks, int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from toolchain import backends
from toolchain.artifact import open_artifact
from toolchain.checkpoint import load_checkpoint
from toolchain.errors import InputError
from toolchain.generate import greedy

from helpers import DEMO, VARIANTS, reference

pytestmark = pytest.mark.slow  # exports every tiny T5 variant and quantized ONNX

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# fp32 ONNX Runtime vs eager: different kernels and summation order only.
TOL = {"atol": 1e-4, "rtol": 1e-4}
S, T = 24, 12  # the small recipe's lengths


def _recipe(path: Path, name: str, quantization: str, s: int = S, t: int = T, drop: float = 0.0) -> Path:
    path.write_text(f"format_version: 1\nname: {name}\ndescription: test\nmax_input_len: {s}\n"
                    f"max_output_len: {t}\nquantization: {quantization}\n"
                    f"tolerance: {{max_abs_logit_diff: 1000, min_sequence_match: 0.0, max_accuracy_drop: {drop}}}\n")
    return path


def _export(ckpt, recipe, out, **options):
    import dataclasses

    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    target = load_target("onnx-cpu")
    target = dataclasses.replace(target, options={**target.options, **options})
    return export(load_checkpoint(ckpt), load_recipe(str(recipe)), target, out).path


# Like recipes/int8.yaml: 8da8w linears, int8-row embeddings.
ALL_8DA8W = "{encoder: 8da8w, decoder: 8da8w, embeddings: int8-weight, lm_head: 8da8w}"


@pytest.fixture(scope="session")
def onnx_artifacts(checkpoints, small_recipe, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("onnx")
    return {v: _export(ck, small_recipe, base / ck.name) for v, ck in checkpoints.items()}


@pytest.fixture(scope="session")
def onnx_quantized(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Tiny artifacts per quantization case: all-8da8w (tied and untied heads), decoder-only, static,
    an int8 head on an fp32 embedding."""
    base = tmp_path_factory.mktemp("onnx-q")
    cases = {
        "8da8w-v1.0": ("v1.0", ALL_8DA8W),
        "8da8w-v1.1-untied": ("v1.1-untied", ALL_8DA8W),
        "decoder-only": ("v1.0", "{decoder: 8da8w}"),
        "static-v1.0": ("v1.0", "{encoder: static-int8, decoder: static-int8, embeddings: int8-weight, "
                                "lm_head: static-int8}"),
        "head-only": ("v1.0", "{lm_head: 8da8w}"),
    }
    return {name: _export(checkpoints[v], _recipe(base / f"{name}.yaml", name, q), base / name)
            for name, (v, q) in cases.items()}


def _session(path, **kw):
    art = open_artifact(path)
    if kw:
        from toolchain.backends.onnx.session import OnnxSession

        return art, OnnxSession(art, threads=2, **kw)
    return art, backends.get("onnx").open_session(art, threads=2)


def _ids(length: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]


def _generate(session, ids):
    return greedy(session, ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                  keep_logits=True, force_length=True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [4, S])  # short, and exactly the recipe's max_input_len
def test_runtime_matches_eager(onnx_artifacts, checkpoints, variant, length):
    art, session = _session(onnx_artifacts[variant])
    model = load_checkpoint(checkpoints[variant]).load_model()
    ids = _ids(length, 100 + length)
    ref_tokens, ref_logits = reference(model, ids, T)
    # Twice through the same session: a second input must start from an empty cache.
    for _ in range(2):
        gen = _generate(session, ids)
        assert_allclose(np.stack(gen.logits), ref_logits, **TOL)
        assert gen.tokens == ref_tokens


def test_io_binding_matches_plain_run(onnx_artifacts):
    """The two ways of feeding the cache (bound ping-pong buffers, numpy feeds) agree exactly."""
    _, bound = _session(onnx_artifacts["v1.1"], io_binding=True)
    _, plain = _session(onnx_artifacts["v1.1"], io_binding=False)
    ids = _ids(10, 7)
    a, b = _generate(bound, ids), _generate(plain, ids)
    assert a.tokens == b.tokens
    assert_allclose(np.stack(a.logits), np.stack(b.logits), atol=1e-6, rtol=0)
    # Two inputs interleaved on one session: each state carries its own cache.
    s1, s2 = bound.encode(*_pad(ids)), bound.encode(*_pad(_ids(6, 8)))
    first = bound.decode(0, 0, s1)
    bound.decode(0, 0, s2)
    assert_allclose(bound.decode(int(first.argmax()), 1, s1), a.logits[1], atol=1e-6, rtol=0)


def _pad(ids):
    from toolchain.generate import pad

    return pad(ids, S, 0)


@pytest.mark.parametrize("variant", ["v1.0", "v1.1-untied"])
def test_checker_opset_and_shared_weights(onnx_artifacts, variant):
    art = open_artifact(onnx_artifacts[variant])
    progs = art.manifest["programs"]
    inits = {}
    for prog in ("encode", "decode"):
        path = art.file(progs[prog]["file"])
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        assert progs[prog]["opset"] == {i.domain or "ai.onnx": i.version for i in model.opset_import}["ai.onnx"]
        assert progs[prog]["ir_version"] == model.ir_version
        assert [i.name for i in model.graph.input] == [i["name"] for i in progs[prog]["inputs"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in progs[prog]["outputs"]]
        inits[prog] = {i.name: {e.key: e.value for e in i.external_data} for i in model.graph.initializer}
    # Both programs read the embedding from the same bytes of the one weights file.
    assert inits["encode"]["embed.weight"] == inits["decode"]["embed.weight"]
    assert inits["decode"]["embed.weight"]["location"] == "weights.data"
    assert set(art.manifest["files"]) == {"encode.onnx", "decode.onnx", "weights.data", "tokenizer.json"}
    assert {"onnx", "onnxruntime", "torch"} <= set(art.manifest["tool_versions"])


def test_decode_graph_has_no_encoder_state_input(onnx_artifacts, checkpoints):
    """Decode takes per-layer cross K/V (computed once in encode) and the cache, never hidden states."""
    art = open_artifact(onnx_artifacts["v1.0"])
    d_model = json.loads((checkpoints["v1.0"] / "config.json").read_text())["d_model"]
    dec = onnx.load(str(art.file("decode.onnx")), load_external_data=False)
    shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in dec.graph.input}
    assert (1, S, d_model) not in shapes.values()
    layers = sum(n.startswith("cross_k_") for n in shapes)
    cross = [f"cross_{kv}_{i}" for i in range(layers) for kv in "kv"]
    cache = [f"cache_{kv}_{i}" for i in range(layers) for kv in "kv"]
    assert list(shapes) == ["token", "position", "cross_bias", *cross, *cache]
    assert [o.name for o in dec.graph.output] == ["logits", *(f"new_{c}" for c in cache)]
    h, dh = shapes["cross_v_0"][0], shapes["cross_v_0"][2]  # cross_v [H, S, Dh]
    assert shapes["cache_k_0"] == (h, dh, T) and shapes["cache_v_0"] == (h, T, dh)
    assert art.manifest["programs"]["decode"]["cache_mode"] == "io"


@pytest.mark.parametrize("case", ["8da8w-v1.0", "8da8w-v1.1-untied", "static-v1.0"])
def test_int8_runs_and_stays_close(onnx_quantized, onnx_artifacts, case):
    variant = "v1.1-untied" if "untied" in case else "v1.0"
    _, q = _session(onnx_quantized[case])
    _, f = _session(onnx_artifacts[variant])
    for length in (6, S):
        ids = _ids(length, length)
        ref = _generate(f, ids)
        # Teacher-forced on the fp32 tokens, so one early argmax flip cannot snowball.
        fed = [0, *ref.tokens][:T]
        state = q.encode(*_pad(ids))
        a, b = np.stack([q.decode(tok, pos, state) for pos, tok in enumerate(fed)]), np.stack(ref.logits)
        # Tiny random weights, every linear int8: close in scale, mostly the same argmax.
        assert np.abs(a - b).max() < 0.05 * np.abs(b).max() + 0.1
        assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.75
    m = open_artifact(onnx_quantized[case]).manifest
    fp32 = open_artifact(onnx_artifacts[variant]).manifest
    assert m["sizes"]["model_bytes"] < 0.75 * fp32["sizes"]["model_bytes"]
    quantized = m["onnx"]["decode"]["quantized_nodes"]
    assert quantized["decoder"] > 0 and quantized["lm_head"] == 1


def test_quantization_follows_components(onnx_quantized):
    """{decoder: 8da8w} quantizes the decode program's linears only: not the encoder (nor the cross
    K/V projections, which run in encode), not the lm_head, not the embedding."""
    m = open_artifact(onnx_quantized["decoder-only"]).manifest["onnx"]
    assert m["encode"]["quantized_nodes"] == {}
    assert "MatMulInteger" not in m["encode"]["op_counts"]
    assert set(m["decode"]["quantized_nodes"]) == {"decoder"}
    assert m["decode"]["op_counts"]["MatMulInteger"] == m["decode"]["quantized_nodes"]["decoder"]
    assert m["decode"]["op_counts"]["Gather"] == 1  # the embedding gather stays fp32


@pytest.mark.parametrize("case, variant", [("8da8w-v1.0", "v1.0"), ("8da8w-v1.1-untied", "v1.1-untied")])
def test_quantized_nodes_follow_the_weight_map(onnx_quantized, checkpoints, case, variant):
    """Every weight of Seq2SeqParts.weight_components() is one quantized node of its component
    (linears: one MatMul each; the embedding: its gather; a tied head: a linear on the table)."""
    from collections import Counter

    from toolchain.export import build_parts

    art = open_artifact(onnx_quantized[case])
    parts = build_parts(load_checkpoint(checkpoints[variant]), art.recipe, cache_mode="io")
    for prog, weights in parts.weight_components().items():
        want = Counter(str(c) for c in weights.values())
        if prog == "decode" and parts.decode.lm_head is None:
            want["lm_head"] += 1  # the tied head reads the embedding table
        assert art.manifest["onnx"][prog]["quantized_nodes"] == dict(want), prog


def test_weight_missing_from_the_graph_fails():
    """A weight the recipe quantizes that no node reads (an exporter naming parameters
    differently) fails the export instead of quantizing nothing; unquantized ones are not checked."""
    from toolchain.backends.onnx.quantize import check_found
    from toolchain.schemes import Component

    graph = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    weights = {"layers.0.q.weight": Component.DECODER}
    check_found(graph, "decode", weights, {Component.ENCODER})
    with pytest.raises(RuntimeError, match=r"decode: weights not found .*layers\.0\.q\.weight"):
        check_found(graph, "decode", weights, {Component.DECODER})


def test_int8_embedding_rows_stored_once(onnx_quantized):
    art = open_artifact(onnx_quantized["8da8w-v1.0"])
    refs = {}
    for prog in ("encode", "decode"):
        model = onnx.load(str(art.file(f"{prog}.onnx")), load_external_data=False)
        inits = {i.name: i for i in model.graph.initializer}
        assert "embed.weight.int8" in inits and inits["embed.weight.int8"].data_type == onnx.TensorProto.INT8
        refs[prog] = {e.key: e.value for e in inits["embed.weight.int8"].external_data}
        assert art.manifest["onnx"][prog]["quantized_nodes"]["embeddings"] == 1
    assert refs["encode"] == refs["decode"]


def test_int8_weights_on_the_7bit_grid(onnx_quantized):
    """onnx-cpu's default weight_bits 7: every int8 weight (linears, the embedding rows, a tied head)
    within -64..64, so ORT's u8s8 kernels cannot saturate their int16 pair sums on x86 without VNNI
    (onnx/__init__.py); each row of the table reaches the edge of the grid."""
    from onnx import numpy_helper

    for case in ("8da8w-v1.0", "static-v1.0"):
        art = open_artifact(onnx_quantized[case])
        assert art.manifest["onnx"]["weight_bits"] == 7
        model = onnx.load(str(art.file("decode.onnx")))  # its weights.data beside it
        int8 = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
                if i.data_type == onnx.TensorProto.INT8}
        assert int8 and all(np.abs(w.astype(int)).max() <= 64 for w in int8.values()), case
        assert (np.abs(int8["embed.weight.int8"].astype(int)).max(axis=1) == 64).all()


@pytest.mark.parametrize("bits", [7, 8])
def test_embedding_rows_are_ort_numbers(bits):
    """quantize_embeddings' rows and scales are bit-equal to onnxruntime.quantization's symmetric
    per-channel int8 of the same rows on either grid: what lets a tied head share the table."""
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    from toolchain.backends.onnx.quantize import quantize_embeddings

    w = np.random.default_rng(bits).standard_normal((40, 16)).astype(np.float32) * 0.3
    w[3] = 0.0  # an all-zero row: scale 1, zeros
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"], name="g")], "g",
                              [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [2, 16])],
                              [numpy_helper.from_array(w, "table")])
    model = helper.make_model(graph)
    assert quantize_embeddings(model, {"g"}, bits) == 1
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for row in range(40):
        if row == 3:
            assert not inits["table.int8"][row].any() and inits["table.scale"][row, 0] == 1.0
            continue
        _, scale, q = quantize_data(w[row], onnx.TensorProto.INT8, symmetric=True, reduce_range=bits == 7)
        assert np.array_equal(inits["table.int8"][row], q) and inits["table.scale"][row, 0] == scale, row


def test_8bit_grid_keeps_the_tied_table_once(checkpoints, onnx_artifacts, tmp_path):
    """weight_bits 8 (VNNI/Arm deployments): full-range int8 weights, the head still reading the
    embedding's table (one copy), and it runs. Its accuracy is not asserted: on x86 without VNNI
    ORT's kernels saturate with these weights (why 7 is the default, checked above)."""
    from onnx import numpy_helper

    out = _export(checkpoints["v1.0"], _recipe(tmp_path / "r.yaml", "r", ALL_8DA8W), tmp_path / "a", weight_bits=8)
    art = open_artifact(out)
    assert art.manifest["onnx"]["weight_bits"] == 8
    assert art.manifest["onnx"]["lm_head"]["storage"]["table_stored"] == "once"
    model = onnx.load(str(art.file("decode.onnx")))
    table = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "embed.weight.int8")
    assert (np.abs(table.astype(int)).max(axis=1) == 127).all()
    _, q = _session(out)
    _, f = _session(onnx_artifacts["v1.0"])
    ids = _ids(S, 3)
    ref = _generate(f, ids)
    state = q.encode(*_pad(ids))
    a = np.stack([q.decode(tok, pos, state) for pos, tok in enumerate([0, *ref.tokens][:T])])
    assert a.shape == np.stack(ref.logits).shape and np.isfinite(a).all()


@pytest.mark.parametrize("bits, error", [(9, "must be 7 or 8, got 9"), (True, "must be 7 or 8, got True")])
def test_weight_bits_option_is_checked(tmp_path, bits, error):
    import dataclasses

    from toolchain.specs import load_recipe, load_target

    target = load_target("onnx-cpu")
    recipe = load_recipe(str(_recipe(tmp_path / "r.yaml", "r", ALL_8DA8W)))
    backends.get("onnx").check(recipe, target)
    with pytest.raises(InputError, match=error):
        backends.get("onnx").check(recipe, dataclasses.replace(target, options={"weight_bits": bits}))
    with pytest.raises(InputError, match="unknown option 'bits'; allowed: weight_bits"):
        backends.get("onnx").check(recipe, dataclasses.replace(target, options={"bits": 8}))


def _table_copies(path: Path, vocab: int, d_model: int) -> list[tuple[str, int]]:
    """(dtype, bytes) of each distinct stretch of weights.data that decode.onnx reads as a [V, D]
    or [D, V] tensor (the table, or a copy of it)."""
    model = onnx.load(str(path / "decode.onnx"), load_external_data=False)
    seen = {}
    for i in model.graph.initializer:
        if sorted(i.dims) == sorted([vocab, d_model]):
            ext = {e.key: e.value for e in i.external_data}
            seen[ext["offset"]] = (onnx.TensorProto.DataType.Name(i.data_type), int(ext["length"]))
    return sorted(seen.values())


@pytest.mark.parametrize("case, stored, table", [
    ("8da8w-v1.0", "once", "INT8"), ("static-v1.0", "once", "INT8"), ("head-only", "twice", None)])
def test_tied_table_stored_once(onnx_quantized, onnx_artifacts, checkpoints, case, stored, table):
    """A tied head's int8 weights are the embedding's int8 table (through a Transpose): one copy in
    weights.data; an fp32 embedding under an int8 head stays two encodings, and the manifest says why."""
    cfg = json.loads((checkpoints["v1.0"] / "config.json").read_text())
    art = open_artifact(onnx_quantized[case])
    copies = _table_copies(art.path, cfg["vocab_size"], cfg["d_model"])
    head = art.manifest["onnx"]["lm_head"]
    assert head["tied_to"] == "embeddings" and head["storage"]["table_stored"] == stored, head
    if stored == "once":
        assert copies == [(table, cfg["vocab_size"] * cfg["d_model"])], copies
        assert head["storage"]["shared_bytes"] == copies[0][1]
        assert "Transpose" in art.manifest["onnx"]["decode"]["op_counts"]
    else:
        assert len(copies) == 2, copies
        assert head["storage"]["why"] == "embeddings fp32 and lm_head 8da8w are different encodings of the table"
    fp32 = open_artifact(onnx_artifacts["v1.0"])
    assert fp32.manifest["onnx"]["lm_head"]["storage"]["table_stored"] == "once"
    assert len(_table_copies(fp32.path, cfg["vocab_size"], cfg["d_model"])) == 1
    assert "lm_head" not in open_artifact(onnx_quantized["8da8w-v1.1-untied"]).manifest["onnx"]  # its own values


def test_inspect_says_how_the_table_is_stored(onnx_quantized, tmp_path):
    import json
    import shutil

    from toolchain.inspection import inspect_artifact

    _, text = inspect_artifact(onnx_quantized["8da8w-v1.0"])
    assert "component lm_head    tied to embeddings: table stored once" in text, text
    assert "int8 weights on a 7-bit grid (-64..64)" in text, text
    edited = shutil.copytree(onnx_quantized["8da8w-v1.0"], tmp_path / "a")
    for bits in (9, ["7"]):  # a hand-edited manifest: said as unknown, not a traceback
        manifest = json.loads((edited / "manifest.json").read_text())
        manifest["onnx"]["weight_bits"] = bits
        (edited / "manifest.json").write_text(json.dumps(manifest))
        _, text = inspect_artifact(edited)
        assert f"int8 weights on an unknown grid (weight_bits {bits!r})" in text, text


@pytest.mark.parametrize("quant, why", [
    ("{encoder: fp16}", "it supports for encoder: none, 8da8w, static-int8"),
    ("{embeddings: 8da8w}", "it supports for embeddings: none, int8-weight"),
    ("{encoder: 8da8w, decoder: static-int8}", "one linear scheme per artifact"),
])
def test_check_rejects_what_it_cannot_honour(tmp_path, quant, why):
    from toolchain.specs import load_recipe, load_target

    recipe = load_recipe(str(_recipe(tmp_path / "r.yaml", "r", quant)))
    with pytest.raises(InputError, match=why):
        backends.get("onnx").check(recipe, load_target("onnx-cpu"))


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("demo-onnx")
    int8 = _recipe(base / "int8.yaml", "int8", ALL_8DA8W, s=64, t=32, drop=0.01)
    return {"fp32": _export(DEMO, "fp32", base / "fp32"), "int8": _export(DEMO, int8, base / "int8")}


def test_demo_fp32_verifies(demo_onnx):
    from toolchain.verify import verify

    r = verify(open_artifact(demo_onnx["fp32"]), limit=25)
    assert r.sequence_match == 1.0, r
    assert r.max_abs_logit_diff < 1e-3, r
    assert r.passed, r.failures


def test_demo_int8_accuracy(demo_onnx):
    from toolchain.verify import verify

    art = open_artifact(demo_onnx["int8"])
    r = verify(art, limit=100)
    assert r.reference_accuracy - r.task_accuracy <= 0.01, r
    fp32 = open_artifact(demo_onnx["fp32"])
    assert art.manifest["sizes"]["model_bytes"] < 0.4 * fp32.manifest["sizes"]["model_bytes"]
