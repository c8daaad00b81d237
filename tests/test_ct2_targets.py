"""benchmarks/ct2_targets.py: issue 22's verdicts from a compare.py section's rows (built here
as plain rows: no benchmark run, no peers)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

# Loaded from its file: benchmarks/ on sys.path would stay there for every later test of this worker.
_spec = importlib.util.spec_from_file_location(
    "ct2_targets", Path(__file__).resolve().parent.parent / "benchmarks" / "ct2_targets.py")
assert _spec is not None and _spec.loader is not None
ct2_targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ct2_targets)


@dataclass
class Row:
    tool: str
    variant: str
    precision: str
    tok: float
    ttft: float
    mb: float | None = None
    export_s: float | None = None
    roof_ms: float | None = None
    cross: str = "kv"
    ran: bool = True

    @property
    def stats(self) -> dict | None:
        return {"tok_p50": self.tok, "ttft_p50": self.ttft} if self.ran else None

    @property
    def name(self) -> str:
        return f"{self.tool} {self.variant}"


def section(mixed_tok: float = 0.88, mixed_ttft: float = 6.9, int8_mb: float = 61.3,
            int8_export: float = 30.0) -> list[Row]:
    return [Row("eager transformers", "fp32", "fp32", 17.2, 49.9, 242.0, 0.0),
            Row("CTranslate2", "int8", "int8", 6.24, 21.2, 60.9, 0.8),
            Row("edgeseq executorch-xnnpack", "fp32", "fp32", 0.1, 0.1, 242.3, 18.0),  # fp32 never counts
            Row("edgeseq executorch-xnnpack", "int8", "int8", 1.03, 7.4, int8_mb, int8_export, 0.80),
            Row("edgeseq executorch-xnnpack", "mixed", "mixed", mixed_tok, mixed_ttft, 51.5, 28.0, 0.60),
            Row("edgeseq litert-cpu", "int8", "int8", 0.5, 0.5, ran=False)]  # a row that did not run


def verdict(lines: list[str], start: str) -> str:
    line = next(x for x in lines if x.startswith(start))
    return "MISSED" if "MISSED" in line else "met"


def test_every_target_judged_from_the_rows():
    lines = ct2_targets.verdicts(section())
    assert len(lines) == 5
    assert "6.240 / 0.880 ms (edgeseq executorch-xnnpack mixed) = 7.09x" in lines[0]
    assert verdict(lines, "- per token") == "met" and verdict(lines, "- TTFT") == "met"
    assert verdict(lines, "- edgeseq executorch-xnnpack mixed per token") == "MISSED"  # 0.88 / 0.60 = 1.47x
    assert verdict(lines, "- quantized files") == "met" and verdict(lines, "- int8 export") == "met"


@pytest.mark.parametrize("kw, start", [
    (dict(int8_mb=62.5), "- quantized files"),  # > 60.9 MB * 1.02
    (dict(int8_export=61.0), "- int8 export"),
])
def test_a_miss_is_reported(kw, start):
    assert verdict(ct2_targets.verdicts(section(**kw)), start) == "MISSED"


def test_ttft_is_the_best_quantized_rows_not_the_fastest_decoders():
    rows = section(mixed_tok=0.5, mixed_ttft=12.0)  # mixed decodes fastest; int8 reaches the first token sooner
    lines = ct2_targets.verdicts(rows)
    assert "(edgeseq executorch-xnnpack int8) = 2.86x" in next(x for x in lines if x.startswith("- TTFT"))
    lines = ct2_targets.verdicts([r for r in rows if r.name != "edgeseq executorch-xnnpack int8"])
    assert verdict(lines, "- TTFT") == "MISSED"  # 21.2 / 12.0 = 1.77x


def test_no_ct2_row_is_one_line_not_a_ratio():
    rows = [r for r in section() if r.tool != "CTranslate2"]
    assert ct2_targets.verdicts(rows) == ["- against CTranslate2 int8: its row did not run; no ratios"]
