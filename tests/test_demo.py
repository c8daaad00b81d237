"""The bundled demo checkpoint through the real CLI: export, verify, run, inspect, probe, tamper."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from toolchain.artifact import open_artifact
from toolchain.errors import InputError

from helpers import DEMO

pytestmark = pytest.mark.slow  # exports the demo and probes it


def edgeseq(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeseq {args} -> {proc.returncode}\n{proc.stderr[-2000:]}")
    return proc


def test_demo_checkpoint_is_trained_and_small():
    info = json.loads((DEMO / "training.json").read_text())
    assert info["held_out_exact_match"] >= 0.95
    assert (DEMO / "model.safetensors").stat().st_size < 8_000_000
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()]
    assert len(rows) >= 200 and all({"input", "target"} <= set(r) for r in rows)


def test_verify_demo_matches_eager(demo_artifact):
    proc = edgeseq("verify", demo_artifact, "--json")
    report = json.loads(proc.stdout)
    assert report["sequence_match"] == 1.0
    assert report["task_accuracy"] == report["reference_accuracy"]
    assert report["reference_accuracy"] >= 0.95
    assert report["max_abs_logit_diff"] < 1e-3
    assert report["examples"] == len((DEMO / "eval.jsonl").read_text().splitlines())
    assert open_artifact(demo_artifact).manifest["verify"]["sequence_match"] == 1.0


@pytest.mark.parametrize("text,iso", [("the 3rd of March, 2021", "2021-03-03"), ("03/04/21", "2021-03-04"),
                                      ("Wed 3 Mar '21", "2021-03-03")])
def test_run_prints_iso_date(demo_artifact, text, iso):
    assert edgeseq("run", demo_artifact, text).stdout == iso + "\n"


def test_demo_manifest_size_and_delegation(demo_artifact):
    m = open_artifact(demo_artifact).manifest
    assert m["sizes"]["model_bytes"] <= 1.15 * m["checkpoint"]["params"] * 4
    for prog in ("encode", "decode"):
        assert m["delegation"][prog]["delegated_fraction"] >= 0.9
    assert m["checkpoint"]["path"] == str(DEMO.resolve())


def test_inspect_and_probe(demo_artifact):
    out = edgeseq("inspect", demo_artifact).stdout
    assert "XnnpackBackend" in out and "model.pte" in out
    ck = json.loads(edgeseq("inspect", DEMO, "--json").stdout)
    assert ck["family"] == "t5" and ck["params"] == json.loads((DEMO / "training.json").read_text())["params"]
    r = json.loads(edgeseq("probe", demo_artifact, "--runs", "2", "--warmup", "1", "--output-len", "8",
                           "--json").stdout)
    assert r["output_len"] == 8 and r["runs"] == 2
    for key in ("load_ms", "ttft_ms", "decode_ms_per_token", "tokens_per_s", "peak_rss_mb", "artifact_bytes"):
        assert r[key], key
    assert r["ttft_ms"]["p50"] > 0 and r["decode_ms_per_token"]["p50"] > 0


def test_tampered_artifact_is_refused(demo_artifact, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_artifact, bad)
    data = bytearray((bad / "weights.ptd").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "weights.ptd").write_bytes(bytes(data))
    for cmd in (("run", bad, "03/04/21"), ("verify", bad), ("probe", bad)):
        proc = edgeseq(*cmd, check=False)
        assert proc.returncode == 2, cmd
        assert "sha256 does not match" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(InputError):
        open_artifact(bad)


def test_newer_format_version_is_refused(demo_artifact, tmp_path):
    bad = tmp_path / "future"
    shutil.copytree(demo_artifact, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    proc = edgeseq("run", bad, "03/04/21", check=False)
    assert proc.returncode == 2 and "newer than this tool" in proc.stderr
