"""`edgeseq build`: checkpoints x recipes x targets, each cell export -> verify -> probe,
with a content-addressed cache, a summary and gates; sharded across CI runners, on a Dask cluster.

Cell cache key = sha256 over: the checkpoint's file hashes, the serialized recipe and
target, and the versions of edgeseq, torch, transformers and the runtime packages. An
entry holds `artifact/` and `cell.json` (verify + probe results) in a `toolchain.cache`
store (a directory, or an s3:// object store shared by runners); it is reused only after its
files' hashes check out, else it is rebuilt. Sharding and merging: `toolchain.shard`; cells on
a cluster: `toolchain.cluster`.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, ClassVar

from . import cluster, schema
from .cache import RESULTS, CacheStore, open_store
from .errors import InputError, first_line
from .schema import AbsentIsNull, AtLeast, Keys, Newer, NonBlank, NonEmpty, Phrase, must, short
from .shard import cell_name, matrix_digest, parse_shard, shard_of

MATRIX_FORMAT_VERSION = 1
THRESHOLD_KEYS = ("max_accuracy_drop", "max_slowdown_pct")
Names = Annotated[list[Annotated[str, NonBlank()]], Phrase("a non-empty list of names or paths"), NonEmpty(),
                  AbsentIsNull()]
PositiveInt = Annotated[int | None, Phrase("a positive integer"), AtLeast(1)]


@dataclass(frozen=True, kw_only=True)
class MatrixFile:
    """A build matrix as written (YAML); `load_matrix` resolves it into a Matrix. (Keys in
    alphabetical order: the order an unknown key's message lists them.)"""

    KIND: ClassVar[str] = "matrix"

    checkpoints: Names
    # Cells left out: {checkpoint, recipe, target} glob patterns, all given ones must match.
    exclude: Annotated[list[Annotated[dict[str, str], Keys(("checkpoint", "recipe", "target")), NonEmpty()]] | None,
                       Phrase("a list of {checkpoint, recipe, target} patterns (strings)")] = None
    format_version: Annotated[int, Phrase("a positive integer"), AtLeast(1), Newer(MATRIX_FORMAT_VERSION)] = \
        MATRIX_FORMAT_VERSION
    probe_runs: PositiveInt = 5
    recipes: Names
    targets: Names
    thresholds: Annotated[dict[str, Annotated[float, Phrase("a finite number")]], Keys(THRESHOLD_KEYS)] | None = None
    verify_limit: PositiveInt = None

    def validate(self, where: str) -> None:
        drop = (self.thresholds or {}).get("max_accuracy_drop")
        if drop is not None and drop < 0:
            raise must(where, self.KIND, "thresholds.max_accuracy_drop", "a finite number >= 0", drop)


@dataclass
class Matrix:
    checkpoints: list[Path]
    recipes: list[str]
    targets: list[str]
    exclude: list[dict[str, str]]
    thresholds: dict[str, float]
    verify_limit: int | None
    probe_runs: int


def load_matrix(path: str | Path) -> Matrix:
    """Parse and check a matrix, including that every recipe and target in it loads: a typo
    fails the whole build in one line, before any cell runs."""
    from .specs import load_recipe, load_target, load_yaml

    p = Path(path)
    spec = schema.load(MatrixFile, load_yaml(p), str(p))
    base = p.resolve().parent

    def rel(s: str) -> str:  # recipe/target names stay names; files resolve next to the matrix
        return str(base / s) if s.endswith((".yaml", ".yml")) else s

    cks = []
    for c in spec.checkpoints:
        try:
            ok = (base / c).is_dir()
        except (OSError, ValueError):  # NUL byte, name too long
            ok = False
        if not ok:
            raise InputError(f"{p}: matrix key 'checkpoints': checkpoint not found: {short(c)}")
        cks.append(base / c)
    recipes, targets = [rel(r) for r in spec.recipes], [rel(t) for t in spec.targets]
    for key, names, load in (("recipes", recipes, load_recipe), ("targets", targets, load_target)):
        for n in names:
            try:
                load(n)
            except InputError as e:
                raise InputError(f"{p}: matrix key {key!r}: {e}") from None
    # probe_runs: null means the default, as for the other optional keys.
    return Matrix(cks, recipes, targets, spec.exclude or [], dict(spec.thresholds or {}), spec.verify_limit,
                  spec.probe_runs or 5)


def _versions(target) -> dict[str, str]:
    """What a cell's artifact depends on besides its inputs: edgeseq's source, the common
    packages and the target backend's own tools (its `versions()`: a new Vela or coremltools
    is a new cell)."""
    from . import backends, source_digest

    out = {"edgeseq_source": source_digest()}  # a changed exporter is a new cell
    for dist in ["edgeseq", "torch", "transformers"]:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return {**out, **backends.for_target(target).versions()}


def cell_key(ck_hashes: dict[str, str], recipe, target) -> str:
    blob = json.dumps({"checkpoint": ck_hashes, "recipe": recipe.to_dict(), "target": target.to_dict(),
                       "versions": _versions(target)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _produce(ck: Path, recipe, target, staged: Path, verify_limit: int | None, probe_runs: int) -> Path:
    """Build one cell into the entry dir `staged` (`artifact/` + `cell.json`), for the store to publish."""
    from .checkpoint import load_checkpoint
    from .export import export
    from .probe.devices import LocalTransport, run_probe
    from .verify import verify_artifact

    staged.mkdir(parents=True)
    art = export(load_checkpoint(ck), recipe, target, staged / "artifact")
    # Where the runtime cannot execute here (Core ML on Linux) the structure is checked for
    # real and numerics and latency are not run.
    rep = verify_artifact(art, limit=verify_limit)
    probe = None if rep.get("structure_only") else run_probe(
        LocalTransport(), art.path, art.manifest,
        ["--runs", str(probe_runs), "--warmup", "1", "--device-label", "local"])
    results = {"verify": rep, "probe": probe, "model_bytes": art.model_bytes,
               "export_seconds": art.meta.export_seconds}
    (staged / RESULTS).write_text(json.dumps(results, indent=1))
    return staged


def _copy_atomic(src: Path, dest: Path) -> None:
    """Copy an artifact dir to dest via a temp sibling, so dest is never a half copy."""
    from .artifact import remove_stale

    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest.parent, dest.name)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dest(out: str, row: dict[str, Any]) -> Path:
    return Path(out) / row["checkpoint"] / row["target"] / row["recipe"]


def cell_names(ck: str, recipe_name: str, target_name: str) -> tuple[str, str, str]:
    """A cell as the matrix names it: what sharding and merging identify it by."""
    return Path(ck).name, Path(recipe_name).stem, Path(target_name).stem


def base_row(ck: str, recipe_name: str, target_name: str) -> dict[str, Any]:
    names = cell_names(ck, recipe_name, target_name)
    return {"cell": cell_name(names), "checkpoint": names[0], "recipe": names[1], "target": names[2],
            "status": "failed", "cache_hit": False}


def _cell_worker() -> None:
    """A `--jobs` worker lowers its programs in one process: the cells already use the cores
    (ExecuTorch's two-process lowering, backends/executorch/parallel.py, is for a lone export)."""
    from .backends.executorch.parallel import ENV

    os.environ.setdefault(ENV, "1")


def run_cell(ck: str, recipe_name: str, target_name: str, out: str | None, store: CacheStore | str,
             verify_limit: int | None, probe_runs: int) -> dict[str, Any]:
    """One cell, end to end: served from `store` if an intact entry is there, else built and
    published to it; its artifact copied under `out` (None: left in the store, as on a cluster
    worker). Never raises: failures become the cell's status and one-line error."""
    from .checkpoint import load_checkpoint
    from .specs import load_recipe, load_target

    t0 = time.time()
    row = base_row(ck, recipe_name, target_name)
    try:
        if isinstance(store, str):
            store = open_store(store, check=False)
        recipe, target = load_recipe(recipe_name), load_target(target_name)
        row.update(recipe=recipe.name, target=target.name)
        key = cell_key(load_checkpoint(ck).file_hashes(), recipe, target)
        row["key"], row["_key"] = key[:16], key
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)  # the scratch dir lives there (same filesystem)
        with store.claim(key), tempfile.TemporaryDirectory(prefix=".edgeseq-cell-", dir=out) as tmp:
            entry = store.get(key, Path(tmp))
            row["cache_hit"] = entry is not None
            if entry is None:
                entry = store.put(key, _produce(Path(ck), recipe, target, Path(tmp) / "new", verify_limit,
                                                probe_runs))
            results = json.loads((entry / RESULTS).read_text())
            if out is not None:
                _copy_atomic(entry / "artifact", _dest(out, row))
                row["artifact"] = str(_dest(out, row))
        row.update(result_fields(results))
    except Exception as e:  # one failing cell must not stop the others
        fail(row, e)
    row["seconds"] = round(time.time() - t0, 2)
    return row


def result_fields(results: dict[str, Any]) -> dict[str, Any]:
    """A built cell's row fields from its stored results (verify, probe, size). A probe's kind
    passes through as ``latency_kind``: an NPU compiler's estimate stays labelled one, with a
    note, so the gate never compares it with a measurement (``verdict``)."""
    v, p = results["verify"], results["probe"] or {}
    out = dict(status="ok", model_bytes=results["model_bytes"],
               sequence_match=v.get("sequence_match"), task_accuracy=v.get("task_accuracy"),
               reference_accuracy=v.get("reference_accuracy"), verify_passed=v["passed"],
               verify_failures=list(v.get("failures") or []),
               ttft_ms=(p.get("ttft_ms") or {}).get("p50"),
               decode_ms_per_token=(p.get("decode_ms_per_token") or {}).get("p50"),
               latency_kind=p.get("kind", "measured") if p else None)
    if "numerics" in v:
        out["note"] = f"structure only: {v['numerics']}"
    if p.get("kind") == "estimate":
        out["note"] = "latency is the NPU compiler's estimate, not a measurement"
    return out


def fail(row: dict[str, Any], e: Exception) -> None:
    """Mark a cell row failed with its one-line error (an InputError as it is, else with its type)."""
    first = first_line(e)
    row.update(status="failed", error=first if isinstance(e, InputError) else f"{type(e).__name__}: {first}")


def fetch_artifact(row: dict[str, Any], store: CacheStore, out: str) -> None:
    """A cell built elsewhere (a cluster worker): its artifact from the store, hash-checked, into out."""
    key = row.get("_key")
    if row["status"] != "ok" or not key:
        return
    try:
        with tempfile.TemporaryDirectory(prefix=".edgeseq-cell-", dir=out) as tmp:
            entry = store.get(key, Path(tmp))
            if entry is None:
                raise InputError(f"{store.describe()}: the entry of cell {row['cell']} is missing or corrupt")
            _copy_atomic(entry / "artifact", _dest(out, row))
        row["artifact"] = str(_dest(out, row))
    except Exception as e:
        fail(row, e)


def _excluded(m: Matrix, ck: Path, recipe: str, target: str) -> bool:
    names = {"checkpoint": ck.name, "recipe": Path(recipe).stem, "target": Path(target).stem}
    return any(all(fnmatch.fnmatch(names[k], pat) for k, pat in e.items()) for e in m.exclude)


def plan(m: Matrix, kn: tuple[int, int] | None) -> list[tuple[str, str, str]]:
    """The matrix's cells, in matrix order (those of shard K/N when kn = (K, N)), as (checkpoint
    path, recipe, target) as the matrix gives them."""
    every = [(str(ck), r, t) for ck in m.checkpoints for r in m.recipes for t in m.targets
             if not _excluded(m, ck, r, t)]
    return [c for c in every if kn is None or shard_of(cell_names(*c), kn[1]) == kn[0]]


def verdict(r: dict, thresholds: dict[str, float], base: dict | None) -> None:
    """Annotate one row with its verdict (pass | fail) and, when it fails, why: the verify
    failures themselves, the accuracy drop, or the slowdown against `base` (its baseline row)."""
    problems = []
    if r["status"] == "ok":
        if not r["verify_passed"]:
            problems.append("verify failed: " + ("; ".join(r.get("verify_failures") or []) or "see its manifest"))
        drop = thresholds.get("max_accuracy_drop")
        if drop is not None and r["task_accuracy"] is not None and \
                r["reference_accuracy"] - r["task_accuracy"] > drop + 1e-12:
            problems.append(f"accuracy drop {r['reference_accuracy'] - r['task_accuracy']:.4f} > {drop:g}")
        slow = thresholds.get("max_slowdown_pct")
        if base and slow is not None and base.get("decode_ms_per_token") and r["decode_ms_per_token"] and \
                base.get("latency_kind", "measured") == r.get("latency_kind", "measured"):
            pct = 100 * (r["decode_ms_per_token"] / base["decode_ms_per_token"] - 1)
            r["slowdown_pct"] = round(pct, 1)
            if pct > slow:
                problems.append(f"decode {pct:+.0f}% vs baseline (allowed {slow:+g}%)")
    r["verdict"] = "fail" if r["status"] != "ok" or problems else "pass"
    if problems:
        r["problems"] = problems


def verdicts(rows: list[dict], thresholds: dict[str, float], baseline: dict | None) -> None:
    """Annotate rows with a verdict against the thresholds and, if given, a baseline build.json."""
    base = {(b["checkpoint"], b["recipe"], b["target"]): b for b in (baseline or {}).get("cells", [])}
    for r in rows:
        verdict(r, thresholds, base.get((r["checkpoint"], r["recipe"], r["target"])))


def build(matrix_path: str, out: str, cache_url: str | None, jobs: int, baseline_path: str | None,
          max_slowdown_pct: float | None = None, progress=None, shard: str | None = None,
          scheduler: str | None = None) -> dict[str, Any]:
    """Build the matrix's cells (those of shard K/N with `shard`; on a Dask cluster with
    `scheduler`). Every input, the cache store and the scheduler are checked before anything
    is written."""
    kn = parse_shard(shard)
    m = load_matrix(matrix_path)
    baseline = None
    if baseline_path:
        try:
            baseline = json.loads(Path(baseline_path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{baseline_path}: cannot read baseline build.json: {e}") from None
    thresholds = dict(m.thresholds)
    if max_slowdown_pct is not None:
        thresholds["max_slowdown_pct"] = max_slowdown_pct
    store = open_store(cache_url)
    client = cluster.connect(scheduler) if scheduler else None
    try:
        return _build(m, matrix_path, Path(out).resolve(), store, jobs, thresholds, baseline, progress, kn, client)
    finally:
        if client is not None:
            with cluster.quiet():
                client.close()


def _build(m: Matrix, matrix_path: str, outp: Path, store: CacheStore, jobs: int, thresholds: dict[str, float],
           baseline: dict | None, progress, kn: tuple[int, int] | None, client) -> dict[str, Any]:
    try:
        outp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output directory {outp}: {e.strerror}") from None
    every, cells = plan(m, None), plan(m, kn)
    t0 = time.time()
    args = [(ck, r, t, None if client else str(outp), store, m.verify_limit, m.probe_runs) for ck, r, t in cells]
    rows: dict[int, dict] = {}
    base = {(b["checkpoint"], b["recipe"], b["target"]): b for b in (baseline or {}).get("cells", [])}

    def done(i: int, row: dict) -> None:  # each cell's verdict as soon as it is built, with its reasons
        if client is not None:
            row = {**base_row(*cells[i]), **row}
            fetch_artifact(row, store, str(outp))
        row.pop("_key", None)
        verdict(row, thresholds, base.get((row["checkpoint"], row["recipe"], row["target"])))
        rows[i] = row
        if progress:
            progress(row, len(rows), len(args))

    if client is not None:
        cluster.run_cells(client, args, done)
    elif jobs > 1:
        import multiprocessing

        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_cell_worker) as pool:
            for i, row in enumerate(pool.map(run_cell, *zip(*args, strict=True))):
                done(i, row)
    else:
        from . import progress as live

        for i, a in enumerate(args):
            live.note(f"build: cell {i + 1}/{len(args)}: {Path(a[0]).name} {Path(a[2]).stem}/{Path(a[1]).stem}")
            done(i, run_cell(*a))
    ordered = [rows[i] for i in sorted(rows)]
    summary = {"matrix": str(Path(matrix_path).resolve()), "date": _dt.datetime.now(_dt.UTC).isoformat(
        timespec="seconds"), "seconds": round(time.time() - t0, 2), "cache_dir": store.describe(),
        "thresholds": thresholds, "cells": ordered, "ok": all(r["verdict"] == "pass" for r in ordered),
        "matrix_digest": matrix_digest(Path(matrix_path).read_text(), [cell_names(*c) for c in every])}
    if kn is not None:  # a partial build.json: what `build merge` needs to check the parts
        summary.update(shard={"index": kn[0], "count": kn[1]}, matrix_cells=[cell_name(cell_names(*c)) for c in every])
    if client is not None:
        summary["scheduler"] = client.scheduler.address
    write_summary(outp, summary)
    return summary


def write_summary(outp: Path, summary: dict[str, Any]) -> None:
    from .artifact import write_json_atomic, write_text_atomic

    try:
        outp.mkdir(parents=True, exist_ok=True)
        write_json_atomic(outp / "build.json", summary)
        write_text_atomic(outp / "build.md", markdown(summary))
    except OSError as e:
        raise InputError(f"cannot write the build summary in {outp}: {e.strerror}") from None


def markdown(s: dict[str, Any]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"# edgeseq build ({s['date']}, {s['seconds']} s)", "",
             "| checkpoint | target | recipe | status | cache | MB | accuracy (eager) | TTFT ms | ms/token | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["cells"]:
        acc = (f"{f(r.get('task_accuracy'), '.4f')} ({f(r.get('reference_accuracy'), '.4f')})"
               if r["status"] == "ok" else "-")
        mb = f(r["model_bytes"] / 1e6, ".2f") if r.get("model_bytes") else "-"
        verdict = r["verdict"] + (": " + "; ".join(r.get("problems", [])) if r.get("problems") else "")
        if r.get("error"):
            verdict += f": {r['error']}"
        if r.get("note"):
            verdict += f" ({r['note']})"
        where = f" on {r['worker']}" if r.get("worker") else ""
        lines.append(f"| {r['checkpoint']} | {r['target']} | {r['recipe']} | {r['status']} | "
                     f"{'hit' if r['cache_hit'] else 'built'}{where} | {mb} | {acc} | {f(r.get('ttft_ms'), '.2f')} | "
                     f"{f(r.get('decode_ms_per_token'), '.3f')} | {verdict} |")
    return "\n".join(lines) + "\n"
