"""Bad input: one-line error, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain.cli import main

from conftest import DEMO


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_one_line_error(code, out, needle):
    assert code == 2, out
    lines = [l for l in out.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    assert needle in lines[0], out


def _copy(ck: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ck"
    shutil.copytree(ck, dst)
    return dst


def test_missing_dir(tmp_path):
    assert_one_line_error(*invoke("inspect", tmp_path / "nope"), "checkpoint not found")


def test_missing_config(tmp_path):
    assert_one_line_error(*invoke("inspect", tmp_path), "no config.json")


def test_bad_config_json(checkpoints, tmp_path):
    ck = _copy(checkpoints["v1.0"], tmp_path)
    (ck / "config.json").write_text("{not json")
    assert_one_line_error(*invoke("inspect", ck), "invalid JSON")


def test_unknown_architecture(checkpoints, tmp_path):
    ck = _copy(checkpoints["v1.0"], tmp_path)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ck / "config.json").write_text(json.dumps(cfg))
    code, out = invoke("export", ck, "-t", "executorch-xnnpack", "-o", tmp_path / "a")
    assert_one_line_error(code, out, "unsupported architecture 'llama'")
    assert "t5" in out
    assert not (tmp_path / "a").exists()


def test_corrupt_safetensors(checkpoints, tmp_path):
    ck = _copy(checkpoints["v1.0"], tmp_path)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, out = invoke("export", ck, "-t", "executorch-xnnpack", "-o", tmp_path / "a")
    assert_one_line_error(code, out, "corrupt or truncated safetensors")
    assert not (tmp_path / "a").exists()


def test_pickle_refused_unless_allowed(checkpoints, tmp_path):
    import torch
    from safetensors.torch import load_file

    ck = _copy(checkpoints["v1.0"], tmp_path)
    torch.save(load_file(ck / "model.safetensors"), ck / "pytorch_model.bin")
    (ck / "model.safetensors").unlink()
    assert_one_line_error(*invoke("inspect", ck), "pickle weights")
    code, out = invoke("inspect", ck, "--allow-pickle")
    assert code == 0, out


def test_unknown_target_and_recipe(tmp_path):
    assert_one_line_error(*invoke("export", DEMO, "-t", "nope", "-o", tmp_path / "a"), "unknown target 'nope'")
    assert_one_line_error(*invoke("export", DEMO, "-t", "executorch-xnnpack", "-r", "nope", "-o", tmp_path / "a"),
                          "unknown recipe 'nope'")


@pytest.mark.parametrize("text,needle", [
    ("name: [unclosed", "invalid YAML"),
    ("format_version: 1\nname: x\ndescription: d\nmax_input_len: 8\nmax_output_len: 8\nbogus: 1\n", "'bogus'"),
    ("format_version: 1\nname: x\ndescription: d\nmax_input_len: eight\nmax_output_len: 8\n", "'max_input_len'"),
    ("format_version: 1\nname: x\ndescription: d\nmax_output_len: 8\n", "'max_input_len'"),
    ("format_version: 7\nname: x\ndescription: d\nmax_input_len: 8\nmax_output_len: 8\n", "newer than this tool"),
    ("- a list\n", "must be a YAML mapping"),
])
def test_bad_recipe_yaml(tmp_path, text, needle):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    assert_one_line_error(*invoke("export", DEMO, "-t", "executorch-xnnpack", "-r", p, "-o", tmp_path / "a"), needle)


def test_over_long_input(artifacts):
    art = artifacts["v1.0"]
    code, out = invoke("run", art, "x" * 40)  # the test recipe allows 24 tokens
    assert_one_line_error(code, out, "allows 24 (max_input_len)")
    code, out = invoke("run", art, "x" * 40, "--truncate")
    assert code == 0, out


def test_empty_input_and_too_many_tokens(artifacts):
    assert_one_line_error(*invoke("run", artifacts["v1.0"], "   "), "empty input")
    assert_one_line_error(*invoke("run", artifacts["v1.0"], "abc", "--max-new-tokens", "99"), "exceeds the artifact's cache")


def test_existing_output_needs_force(artifacts, checkpoints):
    code, out = invoke("export", checkpoints["v1.0"], "-t", "executorch-xnnpack", "-o", artifacts["v1.0"])
    assert_one_line_error(code, out, "already exists")


def test_shipped_specs_load():
    from toolchain.specs import RECIPE_DIR, TARGET_DIR, available, load_recipe, load_target

    assert available(RECIPE_DIR) and available(TARGET_DIR)
    for n in available(RECIPE_DIR):
        assert load_recipe(n).name == n
    for n in available(TARGET_DIR):
        assert load_target(n).name == n
    code, out = invoke("recipes")
    assert code == 0 and "fp32" in out
    code, out = invoke("targets")
    assert code == 0 and "executorch-xnnpack" in out


def test_killed_export_leaves_no_artifact_and_next_export_works(checkpoints, small_recipe, tmp_path):
    """SIGKILL an export mid-way: no OUTPUT appears; the next export cleans the stale staging dir."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "a"
    cmd = [sys.executable, "-m", "toolchain.cli", "export", str(checkpoints["v1.0"]), "-t", "executorch-xnnpack",
           "-r", str(small_recipe), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".a.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # inside lowering, with files being written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert list(tmp_path.glob(".a.tmp-*")), "expected the killed export's staging dir to be left behind"
    code, text = invoke("export", checkpoints["v1.0"], "-t", "executorch-xnnpack", "-r", small_recipe, "-o", out)
    assert code == 0, text
    assert (out / "manifest.json").is_file() and not list(tmp_path.glob(".a.tmp-*"))
