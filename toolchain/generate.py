"""Greedy generation over a runtime Session: the one loop `run`, `verify` and `probe` use."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .errors import InputError
from .tokenizer import as_text_tokenizer

if TYPE_CHECKING:
    from .backends.base import Session


@dataclass
class Generation:
    tokens: list[int]
    logits: list[np.ndarray] = field(default_factory=list)  # one [V] row per step, if kept
    encode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)  # wall time of each decode step
    stopped: str = "eos"  # "eos", "max_new_tokens", or "cache" (the static KV cache is full)
    prompt: list[int] = field(default_factory=list)  # the forced decoder prompt as fed (language resolved)
    # Sessions whose decode program chooses the token (Session.next_token), with logits kept:
    # steps where the program's choice was compared with the logits path's, and how many agreed.
    argmax_checked: int = 0
    argmax_agreed: int = 0


NEG = np.float32(-1e9)  # as the programs' masks: a forbidden token's bias


class TokenBias:
    """The `token_bias` rows [1, V] a next-token decode program adds to its logits before its
    argmax, one per combination of greedy's rules, each built once and reused (the runtime
    reads the array in place). Same rules and order as greedy's logits path: min_new_tokens
    (EOS forbidden), the forced EOS (only it allowed), suppress, begin_suppress (first token)."""

    def __init__(self, vocab_size: int, eos_id: int, suppress: Sequence[int], begin_suppress: Sequence[int],
                 forced_eos: int | None):
        self.vocab_size, self.eos_id, self.forced_eos = vocab_size, eos_id, forced_eos
        self.suppress, self.begin_suppress = list(suppress), list(begin_suppress)
        self._rows: dict[tuple[bool, bool, bool], np.ndarray] = {}

    def row(self, first: bool = False, no_eos: bool = False, force_eos: bool = False) -> np.ndarray:
        key = (first, no_eos, force_eos)
        if key not in self._rows:
            bias = np.zeros((1, self.vocab_size), dtype=np.float32)
            if no_eos:
                bias[0, self.eos_id] = NEG
            if force_eos and self.forced_eos is not None:
                bias[:] = NEG
                bias[0, self.forced_eos] = 0.0
            bias[0, self.suppress] = NEG
            if first:
                bias[0, self.begin_suppress] = NEG
            self._rows[key] = bias
        return self._rows[key]


def tokenize(tokenizer: Any, text: str, max_input_len: int, truncate: bool = False,
             allow_unknown: bool = True) -> list[int]:
    """Text -> token ids (with the tokenizer's own specials, e.g. T5's </s>). `tokenizer`: a
    tokenizer.TextTokenizer (a bare `tokenizers.Tokenizer` is taken as one).

    Empty text, text that is not valid Unicode, text longer than `max_input_len` (unless
    `truncate`) and, unless `allow_unknown`, characters the tokenizer can only map to its
    unknown token are one-line InputErrors."""
    if not text.strip():
        raise InputError("empty input")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("input is not valid text (not UTF-8)") from None
    enc = as_text_tokenizer(tokenizer).encode(text)
    ids = enc.ids
    if not allow_unknown:
        bad = list(dict.fromkeys(enc.unknown))
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            raise InputError(f"input has characters the tokenizer does not know: {shown}; they would all "
                             f"become the unknown token (pass --allow-unknown to accept that)")
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


def check_new_tokens(max_new_tokens: int | None, max_output_len: int, min_new_tokens: int = 0) -> int:
    """The number of decode steps to run; never past the static cache."""
    limit = max_output_len if max_new_tokens is None else max_new_tokens
    if limit > max_output_len:
        raise InputError(f"--max-new-tokens {limit} exceeds the artifact's cache of {max_output_len} "
                         f"positions (recipe max_output_len)")
    if limit < 1:
        raise InputError("--max-new-tokens must be >= 1")
    if not 0 <= min_new_tokens <= limit:
        raise InputError(f"--min-new-tokens must be between 0 and {limit} (the output limit), got {min_new_tokens}")
    return limit


def check_probe_lengths(input_len: int | None, output_len: int | None, max_input_len: int,
                        max_output_len: int) -> None:
    """A probe measures what it is asked or fails: never a silently shorter run."""
    for flag, value, cap, key in (("--input-len", input_len, max_input_len, "max_input_len"),
                                  ("--output-len", output_len, max_output_len, "max_output_len")):
        if value is not None and not 1 <= value <= cap:
            raise InputError(f"{flag} must be between 1 and {cap} (the artifact's recipe {key}), got {value}")


def greedy(session: Session, ids: list[int] | None, *, max_input_len: int, max_output_len: int, start_id: int,
           eos_id: int, pad_id: int, max_new_tokens: int | None = None, min_new_tokens: int = 0,
           keep_logits: bool = False, force_length: bool = False, inputs: Any = None,
           prompt: Sequence[int | None] = (), language_ids: Sequence[int] = (), suppress: Sequence[int] = (),
           begin_suppress: Sequence[int] = (), forced_eos: int | None = None,
           prompt_counts: bool = False) -> Generation:
    """Encode once, then decode one token per step on the static cache.

    The encode inputs are `ids` right-padded to max_input_len with their mask (text), or
    `inputs` as given (the encode program's arrays in declared order, or a name -> array
    dict; e.g. Whisper's log-mel features).

    The cache has max_output_len slots (positions 0..T-1); step p reads the token at
    position p and predicts the one after it. The first len(`prompt`) steps feed the
    forced decoder prompt instead of their prediction (a None entry: the best of
    `language_ids` in that step's logits, Whisper's language detection), so at most
    T - len(prompt) tokens come out; `tokens` holds only those, `prompt` the resolved
    prompt.

    `max_new_tokens` and `min_new_tokens` count the tokens after the prompt, or, with
    `prompt_counts`, the prompt too: transformers counts a forced BOS (a logits processor's
    choice: the text families' prompt, mBART's language code) as a generated token, while
    Whisper's prompt is decoder input and does not count. `run --max-new-tokens N` then ends
    where `generate(max_new_tokens=N)` ends.

    As in transformers' logits processors, in their order: EOS is not chosen before
    `min_new_tokens`; `forced_eos` is forced at the step that ends generation (the limit, or
    the last cache slot), over `min_new_tokens`; `suppress` ids are never chosen and
    `begin_suppress` ids not as the first generated token. `force_length` suppresses EOS for
    the whole run and forces none (probes need comparable lengths).
    """
    counted = len(prompt) if prompt_counts else 0  # prompt tokens the limits count
    room = max_output_len - len(prompt)
    limit = room if max_new_tokens is None else max_new_tokens - counted
    min_new_tokens = max(0, min_new_tokens - counted)
    if force_length:
        min_new_tokens = limit
    if limit > room:
        raise InputError(f"--max-new-tokens {max_new_tokens} exceeds the artifact's cache of {max_output_len} "
                         f"positions (recipe max_output_len)" + (f" minus the {len(prompt)} forced prompt tokens"
                                                                 if prompt and not counted else ""))
    if limit < 1:  # the limit ends inside a counted prompt (mBART, --max-new-tokens 1): no token after it
        return Generation(tokens=[], stopped="max_new_tokens")
    if session.runs_loop:  # the native runner: this same loop, run in C++ (toolchain/native.py)
        return cast(Any, session).generate(ids, inputs=inputs, max_new_tokens=limit, min_new_tokens=min_new_tokens,
                                keep_logits=keep_logits, force_length=force_length, start_id=start_id,
                                eos_id=eos_id, pad_id=pad_id, prompt=prompt, language_ids=language_ids,
                                suppress=suppress, begin_suppress=begin_suppress, forced_eos=forced_eos)
    if inputs is None and ids is None:
        raise ValueError("greedy: give the token ids or the encode inputs")
    encode_in = pad(ids, max_input_len, pad_id) if ids is not None and inputs is None else inputs
    t0 = time.perf_counter()
    state = session.encode(encode_in) if isinstance(encode_in, dict) else session.encode(*encode_in)
    out = Generation(tokens=[], encode_s=time.perf_counter() - t0)
    out.stopped = "cache" if limit == room else "max_new_tokens"
    suppress, begin_suppress = list(suppress), list(begin_suppress)
    # A session that is not a backends.base.Session (a test's stand-in) decodes to logits.
    bias = (TokenBias(session.vocab_size, eos_id, suppress, begin_suppress, forced_eos)
            if getattr(session, "next_token", False) else None)
    token = start_id
    for position in range(len(prompt) + limit):  # < max_output_len: never past the cache
        t = time.perf_counter()
        k = len(out.tokens)  # index of the token this step generates (after the prompt)
        last = forced_eos is not None and k == limit - 1 and not force_length  # the step that ends generation
        chosen: int | None = None
        if bias is not None:  # the program chooses; logits only when kept or a language is detected
            in_prompt = position < len(prompt)
            row = bias.row() if in_prompt else bias.row(k == 0, k < min_new_tokens, last)
            chosen, logits = session.step(token, position, state, row,
                                          keep_logits or (in_prompt and prompt[position] is None))
        else:
            logits = session.decode(token, position, state)
        if keep_logits and logits is not None:  # raw logits, before any suppression
            out.logits.append(np.asarray(logits, dtype=np.float32).copy())
        if position < len(prompt):  # a forced prompt token (or the detected language)
            forced = prompt[position]
            token = (int(language_ids[int(np.argmax(np.asarray(logits)[list(language_ids)]))]) if forced is None
                     else forced)
            out.prompt.append(token)
            out.step_s.append(time.perf_counter() - t)
            continue
        if logits is None:  # the program's choice, nothing to check it against
            token = cast(int, chosen)
        else:
            token = _choose(logits, k, eos_id, min_new_tokens, last, forced_eos, suppress, begin_suppress)
            if chosen is not None:  # verify: the program's argmax against the logits path's
                out.argmax_checked += 1
                out.argmax_agreed += chosen == token
        out.step_s.append(time.perf_counter() - t)
        if token == eos_id:
            out.stopped = "eos"
            break
        out.tokens.append(token)
    return out


def _choose(logits: np.ndarray, k: int, eos_id: int, min_new_tokens: int, last: bool, forced_eos: int | None,
            suppress: list[int], begin_suppress: list[int]) -> int:
    """Greedy's choice from a step's logits (k: the index of the token it generates)."""
    if suppress or (begin_suppress and k == 0) or k < min_new_tokens or last:
        logits = np.array(logits, dtype=np.float32)
        if k < min_new_tokens:
            logits[eos_id] = -np.inf
        if last:  # transformers' ForcedEOSTokenLogitsProcessor: only forced_eos is left (min_new_tokens too)
            logits[:] = -np.inf
            logits[forced_eos] = 0.0
        logits[suppress] = -np.inf
        if k == 0:
            logits[begin_suppress] = -np.inf
    return int(np.argmax(logits))


def decoding(tokens: dict[str, Any]) -> dict[str, Any]:
    """greedy()'s token keywords from a manifest's "tokens" section, as manifest.Tokens reads it
    (older artifacts have no prompt or suppression entries: none)."""
    from . import schema
    from .manifest import Tokens

    return schema.load(Tokens, tokens, "manifest", key="tokens").decoding()
