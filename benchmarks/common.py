"""Shared by the benchmarks (targets.py, compare.py, worker.py): checkpoints, cached
edgeseq exports, fixed inputs, runners with one `once()` each, and the statistics.

A runner's `once()` runs one generation of a forced length and returns
(ttft_seconds, [seconds of each later decode step]); TTFT = everything up to and
including the first generated token (encode + first decode step for an
encoder-decoder, the prefill for a decoder-only model).
"""

from __future__ import annotations

import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH_RECIPES = Path(__file__).resolve().parent / "recipes"
# t5-small's shape (random weights: latency does not depend on the values).
T5_SMALL = dict(vocab_size=32128, d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6,
                num_decoder_layers=6, feed_forward_proj="relu")


def t5_small_random(path: Path) -> Path:
    """A t5-small-sized T5 with random weights, written once with save_pretrained."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from toolchain.demo.train import build_tokenizer

    torch.manual_seed(0)
    cfg = T5Config(**T5_SMALL, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).eval().save_pretrained(path, safe_serialization=True)
    # Latency only: runners feed token ids directly; the tokenizer is a placeholder.
    PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    return path


def recipe_ref(recipe: str) -> str:
    """A recipe name from recipes/, or one of the benchmark-only recipes in benchmarks/recipes/."""
    p = BENCH_RECIPES / f"{recipe}.yaml"
    return str(p) if p.is_file() else recipe


def artifact_dir(work: Path, model: str, target: str, recipe: str) -> Path:
    """Where an export is cached (the layout targets.py has always used)."""
    return work / model / (recipe if target == "executorch-xnnpack" else f"{target}-{recipe}")


def rejects(recipe: str, target: str) -> str | None:
    """Why the target rejects the recipe (one line), or None if it takes it."""
    from toolchain import backends
    from toolchain.errors import InputError
    from toolchain.specs import load_recipe, load_target

    r, t = load_recipe(recipe_ref(recipe)), load_target(target)
    try:
        backends.for_target(t).check(r, t)
    except InputError as e:
        return str(e)
    return None


def fresh_export(out: Path, recipe: dict | None = None) -> dict | None:
    """The manifest of a cached export made by this toolchain source (and, given `recipe`, the
    dict of the recipe it should have been made with: from this recipe), else None (missing, or
    stale: the exporters or the recipe changed since, so its numbers would not be this code's)."""
    from toolchain import source_digest
    from toolchain.artifact import open_artifact

    if not (out / "manifest.json").is_file():
        return None
    manifest = open_artifact(out).manifest
    if manifest["tool_versions"].get("edgeseq_source") != source_digest():
        return None
    return manifest if recipe is None or manifest["recipe"] == recipe else None


def wanted_recipe(recipe: str, max_output_len: int | None = None):  # -> toolchain.specs.Recipe
    """The recipe an export of `recipe` (a name or a benchmarks/recipes file) is made with."""
    from toolchain.specs import load_recipe, with_lengths

    return with_lengths(load_recipe(recipe_ref(recipe)), max_output_len=max_output_len)


def build(ckpt: Path, recipe: str, target: str, out: Path, max_output_len: int | None = None) -> float | None:
    """Export (or reuse) one artifact; returns its export seconds, None if the target rejects the recipe.
    `max_output_len` overrides the recipe's (export's --max-output-len; keep it in `out`'s name)."""
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_target

    want = wanted_recipe(recipe, max_output_len)
    manifest = fresh_export(out, want.to_dict())
    if manifest:
        return manifest["export_seconds"]
    if out.exists():
        shutil.rmtree(out)  # exported by other toolchain code or from another recipe: stale, export again
    if rejects(recipe, target):
        return None
    art = export(load_checkpoint(ckpt), want, load_target(target), out)
    return art.manifest["export_seconds"]


def input_ids(vocab: int, length: int, eos: int) -> list[int]:
    """The fixed input every row gets: seeded random ids, ending in EOS."""
    rng = np.random.default_rng(0)
    return [int(x) for x in rng.integers(3, vocab, size=length - 1)] + [eos]


class ArtifactRunner:
    """An edgeseq artifact through its runtime Session (the code path of run/verify/probe).
    `input_len`/`output_len` default to the recipe's; the input is padded to max_input_len."""

    def __init__(self, path: Path, threads: int = 2, input_len: int | None = None, output_len: int | None = None):
        from toolchain import backends
        from toolchain.artifact import open_artifact

        self.art = open_artifact(path)
        self.spec, self.recipe = self.art.manifest["tokens"], self.art.recipe
        self.session = backends.for_target(self.art.target).open_session(self.art, threads=threads)
        self.T = output_len or self.recipe.max_output_len
        self.ids = input_ids(self.spec["vocab_size"], input_len or self.recipe.max_input_len,
                             self.spec["eos_token_id"])
        self.mb = self.art.model_bytes / 1e6

    def once(self) -> tuple[float, list[float]]:
        from toolchain.generate import greedy

        r, spec = self.recipe, self.spec
        g = greedy(self.session, self.ids, max_input_len=r.max_input_len, max_output_len=r.max_output_len,
                   start_id=spec["decoder_start_token_id"], eos_id=spec["eos_token_id"],
                   pad_id=spec["pad_token_id"], max_new_tokens=self.T, force_length=True)
        return g.encode_s + g.step_s[0], g.step_s[1:]


def stamping_processor():
    """A transformers LogitsProcessor that records the time of every generation step
    (works with transformers 4.x and 5.x, and with optimum's ORT models)."""
    from transformers import LogitsProcessor

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    return Stamp(), stamps


def generate_once(model, ids, new_tokens: int, processor, stamps: list[float]) -> tuple[float, list[float]]:
    """One greedy `generate` of exactly `new_tokens` tokens; TTFT = call start to the first step's logits."""
    import torch
    from transformers import LogitsProcessorList

    stamps.clear()
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                       logits_processor=LogitsProcessorList([processor]))
    s = [t0, *stamps]
    return s[1] - s[0], [b - a for a, b in zip(s[1:], s[2:], strict=False)]


