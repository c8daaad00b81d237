"""The `edgeseq` command line: thin. Parse, call the library, print.

Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

from . import logs, progress
from .errors import CheckFailed, InputError


def _quiet() -> None:
    """Third-party import noise (torchao's optional CUDA kernels, deprecations) is not for users."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)


# OS errors that are about the machine, not a bug: disk full, read-only or forbidden paths.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C (an export's staging dir is removed), exit status 128+15."""
    raise SystemExit(128 + signum)


# Options of the group that may also be written after the subcommand (`edgeseq run A x --debug`).
GLOBAL_FLAGS = ("--debug", "--quiet", "--verbose")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class Group(click.Group):
    """Turns library errors into one line on stderr: `error: ...` exit 2 (bad input, usage, a full
    or read-only disk), `check failed: ...` exit 1, Ctrl-C exit 130. `--debug` shows the
    traceback instead."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Global flags are accepted anywhere before a `--`: hoisted in front of the subcommand."""
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        return super().parse_args(ctx, flags + rest)

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug")
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
            ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
        try:
            return super().invoke(ctx)
        except InputError as e:
            if debug:
                raise
            progress.clear()
            click.echo(f"error: {_one_line(e)}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # one line, with where to look, instead of Click's usage block
            if debug:
                raise
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {_one_line(e.format_message())} (see: {where} --help)", err=True)
            ctx.exit(2)
        except OSError as e:
            if debug or e.errno not in RESOURCE_ERRNOS:
                raise
            click.echo(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror}", err=True)
            ctx.exit(2)
        except CheckFailed as e:
            progress.clear()
            click.echo(f"check failed: {_one_line(e)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if debug:
                raise
            progress.clear()
            click.echo("interrupted (nothing half-written was left)", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (also after the command).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr (errors still print).")
@click.option("--verbose", is_flag=True,
              help="Let the runtimes' own log lines (ExecuTorch's C++ cpuinfo lines, LiteRT's INFO) reach stderr.")
@click.version_option(package_name="edgeseq")
def main(debug: bool, quiet: bool, verbose: bool) -> None:
    """Export trained encoder-decoder transformers to on-device encode/decode programs,
    verify them against eager PyTorch, and measure them.

    \b
    Example:
      edgeseq export demo/date-t5 -t executorch-xnnpack -r fp32 -o build/a
      edgeseq verify build/a
      edgeseq run build/a "the 3rd of March, 2021"
    """
    if not debug:
        _quiet()
    progress.configure(quiet=quiet)
    # Library calls after this command (tests, an embedding program) print nothing again.
    click.get_current_context().call_on_close(lambda: progress.configure(quiet=True))
    logs.set_verbose(verbose)


def _emit(data, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=1) if as_json else text)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights. They can run code: trust them first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect(path: str, allow_pickle: bool, as_json: bool) -> None:
    """Describe a checkpoint (family, sizes, targets) or an artifact (programs, sizes, delegation).

    Example: edgeseq inspect demo/date-t5
    """
    from .inspection import inspect_path

    data, text = inspect_path(Path(path), allow_pickle)
    _emit(data, as_json, text)


@main.command()
@click.argument("source", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="save_pretrained directory to write.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Weight dtype of the written model.safetensors.")
@click.option("--force", is_flag=True, help="Overwrite the files of an existing non-empty OUTPUT directory.")
def convert(source: str, out: str, dtype: str, force: bool) -> None:
    """Convert a CTranslate2 (faster-whisper) Whisper model directory to a save_pretrained one.

    SOURCE holds model.bin, config.json and tokenizer.json, as faster-whisper models do.

    Example: edgeseq convert whisper-tiny.en-ct2 -o build/whisper-tiny.en
    """
    from .convert import convert_ct2_whisper

    with progress.stage(f"convert: reading {source}"):
        convert_ct2_whisper(Path(source), Path(out), dtype=dtype, force=force)
    click.echo(str(out))


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-t", "--target", "target_name", required=True, help="Target name (see `edgeseq targets`) or YAML file.")
@click.option("-r", "--recipe", "recipe_name", default="fp32", show_default=True, help="Recipe name (see `edgeseq recipes`) or YAML file.")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Artifact directory to create.")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT if it is an earlier edgeseq artifact (atomically, after a successful export); "
                   "any other existing directory is refused, never deleted.")
@click.option("--max-input-len", type=int, help="Override the recipe's max_input_len (input tokens encode takes).")
@click.option("--max-output-len", type=int, help="Override the recipe's max_output_len (decode's KV cache slots).")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights. They can run code: trust them first.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def export(checkpoint: str, target_name: str, recipe_name: str, out: str, force: bool, max_input_len: int | None,
           max_output_len: int | None, allow_pickle: bool, as_json: bool) -> None:
    """Export CHECKPOINT to one artifact directory for a target and recipe.

    CHECKPOINT is a save_pretrained directory, or a Hugging Face id (org/name) already in the
    local Hugging Face cache (nothing is downloaded).

    \b
    Examples:
      edgeseq export demo/date-t5 -t executorch-xnnpack -r fp32 -o build/a
      edgeseq export demo/date-t5 -t onnx-cpu -r int8 --max-input-len 128 -o build/b
    """
    from .api import export as do_export

    art = do_export(checkpoint, target_name, recipe_name, out, force=force, max_input_len=max_input_len,
                    max_output_len=max_output_len, allow_pickle=allow_pickle)
    progress.clear()
    m = art.manifest
    summary = {"artifact": str(art.path), "files": m["files"], "sizes": m["sizes"],
               "delegation": m.get("delegation"), "export_seconds": m["export_seconds"]}
    lines = [f"wrote {art.path} in {m['export_seconds']} s"]
    for name, e in m["files"].items():
        lines.append(f"  {name:<16} {e['bytes']:>12,d} B  sha256 {e['sha256'][:12]}")
    lines.append(f"  model bytes / (params x 4) = {m['sizes']['ratio_to_fp32_params']}")
    for prog, d in (m.get("delegation") or {}).items():
        lines.append(f"  {prog}: {d['delegated_nodes']} nodes delegated, {d['portable_nodes']} portable "
                     f"({d['delegated_fraction']:.1%} in {d['delegate']}) {d['portable_ops'] or ''}")
    _emit(summary, as_json, "\n".join(lines))


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--checkpoint", help="Checkpoint to compare against (default: the path recorded in the manifest).")
@click.option("--eval", "eval_file", type=click.Path(), help="JSONL eval set ({\"input\", \"target\"}); default: the checkpoint's eval.jsonl.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N eval examples.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights for the reference model.")
@click.option("--runner", type=click.Choice(["python", "native"]),
              help="python: the runtime's Python Session (default); native: the C++ edgeseq-runner (`make runner`).")
@click.option("--device", help="Where the native runner executes: local (default) or qemu-aarch64 (emulated ARM64, "
                                "built by `make runner-aarch64`; implies --runner native).")
@click.option("--metric", type=click.Choice(["auto", "exact", "wer", "cer", "chrf", "bleu"]),
              help="Task metric for rows with a target (default: the recipe's `metric`; auto: wer for speech, "
                   "exact match otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the verify report as JSON.")
def verify(artifact: str, checkpoint: str | None, eval_file: str | None, limit: int | None,
           allow_pickle: bool, runner: str | None, device: str | None, metric: str | None, as_json: bool) -> None:
    """Compare ARTIFACT with eager PyTorch: logits, greedy tokens, task accuracy.

    Exits 1 when the recipe's tolerance is not met. The result is stored in the manifest.

    Example: edgeseq verify build/a --json
    """
    from .artifact import open_artifact
    from .verify import verify_artifact

    art = open_artifact(artifact)
    rep = verify_artifact(art, checkpoint=checkpoint, eval_file=eval_file, limit=limit, allow_pickle=allow_pickle,
                          progress=progress.Counter("verify: rows", 0), runner=runner, device=device, metric=metric)
    progress.clear()
    verdict = "PASS" if rep["passed"] else "FAIL: " + "; ".join(rep["failures"])
    if rep.get("structure_only"):  # e.g. Core ML on Linux: what was checked, and what was not run
        text = (f"verify {artifact} ({rep['runtime']}): STRUCTURE ONLY, numerics not run ({rep['why_not_executed']})\n"
                f"  checked: {', '.join(rep['checked'])}\n"
                f"  {'PASS (structure only)' if rep['passed'] else verdict}")
    else:
        acc = ("" if rep["task_accuracy"] is None else
               f"  task_accuracy {rep['task_accuracy']:.4f} (eager reference {rep['reference_accuracy']:.4f})\n")
        if rep.get("scores") and rep.get("metric") != "exact":
            acc += "  " + "  ".join(f"{k} {v:.4f} (eager {rep['reference_scores'][k]:.4f})"
                                    for k, v in rep["scores"].items()) + f"  [decided by {rep['decided_by']}]\n"
        if rep.get("advisory"):
            acc += "  advisory (parity, not deciding): " + "; ".join(rep["advisory"]) + "\n"
        text = (f"verify {artifact} ({rep['runtime']}, {rep['examples']} examples from {rep['eval_source']})\n"
                f"  sequence_match {rep['sequence_match']:.4f}  top1_agreement {rep['top1_agreement']:.4f}  "
                f"max_abs_logit_diff {rep['max_abs_logit_diff']:.3g} (allowed {rep['allowed_logit_diff']:.3g} at "
                f"logit scale {rep['logit_scale']:.3g})\n{acc}  {verdict}")
    _emit(rep, as_json, text)
    if not rep["passed"]:
        raise CheckFailed("; ".join(rep["failures"]))


@main.command()
@click.argument("artifact", type=click.Path())
@click.argument("text")
@click.option("--max-new-tokens", type=int, help="Stop after N tokens (default: the artifact's cache size).")
@click.option("--min-new-tokens", type=int, default=0, show_default=True, help="Suppress EOS for the first N tokens.")
@click.option("--truncate", is_flag=True, help="Truncate input longer than the recipe's max_input_len instead of failing.")
@click.option("--allow-unknown", is_flag=True,
              help="Let characters the tokenizer does not know become its unknown token instead of failing.")
@click.option("--threads", type=int, help="Runtime threads (default: the target's).")
@click.option("--runner", type=click.Choice(["python", "native"]),
              help="python: the runtime's Python Session (default); native: the C++ edgeseq-runner (`make runner`).")
@click.option("--device", help="Where the native runner executes: local (default) or qemu-aarch64 (emulated ARM64, "
                                "built by `make runner-aarch64`; implies --runner native).")
def run(artifact: str, text: str, max_new_tokens: int | None, min_new_tokens: int, truncate: bool,
        allow_unknown: bool, threads: int | None, runner: str | None, device: str | None) -> None:
    """Generate greedily from TEXT with ARTIFACT; prints only the output text.

    A note on stderr says when the output stopped at the artifact's cache size.

    Example: edgeseq run build/a "the 3rd of March, 2021"
    """
    from .runner import generate_text

    out, note = generate_text(artifact, text, max_new_tokens, min_new_tokens, truncate, threads, allow_unknown,
                              runner, device)
    click.echo(out)
    if note:
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--device", default="local", show_default=True,
              help="local, ssh://[user@]host[:port] (copies the artifact once by content hash), or "
                   "qemu-aarch64 (the native runner on emulated ARM64: kind emulated, not a latency).")
@click.option("--runs", type=int, default=10, show_default=True, help="Measured generations.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Unmeasured generations first.")
@click.option("--input-len", type=int, help="Input tokens (default: the recipe's max_input_len).")
@click.option("--output-len", type=int, help="Forced output tokens (default: the recipe's max_output_len).")
@click.option("--threads", type=int, help="Runtime threads (default: the target's).")
@click.option("--python", "python", help="Python on the device (default: this one locally, python3 over ssh).")
@click.option("--ssh-key", type=click.Path(), help="ssh identity file.")
@click.option("--ssh-config", type=click.Path(), help="ssh config file (ssh -F).")
@click.option("--runner", type=click.Choice(["python", "native"]),
              help="python: the runtime's Python Session (default); native: the C++ edgeseq-runner (`make runner`).")
@click.option("--json", "as_json", is_flag=True, help="Print the probe report as JSON.")
def probe(artifact: str, device: str, runs: int, warmup: int, input_len: int | None, output_len: int | None,
          threads: int | None, python: str | None, ssh_key: str | None, ssh_config: str | None,
          runner: str | None, as_json: bool) -> None:
    """Measure load time, time to first token, per-token decode, tokens/s, memory, size.

    Runs in a fresh process on the device, through the same Session as `run` and `verify`.

    \b
    Examples:
      edgeseq probe build/a --runs 20 --json > a.json
      edgeseq probe build/a --device ssh://pi@10.0.0.7 --python /opt/venv/bin/python
    """
    from .probe.devices import probe_artifact
    from .report import probe_line

    bar = None
    if not as_json and sys.stderr.isatty() and progress.mode() is not progress.Mode.OFF:
        bar = click.progressbar(length=runs + warmup, label=f"probe on {device}", file=sys.stderr)

    def step(i, n):
        if bar is not None:
            bar.update(i - bar.pos)

    rep = probe_artifact(artifact, device=device, runs=runs, warmup=warmup, input_len=input_len,
                         output_len=output_len, threads=threads, python=python, ssh_key=ssh_key,
                         ssh_config=ssh_config, runner=runner, progress=step)
    if bar is not None:
        bar.render_finish()
    _emit(rep, as_json, probe_line(rep))


@main.command()
@click.argument("probes", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", type=click.Path(), help="Write the Markdown report here.")
@click.option("--plot", "plot_path", type=click.Path(), help="Write a bar chart (PNG) of TTFT and decode latency.")
@click.option("--baseline", type=click.Path(), help="Probe JSON to gate against (default: the first PROBE).")
@click.option("--fail-if-slower", "pct", type=float, help="Exit 1 if any probe's TTFT or decode p50 is more than PCT % slower than the baseline.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports and gate result as JSON.")
def report(probes: tuple[str, ...], out: str | None, plot_path: str | None, baseline: str | None,
           pct: float | None, as_json: bool) -> None:
    """Side-by-side table of probe reports, ratios to the first, optional plot and CI gate.

    Example: edgeseq report base.json new.json -o report.md --plot report.png --fail-if-slower 10
    """
    from . import report as rep

    reports = [rep.load_probe(p) for p in probes]
    base = rep.load_probe(baseline) if baseline else reports[0]
    failures = rep.gate(reports, base, pct) if pct is not None else []
    mixed = ("Columns marked [ESTIMATE] are compiler estimates of an NPU program, not measurements.\n\n"
             if any(rep.is_estimate(r) for r in reports) else "")
    lengths = rep.length_note(reports)
    if lengths:
        mixed += lengths + "\n\n"
        click.echo(lengths, err=True)
    md = (f"# Probe report\n\n{rep.table(reports)}\n\nRatios are to the first column.\n\n{mixed}"
          f"{rep.environment_note(reports)}\n")
    if pct is not None:
        md += f"\nGate (+{pct:g}% vs {rep.label(base)}): " + ("; ".join(failures) or "pass") + "\n"
    if out:
        Path(out).write_text(md)
    if plot_path:
        rep.plot(reports, Path(plot_path))
    _emit({"probes": reports, "gate_failures": failures}, as_json, rep.table(reports, markdown=False))
    if failures:
        raise CheckFailed("; ".join(failures))


@main.command()
@click.argument("matrix", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Output directory (artifacts, build.json, build.md).")
@click.option("--cache-dir", type=click.Path(), help="Content-addressed cell cache (default: ~/.cache/edgeseq/build).")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Cells built in parallel (processes).")
@click.option("--baseline", type=click.Path(), help="A previous build.json to gate latency against.")
@click.option("--max-slowdown-pct", type=float, help="Override the matrix's latency threshold (percent vs baseline).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def build(matrix: str, out: str, cache_dir: str | None, jobs: int, baseline: str | None,
          max_slowdown_pct: float | None, as_json: bool) -> None:
    """Build every checkpoint x recipe x target cell: export, verify, probe; cached by content.

    Exits 1 if any cell fails or regresses past its threshold.

    Example: edgeseq build examples/ci/matrix.yaml -o out --cache-dir .edgeseq-cache --baseline base.json
    """
    from .build import build as do_build, markdown

    def cell_done(row, done, total):
        if not as_json:
            why = "; ".join([*row.get("problems", []), *([row["error"]] if row.get("error") else [])])
            click.echo(f"  [{done}/{total}] {row['checkpoint']} {row['target']}/{row['recipe']}: {row['verdict']}"
                       f"{' (cache hit)' if row['cache_hit'] else ''}{': ' + why if why else ''}", err=True)

    s = do_build(matrix, out, cache_dir, jobs, baseline, max_slowdown_pct, cell_done)
    _emit(s, as_json, markdown(s))
    if not s["ok"]:
        bad = [f"{r['checkpoint']} {r['target']}/{r['recipe']}" for r in s["cells"] if r["verdict"] != "pass"]
        raise CheckFailed(f"{len(bad)} cell(s) failed or regressed: {', '.join(bad)}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recipes(as_json: bool) -> None:
    """List the shipped recipes, one line each.

    Example: edgeseq recipes
    """
    from .specs import RECIPE_DIR, available, load_recipe

    items = [load_recipe(n) for n in available(RECIPE_DIR)]
    _emit([r.to_dict() for r in items], as_json,
          "\n".join(f"{r.name:<12} in<={r.max_input_len:<5} out<={r.max_output_len:<5} {r.description}" for r in items))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def targets(as_json: bool) -> None:
    """List the shipped targets, one line each.

    Example: edgeseq targets
    """
    from .specs import TARGET_DIR, available, load_target

    items = [load_target(n) for n in available(TARGET_DIR)]
    _emit([t.to_dict() for t in items], as_json,
          "\n".join(f"{t.name:<22} {t.runtime}/{t.backend:<10} {t.device_class:<6} "
                    f"{'(experimental) ' if t.experimental else ''}{t.description}" for t in items))


if __name__ == "__main__":
    sys.exit(main())
