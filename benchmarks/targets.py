"""edgeseq targets x recipes side by side in one process: executorch-xnnpack fp32/int8/int4/mixed,
litert-cpu and onnx-cpu fp32/int8 (cells a target rejects are listed as such).

    .venv/bin/python benchmarks/targets.py [--runs 10] [--models demo,t5-small] [--out benchmarks/RESULTS.md]

Models: the bundled demo checkpoint, and a t5-small-sized T5 with random weights
(d_model 512, d_ff 2048, 8 heads, 6+6 layers, vocab 32128) written once under build/bench/.
Every artifact is opened in this process and measured in interleaved rounds (one
generation of each per round), so machine noise hits all rows alike. Input: the
recipe's max_input_len (64) tokens, output forced to max_output_len (32) tokens.
TTFT = encode + first decode step; per-token = the other steps. Reported as medians
with p90, and as ratios to fp32 of the same model.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ArtifactRunner, EagerRunner, build, machine, measure, t5_small_random  # noqa: E402

RECIPES = ["fp32", "int8", "int4", "mixed"]
TARGETS = ["executorch-xnnpack", "litert-cpu", "onnx-cpu"]
MARK_BEGIN, MARK_END = "<!-- targets:begin -->", "<!-- targets:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="measured rounds (one generation per artifact each)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    ap.add_argument("--models", default="demo,t5-small", help="comma list of: demo, t5-small")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma list of recipes")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of targets")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench", help="artifact/checkpoint cache dir")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="Markdown file to update")
    a = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    models = {"demo": ROOT / "demo" / "date-t5", "t5-small": a.work / "t5-small-random"}
    chosen = [m.strip() for m in a.models.split(",") if m.strip()]
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    paths, export_s, rejected = {}, {}, []
    for m in chosen:
        ckpt = t5_small_random(models[m]) if m == "t5-small" else models[m]
        for tg in targets:
            for r in recipes:
                key = f"{m}/{tg}/{r}"
                out = a.work / m / (r if tg == "executorch-xnnpack" else f"{tg}-{r}")
                t = time.time()
                secs = build(ckpt, r, tg, out)
                if secs is None:
                    rejected.append(f"{tg}/{r}")
                    continue
                export_s[key] = secs
                print(f"built {key} (export {secs:.0f} s, this call {time.time() - t:.0f} s)", file=sys.stderr)
                paths[key] = out
    runners = {}
    for m in chosen:  # baselines first: eager transformers, fp32 and dynamic int8
        ckpt = models[m]
        runners[f"{m}/eager-transformers/fp32"] = EagerRunner(ckpt, int8=False)
        runners[f"{m}/eager-transformers/int8-dynamic"] = EagerRunner(ckpt, int8=True)
        export_s[f"{m}/eager-transformers/fp32"] = export_s[f"{m}/eager-transformers/int8-dynamic"] = 0.0
    runners.update({key: ArtifactRunner(p) for key, p in paths.items()})
    res = measure(runners, a.runs, a.warmup)
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [MARK_BEGIN, "## edgeseq targets x recipes vs eager transformers (ratios to eager `generate` fp32 of the same model)", "",
             f"{date}; {machine()}; 2 runtime threads; "
             f"`benchmarks/targets.py --runs {a.runs}` (all artifacts in one process, interleaved "
             f"rounds); input 64 tokens, output 32 forced; medians (p90).", "",
             "| model | target | recipe | TTFT ms | decode ms/token | model MB | TTFT ratio | decode ratio | size ratio | export s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in chosen:
        base = res.get(f"{m}/eager-transformers/fp32")
        for tg in ["eager-transformers", *targets]:
            for r in (["fp32", "int8-dynamic"] if tg == "eager-transformers" else recipes):
                key = f"{m}/{tg}/{r}"
                if key not in res:
                    continue
                x = res[key]
                ratio = (lambda k, x=x, base=base: f"{x[k] / base[k]:.2f}x") if base else (lambda k: "-")
                lines.append(f"| {m} | {tg} | {r} | {x['ttft_p50']:.2f} ({x['ttft_p90']:.2f}) | {x['tok_p50']:.3f} "
                             f"({x['tok_p90']:.3f}) | {x['mb']:.2f} | {ratio('ttft_p50')} | {ratio('tok_p50')} | "
                             f"{ratio('mb')} | {export_s[key]:.0f} |".replace("nanx", "-").replace("nan", "-"))
    if rejected:
        lines += ["", "Not built (the target rejects the recipe's schemes): " + ", ".join(sorted(set(rejected)))]
    lines.append(MARK_END)
    block = "\n".join(lines)
    print(block)
    text = a.out.read_text() if a.out.is_file() else "# Benchmark results\n\nMeasured, not estimated. Each section says how it was run.\n"
    if MARK_BEGIN in text:
        text = re.sub(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    a.out.write_text(text)


if __name__ == "__main__":
    main()
