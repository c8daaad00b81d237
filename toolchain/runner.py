"""`edgeseq run`: text (or, for audio artifacts, a WAV file) in, text out, through the artifact's runtime Session.
The input is read by the artifact's input codec (toolchain.inputs)."""

from __future__ import annotations

from .artifact import open_artifact
from .errors import InputError
from .generate import check_new_tokens, greedy
from .inputs import Context
from .native import session_for


def generate_text(path: str, text: str, max_new_tokens: int | None = None, min_new_tokens: int = 0,
                  truncate: bool = False, threads: int | None = None,
                  allow_unknown: bool = False, runner: str | None = None,
                  device: str | None = None) -> tuple[str, str | None]:
    """Greedy generation. Returns (text, note): the note says why the output may be cut short
    (the static KV cache was full before end of sequence), else None."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    art = open_artifact(path)
    meta = art.meta
    recipe, target, tokens = meta.recipe, meta.target, meta.tokens
    tok = art.load_tokenizer()
    kw = tokens.decoding()
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
    return tok.decode(gen.tokens, skip_special_tokens=True), note
