"""`edgeseq run`: text (or, for audio artifacts, a WAV file) in, text out, through the artifact's runtime Session.
The input is read by the artifact's input codec (toolchain.inputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .artifact import open_artifact
from .errors import InputError
from .generate import check_new_tokens, greedy
from .inputs import Context
from .native import session_for
from .prompt import resolved


@dataclass(frozen=True)
class RunResult:
    """One `run`: the text, the ids behind it, the decoder prompt as fed (language resolved), why
    it stopped, a note when the cache cut it short, and for Whisper the language (detected or
    given) and task (`run --json` prints all of it)."""

    text: str
    tokens: list[int]
    prompt: list[int]
    stopped: str
    note: str | None
    language: str | None = None
    language_detected: bool = False
    task: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "prompt": self.prompt, "stopped": self.stopped,
                "note": self.note, "language": self.language, "language_detected": self.language_detected,
                "task": self.task}


def generate(path: str, text: str, max_new_tokens: int | None = None, min_new_tokens: int = 0,
             truncate: bool = False, threads: int | None = None, allow_unknown: bool = False,
             runner: str | None = None, device: str | None = None, language: str | None = None,
             task: str | None = None) -> RunResult:
    """Greedy generation; `language`/`task` choose Whisper's decoder prompt (default: the one the
    artifact was exported with, i.e. generate() without them)."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    art = open_artifact(path)
    meta = art.meta
    recipe, target, tokens = meta.recipe, meta.target, meta.tokens
    kw = tokens.decoding(language, task)  # refuses a language/task the artifact or model cannot take
    tok = art.load_tokenizer()
    # TEXT is what the artifact's input codec reads: a text, or for audio families (Whisper) a WAV file.
    ctx = Context(meta.input.as_dict(), recipe.max_input_len, lambda: tok)
    encoded = meta.input.codec.read(text, ctx, truncate=truncate, allow_unknown=allow_unknown)
    # A text family's prompt is its forced BOS, a generated token for generate(max_new_tokens=N);
    # Whisper's prompt is decoder input, which generate's max_new_tokens excludes.
    prompt_counts = meta.input.codec.prompt_is_output
    check_new_tokens(max_new_tokens, recipe.max_output_len - (0 if prompt_counts else len(kw["prompt"])),
                     min_new_tokens)
    session = session_for(art, threads or target.threads, runner, device)  # --runner / --device (native.py)
    gen = greedy(session, encoded.ids, inputs=encoded.arrays, max_input_len=recipe.max_input_len,
                 max_output_len=recipe.max_output_len, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                 prompt_counts=prompt_counts, **kw)
    note = None
    if gen.stopped == "cache":
        note = (f"stopped at the artifact's cache size ({recipe.max_output_len} tokens, recipe max_output_len) "
                f"before the end of the sequence; the output may be cut short")
    said = resolved(tokens.task_prompt, kw["prompt"], gen.prompt)
    return RunResult(tok.decode(gen.tokens, skip_special_tokens=True), list(gen.tokens), list(gen.prompt),
                     gen.stopped, note, *((said.language, said.detected, said.task) if said else ()))


def generate_text(path: str, text: str, max_new_tokens: int | None = None, min_new_tokens: int = 0,
                  truncate: bool = False, threads: int | None = None,
                  allow_unknown: bool = False, runner: str | None = None,
                  device: str | None = None, language: str | None = None,
                  task: str | None = None) -> tuple[str, str | None]:
    """Greedy generation. Returns (text, note): the note says why the output may be cut short
    (the static KV cache was full before end of sequence), else None."""
    r = generate(path, text, max_new_tokens, min_new_tokens, truncate, threads, allow_unknown, runner, device,
                 language, task)
    return r.text, r.note
