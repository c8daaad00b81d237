"""The native C++ runner vs the Python Session on the same artifact (`make bench` runs it after
compare.py; alone: `python benchmarks/native.py [--recipes mixed int8] [--runs 15]`).

A t5-small-sized T5 (random weights), executorch-xnnpack, 64 input tokens, 32 forced output
tokens, 2 threads. Each probe is `edgeseq probe` in its own fresh process(es): `--runner
python` (the Python probe process runs the Session's greedy loop) and `--runner native`
(edgeseq-runner measures itself, no Python in the loop). The two alternate for `--rounds`
rounds; each runner's best round (lowest decode p50) is reported, as load from other jobs
only ever adds time. Decode roofline = decode weights + K/V bytes per step / measured read
bandwidth (roofline.py). The results replace the native block of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import roofline  # noqa: E402
from common import ROOT, artifact_dir, build, machine, publish, t5_small_random  # noqa: E402

MARKS = ("<!-- native:begin -->", "<!-- native:end -->")
TARGET = "executorch-xnnpack"


def probe(art: Path, runner: str, runs: int, warmup: int) -> dict:
    argv = [sys.executable, "-m", "toolchain.cli", "probe", str(art), "--runner", runner, "--runs", str(runs),
            "--warmup", str(warmup), "--input-len", "64", "--output-len", "32", "--threads", "2", "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"probe --runner {runner} failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout)


def best(reports: list[dict]) -> dict:
    return min(reports, key=lambda r: r["decode_ms_per_token"]["p50"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["mixed", "int8"], help="executorch-xnnpack recipes to compare")
    ap.add_argument("--runs", type=int, default=15, help="measured generations per probe")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured generations per probe")
    ap.add_argument("--rounds", type=int, default=2, help="alternating python/native probe rounds")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "native", help="export cache")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="file to update")
    a = ap.parse_args()

    from toolchain import native

    native.build("host")
    t0 = time.time()
    ckpt = t5_small_random(a.work / "t5-small-random")
    config = roofline.read_config(ckpt)
    # Read bandwidth, sampled at the start and after each recipe; the best sample bounds the roofline
    # (other jobs on the machine only ever lower a sample).
    bws = [roofline.measure_bandwidth()["read_gbs"]]
    load0 = os.getloadavg()[0]
    rows = []
    for recipe in a.recipes:
        art = artifact_dir(a.work, "t5-small", TARGET, recipe)
        print(f"native bench: export {recipe} ...", file=sys.stderr, flush=True)
        build(ckpt, recipe, TARGET, art)
        got: dict[str, list[dict]] = {"python": [], "native": []}
        for _ in range(a.rounds):
            for runner in ("python", "native"):
                got[runner].append(probe(art, runner, a.runs, a.warmup))
        py, nat = best(got["python"]), best(got["native"])
        bws.append(roofline.measure_bandwidth()["read_gbs"])
        rows.append((recipe, py, nat, roofline.t5_decode_bytes(config, roofline.precision_of(recipe), 64, 32)))
        print(f"native bench: {recipe}: decode p50 python {py['decode_ms_per_token']['p50']} ms, native "
              f"{nat['decode_ms_per_token']['p50']} ms", file=sys.stderr, flush=True)
    bw = max(bws)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["## Native C++ runner vs Python Session (`benchmarks/native.py`)", "",
             f"{date}; {machine()}; t5-small-sized T5 (random weights), "
             f"executorch-xnnpack, 64 input / 32 forced output tokens, 2 threads; `--runs {a.runs} --warmup "
             f"{a.warmup}`, {a.rounds} alternating rounds per runner, best round shown; read bandwidth "
             f"{bw:.1f} GB/s (best of {len(bws)} samples, {min(bws):.1f}-{bw:.1f}); load average (1 min) at "
             f"start / end: {load0:.1f} / {os.getloadavg()[0]:.1f}; "
             f"wall time {(time.time() - t0) / 60:.0f} min.", "",
             "Python = `edgeseq probe --runner python` (the Session's greedy loop in the Python probe process); "
             "native = `--runner native` (edgeseq-runner: the same program and rules, argmax in place, timing "
             "itself). Peak RSS is each measuring process's own.", "",
             "| recipe | runner | load ms | TTFT ms p50 (p90) | decode ms/token p50 (p90) | tokens/s | peak RSS MB "
             "| artifact MB | decode / roofline | native / python |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for recipe, py, nat, step_bytes in rows:
        roof = step_bytes / (bw * 1e9) * 1000
        for r in (py, nat):
            d, t = r["decode_ms_per_token"], r["ttft_ms"]
            ratio = "" if r is py else (f"decode {d['p50'] / py['decode_ms_per_token']['p50']:.2f}x, "
                                        f"TTFT {t['p50'] / py['ttft_ms']['p50']:.2f}x")
            lines.append(f"| {recipe} | {r['runner']} | {r['load_ms']:.1f} | {t['p50']:.2f} ({t['p90']:.2f}) | "
                         f"{d['p50']:.3f} ({d['p90']:.3f}) | {r['tokens_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['artifact_bytes'] / 1e6:.1f} | {d['p50'] / roof:.2f}x ({roof:.2f} ms) | {ratio} |")
        dr = nat["decode_ms_per_token"]["p50"] / py["decode_ms_per_token"]["p50"]
        tr = nat["ttft_ms"]["p50"] / py["ttft_ms"]["p50"]
        mem = nat["peak_rss_mb"] - nat["artifact_bytes"] / 2**20
        verdicts.append(f"- {recipe}: native decode p50 = {dr:.2f}x Python's (target <= 0.85x: "
                        f"{'met' if dr <= 0.85 else 'NOT met'}); TTFT {tr:.2f}x (target <= 1x: "
                        f"{'met' if tr <= 1.0 else 'NOT met'}); native peak RSS = artifact + {mem:.0f} MB "
                        f"(target <= +64 MB: {'met' if mem <= 64 else 'NOT met'})")
    lines += ["", *verdicts]
    return publish(a.results, MARKS, lines)


if __name__ == "__main__":
    sys.exit(main())
