"""edgeseq's artifacts against every other way to run the same model, in one run, and the
"Return of the Encoder" enc-dec vs decoder-only claim (`make bench`, `make bench-quick`).

    .venv/bin/python benchmarks/compare.py [--quick] [--runs 10] [--warmup 2] [--sections ...]

Rows (per model section), all greedy with a forced output length, 2 threads each:
  1. eager transformers `generate`, fp32 (the baseline of every ratio)
  2. eager transformers with torch.ao dynamic int8 linears
  3. ONNX Runtime through optimum-onnx's export, fp32 and dynamic int8 (own venv)
  4. optimum-executorch's own XNNPACK export of the same checkpoint (own venv)
  4b. CTranslate2 float32 and int8: ct2-transformers-converter's conversion of the same
     checkpoint, run with Translator.generate_tokens (own venv)
  5. every edgeseq target that runs here x recipe (executorch-xnnpack fp32/int8/int4/mixed,
     litert-cpu fp32/int8, onnx-cpu fp32/int8)
Sections: demo (demo/date-t5, 64 in / 32 out), t5-small (random weights, t5-small's shape,
64 in / 32 out), t5-small-512 (512 in / 32 out), and `paper`: the t5-small-sized T5 against a
decoder-only Llama of matched size (decoder_only.py) through the same ExecuTorch/XNNPACK
lowering, at 128/512/2048 input tokens and 64 output tokens.

Every row runs in its own worker process (worker.py; peers with their venv's Python) and the
rows of a section are measured in interleaved rounds (one generation of each per round, the
starting row rotating), so machine noise hits all rows alike. TTFT = up to the first generated
token; per-token = every later step. The machine's memory bandwidth is measured in the same
run and gives each row's decode roofline (roofline.py). Exports are cached under build/bench.
Results: benchmarks/RESULTS.md, benchmarks/compare.png, the README's headline table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ct2_targets  # noqa: E402
import roofline  # noqa: E402
from common import (  # noqa: E402
    ROOT,
    artifact_dir,
    build,
    ct2_said,
    fresh_export,
    machine,
    rejects,
    replace_block,
    summarize,
    t5_small_random,
    wanted_recipe,
)

HERE = Path(__file__).resolve().parent
PEERS = ("optimum-onnx", "optimum-executorch", "ctranslate2")
STD_RECIPES = ("fp32", "int8", "int4", "mixed")
TARGET_RECIPES = {"executorch-xnnpack": ["fp32", "int8", "int4", "mixed"], "litert-cpu": ["fp32", "int8"],
                  "onnx-cpu": ["fp32", "int8"]}
SECTIONS = {
    "demo": dict(model="demo", input_len=64, output_len=32, suffix=""),
    "t5-small": dict(model="t5-small", input_len=64, output_len=32, suffix=""),
    "t5-small-512": dict(model="t5-small", input_len=512, output_len=32, suffix="-in512",
                         # the 512-token recipes in benchmarks/recipes/ (int4: mixed covers 4-bit decode)
                         recipes={"executorch-xnnpack": ["fp32", "int8", "mixed"], "litert-cpu": ["fp32", "int8"],
                                  "onnx-cpu": ["fp32", "int8"]}),
}
PAPER_LENGTHS = (128, 512, 2048)
PAPER_OUT = 64
MARK = ("<!-- compare:begin -->", "<!-- compare:end -->")
README_MARK = ("<!-- bench:begin -->", "<!-- bench:end -->")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Row:
    section: str
    tool: str
    variant: str
    precision: str
    python: str = sys.executable
    spec: dict = field(default_factory=dict)
    mb: float | None = None
    export_s: float | None = None
    why: str | None = None  # set when the row cannot run
    stats: dict | None = None
    rss_mb: float | None = None
    roof_ms: float | None = None
    cross: str = "kv"  # an edgeseq row's recipe cross_attention (its roofline's bytes depend on it)
    env: dict = field(default_factory=dict)  # the row process's extra environment

    @property
    def name(self) -> str:
        return f"{self.tool} {self.variant}"


# ---------------------------------------------------------------- builds (cached)
def peer_python(work: Path, peer: str) -> tuple[str | None, str]:
    venv = work / f"venv-{peer}"
    py = venv / "bin" / "python"
    if (venv / ".installed").is_file() and py.is_file():
        return str(py), ""
    logf = work / f"venv-{peer}.log"
    last = ""
    if logf.is_file():
        errs = [ln for ln in logf.read_text(errors="replace").splitlines() if "ERROR" in ln or "error:" in ln]
        last = f": {errs[-1].strip()[:200]}" if errs else ""
    return None, f"{peer} did not install in its venv (make bench-peers){last}"


def run_peer_export(py: str, args: list[str], logf: Path) -> str | None:
    """Run peers.py export in the peer venv; None if it worked, else the reason (last error line)."""
    logf.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "w") as f:
        rc = subprocess.run([py, str(HERE / "peers.py"), "export", *args], stdout=f, stderr=subprocess.STDOUT,
                            env=worker_env()).returncode
    if rc == 0:
        return None
    lines = [ln for ln in logf.read_text(errors="replace").splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.search(r"(Error|Exception)\b", ln)]
    return f"export failed: {(errs or lines or ['?'])[-1].strip()[:240]}"


def build_peer_pair(peer: str, rows: dict[str, Row], ckpt: Path, out: Path, work: Path) -> None:
    """A peer whose one export writes OUT/<sub>/ per row (optimum-onnx: fp32 and int8; ctranslate2:
    float32 and int8), each with its info.json; cached until the last one is there."""
    py, why = peer_python(work, peer)
    last = list(rows)[-1]
    if py and not (out / last / "info.json").is_file():
        log(f"export {peer} {ckpt.name} ({' + '.join(rows)})")
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        why = run_peer_export(py, [peer, str(ckpt), str(out)], work / "logs" / f"export-{out.parent.name}-{peer}.log")
    for sub, row in rows.items():
        row.python = py or ""
        if why or not py:
            row.why = why
            continue
        info = json.loads((out / sub / "info.json").read_text())
        row.mb, row.export_s = info["model_bytes"] / 1e6, info["export_seconds"]
        row.spec["path"] = str(out / sub)


def build_optimum_executorch(row: Row, ckpt: Path, out: Path, work: Path, input_len: int) -> None:
    py, why = peer_python(work, "optimum-executorch")
    if py and not (out / "info.json").is_file():
        log(f"export optimum-executorch {ckpt.name} at {input_len} input tokens")
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        why = run_peer_export(py, ["optimum-executorch", str(ckpt), str(out), str(input_len)],
                              work / "logs" / f"export-{out.parent.name}-{out.name}.log")
    row.python = py or ""
    if why or not py:
        row.why = why
        return
    info = json.loads((out / "info.json").read_text())
    row.mb, row.export_s, row.spec["path"] = info["model_bytes"] / 1e6, info["export_seconds"], str(out)


def build_edgeseq(row: Row, ckpt: Path, target: str, recipe: str, out: Path) -> None:
    why = rejects(recipe, target)
    if why:
        row.why = f"the target rejects the recipe: {why}"
        return
    if not fresh_export(out, wanted_recipe(recipe).to_dict()):
        log(f"export edgeseq {ckpt.name} -t {target} -r {recipe}")
    try:
        row.export_s = build(ckpt, recipe, target, out)
    except Exception as e:  # a failing export is a row that says why, not a dead benchmark
        row.why = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return
    from toolchain.artifact import open_artifact

    art = open_artifact(out)
    row.mb, row.cross = art.model_bytes / 1e6, art.recipe.cross_attention
    row.spec["path"] = str(out)


def section_rows(name: str, sec: dict, work: Path, ckpt: Path, peers: bool, only: list[str] | None = None) -> list[Row]:
    """The section's rows, built (cached). `only`: keep row 1 (the baseline of every ratio) and
    the rows whose name contains one of these strings; the others are neither built nor run."""
    def want(*rs: Row) -> bool:
        return not only or any(r is rows[0] or any(o in r.name for o in only) for r in rs)

    s_in, s_out, model = sec["input_len"], sec["output_len"], sec["model"]
    base = dict(input_len=s_in, output_len=s_out)
    rows = [Row(name, "eager transformers", "fp32", "fp32", spec=dict(kind="eager", checkpoint=str(ckpt), int8=False, **base)),
            Row(name, "eager transformers", "int8-dynamic (torch.ao)", "int8",
                spec=dict(kind="eager", checkpoint=str(ckpt), int8=True, **base))]
    o32 = Row(name, "optimum-onnx (ORT)", "fp32", "fp32", spec=dict(kind="optimum-onnx", **base))
    o8 = Row(name, "optimum-onnx (ORT)", "int8-dynamic", "int8", spec=dict(kind="optimum-onnx", **base))
    oet = Row(name, "optimum-executorch", "fp32", "fp32", spec=dict(kind="optimum-executorch", **base))
    # CT2_VERBOSE=1: CTranslate2 logs the ISA and GEMM backends it picked (MKL or oneDNN, by CPU vendor).
    c32 = Row(name, "CTranslate2", "float32", "fp32", spec=dict(kind="ctranslate2", **base), env={"CT2_VERBOSE": "1"})
    c8 = Row(name, "CTranslate2", "int8", "int8", spec=dict(kind="ctranslate2", **base), env={"CT2_VERBOSE": "1"})
    rows += [o32, o8, oet, c32, c8]
    if peers:
        if want(o32, o8):
            build_peer_pair("optimum-onnx", {"fp32": o32, "int8": o8}, ckpt, work / model / "optimum-onnx", work)
        if want(oet):
            build_optimum_executorch(oet, ckpt, work / model / f"optimum-executorch-in{s_in}", work, s_in)
        if want(c32, c8):
            build_peer_pair("ctranslate2", {"float32": c32, "int8": c8}, ckpt, work / model / "ctranslate2", work)
    else:
        for r in (o32, o8, oet, c32, c8):
            r.why = "peers skipped (--no-peers)"
    recipes = sec.get("recipes", TARGET_RECIPES)
    tail = [Row(name, "eager transformers", "fp32, 1 thread (reference)", "fp32",
                spec=dict(kind="eager", checkpoint=str(ckpt), int8=False, threads=1, **base))]
    for target, names in recipes.items():
        for r in names:
            recipe = r + sec["suffix"]
            row = Row(name, f"edgeseq {target}", r, roofline.precision_of(r),
                      spec=dict(kind="edgeseq", **base))
            if want(row):
                build_edgeseq(row, ckpt, target, recipe, artifact_dir(work, model, target, recipe))
            rows.append(row)
    return [r for r in rows + tail if want(r)]


def rejected_cells() -> list[str]:
    """Target x recipe cells not in the tables, and targets that cannot execute here, each with why."""
    from toolchain import backends
    from toolchain.specs import TARGET_DIR, available, load_target

    out = []
    for name in available(TARGET_DIR):
        if name in TARGET_RECIPES:
            continue
        ok, why = backends.for_target(load_target(name)).can_execute()
        t = load_target(name)
        out.append(f"`{name}` ({t.runtime}/{t.backend}): " + (f"cannot execute here: {why}" if not ok else
                   "not measured: an accelerator target, this benchmark measures this machine's CPU"))
    for target in TARGET_RECIPES:
        for r in STD_RECIPES:
            if r not in TARGET_RECIPES[target]:
                why = rejects(r, target)
                out.append(f"`{target}` x `{r}`: {why or 'not in this benchmark'}")
    return out


# ---------------------------------------------------------------- measurement
def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               TRANSFORMERS_VERBOSITY="error", TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore")
    return env


def row_log(row, logdir: Path) -> Path:
    """Where a row process's stderr goes: logdir/<section>-<row>.log."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{row.section} {row.name}".lower()).strip("-")
    return logdir / f"{slug}.log"


