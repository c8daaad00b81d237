"""Architecture adapters: one small module per family, registered by `model_type`."""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import InputError


class Adapter(Protocol):
    family: str
    model_types: tuple[str, ...]
    # Optional: `auto_model`, the transformers auto class that loads the checkpoint
    # (default AutoModelForSeq2SeqLM; Whisper: AutoModelForSpeechSeq2Seq).

    def describe(self, config: dict[str, Any]) -> dict[str, Any]:
        """Family facts from config.json: variant, layers, heads, dims, vocab."""

    def build(self, model: Any, max_input_len: int, max_output_len: int):
        """transformers model -> `toolchain.split.Seq2SeqParts`."""

    def tiny_config(self, variant: str, **overrides: Any) -> Any:
        """A tiny random config of a given variant, for tests."""


_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    for mt in adapter.model_types:
        if mt in _REGISTRY:
            raise RuntimeError(f"model_type {mt!r} registered twice ({_REGISTRY[mt].family}, {adapter.family})")
        _REGISTRY[mt] = adapter
    return adapter


def supported() -> list[str]:
    return sorted(_REGISTRY)


def get(model_type: str | None) -> Adapter:
    if model_type not in _REGISTRY:
        raise InputError(f"unsupported architecture {model_type!r}; supported model_type values: "
                         f"{', '.join(supported())}")
    return _REGISTRY[model_type]


def text_generation(model) -> dict[str, Any]:
    """A text family's forced and suppressed tokens from its generation config, as Seq2SeqParts
    fields: forced_bos_token_id becomes the decoder prompt (BART, mBART: a language code),
    forced_eos_token_id, suppress_tokens and begin_suppress_tokens carry over, single-token
    bad_words_ids are suppressed."""
    gen = getattr(model, "generation_config", None)

    def value(name: str):
        return getattr(gen, name, None) if gen is not None else None

    bos, eos = value("forced_bos_token_id"), value("forced_eos_token_id")
    if isinstance(eos, (list, tuple)):  # several: transformers forces all, argmax takes the lowest id
        eos = min(eos) if eos else None
    # bad_words_ids of one token are never generated, like suppress_tokens (opus-mt bans <pad>);
    # a longer one is banned only after its prefix: not supported.
    bad_words = value("bad_words_ids") or []
    longer = [w for w in bad_words if len(w) != 1]
    if longer:
        raise InputError(f"generation config: bad_words_ids {list(longer[0])} is longer than one token; "
                         f"only single-token bad_words_ids are supported")
    return {"decoder_prompt": [] if bos is None else [int(bos)],
            "suppress_tokens": [int(t) for t in value("suppress_tokens") or []] + [int(w[0]) for w in bad_words],
            "begin_suppress_tokens": [int(t) for t in value("begin_suppress_tokens") or []],
            "forced_eos_token_id": None if eos is None else int(eos)}


def auto_model(adapter) -> str:
    """The transformers auto class name that loads this family's checkpoints."""
    return getattr(adapter, "auto_model", "AutoModelForSeq2SeqLM")


from . import t5  # noqa: E402,F401  (registers itself)
from . import bart  # noqa: E402,F401  (registers itself)
from . import whisper  # noqa: E402,F401  (registers itself)
from . import t5gemma  # noqa: E402,F401  (registers itself)
