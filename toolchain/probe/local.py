"""Run the probe runner in a fresh local process and return its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys

from ..errors import InputError


def run_local(artifact: str, runs: int, warmup: int, input_len: int | None, output_len: int | None,
              threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "toolchain.probe.runner", str(artifact), "--runs", str(runs),
           "--warmup", str(warmup)]
    for flag, value in (("--input-len", input_len), ("--output-len", output_len), ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"probe process failed (exit {proc.returncode}): {tail}")
    report = json.loads(lines[-1])
    if "error" in report:
        raise InputError(report["error"])
    return report
