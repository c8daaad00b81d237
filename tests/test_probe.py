"""Probes: local fresh-process probe, the same probe over ssh to a real loopback sshd,
reports, plots and the regression gate."""

from __future__ import annotations

import copy
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import venv

import pytest

from toolchain.report import REQUIRED

from helpers import invoke, probe_json

pytestmark = pytest.mark.slow  # probes in fresh processes, over ssh

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with generated host and client keys."""
    if not os.path.exists(SSHD):
        pytest.fail("OpenSSH server (sshd) is not installed: `make test` installs Debian's openssh-server "
                    "when run as root; install it to run the ssh probe tests")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "cache").mkdir()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"SetEnv EDGESEQ_CACHE={d / 'cache'}\n")
    (d / "ssh_config").write_text(
        f"Host *\n  IdentityFile {d / 'client_key'}\n  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory sshd insists on
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"sshd did not start: {proc.stderr.read()[-500:]}")
        time.sleep(0.1)
    yield {"url": f"ssh://{getpass.getuser()}@127.0.0.1:{port}", "config": d / "ssh_config", "cache": d / "cache"}
    proc.terminate()
    proc.wait(timeout=10)


def test_local_probe_fields(demo_artifact):
    r = probe_json(demo_artifact, "--runs", "5", "--warmup", "1", "--output-len", "16")
    for key in REQUIRED + ("ttft_ms", "input_len", "output_len", "environment"):
        assert key in r, key
    assert r["ttft_ms"]["p50"] <= r["ttft_ms"]["p90"]
    assert r["decode_ms_per_token"]["p50"] <= r["decode_ms_per_token"]["p90"]
    assert r["output_len"] == 16 and r["device"] == "local"
    assert r["environment"]["threads"] == 2 and r["environment"]["runtime_versions"]["executorch"]


@pytest.mark.serial  # two probes compared: another test on the cores would be the noise it measures
def test_local_probe_repeatable(demo_artifact):
    """Two probes of the same artifact: per-token p50 within 25% (best of 5 tries: noisy hosts;
    3 tries once failed here while the VM moved between its fast and slow states)."""
    ratios = []
    for _ in range(5):
        a, b = (probe_json(demo_artifact, "--runs", "10", "--warmup", "2")["decode_ms_per_token"]["p50"]
                for _ in range(2))
        ratios.append(max(a, b) / min(a, b))
        if ratios[-1] <= 1.25:
            break
    assert min(ratios) <= 1.25, ratios


def test_ssh_probe_same_fields_and_cached_copy(sshd, demo_artifact):
    args = (demo_artifact, "--device", sshd["url"], "--ssh-config", sshd["config"], "--python", sys.executable,
            "--runs", "3", "--warmup", "1", "--output-len", "8")
    first = probe_json(*args)
    local = probe_json(demo_artifact, "--runs", "3", "--warmup", "1", "--output-len", "8")
    assert set(local) <= set(first)
    assert first["device"] == sshd["url"] and first["copied_artifact"] is True
    assert first["decode_ms_per_token"]["p50"] > 0
    second = probe_json(*args)
    assert second["copied_artifact"] is False  # content-addressed: nothing copied the second time
    assert len(list((sshd["cache"] / "artifacts").iterdir())) == 1


def test_ssh_wrong_host_is_one_line_error(sshd, demo_artifact):
    code, out = invoke("probe", demo_artifact, "--device", f"ssh://nobody@127.0.0.1:{_free_port()}",
                       "--ssh-config", sshd["config"])
    assert code == 2 and len(out.strip().splitlines()) == 1 and "ssh failed" in out, out


def test_ssh_missing_runtime_is_one_line_error(sshd, demo_artifact, tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # a Python without numpy or any runtime
    code, out = invoke("probe", demo_artifact, "--device", sshd["url"], "--ssh-config", sshd["config"],
                       "--python", bare / "bin" / "python", "--runs", "1")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "No module named" in out, out


def test_report_markdown_plot_and_gate(demo_artifact, tmp_path):
    base = probe_json(demo_artifact, "--runs", "3", "--warmup", "1", "--output-len", "8")
    slow = copy.deepcopy(base)
    slow["decode_ms_per_token"] = {k: v * 2 for k, v in base["decode_ms_per_token"].items()}
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(slow))
    code, out = invoke("report", tmp_path / "a.json", tmp_path / "b.json", "-o", tmp_path / "r.md",
                       "--plot", tmp_path / "r.png")
    assert code == 0, out
    md = (tmp_path / "r.md").read_text()
    assert "| decode p50 ms/token |" in md and "(2.00x)" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out = invoke("report", tmp_path / "a.json", tmp_path / "b.json", "--fail-if-slower", "20")
    assert code == 1 and "slower than baseline" in out
    code, _ = invoke("report", tmp_path / "a.json", tmp_path / "b.json", "--fail-if-slower", "150")
    assert code == 0
    (tmp_path / "bad.json").write_text("{}")
    code, out = invoke("report", tmp_path / "bad.json")
    assert code == 2 and "not a probe report" in out
