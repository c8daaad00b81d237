"""Probe reports side by side: Markdown/terminal tables, ratios to the first column,
a bar chart, and a regression gate for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError

REQUIRED = ("device", "runtime", "runs", "load_ms", "ttft_ms", "decode_ms_per_token", "tokens_per_s",
            "peak_rss_mb", "artifact_bytes")

# (label, getter, higher_is_better)
METRICS = [
    ("load ms", lambda r: r["load_ms"], False),
    ("TTFT p50 ms", lambda r: r["ttft_ms"]["p50"], False),
    ("TTFT p90 ms", lambda r: r["ttft_ms"]["p90"], False),
    ("decode p50 ms/token", lambda r: (r["decode_ms_per_token"] or {}).get("p50"), False),
    ("decode p90 ms/token", lambda r: (r["decode_ms_per_token"] or {}).get("p90"), False),
    ("tokens/s", lambda r: r["tokens_per_s"], True),
    ("peak RSS MB", lambda r: r["peak_rss_mb"], False),
    ("artifact MB", lambda r: r["artifact_bytes"] / 1e6, False),
]


def is_estimate(r: dict[str, Any]) -> bool:
    return r.get("kind") == "estimate"


def kind(r: dict[str, Any]) -> str:
    """measured | estimate (a compiler's figures) | emulated (the native runner under qemu-user:
    instruction-set emulation, so its times say nothing about a device's latency)."""
    return r.get("kind", "measured")


def probe_line(r: dict[str, Any]) -> str:
    d = r["decode_ms_per_token"] or {"p50": float("nan"), "p90": float("nan")}
    env = r.get("environment", {})
    if is_estimate(r):
        n = r.get("npu", {})
        return (f"ESTIMATE (not measured; {r.get('source', 'compiler estimate')})\n"
                f"  {r.get('checkpoint')} {r.get('target')}/{r.get('recipe')}: {n.get('accelerator')} at "
                f"{n.get('clock_mhz')} MHz ({n.get('system_config')}), {r.get('output_len')} tokens out\n"
                f"  encode {n.get('encode_estimated_ms')} ms ({n.get('encode_npu_op_percent')}% of operators on "
                f"the NPU)  decode {d['p50']} ms/token ({n.get('decode_npu_op_percent')}% on the NPU)\n"
                f"  TTFT {r['ttft_ms']['p50']} ms  {r['tokens_per_s']:.1f} tokens/s  SRAM "
                f"{max(n.get('encode_sram_kib', 0), n.get('decode_sram_kib', 0)):.1f} KiB  "
                f"artifact {r['artifact_bytes'] / 1e6:.2f} MB")
    head = "EMULATED (instruction-set emulation: not a latency)\n" if kind(r) == "emulated" else ""
    return (f"{head}probe {r.get('checkpoint')} {r.get('target')}/{r.get('recipe')} on {r['device']} "
            f"({env.get('cpu', '?')}, {env.get('threads', '?')} threads), "
            f"{r.get('input_len')} in / {r.get('output_len')} out, {r['runs']} runs\n"
            f"  load {r['load_ms']:.1f} ms  TTFT p50 {r['ttft_ms']['p50']:.2f} ms (p90 {r['ttft_ms']['p90']:.2f})  "
            f"decode p50 {d['p50']:.3f} ms/token (p90 {d['p90']:.3f})  {r['tokens_per_s']:.1f} tokens/s  "
            f"peak RSS {r['peak_rss_mb']:.0f} MB  artifact {r['artifact_bytes'] / 1e6:.2f} MB")


def length_note(reports: list[dict[str, Any]]) -> str:
    """A sentence when the probes ran different input/output/encoder lengths: TTFT grows with
    the input, per-token decode with the cache, so their ratios then compare unlike work."""
    shapes = {(r.get("input_len"), r.get("encoder_len"), r.get("output_len")) for r in reports}
    if len(shapes) <= 1:
        return ""
    said = "; ".join(f"{label(r)}: {r.get('input_len')} in (encoder {r.get('encoder_len')}) / "
                     f"{r.get('output_len')} out" for r in reports)
    return (f"Warning: these probes ran different lengths, so their ratios compare different work "
            f"(re-probe with the same --input-len/--output-len): {said}.")


def load_probe(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: not a probe report (expected a JSON object)")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputError(f"{p}: not a probe report (missing {', '.join(missing)})")
    return data


def label(r: dict[str, Any]) -> str:
    """A probe's column name; an estimate says so in its name, so it is never read as a measurement."""
    mark = {"estimate": " [ESTIMATE]", "emulated": " [EMULATED]"}.get(kind(r), "")
    return f"{r.get('checkpoint', '?')} {r.get('target', r['runtime'])}/{r.get('recipe', '?')} @{r['device']}{mark}"


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def table(reports: list[dict[str, Any]], markdown: bool = True) -> str:
    """Metrics as rows, probes as columns; each cell after the first carries its ratio to column 1."""
    heads = ["metric"] + [label(r) for r in reports]
    rows = []
    for name, get, _ in METRICS:
        base = get(reports[0])
        cells = [name]
        for i, r in enumerate(reports):
            v = get(r)
            cell = _fmt(v)
            if i and v is not None and base:
                cell += f" ({v / base:.2f}x)"
            cells.append(cell)
        rows.append(cells)
    if markdown:
        out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        out += ["| " + " | ".join(c) + " |" for c in rows]
        return "\n".join(out)
    widths = [max(len(row[i]) for row in [heads, *rows]) for i in range(len(heads))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [heads, *rows])


def environment_note(reports: list[dict[str, Any]]) -> str:
    notes = []
    for r in reports:
        env = r.get("environment", {})
        if is_estimate(r):
            notes.append(f"- {label(r)}: not measured; {r.get('source', 'compiler estimate')}")
            continue
        if kind(r) == "emulated":
            notes.append(f"- {label(r)}: emulated ({env.get('cpu', '?')}), not a latency; "
                         f"{r.get('input_len')} in / {r.get('output_len')} out, {r['runs']} runs")
            continue
        notes.append(f"- {label(r)}: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, "
                     f"{env.get('threads', '?')} threads, {env.get('date', '?')}, "
                     f"{r.get('input_len')} in / {r.get('output_len')} out, {r['runs']} runs")
    return "\n".join(notes)


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label(r) for r in reports]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.4 * len(reports)), 4.2))
    for ax, (title, key) in zip(axes, [("time to first token (ms)", "ttft_ms"),
                                       ("decode (ms / token)", "decode_ms_per_token")], strict=True):
        p50 = [(r[key] or {}).get("p50") or 0 for r in reports]
        p90 = [(r[key] or {}).get("p90") or 0 for r in reports]
        xs = range(len(reports))
        ax.bar(xs, p50, color="#4878a8", label="p50")
        ax.errorbar(xs, p50, yerr=[[0] * len(p50), [max(b - a, 0) for a, b in zip(p50, p90, strict=True)]],
                    fmt="none", ecolor="black", capsize=4, label="p90")
        ax.set_xticks(list(xs), [lbl.replace(" @", "\n@") for lbl in labels], fontsize=7, rotation=15)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gate(reports: list[dict[str, Any]], baseline: dict[str, Any], pct: float) -> list[str]:
    """Failures: a probe whose TTFT or decode p50 exceeds the baseline's by more than pct %."""
    failures = []
    for r in reports:
        if r is baseline:
            continue
        if is_estimate(r) != is_estimate(baseline):
            raise InputError(f"cannot gate {label(r)} against {label(baseline)}: one is an estimate, the other "
                             f"a measurement")
        if kind(r) != kind(baseline):
            raise InputError(f"cannot gate {label(r)} against {label(baseline)}: one is {kind(r)}, the other "
                             f"{kind(baseline)} (an emulated run's times are not latencies)")
        for name, key in (("TTFT p50", "ttft_ms"), ("decode p50", "decode_ms_per_token")):
            b, v = (baseline[key] or {}).get("p50"), (r[key] or {}).get("p50")
            if b and v and v > b * (1 + pct / 100):
                failures.append(f"{label(r)}: {name} {v:.3f} ms is {100 * (v / b - 1):.0f}% slower than "
                                f"baseline {b:.3f} ms (allowed {pct:g}%)")
    return failures
