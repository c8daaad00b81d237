"""What a family file defines, and the registry it joins.

A family is one module in toolchain/arch/ with one ``Adapter`` subclass, registered with
``@register``: its ``model_types`` (config.json's ``model_type`` values it reads), ``describe``
(the family facts ``inspect`` shows, from config.json alone) and ``programs`` (how the
checkpoint's config and weights map onto the layers of arch/layers.py and the programs of
arch/programs.py). ``build`` puts those into the ``Seq2SeqParts`` contract with the special
tokens (``tokens``: the family says where to look, ``first_id`` resolves) and the generation
facts (``generation``: by default the text families' forced/suppressed tokens).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import nn

from ..errors import InputError
from ..schemes import Component
from ..split import Seq2SeqParts
from .layers import frozen_linear
from .programs import DecoderStep, EncoderStack

# A transformers model of the family (PreTrainedModel): its attributes are family-specific, so untyped.
Model = Any


def first_id(name: str, *candidates: Any) -> int:
    """The first candidate that is set, as an int: configs (config.json, generation_config.json)
    in the order the family's transformers code reads them, then a default. A list (several EOS
    ids) gives its first."""
    for value in candidates:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise InputError(f"neither config.json nor generation_config.json sets {name}")


@dataclass(frozen=True)
class SpecialTokens:
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int


def text_generation(model: Model) -> dict[str, Any]:
    """A text family's forced and suppressed tokens from its generation config, as Seq2SeqParts
    fields: forced_bos_token_id becomes the decoder prompt (BART, mBART: a language code),
    forced_eos_token_id, suppress_tokens and begin_suppress_tokens carry over, single-token
    bad_words_ids are suppressed."""
    gen = getattr(model, "generation_config", None)

    def value(name: str) -> Any:
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


def tied_head(model: Model, embed_weight: nn.Parameter) -> nn.Linear | None:
    """The model's output projection as a frozen Linear, or None when it is the embedding matrix
    itself (tied: the decoder computes F.linear(x, embed.weight); one tensor, stored once)."""
    head = model.get_output_embeddings()
    return None if head.weight.data_ptr() == embed_weight.data_ptr() else frozen_linear(head)


class Adapter(ABC):
    """One family. Subclasses set the class attributes and implement describe and programs."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    auto_model: ClassVar[str] = "AutoModelForSeq2SeqLM"  # transformers' auto class that loads it
    input_kind: ClassVar[str] = "text"
    default_eos: ClassVar[int | None] = None  # EOS id when no config sets one (None: an error)
    # Parity tolerance on logits, eager split vs transformers, per runtime (fp32).
    tolerance: ClassVar[dict[str, float]] = {"eager": 1e-4, "executorch": 1e-3}
    # Components whose weights this family keeps at 8 bits when a recipe asks 4 (schemes.EIGHT_BIT),
    # with the measurement that says why; a recipe's `family_defaults: false` overrides it.
    keep_8bit: ClassVar[dict[Component, str]] = {}

    @abstractmethod
    def describe(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Family facts from config.json: variant, layers, heads, dims, vocab."""

    @abstractmethod
    def programs(self, model: Model, max_input_len: int, max_output_len: int,
                 cache_mode: str) -> tuple[EncoderStack, DecoderStep]:
        """The encode and decode modules (arch/programs.py) built from the model's weights."""

    def tokens(self, model: Model) -> SpecialTokens:
        """decoder start, EOS and pad ids, looked up where the family's transformers code does;
        by default (T5, BART) config.json first, then the generation config, then defaults."""
        cfg, gen = model.config, getattr(model, "generation_config", None)
        return SpecialTokens(first_id("decoder_start_token_id", cfg.decoder_start_token_id, cfg.pad_token_id, 0),
                             first_id("eos_token_id", cfg.eos_token_id, getattr(gen, "eos_token_id", None),
                                      self.default_eos),
                             first_id("pad_token_id", cfg.pad_token_id, 0))

    def unsupported(self, model: Model) -> str | None:
        """Why the split cannot take this variant of the family (an InputError), or None."""
        return None

    def generation(self, model: Model, max_output_len: int) -> dict[str, Any]:
        """Generation facts as Seq2SeqParts fields (decoder_prompt, suppress_tokens, ...)."""
        return text_generation(model)

    def encode_contract(self, model: Model) -> dict[str, Any]:
        """Seq2SeqParts fields describing encode's inputs and outputs; {} = text (input_ids and
        attention_mask [1, max_input_len], a cross_bias output)."""
        return {}

    def build(self, model: Model, max_input_len: int, max_output_len: int,
              cache_mode: str = "buffer") -> Seq2SeqParts:
        """transformers model -> the split (toolchain/split.py)."""
        why = self.unsupported(model)
        if why:
            raise InputError(why)
        encode, decode = self.programs(model, max_input_len, max_output_len, cache_mode)
        tokens = self.tokens(model)
        return Seq2SeqParts(
            encode=encode.eval(), decode=decode.eval(), num_layers=len(decode.layers), num_heads=decode.heads,
            head_dim=decode.head_dim, vocab_size=decode.vocab_size, max_input_len=max_input_len,
            max_output_len=max_output_len, decoder_start_token_id=tokens.decoder_start_token_id,
            eos_token_id=tokens.eos_token_id, pad_token_id=tokens.pad_token_id, cache_mode=cache_mode,
            tolerance=dict(self.tolerance), **self.encode_contract(model),
            **self.generation(model, max_output_len))


_REGISTRY: dict[str, Adapter] = {}
A = TypeVar("A", bound=type[Adapter])


def register(cls: A) -> A:
    """Class decorator: instantiate a family's Adapter and register it under each model_type."""
    adapter = cls()
    for mt in adapter.model_types:
        if mt in _REGISTRY:
            raise RuntimeError(f"model_type {mt!r} registered twice ({_REGISTRY[mt].family}, {adapter.family})")
        _REGISTRY[mt] = adapter
    return cls
