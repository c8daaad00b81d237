"""`edgeseq run` loads only the runtime, and the runtimes' native log lines stay off the terminal.

No timing asserts (a shared machine makes them flaky): what made `run` slow was importing
the exporter (`executorch.exir` pulls torch._dynamo, torch._inductor, torchao: 5+ s of a
6 s run of the demo), so the tests assert what is imported, which is deterministic.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from toolchain import logs

from helpers import ROOT

DATE = "the 3rd of March, 2021"
# Modules of the exporter side, none of which `run`, `verify`'s runtime side or the probe need.
HEAVY = ("executorch.exir", "executorch.extension.pybindings.portable_lib", "executorch.backends", "transformers",
         "torch._dynamo", "torch._inductor", "torchao", "sympy", "networkx")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env)


def _native_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "cpuinfo" in line or ".cpp:" in line]


def test_run_path_imports_no_exporter(demo_artifact):
    """generate_text (run) and the probe runner, on an ExecuTorch artifact, import the runtime only."""
    code = (f"import sys\n"
            f"from toolchain.runner import generate_text\n"
            f"from toolchain.probe.runner import probe\n"
            f"text, _ = generate_text({str(demo_artifact)!r}, {DATE!r})\n"
            f"rep = probe({str(demo_artifact)!r}, runs=1, warmup=0, input_len=None, output_len=2, threads=None)\n"
            f"print(text, rep['kind'])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = _python("-c", code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "2021-03-03 measured", out.stdout
    assert lines[1] == "[]", f"the runtime path imported {lines[1]}"


def test_run_keeps_native_log_lines_off_stderr(demo_artifact):
    """ExecuTorch's C++ runtime logs cpuinfo lines on fd 2 at load: shown with --verbose only."""
    loud = _python("-m", "toolchain.cli", "--verbose", "run", str(demo_artifact), DATE)
    assert loud.returncode == 0, loud.stderr
    if not _native_lines(loud.stderr):
        pytest.skip("this machine's ExecuTorch runtime logs nothing at load: nothing to keep off stderr")
    quiet = _python("-m", "toolchain.cli", "run", str(demo_artifact), DATE)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == loud.stdout == "2021-03-03\n"
    assert _native_lines(quiet.stderr) == [], quiet.stderr
    assert quiet.stderr == "", quiet.stderr


def _native_write(text: bytes) -> None:
    """What a C++ runtime does: write(2, ...) on the descriptor, bypassing Python's sys.stderr."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.write(2, text, len(text)) == len(text)


@pytest.fixture
def verbose_off():
    was = logs.is_verbose()
    logs.set_verbose(False)
    yield
    logs.set_verbose(was)


def test_native_logs_captures_native_writes(capfd, verbose_off):
    print("before", file=sys.stderr)
    with logs.native_logs():
        _native_write(b"[cpuinfo_utils.cpp:87] Failed to open midr file\n")
        with logs.native_logs():  # re-entrant: a wrapped load may call another
            _native_write(b"[inner.cpp:1] nested\n")
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "before\nafter\n"


def test_native_logs_verbose_lets_lines_through(capfd, verbose_off):
    logs.set_verbose(True)
    with logs.native_logs():
        _native_write(b"[cpuinfo_utils.cpp:87] Failed to open midr file\n")
    assert capfd.readouterr().err == "[cpuinfo_utils.cpp:87] Failed to open midr file\n"


def test_native_logs_replays_lines_when_the_call_fails(capfd, verbose_off):
    """A failing load keeps the runtime's own explanation (e.g. `Missing operator: ...`)."""
    with pytest.raises(RuntimeError, match="Failed to load method"):
        with logs.native_logs():
            _native_write(b"[method.cpp:822] Missing operator: quantized_decomposed::embedding_byte.out\n")
            raise RuntimeError("Failed to load method encode, error: 0x14")
    assert capfd.readouterr().err == "[method.cpp:822] Missing operator: quantized_decomposed::embedding_byte.out\n"
    _native_write(b"restored\n")  # descriptor 2 is the terminal again
    assert capfd.readouterr().err == "restored\n"
