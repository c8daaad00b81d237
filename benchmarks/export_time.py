"""Where an export's time goes: wall and CPU seconds per export stage, in one process.

    python benchmarks/export_time.py [--recipe int8] [--target executorch-xnnpack] [--profile out.prof]

Exports the t5-small-sized random checkpoint (benchmarks/common.py:t5_small_random, written
once under build/) and prints one row per progress stage: wall seconds and this process's
CPU seconds (user+sys, all threads). The machines here are 2 shared vCPUs: wall moves with
the other jobs' load, CPU seconds much less, so compare runs by CPU and quote wall with the
load average beside it. The CPU model and the 1-minute load before/after go in the output.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_model, machine, t5_small_random  # noqa: E402


def _cpu() -> float:
    """User+sys seconds of this process, all threads (torch's and the progress heartbeat's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="int8", help="recipe name or YAML")
    ap.add_argument("--target", default="executorch-xnnpack", help="target name")
    ap.add_argument("--out", default=str(ROOT / "build" / "export-time"), help="artifact directory (replaced)")
    ap.add_argument("--profile", default=None, help="also write a cProfile of the export here (slows it ~2x)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()

    ckpt = t5_small_random(ROOT / "build" / "t5-small-random")
    import edgeseq  # noqa: F401  (the import cost is not the export's)
    from toolchain import progress

    rows: list[tuple[str, float, float]] = []
    inner = progress.stage

    @contextmanager
    def timed(what: str) -> Iterator[None]:
        w, c = time.monotonic(), _cpu()
        with inner(what):
            yield
        rows.append((what, time.monotonic() - w, _cpu() - c))

    progress.stage = timed  # type: ignore[assignment]
    progress.configure(stream=io.StringIO())
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    load0 = os.getloadavg()[0]
    w0, c0 = time.monotonic(), _cpu()
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.runcall(edgeseq.export, str(ckpt), target=args.target, recipe=args.recipe, output=str(out))
        prof.dump_stats(args.profile)
    else:
        edgeseq.export(str(ckpt), target=args.target, recipe=args.recipe, output=str(out))
    total = (time.monotonic() - w0, _cpu() - c0)
    load1 = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "load1": [load0, load1], "total": total,
                          "stages": [{"stage": s, "wall": w, "cpu": c} for s, w, c in rows]}))
        return
    print(f"{machine()}; load average (1 min) {load0:.2f} before, {load1:.2f} after")
    print(f"{'stage':70s} {'wall s':>7s} {'cpu s':>7s}")
    for what, w, c in sorted(rows, key=lambda r: r[0].startswith("  ")):  # outer stages first
        print(f"{what.strip()[:70]:70s} {w:7.1f} {c:7.1f}")
    print(f"{'export total (in process, after imports)':70s} {total[0]:7.1f} {total[1]:7.1f}")


if __name__ == "__main__":
    main()