class EagerRunner:
    """transformers `generate` (greedy, forced length), optionally with torch.ao dynamic int8
    linears: what a user runs before exporting anything. Step times come from a logits
    processor stamping each step; TTFT = encoder + first decoder step."""

    def __init__(self, ckpt: Path, int8: bool, input_len: int = 64, output_len: int = 32, threads: int = 2):
        import torch
        from transformers import AutoModelForSeq2SeqLM

        torch.set_num_threads(threads)
        model = AutoModelForSeq2SeqLM.from_pretrained(ckpt, local_files_only=True).eval()
        self.mb = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 1e6
        self.prep_s = 0.0
        if int8:
            t0 = time.time()
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            self.prep_s = time.time() - t0
            self.mb = float("nan")  # in-memory packed weights, no file
        self.model, self.T = model, output_len
        cfg = model.config
        self.ids = torch.tensor([input_ids(cfg.vocab_size, input_len, cfg.eos_token_id)])
        self.processor, self.stamps = stamping_processor()

    def once(self) -> tuple[float, list[float]]:
        return generate_once(self.model, self.ids, self.T, self.processor, self.stamps)


def summarize(ttft: list[float], steps: list[float]) -> dict[str, float]:
    """Seconds in, milliseconds out: medians, p10/p90 spread, tokens/s over the whole generation."""
    t, s = np.asarray(ttft) * 1e3, np.asarray(steps) * 1e3
    n_tok = 1 + len(steps) / max(len(ttft), 1)  # tokens per generation
    gen_ms = np.median(t) + (n_tok - 1) * np.median(s) if len(s) else np.median(t)
    return {"ttft_p50": float(np.median(t)), "ttft_p10": float(np.percentile(t, 10)),
            "ttft_p90": float(np.percentile(t, 90)),
            "tok_p50": float(np.median(s)) if len(s) else float("nan"),
            "tok_p10": float(np.percentile(s, 10)) if len(s) else float("nan"),
            "tok_p90": float(np.percentile(s, 90)) if len(s) else float("nan"),
            "decode_tok_s": float(1e3 / np.median(s)) if len(s) else float("nan"),
            "tok_s": float(n_tok * 1e3 / gen_ms), "runs": len(ttft)}


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
    out = {}
    for key in runners:
        x = summarize(ttft[key], step[key])
        out[key] = {"ttft_p50": x["ttft_p50"], "ttft_p90": x["ttft_p90"], "tok_p50": x["tok_p50"],
                    "tok_p90": x["tok_p90"], "mb": runners[key].mb}
    return out


# The /proc/cpuinfo flags that decide which GEMM kernels the runtimes pick (int8: VNNI or not).
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16")


def isa_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU has ([] where /proc/cpuinfo cannot be read)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def machine() -> str:
    """The CPU as every benchmark header names it: model, core count and ISA flags."""
    import os

    return f"{cpu_model()}, {os.cpu_count()} cores, ISA flags: {', '.join(isa_flags()) or 'none read'}"


def ct2_said(logs: list[Path]) -> str:
    """What CTranslate2 said about the CPU when it loaded (CT2_VERBOSE=1: the ISA it selected,
    whether it uses MKL, its SGEMM and int8 GEMM backends), from the first of `logs` (a row
    process's stderr) that has it; "not reported" when none does."""
    import re

    for f in logs:
        if not f.is_file():
            continue
        said = [re.sub(r"^.*\[info\]\s*-?\s*", "", ln) for ln in f.read_text(errors="replace").splitlines()
                if "[ctranslate2]" in ln and ("ISA" in ln or "backend" in ln or "MKL" in ln)]
        if said:
            return "; ".join(said)
    return "not reported"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def replace_block(path: Path, marks: tuple[str, str], block: str, default_head: str, before: str | None = None) -> None:
    """Put `block` between `marks` in the file at `path` (replacing what they held), else before the
    `before` marker if present, else at the end; a missing file starts as `default_head`."""
    import re

    text = path.read_text() if path.is_file() else default_head
    body = f"{marks[0]}\n{block}\n{marks[1]}"
    if marks[0] in text:
        text = re.sub(re.escape(marks[0]) + ".*?" + re.escape(marks[1]), lambda _: body, text, flags=re.S)
    elif before and before in text:
        text = text.replace(before, body + "\n\n" + before, 1)
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


def publish(path: Path, marks: tuple[str, str], lines: list[str]) -> int:
    """A benchmark's block of RESULTS.md: written between its markers (see replace_block) and
    printed; the exit status."""
    block = "\n".join(lines)
    replace_block(path, marks, block, "# Benchmark results\n")
    print(block)
    return 0
