"""`edgeseq run`: text in, text out, through the artifact's runtime Session."""

from __future__ import annotations

from . import backends
from .artifact import open_artifact
from .generate import check_new_tokens, greedy, tokenize


def generate_text(path: str, text: str, max_new_tokens: int | None = None, min_new_tokens: int = 0,
                  truncate: bool = False, threads: int | None = None) -> str:
    from tokenizers import Tokenizer

    art = open_artifact(path)
    recipe, target, spec = art.recipe, art.target, art.manifest["tokens"]
    tok = Tokenizer.from_file(str(art.file(spec["tokenizer"])))
    ids = tokenize(tok, text, recipe.max_input_len, truncate=truncate)
    check_new_tokens(max_new_tokens, recipe.max_output_len)
    session = backends.for_target(target).open(art, threads=threads or target.threads)
    gen = greedy(session, ids, max_input_len=recipe.max_input_len, max_output_len=recipe.max_output_len,
                 start_id=spec["decoder_start_token_id"], eos_id=spec["eos_token_id"], pad_id=spec["pad_token_id"],
                 max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    return tok.decode(gen.tokens, skip_special_tokens=True)
