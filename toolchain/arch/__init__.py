"""Architecture adapters: one module per family, registered by `model_type`.

A family is a module in this package that defines an ``Adapter`` subclass decorated with
``@register`` (see base.py); every module here other than the shared ones (LIBRARY) is a
family and is imported, so registered, the first time a family is looked up: adding a family
is adding its file.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import InputError
from .base import _REGISTRY, Adapter, register

__all__ = ["Adapter", "get", "register", "supported"]

LIBRARY = frozenset({"base", "layers", "programs"})  # modules that are not families
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if info.name not in LIBRARY and not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True


def supported() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def get(model_type: str | None) -> Adapter:
    _load_families()
    if model_type is None or model_type not in _REGISTRY:
        raise InputError(f"unsupported architecture {model_type!r}; supported model_type values: "
                         f"{', '.join(supported())}")
    return _REGISTRY[model_type]
