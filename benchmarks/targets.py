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
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = ["fp32", "int8", "int4", "mixed"]
TARGETS = ["executorch-xnnpack", "litert-cpu", "onnx-cpu"]
MARK_BEGIN, MARK_END = "<!-- targets:begin -->", "<!-- targets:end -->"


def t5_small_random(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from toolchain.demo.train import build_tokenizer

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=32128, d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6,
                   num_decoder_layers=6, feed_forward_proj="relu", decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).eval().save_pretrained(path, safe_serialization=True)
    # Latency only: the probe feeds token ids directly; the tokenizer is a placeholder.
    PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    return path


def build(ckpt: Path, recipe: str, target: str, out: Path) -> float | None:
    """Export (or reuse) one artifact; None if the target rejects the recipe."""
    from toolchain import backends
    from toolchain.artifact import open_artifact
    from toolchain.checkpoint import load_checkpoint
    from toolchain.errors import InputError
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    if (out / "manifest.json").is_file():
        return open_artifact(out).manifest["export_seconds"]
    r, t = load_recipe(recipe), load_target(target)
    try:
        backends.for_target(t).check(r, t)
    except InputError:
        return None
    art = export(load_checkpoint(ckpt), r, t, out)
    return art.manifest["export_seconds"]


def _input_ids(vocab: int, length: int, eos: int) -> list[int]:
    rng = np.random.default_rng(0)
    return [int(x) for x in rng.integers(3, vocab, size=length - 1)] + [eos]


class ArtifactRunner:
    """An edgeseq artifact through its runtime Session (the code path of run/verify/probe)."""

    def __init__(self, path: Path):
        from toolchain import backends
        from toolchain.artifact import open_artifact

        self.art = open_artifact(path)
        self.spec, self.recipe = self.art.manifest["tokens"], self.art.recipe
        self.session = backends.for_target(self.art.target).open(self.art, threads=2)
        self.ids = _input_ids(self.spec["vocab_size"], self.recipe.max_input_len, self.spec["eos_token_id"])
        self.mb = self.art.model_bytes / 1e6

    def once(self) -> tuple[float, list[float]]:
        from toolchain.generate import greedy

        r, spec = self.recipe, self.spec
        g = greedy(self.session, self.ids, max_input_len=r.max_input_len, max_output_len=r.max_output_len,
                   start_id=spec["decoder_start_token_id"], eos_id=spec["eos_token_id"],
                   pad_id=spec["pad_token_id"], force_length=True)
        return g.encode_s + g.step_s[0], g.step_s[1:]


class EagerRunner:
    """transformers `generate` (greedy, forced length), optionally with torch.ao dynamic int8
    linears: what a user runs before exporting anything. Step times come from a logits
    processor stamping each step; TTFT = encoder + first decoder step."""

    def __init__(self, ckpt: Path, int8: bool, input_len: int = 64, output_len: int = 32):
        import torch
        from transformers import AutoModelForSeq2SeqLM, LogitsProcessor

        torch.set_num_threads(2)
        model = AutoModelForSeq2SeqLM.from_pretrained(ckpt, local_files_only=True).eval()
        self.mb = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 1e6
        if int8:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            self.mb = float("nan")  # in-memory packed weights, no file
        self.model, self.torch, self.T = model, torch, output_len
        cfg = model.config
        self.ids = torch.tensor([_input_ids(cfg.vocab_size, input_len, cfg.eos_token_id)])
        stamps = self.stamps = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        self.processors = [Stamp()]

    def once(self) -> tuple[float, list[float]]:
        from transformers import LogitsProcessorList

        self.stamps.clear()
        t0 = time.perf_counter()
        with self.torch.no_grad():
            self.model.generate(input_ids=self.ids, max_new_tokens=self.T, min_new_tokens=self.T, do_sample=False,
                                num_beams=1, logits_processor=LogitsProcessorList(self.processors))
        s = [t0, *self.stamps]
        return s[1] - s[0], [b - a for a, b in zip(s[1:], s[2:])]


def measure(runners: dict[str, object], runs: int, warmup: int) -> dict[str, dict]:
    """Interleaved rounds: one generation of every runner per round, so noise hits all alike."""
    ttft = {k: [] for k in runners}
    step = {k: [] for k in runners}
    for i in range(warmup + runs):
        for key, runner in runners.items():
            first, rest = runner.once()
            if i >= warmup:
                ttft[key].append(first)
                step[key].extend(rest)
    return {key: {"ttft_p50": np.median(ttft[key]) * 1e3, "ttft_p90": np.percentile(ttft[key], 90) * 1e3,
                  "tok_p50": np.median(step[key]) * 1e3, "tok_p90": np.percentile(step[key], 90) * 1e3,
                  "mb": runners[key].mb} for key in runners}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


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
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [MARK_BEGIN, "## edgeseq targets x recipes vs eager transformers (ratios to eager `generate` fp32 of the same model)", "",
             f"{date}; {cpu_model()}, {os.cpu_count()} cores, 2 runtime threads; "
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
                ratio = (lambda k: f"{x[k] / base[k]:.2f}x") if base else (lambda k: "-")
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
