"""What a recipe can quantize (components) and how (schemes): the recipe's `quantization`
mapping is Component -> QuantScheme. Both are string enums, so recipes, manifests and
messages keep the plain names (`encoder: 8da8w`).

Each backend declares, per component, the schemes it honours and what it turns each into
(`Capabilities.schemes`); `check_schemes` is the one place that refuses the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from .errors import InputError


class Component(StrEnum):
    """The parts of the split a recipe quantizes separately.

    encoder     every linear of the encode program (encoder layers *and* the decoder layers'
                cross-attention K/V projections: they run once per input, in encode)
    decoder     every linear of the decode program except the lm head (runs per token)
    embeddings  the token embedding (one module, shared by both programs)
    lm_head     the output projection (a tied head is untied first when quantized apart)
    """

    ENCODER = "encoder"
    DECODER = "decoder"
    EMBEDDINGS = "embeddings"
    LM_HEAD = "lm_head"


class QuantScheme(StrEnum):
    NONE = "none"
    FP16 = "fp16"
    W8A8_DYNAMIC = "8da8w"
    W4A8_DYNAMIC = "8da4w"
    INT8_WEIGHT = "int8-weight"
    INT4_WEIGHT = "int4-weight"
    STATIC_INT8 = "static-int8"


DESCRIPTIONS: dict[QuantScheme, str] = {
    QuantScheme.NONE: "fp32",
    QuantScheme.FP16: "fp16 weights (and compute where the runtime has it)",
    QuantScheme.W8A8_DYNAMIC: "int8 per-channel weights, int8 dynamic per-token activations",
    QuantScheme.W4A8_DYNAMIC: "int4 group-wise weights (group_size), int8 dynamic activations",
    QuantScheme.INT8_WEIGHT: "int8 per-channel weight-only (embeddings: int8 rows)",
    QuantScheme.INT4_WEIGHT: "int4 group-wise weight-only",
    QuantScheme.STATIC_INT8: "int8 weights and activations, activation ranges calibrated",
}

# Per component: scheme -> what the backend does with it (shown when a recipe asks for another).
SchemeTable = Mapping[Component, Mapping[QuantScheme, str]]


def same_for_all(table: Mapping[QuantScheme, str]) -> dict[Component, Mapping[QuantScheme, str]]:
    """A backend that treats every component alike."""
    return dict.fromkeys(Component, table)


def requested(recipe: Any) -> dict[Component, QuantScheme]:
    """The recipe's quantization with every component present (a missing one is `none`)."""
    return {c: QuantScheme(recipe.quantization.get(c.value, "none")) for c in Component}


def check_schemes(recipe: Any, target: Any, table: SchemeTable, note: str = "") -> None:
    """One-line InputError for the first component whose scheme the target cannot honour,
    listing what it supports for that component (and the backend's `note`, if any)."""
    for comp, scheme in requested(recipe).items():
        allowed = table.get(comp, {})
        if scheme not in allowed:
            can = ", ".join(allowed) or "nothing"
            what = "; ".join(sorted({f"{s}: {w}" for s, w in allowed.items() if s != QuantScheme.NONE}))
            raise InputError(f"recipe {recipe.name}: {comp}={scheme} is not supported by {target.name}; "
                             f"it supports for {comp}: {can}" + (f" ({what})" if what else "")
                             + (f"; {note}" if note else ""))


def quantizes(recipe: Any) -> bool:
    """Whether the recipe changes any weight (anything but `none`)."""
    return any(s != QuantScheme.NONE for s in requested(recipe).values())


# A 4-bit scheme -> its 8-bit counterpart: what a family's 4-bit-sensitive components get instead
# (Adapter.keep_8bit; a recipe's `family_defaults: false` turns it off).
EIGHT_BIT: dict[QuantScheme, QuantScheme] = {QuantScheme.W4A8_DYNAMIC: QuantScheme.W8A8_DYNAMIC,
                                             QuantScheme.INT4_WEIGHT: QuantScheme.INT8_WEIGHT}


def keep_8bit(quantization: Mapping[str, str], keep: Mapping[Component, str]) -> dict[str, dict[str, str]]:
    """The changes a family's 8-bit defaults make to a recipe's `quantization`:
    component -> {"asked", "used", "why"}, for each 4-bit component the family keeps at 8 bits."""
    out: dict[str, dict[str, str]] = {}
    for comp, why in keep.items():
        asked = QuantScheme(quantization.get(comp.value, "none"))
        if asked in EIGHT_BIT:
            out[comp.value] = {"asked": asked.value, "used": EIGHT_BIT[asked].value, "why": why}
    return out
