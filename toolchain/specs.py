"""Recipes and targets: frozen, versioned data, validated when loaded.

A recipe says *how* to export (lengths, cache, quantization, parity tolerance);
a target says *where* it runs (runtime, backend/delegate, device class). Both are
YAML files in `recipes/` and `targets/` (or any path), rejected on unknown keys,
wrong types or a `format_version` newer than this tool, with a one-line error
naming the key. They serialize into the artifact's manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

SPEC_FORMAT_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
RECIPE_DIR = ROOT / "recipes"
TARGET_DIR = ROOT / "targets"


@dataclass(frozen=True)
class Tolerance:
    """What `verify` requires of an artifact made with this recipe."""

    max_abs_logit_diff: float = 1e-3
    min_sequence_match: float = 1.0
    max_accuracy_drop: float = 0.0


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    max_input_len: int
    max_output_len: int
    # Per component (encoder, decoder, embeddings, lm_head) -> scheme (QUANT_SCHEMES).
    # A missing component stays fp32. Each backend maps schemes onto its own
    # toolchain and rejects, by name, what it cannot honour.
    quantization: dict[str, str] = field(default_factory=dict)
    group_size: int = 32  # for the group-wise 4-bit schemes
    calibration: str = ""  # JSONL ({"input": ...}) for static schemes; "" = the checkpoint's eval.jsonl
    tolerance: Tolerance = field(default_factory=Tolerance)
    format_version: int = SPEC_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    backend: str
    device_class: str
    threads: int = 2
    format_version: int = SPEC_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", bool: "true/false"}
QUANT_COMPONENTS = ("encoder", "decoder", "embeddings", "lm_head")
QUANT_SCHEMES = {
    "none": "fp32",
    "fp16": "fp16 weights (and compute where the runtime has it)",
    "8da8w": "int8 per-channel weights, int8 dynamic per-token activations",
    "8da4w": "int4 group-wise weights (group_size), int8 dynamic activations",
    "int8-weight": "int8 per-channel weight-only (embeddings: int8 rows)",
    "int4-weight": "int4 group-wise weight-only",
    "static-int8": "int8 weights and activations, activation ranges calibrated",
}


def _check(kind: str, where: str, key: str, value: Any, typ: type) -> Any:
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise InputError(f"{where}: {kind} key {key!r} must be {_TYPES[typ]}, got {value!r}")
    return value


def _build(cls, data: Any, where: str, kind: str):
    if not isinstance(data, dict):
        raise InputError(f"{where}: a {kind} must be a YAML mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown {kind} key {unknown[0]!r}; allowed: {', '.join(fields)}")
    out = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{where}: missing required {kind} key {name!r}")
            continue
        value = data[name]
        if name == "tolerance":
            value = _build(Tolerance, value, where, "tolerance")
        elif name == "quantization":
            value = _check(kind, where, name, value, dict)
            for comp, scheme in value.items():
                if comp not in QUANT_COMPONENTS:
                    raise InputError(f"{where}: unknown quantization component {comp!r}; "
                                     f"allowed: {', '.join(QUANT_COMPONENTS)}")
                _check(kind, where, f"quantization.{comp}", scheme, str)
                if scheme not in QUANT_SCHEMES:
                    raise InputError(f"{where}: unknown quantization scheme {scheme!r} for {comp}; "
                                     f"known: {', '.join(QUANT_SCHEMES)}")
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            value = _check(kind, where, name, value, typ)
        out[name] = value
    obj = cls(**out)
    if getattr(obj, "format_version", SPEC_FORMAT_VERSION) > SPEC_FORMAT_VERSION:
        raise InputError(f"{where}: format_version {obj.format_version} is newer than this tool "
                         f"({SPEC_FORMAT_VERSION}); upgrade edgeseq")
    return obj


def _validate_recipe(r: Recipe, where: str) -> Recipe:
    for key in ("max_input_len", "max_output_len"):
        v = getattr(r, key)
        if not 1 <= v <= 8192:
            raise InputError(f"{where}: recipe key {key!r} must be between 1 and 8192, got {v}")
    if r.group_size not in (16, 32, 64, 128, 256):
        raise InputError(f"{where}: recipe key 'group_size' must be one of 16, 32, 64, 128, 256, got {r.group_size}")
    return r


def load_yaml(path: Path) -> Any:
    import yaml  # lazily: the remote probe runner reads specs from manifests, not YAML

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}:{at} invalid YAML: {getattr(e, 'problem', None) or e}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None


def _resolve(name_or_path: str, directory: Path, kind: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise InputError(f"{kind} file not found: {name_or_path}")
        return p
    candidate = directory / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise InputError(f"unknown {kind} {name_or_path!r}; available: {', '.join(available(directory))}")
    return candidate


def available(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    path = _resolve(name_or_path, RECIPE_DIR, "recipe")
    return _validate_recipe(_build(Recipe, load_yaml(path), str(path), "recipe"), str(path))


def load_target(name_or_path: str) -> Target:
    path = _resolve(name_or_path, TARGET_DIR, "target")
    t = _build(Target, load_yaml(path), str(path), "target")
    if t.threads < 1:
        raise InputError(f"{path}: target key 'threads' must be >= 1, got {t.threads}")
    return t


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    return _build(Recipe, d, "manifest", "recipe")


def target_from_dict(d: dict[str, Any]) -> Target:
    return _build(Target, d, "manifest", "target")
