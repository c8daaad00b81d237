"""Sharding a build matrix across CI runners, and joining the shards' build.json files again.

A cell's shard is `sha256("checkpoint/recipe/target") mod N` over the names as the matrix
writes them: a cell's shard depends on that cell alone, so adding or removing a cell moves no
other cell to another shard (shards are balanced on average, not exactly). Each shard writes a
partial build.json that records the whole matrix's cell list and a digest of it; `merge`
joins the parts and refuses in one line parts of different matrices, a shard given twice, a
cell in two parts, or a missing shard or cell.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from .errors import InputError

CellId = tuple[str, str, str]  # (checkpoint, recipe, target) names as the matrix writes them


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`K/N` (1 <= K <= N) -> (K, N); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise InputError(f"--shard {text}: expected K/N, e.g. 1/4")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise InputError(f"--shard {text}: K must be between 1 and N (N >= 1)")
    return k, n


def cell_name(cell: CellId) -> str:
    return "/".join(cell)


def shard_of(cell: CellId, n: int) -> int:
    """The 1-based shard of a cell among n: stable under adding or removing other cells."""
    return int.from_bytes(hashlib.sha256(cell_name(cell).encode()).digest()[:8], "big") % n + 1


def matrix_digest(matrix_text: str, cells: list[CellId]) -> str:
    """What identifies 'the same matrix' across clones: the matrix file's text and its cells."""
    h = hashlib.sha256(matrix_text.encode())
    for c in cells:
        h.update(b"\0" + cell_name(c).encode())
    return h.hexdigest()[:16]


def row_id(row: dict[str, Any]) -> str:
    return str(row["cell"])


def _load_part(path: str) -> dict[str, Any]:
    from .errors import read_json_object

    part = read_json_object(Path(path), "a build.json object")
    shard = part.get("shard")
    if not isinstance(shard, dict) or not isinstance(part.get("cells"), list) or \
            not isinstance(part.get("matrix_cells"), list):
        raise InputError(f"{path}: not a shard's build.json (built without --shard K/N)")
    return part


def merge(paths: list[str]) -> dict[str, Any]:
    """One build summary from the shards' build.json files (every shard exactly once)."""
    if not paths:
        raise InputError("build merge: no build.json given")
    parts = [(p, _load_part(p)) for p in paths]
    first_path, first = parts[0]
    n = int(first["shard"]["count"])
    by_index: dict[int, str] = {}
    for p, part in parts:
        if part.get("matrix_digest") != first.get("matrix_digest") or int(part["shard"]["count"]) != n:
            raise InputError(f"build merge: {p} and {first_path} are shards of different matrices "
                             f"(or of different shard counts)")
        k = int(part["shard"]["index"])
        if k in by_index:
            raise InputError(f"build merge: shard {k}/{n} given twice ({by_index[k]}, {p})")
        by_index[k] = p
    missing = sorted(set(range(1, n + 1)) - set(by_index))
    if missing:
        raise InputError(f"build merge: shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing")
    rows: dict[str, dict[str, Any]] = {}
    for p, part in parts:
        for r in part["cells"]:
            if row_id(r) in rows:
                raise InputError(f"build merge: cell {row_id(r)} is in two parts ({p} and another)")
            rows[row_id(r)] = r
    order = [str(c) for c in first["matrix_cells"]]
    gaps = [c for c in order if c not in rows]
    extra = [c for c in rows if c not in set(order)]
    if gaps or extra:
        raise InputError(f"build merge: cell {(gaps or extra)[0]} is " +
                         ("missing from its shard" if gaps else "not in the matrix") +
                         f" ({len(gaps) + len(extra)} such)")
    cells = [rows[c] for c in order]
    return {"matrix": first["matrix"], "matrix_digest": first["matrix_digest"],
            "date": max(str(part["date"]) for _, part in parts),
            "seconds": max(float(part["seconds"]) for _, part in parts),
            "cache_dir": first.get("cache_dir"), "thresholds": first.get("thresholds", {}),
            "shards": [{"index": k, "count": n, "path": str(Path(by_index[k]).resolve()),
                        "seconds": dict(parts)[by_index[k]]["seconds"]} for k in sorted(by_index)],
            "cells": cells, "ok": all(r.get("verdict") == "pass" for r in cells)}


