"""Architecture adapters: one small module per family, registered by `model_type`."""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import InputError


class Adapter(Protocol):
    family: str
    model_types: tuple[str, ...]

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


from . import t5  # noqa: E402,F401  (registers itself)
from . import bart  # noqa: E402,F401  (registers itself)
