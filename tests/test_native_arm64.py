"""The native runner cross-built for ARM64 Linux (Debian's g++-aarch64-linux-gnu, the
manylinux_2_28_aarch64 executorch wheel) and run under qemu-user: `--device qemu-aarch64` for
run, verify and probe gives the host's tokens; probes say "kind": "emulated" and reports refuse
to gate them against measurements."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from toolchain import native
from toolchain.artifact import open_artifact
from toolchain.cli import main
from toolchain.generate import decoding, greedy
from toolchain.report import REQUIRED

pytestmark = pytest.mark.slow  # cross-builds the native runner, runs it under qemu


@pytest.fixture(scope="session")
def arm64_runner():
    missing = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64", "cmake") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make test-deps` installs Debian's g++-aarch64-linux-gnu "
                    f"and qemu-user when run as root")
    return native.build("aarch64")


def invoke(*args):
    """(exit code, stdout on success / stderr on failure): progress lines on stderr stay apart."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout if res.exit_code == 0 else res.stderr


def test_run_on_emulated_arm64(arm64_runner, demo_artifact):
    assert invoke("run", demo_artifact, "March 3, 2021", "--device", "qemu-aarch64") == (0, "2021-03-03\n")


def test_verify_on_emulated_arm64(arm64_runner, demo_artifact):
    code, out = invoke("verify", demo_artifact, "--device", "qemu-aarch64", "--limit", "4", "--json")
    assert code == 0, out
    rep = json.loads(out)
    assert rep["sequence_match"] == 1.0 and rep["max_abs_logit_diff"] < 1e-3
    assert "qemu-aarch64, emulated" in rep["runtime"]


def test_int8_embeddings_same_tokens_as_host(arm64_runner, int8_embeddings_artifact):
    """embedding_byte (the aarch64 quantized kernels library) and encode_8 on ARM64 = the host."""
    art = open_artifact(int8_embeddings_artifact)
    kw = decoding(art.manifest["tokens"])
    host, arm = native.open_session(art, 2), native.open_session(art, 2, "qemu-aarch64")
    try:
        for ids in ([5, 6, 7, 1], list(range(3, 20)) + [1]):
            a = greedy(host, ids, max_input_len=24, max_output_len=12, **kw)
            b = greedy(arm, ids, max_input_len=24, max_output_len=12, **kw)
            assert b.tokens == a.tokens and arm.encode_length == host.encode_length
    finally:
        host.close()
        arm.close()


def test_probe_is_emulated_and_never_gated_against_a_measurement(arm64_runner, demo_artifact, tmp_path):
    code, out = invoke("probe", demo_artifact, "--device", "qemu-aarch64", "--runs", "1", "--warmup", "0",
                       "--output-len", "4", "--json")
    assert code == 0, out
    emu = json.loads(out)
    for key in REQUIRED:
        assert key in emu, key
    assert emu["kind"] == "emulated" and emu["runner"] == "native" and emu["device"] == "qemu-aarch64"
    assert "qemu-aarch64" in emu["environment"]["cpu"]
    code, out = invoke("probe", demo_artifact, "--runner", "native", "--runs", "1", "--warmup", "0",
                       "--output-len", "4", "--json")
    assert code == 0, out
    (tmp_path / "emu.json").write_text(json.dumps(emu))
    (tmp_path / "host.json").write_text(out)
    code, out = invoke("report", tmp_path / "host.json", tmp_path / "emu.json", "--fail-if-slower", "10")
    assert code == 2 and "emulated" in out and len(out.strip().splitlines()) == 1, out
    code, out = invoke("report", tmp_path / "host.json", tmp_path / "emu.json")
    assert code == 0 and "[EMULATED]" in out


def test_tampered_weights_under_qemu_is_one_line_error(arm64_runner, artifact, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(artifact, art)
    (art / "weights.ptd").write_bytes(b"\0" * 64)
    req = native.base_request(open_artifact(art, check_hashes=False))
    req.update(ids=[5, 1])
    (tmp_path / "r.json").write_text(json.dumps(req))
    proc = subprocess.run([*native.QEMU.launcher, arm64_runner, tmp_path / "r.json"], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "sha256" in lines[0], proc.stderr
