"""Issue 22's targets against CTranslate2 int8, judged from one compare.py section's rows.

compare.py calls `verdicts` for the t5-small sections (64 and 512 input tokens), so every run
says by itself whether edgeseq is >= 3x faster per token and >= 2x sooner to the first token
than CTranslate2 int8, whether `mixed` is within 1.4x of its memory roofline, whether the
quantized files are no bigger than CTranslate2's int8 file (+2%) and whether the int8 exports
took <= 60 s. Rows are compare.Row (duck-typed here: tool, variant, precision, stats, mb,
export_s, roof_ms, cross), so tests can build them without the benchmark's imports.
"""

from __future__ import annotations

from typing import Any

PER_TOKEN_X = 3.0  # CTranslate2 int8 per-token time / edgeseq's best quantized
TTFT_X = 2.0  # CTranslate2 int8 TTFT / edgeseq's best quantized TTFT
MIXED_ROOF_X = 1.4  # mixed per-token / its memory roofline
SIZE_SLACK = 1.02  # quantized files <= CTranslate2 int8's file * this
EXPORT_S = 60.0  # int8 export wall time


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def verdicts(rows: list[Any]) -> list[str]:
    """Markdown bullets, one per target, from rows that ran (rows without stats are ignored)."""
    ok = [r for r in rows if r.stats]
    ct2 = next((r for r in ok if r.tool == "CTranslate2" and r.variant == "int8"), None)
    quant = [r for r in ok if r.tool.startswith("edgeseq") and r.precision != "fp32"]
    if ct2 is None or not quant:
        return [f"- against CTranslate2 int8: {'its row' if ct2 is None else 'no quantized edgeseq row'} did not run; "
                "no ratios"]
    lines = []
    bt = min(quant, key=lambda r: r.stats["tok_p50"])
    x = ct2.stats["tok_p50"] / bt.stats["tok_p50"]
    lines.append(f"- per token, CTranslate2 int8 / best quantized edgeseq: {ct2.stats['tok_p50']:.3f} / "
                 f"{bt.stats['tok_p50']:.3f} ms ({bt.name}) = {x:.2f}x (target >= {PER_TOKEN_X:g}x: {_verdict(x >= PER_TOKEN_X)})")
    bf = min(quant, key=lambda r: r.stats["ttft_p50"])
    x = ct2.stats["ttft_p50"] / bf.stats["ttft_p50"]
    lines.append(f"- TTFT, CTranslate2 int8 / best quantized edgeseq: {ct2.stats['ttft_p50']:.2f} / "
                 f"{bf.stats['ttft_p50']:.2f} ms ({bf.name}) = {x:.2f}x (target >= {TTFT_X:g}x: {_verdict(x >= TTFT_X)})")
    for r in (r for r in quant if r.variant.startswith("mixed") and r.roof_ms):
        x = r.stats["tok_p50"] / r.roof_ms
        mode = " (cross_attention: memory, its own roofline)" if r.cross == "memory" else ""
        lines.append(f"- {r.name}{mode} per token / its roofline: {r.stats['tok_p50']:.3f} / {r.roof_ms:.2f} ms = {x:.2f}x "
                     f"(target <= {MIXED_ROOF_X:g}x: {_verdict(x <= MIXED_ROOF_X)})")
    sized = [r for r in quant if r.mb]
    if ct2.mb and sized:
        limit = ct2.mb * SIZE_SLACK
        big = [r for r in sized if r.mb > limit]
        lines.append(f"- quantized files <= CTranslate2 int8's {ct2.mb:.1f} MB + {SIZE_SLACK - 1:.0%} = {limit:.1f} MB: "
                     f"largest {max(r.mb for r in sized):.1f} MB ({_verdict(not big)}"
                     f"{': ' + ', '.join(f'{r.name} {r.mb:.1f}' for r in big) if big else ''})")
    int8 = [r for r in quant if r.precision == "int8" and r.export_s is not None]
    if int8:
        slow = max(int8, key=lambda r: r.export_s)
        lines.append(f"- int8 export: slowest {slow.name} {slow.export_s:.0f} s (target <= {EXPORT_S:.0f} s: "
                     f"{_verdict(slow.export_s <= EXPORT_S)})")
    return lines
