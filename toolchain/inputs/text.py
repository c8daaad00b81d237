"""Text input: a string, tokenized with the artifact's (or checkpoint's) tokenizer into ids that
encode takes right-padded, input_ids and attention_mask int64 [1, max_input_len]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import Codec, Context, Encoded

if TYPE_CHECKING:
    from ..manifest import Tokens

BUILTIN_INPUTS = ["the quick brown fox", "hello world", "a b c d e f g"]


class TextCodec(Codec):
    kind = "text"
    metric = "exact"
    builtin_source = "built-in inputs"
    padded = True
    prompt_is_output = True

    def manifest_spec(self, checkpoint: Path, parts_input: Mapping[str, Any]) -> dict[str, Any]:
        return dict(parts_input)

    def check_spec(self, spec: Mapping[str, Any], where: str) -> None:
        from ..schema import check_keys

        check_keys(dict(spec), ["kind"], where, "input")

    def builtin_rows(self) -> list[dict[str, str]]:
        return [{"input": s} for s in BUILTIN_INPUTS]

    def read(self, value: str, ctx: Context, *, base: Path | None = None, truncate: bool = False,
             allow_unknown: bool = True) -> Encoded:
        from ..generate import tokenize

        return Encoded(ids=tokenize(ctx.tokenizer, value, ctx.max_input_len, truncate=truncate,
                                    allow_unknown=allow_unknown))

    def encode_arrays(self, item: Any, max_input_len: int, pad_id: int) -> tuple[np.ndarray, ...]:
        # input_ids, attention_mask int64 [1, max_input_len], right-padded (generate.pad).
        from ..generate import pad

        ids = list((item.ids or []) if isinstance(item, Encoded) else item)
        return pad(ids[:max_input_len], max_input_len, pad_id)

    def eager_kwargs(self, encoded: Encoded) -> dict[str, Any]:
        import torch

        return {"input_ids": torch.tensor([encoded.ids])}

    def reference(self, model: Any, kwargs: dict[str, Any], tokens: Tokens, max_output_len: int,
                  prompt: Sequence[int | None], choice: Mapping[str, str] | None = None,
                  use_cache: bool = True) -> tuple[list[int] | None, list[int]]:
        # The prompt (a forced BOS) is generated here, so it counts in max_new_tokens.
        prompt_len = len(prompt)
        seq = model.generate(**kwargs, max_new_tokens=max_output_len, do_sample=False, num_beams=1,
                             decoder_start_token_id=tokens.decoder_start_token_id, eos_token_id=tokens.eos_token_id,
                             pad_token_id=tokens.pad_token_id, use_cache=use_cache)[0, 1:].tolist()
        return seq[:prompt_len], until_eos(seq[prompt_len:], tokens.eos_token_id)

    def calibration(self, rows: Sequence[Mapping[str, Any]], ctx: Context, base: Path | None,
                    limit: int) -> list[Any]:
        # Token id lists as the tokenizer gives them; inputs longer than max_input_len are skipped.
        ids = (ctx.tokenizer.encode(r["input"]).ids for r in rows)
        return [x for x in ids if len(x) <= ctx.max_input_len][:limit]

    def probe_input(self, ctx: Context, tokens: Tokens, length: int) -> Encoded:
        # `length` - 1 random ordinary tokens (seeded) and EOS, as a tokenizer ends a text.
        specials = {tokens.pad_token_id, tokens.eos_token_id, tokens.decoder_start_token_id}
        vocab = [i for i in range(tokens.vocab_size) if i not in specials]
        rng = np.random.default_rng(0)
        return Encoded(ids=[int(x) for x in rng.choice(vocab, size=length - 1)] + [tokens.eos_token_id])


def until_eos(seq: list[int], eos: int) -> list[int]:
    return seq[: seq.index(eos)] if eos in seq else seq


CODEC = TextCodec()
