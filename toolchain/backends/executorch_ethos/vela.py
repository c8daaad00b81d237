"""Vela, Arm's Ethos-U compiler, as edgeseq reads it: its per-subgraph performance report at
export, and probe's figures from that report (kind: estimate, never a measurement)."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import PTE

if TYPE_CHECKING:
    from ...artifact import Artifact


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Vela prints its reports on fd 1; keep the CLI's stdout for our own output (JSON)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def report(tosa_files: list[Path], spec: Any, workdir: Path) -> dict[str, Any]:
    """Ask Vela (same flags as the lowering) for its performance report of each subgraph, in order."""
    subgraphs = []
    flags = [f for f in spec.compiler_flags if not f.startswith("--output-dir")]
    for i, tosa in enumerate(tosa_files):  # in delegate call order (subgraphs.keep)
        out = workdir / f"vela-{i}"
        proc = subprocess.run([sys.executable, "-m", "ethosu.vela", *flags, "--verbose-performance",
                               f"--output-dir={out}", str(tosa)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"Vela failed on {tosa.name}: {last[0]}")
        with next(out.glob("*_summary_*.csv")).open() as f:
            s = next(csv.DictReader(f))
        with next(out.glob("*_per-layer.csv")).open() as f:
            placement = Counter(row["Target"] for row in csv.DictReader(f))
        subgraphs.append({
            "npu_ops": placement.get("NPU", 0), "cpu_ops": sum(v for k, v in placement.items() if k != "NPU"),
            "cycles": int(float(s["cycles_total"])), "estimated_ms": round(float(s["inference_time"]) * 1000, 4),
            "sram_kib": round(float(s["sram_memory_used"]), 2), "dram_kib": round(float(s["dram_memory_used"]), 2),
            "macs": int(float(s["nn_macs"])), "clock_hz": float(s["core_clock"]),
        })
    return {
        "subgraphs": subgraphs,
        "vela_npu_ops": sum(g["npu_ops"] for g in subgraphs),
        "vela_cpu_ops": sum(g["cpu_ops"] for g in subgraphs),
        "cycles": sum(g["cycles"] for g in subgraphs),
        "estimated_ms": round(sum(g["estimated_ms"] for g in subgraphs), 4),
        # Subgraphs run one after the other, so peak use is the largest, not the sum.
        "sram_kib": max((g["sram_kib"] for g in subgraphs), default=0.0),
        "dram_kib": max((g["dram_kib"] for g in subgraphs), default=0.0),
        "macs": sum(g["macs"] for g in subgraphs),
    }


def estimate(artifact: Artifact, output_len: int) -> dict[str, Any]:
    """Probe figures from Vela's estimate (kind: estimate): NPU time only, fixed shapes.

    encode always runs at max_input_len (padded) and decode on the full static cache,
    so neither depends on the input length or the position."""
    npu = artifact.manifest["npu"]
    enc, dec = npu["programs"]["encode"]["estimated_ms"], npu["programs"]["decode"]["estimated_ms"]
    ttft = enc + dec
    return {
        "kind": "estimate", "source": npu["estimate"], "load_ms": None, "peak_rss_mb": None,
        "ttft_ms": {"p50": round(ttft, 4), "p90": round(ttft, 4)},
        "decode_ms_per_token": {"p50": dec, "p90": dec},
        "tokens_per_s": round(output_len * 1000.0 / (enc + output_len * dec), 2),
        "artifact_bytes": artifact.manifest["files"][PTE]["bytes"],
        "npu": {"accelerator": npu["accelerator"], "system_config": npu["system_config"],
                "clock_mhz": npu["clock_mhz"],
                **{f"{name}_{k}": p[k] for name, p in npu["programs"].items()
                   for k in ("npu_op_percent", "estimated_ms", "cycles", "sram_kib", "dram_kib")}},
    }