class Worker:
    """A row's own process: `script` (worker.py, or whisper_rows.py) with the row's spec, speaking
    one JSON line per command; its stderr goes to logdir/<section>-<row>.log."""

    def __init__(self, row, logdir: Path, script: Path = HERE / "worker.py", env: dict[str, str] | None = None):
        logdir.mkdir(parents=True, exist_ok=True)
        self.logf = row_log(row, logdir)
        self.p = subprocess.Popen([row.python, str(script), json.dumps(row.spec)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=open(self.logf, "w"), text=True,
                                  env={**worker_env(), **(env or {})}, cwd=ROOT)

    def recv(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            tail = [ln for ln in self.logf.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            return {"error": f"worker exited ({self.p.returncode}): {tail[0][:200] if tail else ''}"}
        return json.loads(line)

    def call(self, cmd: str) -> dict:
        try:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        return self.recv()

    def quit(self) -> None:
        if self.p.poll() is None and not self.p.stdin.closed:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass

    def close(self) -> None:
        self.quit()
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def measure(rows: list[Row], runs: int, warmup: int, logdir: Path, label: str) -> None:
    """Interleaved rounds over the rows that can run; fills row.stats and row.rss_mb."""
    live: list[tuple[Row, Worker]] = []
    started = [(row, Worker(row, logdir, env=row.env)) for row in rows if not row.why]  # load side by side
    for row, w in started:
        msg = w.recv()
        if "error" in msg:
            row.why = f"did not load: {msg['error']}"
            w.close()
            continue
        if row.mb is None and msg.get("mb") == msg.get("mb"):  # not NaN
            row.mb = msg["mb"]
        if row.export_s is None and msg.get("prep_s") is not None:
            row.export_s = msg["prep_s"]
        live.append((row, w))
    log(f"{label}: {len(live)} rows loaded; {warmup} warmup + {runs} measured interleaved rounds")
    ttft = {id(r): [] for r, _ in live}
    steps = {id(r): [] for r, _ in live}
    t0 = time.time()
    for i in range(warmup + runs):
        k = i % max(len(live), 1)
        for row, w in live[k:] + live[:k]:  # rotate who goes first
            if row.why:
                continue
            msg = w.call("run")
            if "error" in msg:
                row.why = f"failed while running: {msg['error']}"
                continue
            if i >= warmup:
                ttft[id(row)].append(msg["ttft"])
                steps[id(row)].extend(msg["steps"])
            time.sleep(0.01)  # let spinning runtime threads (ORT, OpenMP) go idle before the next row
        log(f"{label}: round {i + 1}/{warmup + runs}{' (warmup)' if i < warmup else ''} "
            f"({time.time() - t0:.0f} s)")
    for row, w in live:
        if not row.why:
            row.stats = summarize(ttft[id(row)], steps[id(row)])
            row.rss_mb = w.call("rss").get("peak_rss_mb")
        w.quit()  # all at once: interpreter teardown is slow on a busy machine
    for _, w in live:
        w.close()


# ---------------------------------------------------------------- report
def clean(text: str | None) -> str:
    """No machine paths in reports: paths under the repo become relative, others lose their directories."""
    text = (text or "").replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    return re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)", r"\1", text)


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def section_table(rows: list[Row]) -> list[str]:
    base = rows[0].stats if rows and rows[0].stats else None
    out = ["| # | row | TTFT ms p50 (p10-p90) | per-token ms p50 | p90 | tokens/s | peak RSS MB | artifact MB "
           "| export s | TTFT vs row 1 | per-token vs row 1 | per-token / roofline |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if not r.stats:
            out.append(f"| {i} | {r.name} | not run: {clean(r.why)} |||||||||||")
            continue
        s = r.stats
        tt = f"{s['ttft_p50']:.2f} ({s['ttft_p10']:.1f}-{s['ttft_p90']:.1f})"
        sp_t = f"{base['ttft_p50'] / s['ttft_p50']:.2f}x" if base else "-"
        sp_k = f"{base['tok_p50'] / s['tok_p50']:.2f}x" if base else "-"
        roof = f"{s['tok_p50'] / r.roof_ms:.2f}x ({r.roof_ms:.2f} ms)" if r.roof_ms else "-"
        out.append(f"| {i} | {r.name} | {tt} | {s['tok_p50']:.3f} | {s['tok_p90']:.3f} | {s['tok_s']:.1f} | "
                   f"{fmt(r.rss_mb, 0)} | {fmt(r.mb, 1)} | {fmt(r.export_s, 0)} | {sp_t} | {sp_k} | {roof} |")
    return out


def acceptance(rows: list[Row], bw_gbs: float) -> tuple[list[str], dict]:
    """The issue's targets on the t5-small section, as ratios from this run."""
    ok = [r for r in rows if r.stats]
    if not ok or ok[0] is not rows[0]:
        return ["- acceptance: the eager fp32 baseline did not run; no ratios"], {}
    base = rows[0].stats
    ref = next((r for r in ok if "1 thread" in r.variant), None)
    cons = min([base, ref.stats] if ref else [base], key=lambda x: x["tok_p50"])  # the faster eager fp32
    cons_t = min([base, ref.stats] if ref else [base], key=lambda x: x["ttft_p50"])
    es = [r for r in ok if r.tool.startswith("edgeseq")]
    q = [r for r in es if r.precision != "fp32"]
    f32 = [r for r in es if r.precision == "fp32"]
    lines, res = [], {"bw_gbs": bw_gbs}
    if q:
        bq = min(q, key=lambda r: r.stats["tok_p50"])
        others = [r for r in ok if r is not bq]
        faster_all = all(bq.stats["tok_p50"] < r.stats["tok_p50"] for r in others)
        sp = base["tok_p50"] / bq.stats["tok_p50"]
        res["best_quantized"] = bq.name
        res["decode_speedup"] = sp
        spc = cons["tok_p50"] / bq.stats["tok_p50"]
        lines.append(f"- best edgeseq quantized per-token: **{bq.name}** {bq.stats['tok_p50']:.3f} ms = "
                     f"{sp:.1f}x faster than row 1 (target >= 8x: {'met' if sp >= 8 else 'MISSED'}; {spc:.1f}x against "
                     f"the faster of eager fp32 at 2 or 1 thread: {'met' if spc >= 8 else 'MISSED'}); faster than "
                     f"every other row: {'yes' if faster_all else 'NO (' + ', '.join(r.name for r in others if r.stats['tok_p50'] <= bq.stats['tok_p50']) + ')'}")
        frac = bq.stats["tok_p50"] / bq.roof_ms if bq.roof_ms else float("nan")
        res["roofline_fraction"] = frac
        line = (f"- its roofline ({bq.precision} weights + K/V per step / measured bandwidth): "
                f"{bq.roof_ms:.2f} ms; measured {frac:.2f}x of it (target within 2x: {'met' if frac <= 2 else 'MISSED'})")
        if roofline.IDLE_GBS > bw_gbs:  # a busy machine read less than it can: the idle figure is the tighter bound
            idle = bq.roof_ms * bw_gbs / roofline.IDLE_GBS
            line += (f"; against the {roofline.IDLE_GBS:.0f} GB/s this machine reads when idle: {idle:.2f} ms, "
                     f"{bq.stats['tok_p50'] / idle:.2f}x ({'met' if bq.stats['tok_p50'] / idle <= 2 else 'MISSED'})")
        lines.append(line)
    ort = next((r for r in ok if r.tool.startswith("optimum-onnx") and r.precision == "fp32"), None)
    if f32:
        bf = min(f32, key=lambda r: r.stats["tok_p50"])
        if ort:
            met = bf.stats["tok_p50"] <= ort.stats["tok_p50"]
            lines.append(f"- best edgeseq fp32 per-token: **{bf.name}** {bf.stats['tok_p50']:.3f} ms vs ORT fp32 "
                         f"(optimum) {ort.stats['tok_p50']:.3f} ms (target at or below: {'met' if met else 'MISSED'})")
        else:
            lines.append(f"- best edgeseq fp32 per-token: {bf.name} {bf.stats['tok_p50']:.3f} ms; the ORT fp32 row did not run")
    if es:
        bt = min(es, key=lambda r: r.stats["ttft_p50"])
        sp = base["ttft_p50"] / bt.stats["ttft_p50"]
        res["ttft_speedup"] = sp
        spc = cons_t["ttft_p50"] / bt.stats["ttft_p50"]
        lines.append(f"- best edgeseq TTFT: **{bt.name}** {bt.stats['ttft_p50']:.2f} ms = {sp:.1f}x faster than row 1 "
                     f"(target >= 2x: {'met' if sp >= 2 else 'MISSED'}; {spc:.1f}x against the faster eager fp32: "
                     f"{'met' if spc >= 2 else 'MISSED'})")
    return lines, res


def paper_table(pairs: list[tuple[int, Row, Row]], recipe: str) -> list[str]:
    out = ["| input tokens | enc-dec TTFT ms p50 (p10-p90) | decoder-only TTFT ms | enc-dec TTFT lower by (paper: 47%) | "
           "enc-dec decode tok/s | decoder-only decode tok/s | decode throughput ratio (paper: 4.7x) | "
           "64-token generation tok/s enc-dec / dec-only | ratio | roofline ms/step enc-dec / dec-only |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s, t5, do in pairs:
        if not (t5.stats and do.stats):
            why = (t5.why if not t5.stats else do.why) or "no measurement"
            out.append(f"| {s} | not run: {clean(why)} |||||||||")
            continue
        a, b = t5.stats, do.stats
        out.append(f"| {s} | {a['ttft_p50']:.1f} ({a['ttft_p10']:.0f}-{a['ttft_p90']:.0f}) | {b['ttft_p50']:.1f} "
                   f"({b['ttft_p10']:.0f}-{b['ttft_p90']:.0f}) | {100 * (1 - a['ttft_p50'] / b['ttft_p50']):.0f}% | "
                   f"{a['decode_tok_s']:.1f} | {b['decode_tok_s']:.1f} | {a['decode_tok_s'] / b['decode_tok_s']:.2f}x | "
                   f"{a['tok_s']:.1f} / {b['tok_s']:.1f} | {a['tok_s'] / b['tok_s']:.2f}x | "
                   f"{fmt(t5.roof_ms, 2)} / {fmt(do.roof_ms, 2)} |")
    return out


def versions(work: Path) -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for n in ("torch", "transformers", "executorch", "torchao", "onnxruntime", "ai-edge-litert"):
        try:
            parts.append(f"{n} {version(n)}")
        except PackageNotFoundError:
            pass
    for peer, pkgs in (("optimum-onnx", ("optimum-onnx", "optimum", "transformers", "onnxruntime")),
                       ("optimum-executorch", ("optimum-executorch", "executorch", "transformers")),
                       ("ctranslate2", ("ctranslate2", "transformers", "torch"))):
        py, _ = peer_python(work, peer)
        if py:
            code = ("from importlib.metadata import version as v;"
                    f"print(', '.join(n + ' ' + v(n) for n in {list(pkgs)!r}))")
            r = subprocess.run([py, "-c", code], capture_output=True, text=True)
            if r.returncode == 0:
                parts.append(f"{peer} venv: {r.stdout.strip()}")
    return "; ".join(parts)


def chart(path: Path, main_rows: list[Row], pairs: list[tuple[int, Row, Row]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in main_rows if r.stats]
    done = [(s, a, b) for s, a, b in pairs if a.stats and b.stats]
    fig, ax = plt.subplots(2 if done else 1, 2, figsize=(15, 10 if done else 5.5), squeeze=False)
    if ok:
        names = [r.name for r in ok][::-1]
        colors = ["tab:gray" if not r.tool.startswith("edgeseq") else "tab:blue" for r in ok][::-1]
        tok = [r.stats["tok_p50"] for r in ok][::-1]
        ax[0, 0].barh(names, tok, color=colors)
        ax[0, 0].scatter([r.roof_ms for r in ok][::-1], names, marker="|", s=300, color="red", label="roofline")
        ax[0, 0].set_xscale("log")
        ax[0, 0].set_xlabel("per-token decode ms (p50, log)")
        ax[0, 0].legend(loc="lower right")
        ax[0, 0].set_title(f"{title}: per-token decode (grey: other tools, blue: edgeseq)")
        ax[0, 1].barh(names, [r.stats["ttft_p50"] for r in ok][::-1], color=colors)
        ax[0, 1].set_xscale("log")
        ax[0, 1].set_xlabel("TTFT ms (p50, log)")
        ax[0, 1].set_title(f"{title}: time to first token")
        ax[0, 1].set_yticklabels([])
    if done:
        xs = [s for s, _, _ in done]
        ax[1, 0].plot(xs, [a.stats["ttft_p50"] for _, a, _ in done], "o-", label="enc-dec (T5, 60.5M)")
        ax[1, 0].plot(xs, [b.stats["ttft_p50"] for _, _, b in done], "s-", label="decoder-only (Llama, 60.3M)")
        ax[1, 1].plot(xs, [a.stats["decode_tok_s"] for _, a, _ in done], "o-", label="enc-dec (T5, 60.5M)")
        ax[1, 1].plot(xs, [b.stats["decode_tok_s"] for _, _, b in done], "s-", label="decoder-only (Llama, 60.3M)")
        for a_, lab in ((ax[1, 0], "TTFT ms"), (ax[1, 1], "decode tokens/s")):
            a_.set_xscale("log", base=2)
            a_.set_xticks(xs, [str(x) for x in xs])
            a_.set_xlabel("input tokens (64 output)")
            a_.set_ylabel(lab)
            a_.legend()
            a_.grid(alpha=0.3)
        ax[1, 0].set_yscale("log")
        ax[1, 0].set_title("enc-dec vs decoder-only: TTFT (ExecuTorch/XNNPACK)")
        ax[1, 1].set_title("enc-dec vs decoder-only: decode throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the demo section only (minutes, not an hour)")
    ap.add_argument("--sections", default="demo,t5-small,t5-small-512,paper",
                    help="comma list of: demo, t5-small, t5-small-512, paper (ignored with --quick)")
    ap.add_argument("--runs", type=int, default=15, help="measured rounds per section (>= 5)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    ap.add_argument("--paper-recipe", default="int8", help="recipe family of the enc-dec vs decoder-only runs "
                    "(benchmarks/recipes/<name>-in<N>.yaml must exist for 128, 512, 2048)")
    ap.add_argument("--no-peers", action="store_true", help="skip the optimum and CTranslate2 rows")
    ap.add_argument("--only", default="", help="comma list: run row 1 and the rows whose name contains one of these "
                    "(e.g. 'CTranslate2,edgeseq executorch-xnnpack int8'); with --out elsewhere, as the block is replaced")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench", help="exports, venvs and logs")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown file to update")
    ap.add_argument("--chart", type=Path, default=HERE / "compare.png", help="PNG chart to write")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README whose headline table to update "
                    "(full runs with the t5-small section only)")
    a = ap.parse_args()
    if a.runs < 5:
        ap.error("--runs must be >= 5")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    started = time.time()
    load0 = os.getloadavg()
    sections = ["demo"] if a.quick else [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = set(sections) - {*SECTIONS, "paper"}
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join([*SECTIONS, 'paper'])}")
    ckpts = {"demo": ROOT / "demo" / "date-t5", "t5-small": a.work / "t5-small-random"}
    log(f"sections: {', '.join(sections)}; runs {a.runs} + warmup {a.warmup}; work dir {a.work.relative_to(ROOT) if a.work.is_relative_to(ROOT) else a.work}")
    # Bandwidth first, on a machine the benchmark has not loaded yet; once more at the end.
    bw = roofline.measure_bandwidth()
    log(f"memory bandwidth: read {bw['read_gbs']:.1f} GB/s, copy {bw['copy_gbs']:.1f} GB/s (2 threads)")
    results: dict[str, list[Row]] = {}
    # ---- build everything first (cached), then measure section by section
    for name in sections:
        if name == "paper":
            continue
        sec = SECTIONS[name]
        ckpt = t5_small_random(ckpts["t5-small"]) if sec["model"] == "t5-small" else ckpts["demo"]
        log(f"{name}: building rows (cached exports are reused)")
        results[name] = section_rows(name, sec, a.work, ckpt, not a.no_peers,
                                     [o.strip() for o in a.only.split(",") if o.strip()] or None)
    pairs: list[tuple[int, Row, Row]] = []
    if "paper" in sections:
        import decoder_only

        from toolchain.specs import load_recipe

        t5 = t5_small_random(ckpts["t5-small"])
        llama = decoder_only.llama_random(a.work / "llama-60m-random")
        for s in PAPER_LENGTHS:
            recipe = f"{a.paper_recipe}-in{s}"
            base = dict(input_len=s, output_len=PAPER_OUT)
            er = Row("paper", "enc-dec T5 (edgeseq executorch-xnnpack)", recipe, a.paper_recipe, spec=dict(kind="edgeseq", **base))
            build_edgeseq(er, t5, "executorch-xnnpack", recipe, artifact_dir(a.work, "t5-small", "executorch-xnnpack", recipe))
            dr = Row("paper", "decoder-only Llama (same lowering)", recipe, a.paper_recipe, spec=dict(kind="decoder-only", **base))
            out = a.work / "decoder-only" / recipe
            try:
                if not (out / "info.json").is_file():
                    log(f"export decoder-only at {s} input tokens ({recipe})")
                info = decoder_only.export(llama, load_recipe(str(HERE / "recipes" / f"{recipe}.yaml")), out)
                dr.mb, dr.export_s, dr.spec["path"] = info["model_bytes"] / 1e6, info["export_seconds"], str(out)
            except Exception as e:
                dr.why = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            pairs.append((s, er, dr))
    log(f"builds done ({time.time() - started:.0f} s)")
    # ---- measure
    logdir = a.work / "logs"
    samples, loads = [bw], {}
    for name, rows in results.items():
        measure(rows, a.runs, a.warmup, logdir, name)
        loads[name] = os.getloadavg()[1]
        samples.append(roofline.measure_bandwidth())
    if pairs:
        measure([r for _, er, dr in pairs for r in (er, dr)], a.runs, a.warmup, logdir, "paper")
        loads["paper"] = os.getloadavg()[1]
        samples.append(roofline.measure_bandwidth())
    # The roofline uses the best bandwidth seen in this run (the tightest bound: a shared machine
    # only ever lowers what one sample sees).
    best = max(x["read_gbs"] for x in samples)
    # ---- rooflines
    for name, rows in results.items():
        sec = SECTIONS[name]
        cfg = roofline.read_config(ckpts[sec["model"]])
        for r in rows:
            r.roof_ms = roofline.t5_decode_bytes(cfg, r.precision, sec["input_len"], sec["output_len"],
                                                 r.cross) / (best * 1e9) * 1e3
    if pairs:
        t5cfg = roofline.read_config(ckpts["t5-small"])
        lcfg = roofline.read_config(a.work / "llama-60m-random")
        for s, er, dr in pairs:
            er.roof_ms = roofline.t5_decode_bytes(t5cfg, er.precision, s, PAPER_OUT) / (best * 1e9) * 1e3
            dr.roof_ms = roofline.llama_decode_bytes(lcfg, dr.precision, s, PAPER_OUT) / (best * 1e9) * 1e3
    ct2_verdicts: dict[str, list[str]] = {}  # section -> issue 22's targets against CTranslate2 int8
    for name, rows in results.items():
        print(f"\n{name}:\n" + "\n".join(section_table(rows)), flush=True)
        if name == "t5-small":
            print("\nacceptance targets (t5-small):\n" + "\n".join(acceptance(rows, best)[0]), flush=True)
        if SECTIONS[name]["model"] == "t5-small" and any(r.tool == "CTranslate2" for r in rows):
            ct2_verdicts[name] = ct2_targets.verdicts(rows)
            print(f"\nagainst CTranslate2 int8 ({name}):\n" + "\n".join(ct2_verdicts[name]), flush=True)
    if pairs:
        print("\npaper:\n" + "\n".join(paper_table(pairs, a.paper_recipe)), flush=True)
    load1 = os.getloadavg()
    wall = time.time() - started
    # ---- report
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ct2_rows = [r for rows in results.values() for r in rows if r.tool == "CTranslate2" and r.stats]
    lines = ["## edgeseq vs every other way to run the model (`benchmarks/compare.py`)", "",
             f"{date}; {machine()}; "
             f"every row 2 threads (but the 1-thread reference row), in its own process; "
             f"`compare.py{' --quick' if a.quick else ''} --runs {a.runs} --warmup {a.warmup}`; "
             f"wall time {wall / 60:.0f} min.", "",
             f"Versions: {versions(a.work)}.", "",
             *([f"CTranslate2 on this CPU (its own log at load, CT2_VERBOSE=1): "
                f"{ct2_said([row_log(r, logdir) for r in ct2_rows])}.", ""] if ct2_rows else []),
             f"Memory bandwidth (2 threads, {bw['buffer_mb']} MB buffer, sampled {len(samples)} times: at the start and "
             f"after each section): read {min(x['read_gbs'] for x in samples):.1f}-{best:.1f} GB/s (copy, read+write "
             f"counted: {max(x['copy_gbs'] for x in samples):.1f} GB/s best); rooflines use the best read value. "
             f"Load average (1 min) at start / end: {load0[0]:.1f} / {load1[0]:.1f} on {os.cpu_count()} cores"
             f"{' — the machine was shared with other jobs: absolute times are inflated, ratios within a section hold (interleaved rounds)' if max(load0[0], load1[0]) > (os.cpu_count() or 1) + 0.5 else ''}.",
             "", "Ratios are speedups over row 1 (eager `generate` fp32 of the same section): above 1x is faster. "
             "TTFT = encode + first decode step (the first generated token); per-token = each later step; tokens/s = "
             "the whole forced-length generation including TTFT; peak RSS = the row's own process (Python + runtime + "
             "model); artifact MB = the files the runtime loads (eager: the safetensors); export s = export (+ "
             "quantization) time, for eager int8 the in-memory `quantize_dynamic`. Roofline = the row's decode weights "
             "and K/V bytes per step / measured read bandwidth (roofline.py).", ""]
    readme = []
    for name, rows in results.items():
        sec = SECTIONS[name]
        lines += [f"### {name}: {sec['input_len']} input tokens, {sec['output_len']} output tokens (forced)", "",
                  f"Load average (5 min) at the end of this section: {loads[name]:.1f} on {os.cpu_count()} cores. "
                  "Decode roofline (weights + K/V read per step / " + f"{best:.1f} GB/s): " + ", ".join(
                      f"{p} {b / 1e6:.1f} MB/step = {b / (best * 1e9) * 1e3:.2f} ms"
                      for p in roofline.PRECISION
                      for b in [roofline.t5_decode_bytes(roofline.read_config(ckpts[sec['model']]), p,
                                                         sec["input_len"], sec["output_len"])]) +
                  (" (per-layer cross K/V; rows whose recipe has `cross_attention: memory` read the encoder states "
                   "and the cross k/v weights instead: their own roofline)"
                   if any(r.cross == "memory" for r in rows) else "") + ".", ""]
        lines += section_table(rows)
        if name == "t5-small":
            acc, _ = acceptance(rows, best)
            lines += ["", "Acceptance targets (t5-small, this run):", "", *acc]
            readme = headline(rows, date)
        if name in ct2_verdicts:
            lines += ["", f"Against CTranslate2 int8 ({name}, this run):", "", *ct2_verdicts[name]]
        lines.append("")
    if "demo" in results:
        lines += ["The demo's 3.7 MB of weights sit in the 32 MiB L3 cache, so its DRAM roofline is not a bound: "
                  "its rows measure per-call overhead.", ""]
    if results:
        lines += ["Not in the tables:", "",
                  *[f"- {clean(c)}" for c in rejected_cells()], ""]
    if pairs:
        lines += [f"### Enc-dec vs decoder-only (\"Return of the Encoder\", 2025): {a.paper_recipe}, "
                  f"{PAPER_OUT} output tokens", "",
                  "T5 (t5-small-sized, 60.5M parameters, 6+6 layers) through edgeseq; a Llama-architecture decoder-only "
                  "model of 60.3M parameters (12 layers, d_model 512, 8 heads, SwiGLU d_ff 1696, tied embeddings; "
                  "`decoder_only.py`) through the same quantizer and ExecuTorch/XNNPACK lowering with a static KV "
                  "cache. Both random weights; same inputs; measured interleaved. Load average (5 min) at the end: "
                  f"{loads.get('paper', float('nan')):.1f}.", ""]
        lines += paper_table(pairs, a.paper_recipe)
        lines.append("")
    block = "\n".join(lines).rstrip()
    replace_block(a.out, MARK, block, "# Benchmark results\n\nMeasured, not estimated. Each section says how it was run.\n",
                  before="<!-- targets:begin -->")
    if results or pairs:
        chart(a.chart, results.get("t5-small") or next(iter(results.values()), []), pairs,
              "t5-small" if "t5-small" in results else next(iter(results), ""))
    if readme and not a.quick and not a.only:
        replace_block(a.readme, README_MARK, "\n".join(readme), "")
    raw = {name: [r.__dict__ for r in rows] for name, rows in results.items()}
    raw["paper"] = [{"input_len": s, "enc_dec": er.__dict__, "decoder_only": dr.__dict__} for s, er, dr in pairs]
    raw["bandwidth"] = samples
    (a.work / "compare.json").write_text(json.dumps(raw, indent=1, default=str))
    rel = lambda p: p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name  # noqa: E731 (no machine paths in logs)
    log(f"done in {wall / 60:.1f} min; wrote {rel(a.out)}, {rel(a.chart)}"
        f"{', README.md' if readme and not a.quick and not a.only else ''}")
    return 0


def headline(rows: list[Row], date: str) -> list[str]:
    """The README's table: t5-small-sized T5, 64 in / 32 out, speedups over eager fp32."""
    base = rows[0].stats
    out = [f"t5-small-sized T5 (random weights), 64 input / 32 output tokens, 2 threads, {date}; "
           "speedup over eager `generate` fp32 (full table, 512-token inputs and the enc-dec vs decoder-only "
           "comparison: `benchmarks/RESULTS.md`):", "",
           "| row | per-token ms | speedup | TTFT ms | speedup | artifact MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        if not r.stats:
            out.append(f"| {r.name} | not run | | | | |")
            continue
        s = r.stats
        out.append(f"| {r.name} | {s['tok_p50']:.2f} | {base['tok_p50'] / s['tok_p50']:.1f}x | {s['ttft_p50']:.1f} | "
                   f"{base['ttft_p50'] / s['ttft_p50']:.1f}x | {fmt(r.mb, 0)} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
