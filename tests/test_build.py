"""`edgeseq build`: matrix, content-addressed cache, selective rebuild, corrupt entries, gates."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from helpers import invoke


def summary(text: str) -> dict:
    """The --json summary (native runtime logs can share the captured stream under pytest)."""
    return json.loads(text[text.index("{\n"):])


def _setup(tmp_path, checkpoint):
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    for name, extra in (("small", ""), ("small8", "group_size: 32\nquantization: {encoder: 8da8w, decoder: 8da8w}\n")):
        (tmp_path / f"{name}.yaml").write_text(
            f"format_version: 1\nname: {name}\ndescription: t\nmax_input_len: 24\nmax_output_len: 12\n{extra}"
            "tolerance: {max_abs_logit_diff: 1.0e+9, min_sequence_match: 0.0, max_accuracy_drop: 1.0}\n")
    (tmp_path / "matrix.yaml").write_text(
        "format_version: 1\ncheckpoints: [ck]\nrecipes: [small.yaml, small8.yaml]\ntargets: [executorch-xnnpack]\n"
        "thresholds: {max_slowdown_pct: 400}\nprobe_runs: 2\nverify_limit: 2\n")
    return tmp_path / "matrix.yaml"


@pytest.mark.slow
def test_build_cache_rebuild_and_gates(checkpoint, tmp_path):
    matrix = _setup(tmp_path, checkpoint)
    out, cache = tmp_path / "out", tmp_path / "cache"
    t = time.time()
    code, text = invoke("build", matrix, "-o", out, "--cache-dir", cache, "--json")
    first = time.time() - t
    assert code == 0, text
    s = summary(text)
    assert [c["status"] for c in s["cells"]] == ["ok", "ok"] and not any(c["cache_hit"] for c in s["cells"])
    assert (out / "ck" / "executorch-xnnpack" / "small" / "manifest.json").is_file()
    assert (out / "build.md").read_text().count("| ck |") == 2
    shutil.copy(out / "build.json", tmp_path / "base.json")

    t = time.time()
    code, text = invoke("build", matrix, "-o", out, "--cache-dir", cache, "--json")
    assert code == 0 and all(c["cache_hit"] for c in summary(text)["cells"])
    assert time.time() - t <= 0.1 * first + 1.0  # a hash check, not a rebuild

    # Editing one recipe rebuilds only its cells.
    p = tmp_path / "small8.yaml"
    p.write_text(p.read_text().replace("description: t", "description: edited"))
    cells = summary(invoke("build", matrix, "-o", out, "--cache-dir", cache, "--json")[1])["cells"]
    assert {c["recipe"]: c["cache_hit"] for c in cells} == {"small": True, "small8": False}

    # A corrupted cache entry is detected (hash check) and rebuilt.
    key = next(c["key"] for c in cells if c["recipe"] == "small")
    entry = next(d for d in cache.iterdir() if d.name.startswith(key) and d.is_dir())
    pte = entry / "artifact" / "model.pte"
    pte.write_bytes(pte.read_bytes()[:-10] + b"0123456789")
    cells = summary(invoke("build", matrix, "-o", out, "--cache-dir", cache, "--json")[1])["cells"]
    assert {c["recipe"]: c["cache_hit"] for c in cells} == {"small": False, "small8": True}

    # A tighter latency threshold against the baseline fails the build and names the cell.
    code, text = invoke("build", matrix, "-o", out, "--cache-dir", cache, "--baseline", tmp_path / "base.json",
                        "--max-slowdown-pct", "-99")
    assert code == 1 and "ck executorch-xnnpack/small" in text


@pytest.mark.slow
def test_failing_cell_does_not_stop_others(checkpoint, tmp_path):
    matrix = _setup(tmp_path, checkpoint)
    (tmp_path / "bad.yaml").write_text("format_version: 1\nname: bad\ndescription: t\nmax_input_len: 24\n"
                                       "max_output_len: 12\nquantization: {decoder: static-int8}\n")
    matrix.write_text(matrix.read_text().replace("[small.yaml, small8.yaml]", "[bad.yaml, small.yaml]"))
    code, text = invoke("build", matrix, "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert code == 1
    s = json.loads((tmp_path / "out" / "build.json").read_text())
    bad, good = s["cells"]
    assert bad["status"] == "failed" and "not supported" in bad["error"] and good["status"] == "ok"


def test_bad_matrix(tmp_path):
    (tmp_path / "m.yaml").write_text("checkpoints: [nope]\nrecipes: [fp32]\ntargets: [executorch-xnnpack]\nfoo: 1\n")
    code, text = invoke("build", tmp_path / "m.yaml", "-o", tmp_path / "o")
    assert code == 2 and "unknown matrix key 'foo'" in text
    (tmp_path / "m.yaml").write_text("checkpoints: [nope]\nrecipes: [fp32]\ntargets: [executorch-xnnpack]\n")
    code, text = invoke("build", tmp_path / "m.yaml", "-o", tmp_path / "o")
    assert code == 2 and "checkpoint not found" in text


def test_cell_that_cannot_execute_here_is_structure_checked(checkpoint, tmp_path):
    """Core ML cannot run on Linux: the cell exports for real, verifies structure, has no latency."""
    import sys

    matrix = _setup(tmp_path, checkpoint)
    matrix.write_text(matrix.read_text().replace("[small.yaml, small8.yaml]", "[small.yaml]")
                      .replace("[executorch-xnnpack]", "[coreml-cpu]"))
    code, text = invoke("build", matrix, "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--json")
    (cell,) = summary(text)["cells"]
    if sys.platform == "darwin":
        assert cell["decode_ms_per_token"]
    else:
        assert code == 0 and cell["status"] == "ok" and cell["verdict"] == "pass", cell
        assert "structure only" in cell["note"] and cell["decode_ms_per_token"] is None


@pytest.mark.slow
def test_other_tool_version_rebuilds_only_that_backends_cell(checkpoint, tmp_path, monkeypatch):
    """A cell's cache key holds its backend's tool versions (`Backend.versions()`): a cell built with
    another version of its converter (here onnx's) is rebuilt, the other cells are still served from
    the cache. Ethos-U's versions name Vela, so a new Vela rebuilds its cells the same way (an Ethos-U
    cell is not built here: its export takes ~6 minutes on 2 cores; test_ethos builds them)."""
    from toolchain import backends

    assert backends.get("executorch-ethos-u").versions()["ethos-u-vela"] != "missing"
    matrix = _setup(tmp_path, checkpoint)
    matrix.write_text(matrix.read_text()
                      .replace("[small.yaml, small8.yaml]", "[small.yaml]")
                      .replace("[executorch-xnnpack]", "[executorch-xnnpack, onnx-cpu]"))
    out, cache = tmp_path / "out", tmp_path / "cache"

    def cells() -> dict[str, dict]:
        code, text = invoke("build", matrix, "-o", out, "--cache-dir", cache, "--json")
        assert code == 0, text
        return {c["target"]: c for c in summary(text)["cells"]}

    first = cells()
    assert set(first) == {"executorch-xnnpack", "onnx-cpu"}
    assert not any(c["cache_hit"] for c in first.values()) and all(c["status"] == "ok" for c in first.values())

    onnx = backends.get("onnx")
    installed = onnx.versions()
    monkeypatch.setattr(onnx, "versions", lambda: {**installed, "onnxruntime": installed["onnxruntime"] + ".post1"})
    second = cells()
    assert {t: c["cache_hit"] for t, c in second.items()} == {"executorch-xnnpack": True, "onnx-cpu": False}
    assert second["onnx-cpu"]["key"] != first["onnx-cpu"]["key"]
    assert second["executorch-xnnpack"]["key"] == first["executorch-xnnpack"]["key"]
    art = out / "ck" / "onnx-cpu" / "small" / "manifest.json"
    assert json.loads(art.read_text())["tool_versions"]["onnxruntime"] == installed["onnxruntime"] + ".post1"
