"""Eval and calibration rows: JSONL files of {"input": ..., "target": ...} ("target" optional),
and the one rule for which set a command uses when none is given.

    the file given (verify --eval; a recipe's `calibration`)
    else the checkpoint's eval.jsonl
    else the input codec's built-in rows (a few texts; synthetic audio signals)

An "input" is what the artifact's input codec reads (toolchain.inputs): a text, or for audio a
WAV path relative to the eval file (or "synthetic:NAME").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .inputs import Codec, codec_for

EVAL_FILE = "eval.jsonl"


@dataclass(frozen=True)
class EvalSet:
    rows: list[dict[str, Any]]
    source: str  # where the rows came from: the file, or the codec's "built-in ..." name
    base: Path | None  # the folder relative inputs resolve against


def load_eval(path: Path) -> list[dict[str, Any]]:
    """A JSONL eval set; every way it can be malformed is one line naming file and line."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read eval set: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: invalid JSON: {e.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("input"), str):
            raise InputError(f'{path}:{n}: each line must be an object with a string "input"')
        out.append(row)
    if not out:
        raise InputError(f"{path}: eval set is empty")
    return out


def choose(given: str | Path | None, checkpoint_dir: Path, codec: Codec, limit: int | None = None) -> EvalSet:
    """The rows to use (at most `limit`): `given`, else the checkpoint's eval.jsonl, else the
    codec's built-in rows. Relative inputs resolve against the file's folder (for the built-in
    rows, the checkpoint's)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    if given:
        s = EvalSet(load_eval(Path(given)), str(given), Path(given).parent)
    elif (Path(checkpoint_dir) / EVAL_FILE).is_file():
        s = EvalSet(load_eval(Path(checkpoint_dir) / EVAL_FILE), str(Path(checkpoint_dir) / EVAL_FILE),
                    Path(checkpoint_dir))
    else:
        s = EvalSet(codec.builtin_rows(), codec.builtin_source, Path(checkpoint_dir))
    return EvalSet(s.rows[:limit], s.source, s.base) if limit else s


def eval_examples(eval_file: str | None, checkpoint_dir: Path, limit: int | None,
                  kind: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they came from) for an artifact whose input is `kind` (None: text)."""
    s = choose(eval_file, checkpoint_dir, codec_for(kind), limit)
    return s.rows, s.source
