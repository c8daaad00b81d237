"""Commands that measure: probe an artifact on a device, report probes side by side, build a
checkpoint x recipe x target matrix."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import progress
from ..errors import CheckFailed
from . import emit, runner_option


@click.command()
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
@runner_option
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
    from ..probe.devices import probe_artifact
    from ..report import probe_line

    bar = None
    if not as_json and sys.stderr.isatty() and progress.mode() is not progress.Mode.OFF:
        bar = click.progressbar(length=runs + warmup, label=f"probe on {device}", file=sys.stderr)

    def step(i: int, n: int) -> None:
        if bar is not None:
            bar.update(i - bar.pos)

    rep = probe_artifact(artifact, device=device, runs=runs, warmup=warmup, input_len=input_len,
                         output_len=output_len, threads=threads, python=python, ssh_key=ssh_key,
                         ssh_config=ssh_config, runner=runner, progress=step)
    if bar is not None:
        bar.render_finish()
    emit(rep, as_json, probe_line(rep))


@click.command()
@click.argument("probes", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", type=click.Path(), help="Write the Markdown report here.")
@click.option("--plot", "plot_path", type=click.Path(), help="Write a bar chart (PNG) of TTFT and decode latency.")
@click.option("--baseline", type=click.Path(), help="Probe JSON to gate against (default: the first PROBE).")
@click.option("--fail-if-slower", "pct", type=float,
              help="Exit 1 if any probe's TTFT or decode p50 is more than PCT % slower than the baseline.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports and gate result as JSON.")
def report(probes: tuple[str, ...], out: str | None, plot_path: str | None, baseline: str | None,
           pct: float | None, as_json: bool) -> None:
    """Side-by-side table of probe reports, ratios to the first, optional plot and CI gate.

    Example: edgeseq report base.json new.json -o report.md --plot report.png --fail-if-slower 10
    """
    from .. import report as rep

    reports = [rep.load_probe(p) for p in probes]
    base = rep.load_probe(baseline) if baseline else reports[0]
    failures = rep.gate(reports, base, pct) if pct is not None else []
    lengths = rep.length_note(reports)
    if lengths:
        click.echo(lengths, err=True)
    if out:
        Path(out).write_text(report_markdown(reports, base, pct, failures, lengths))
    if plot_path:
        rep.plot(reports, Path(plot_path))
    emit({"probes": reports, "gate_failures": failures}, as_json, rep.table(reports, markdown=False))
    if failures:
        raise CheckFailed("; ".join(failures))


def report_markdown(reports: list[dict[str, Any]], base: dict[str, Any], pct: float | None, failures: list[str],
                    lengths: str | None) -> str:
    """The Markdown `report -o` writes: the table, what its columns are, the gate's verdict."""
    from .. import report as rep

    notes = ("Columns marked [ESTIMATE] are compiler estimates of an NPU program, not measurements.\n\n"
             if any(rep.is_estimate(r) for r in reports) else "")
    if lengths:
        notes += lengths + "\n\n"
    md = (f"# Probe report\n\n{rep.table(reports)}\n\nRatios are to the first column.\n\n{notes}"
          f"{rep.environment_note(reports)}\n")
    if pct is not None:
        md += f"\nGate (+{pct:g}% vs {rep.label(base)}): " + ("; ".join(failures) or "pass") + "\n"
    return md


@click.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Directory for the joined build.json and build.md.")
@click.option("--json", "as_json", is_flag=True, help="Print the joined summary as JSON.")
def merge(parts: tuple[str, ...], out: str, as_json: bool) -> None:
    """Join the build.json of every shard of one matrix into one build.json/build.md.

    Refuses parts of different matrices, a shard given twice, a cell in two parts, a missing
    shard or cell. Exits 1 if any cell failed or regressed.

    Example: edgeseq build merge shard-1/build.json shard-2/build.json -o out
    """
    from ..build import markdown, write_summary
    from ..shard import merge as join

    s = join(list(parts))
    write_summary(Path(out).resolve(), s)
    emit(s, as_json, markdown(s))
    _gate(s)


def _gate(s: dict[str, Any]) -> None:
    if not s["ok"]:
        bad = [f"{r['checkpoint']} {r['target']}/{r['recipe']}" for r in s["cells"] if r["verdict"] != "pass"]
        raise CheckFailed(f"{len(bad)} cell(s) failed or regressed: {', '.join(bad)}")


class BuildCommand(click.Command):
    """`edgeseq build MATRIX ...` builds; `edgeseq build merge PARTS... -o OUT` joins shards."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if args and args[0] == "merge":
            return merge.make_context(f"{info_name or 'build'} merge", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@click.command(cls=BuildCommand)
@click.argument("matrix", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Output directory (artifacts, build.json, build.md).")
@click.option("--cache", "--cache-dir", "cache", metavar="PATH|URL",
              help="Content-addressed cell cache: a directory (default: ~/.cache/edgeseq/build) or "
                   "s3://BUCKET/PREFIX on any S3-compatible store (endpoint and credentials the standard AWS way: "
                   "AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_PROFILE...), shared by runners.")
@click.option("--shard", metavar="K/N",
              help="Build only shard K of N (a stable assignment by cell: adding a cell moves no other); "
                   "writes a partial build.json for `edgeseq build merge`.")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Send the cells to this Dask scheduler's workers (they build into --cache, which they must "
                   "share: s3://, or a directory on a shared filesystem); -j is then the cluster's.")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Cells built in parallel (processes).")
@click.option("--baseline", type=click.Path(), help="A previous build.json to gate latency against.")
@click.option("--max-slowdown-pct", type=float, help="Override the matrix's latency threshold (percent vs baseline).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def build(matrix: str, out: str, cache: str | None, shard: str | None, scheduler: str | None, jobs: int,
          baseline: str | None, max_slowdown_pct: float | None, as_json: bool) -> None:
    """Build every checkpoint x recipe x target cell: export, verify, probe; cached by content.

    Exits 1 if any cell fails or regresses past its threshold. `edgeseq build merge PARTS... -o OUT`
    joins the build.json files of `--shard` runs (see `edgeseq build merge --help`).

    \b
    Examples:
      edgeseq build examples/ci/matrix.yaml -o out --cache .edgeseq-cache --baseline base.json
      edgeseq build examples/ci/matrix.yaml -o out-2 --shard 2/4 --cache s3://ci-cache/edgeseq
      edgeseq build examples/ci/matrix.yaml -o out --scheduler tcp://10.0.0.5:8786 --cache s3://ci-cache/edgeseq
    """
    from ..build import build as do_build
    from ..build import markdown

    def cell_done(row: dict[str, Any], done: int, total: int) -> None:
        if not as_json:
            why = "; ".join([*row.get("problems", []), *([row["error"]] if row.get("error") else [])])
            on = f" on {row['worker']}" if row.get("worker") else ""
            click.echo(f"  [{done}/{total}] {row['checkpoint']} {row['target']}/{row['recipe']}: {row['verdict']}"
                       f"{' (cache hit)' if row['cache_hit'] else ''}{on}{': ' + why if why else ''}", err=True)

    s = do_build(matrix, out, cache, jobs, baseline, max_slowdown_pct, cell_done, shard=shard, scheduler=scheduler)
    emit(s, as_json, markdown(s))
    _gate(s)


COMMANDS = [probe, report, build]
