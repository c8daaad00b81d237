"""Greedy generation over a runtime Session: the one loop `run`, `verify` and `probe` use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass
class Generation:
    tokens: list[int]
    logits: list[np.ndarray] = field(default_factory=list)  # one [V] row per step, if kept
    encode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)  # wall time of each decode step


def tokenize(tokenizer, text: str, max_input_len: int, truncate: bool = False) -> list[int]:
    """Text -> token ids (with the tokenizer's own specials, e.g. T5's </s>)."""
    if not text.strip():
        raise InputError("empty input")
    ids = tokenizer.encode(text).ids
    if len(ids) > max_input_len:
        if not truncate:
            raise InputError(f"input is {len(ids)} tokens; the artifact's recipe allows {max_input_len} "
                             f"(max_input_len); shorten it or pass --truncate")
        ids = ids[: max_input_len - 1] + ids[-1:]  # keep the final special token (</s>)
    return ids


def pad(ids: list[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """ids -> (input_ids, attention_mask), both int64[1, length], right-padded."""
    input_ids = np.full((1, length), pad_id, dtype=np.int64)
    mask = np.zeros((1, length), dtype=np.int64)
    input_ids[0, : len(ids)] = ids
    mask[0, : len(ids)] = 1
    return input_ids, mask


def check_new_tokens(max_new_tokens: int | None, max_output_len: int) -> int:
    """The number of decode steps to run; never past the static cache."""
    limit = max_output_len if max_new_tokens is None else max_new_tokens
    if limit > max_output_len:
        raise InputError(f"--max-new-tokens {limit} exceeds the artifact's cache of {max_output_len} "
                         f"positions (recipe max_output_len)")
    if limit < 1:
        raise InputError("--max-new-tokens must be >= 1")
    return limit


def greedy(session, ids: list[int], *, max_input_len: int, max_output_len: int, start_id: int, eos_id: int,
           pad_id: int, max_new_tokens: int | None = None, min_new_tokens: int = 0,
           keep_logits: bool = False, force_length: bool = False) -> Generation:
    """Encode once, then decode one token per step on the static cache.

    The cache has max_output_len slots (positions 0..T-1); step p reads the token at
    position p and predicts the one after it, so at most T tokens come out.
    `force_length` suppresses EOS for the whole run, like transformers' `min_new_tokens`
    (probes need comparable lengths).
    """
    limit = max_output_len if max_new_tokens is None else max_new_tokens
    if force_length:
        min_new_tokens = limit
    if limit > max_output_len:
        raise InputError(f"--max-new-tokens {limit} exceeds the artifact's cache of {max_output_len} "
                         f"positions (recipe max_output_len)")
    input_ids, mask = pad(ids, max_input_len, pad_id)
    t0 = time.perf_counter()
    state = session.encode(input_ids, mask)
    out = Generation(tokens=[], encode_s=time.perf_counter() - t0)
    token = start_id
    for position in range(limit):
        t = time.perf_counter()
        logits = session.decode(token, position, state)
        if keep_logits:  # raw logits, before EOS suppression
            out.logits.append(np.asarray(logits, dtype=np.float32).copy())
        if len(out.tokens) < min_new_tokens:
            logits = logits.copy()
            logits[eos_id] = -np.inf
        token = int(np.argmax(logits))
        out.step_s.append(time.perf_counter() - t)
        if token == eos_id:
            break
        out.tokens.append(token)
    return out
