"""Recipes and targets: frozen, versioned data, validated when loaded.

A recipe says *how* to export (lengths, cache, quantization, parity tolerance);
a target says *where* it runs (runtime, backend/delegate, device class). Both are
YAML files, rejected on unknown keys, wrong types or a `format_version` newer
than this tool, with a one-line error naming the key. They serialize into the
artifact's manifest.

The shipped ones are package data (`toolchain/recipes/`, `toolchain/targets/`; the
repository's top-level `recipes/` and `targets/` point there), read with
importlib.resources so a wheel install has them. A name (`int8`, `onnx-cpu`) always
means a shipped one; only something path-like (a `/`, or a `.yaml`/`.yml` suffix) is
read as a file, so a folder in the working directory cannot hide a built-in.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .errors import InputError

SPEC_FORMAT_VERSION = 1
RECIPE_DIR: Traversable = resources.files("toolchain") / "recipes"
TARGET_DIR: Traversable = resources.files("toolchain") / "targets"


@dataclass(frozen=True)
class Tolerance:
    """What `verify` requires of an artifact made with this recipe.

    Logits pass when max |artifact - eager| <= max_abs_logit_diff + max_rel_logit_diff x
    logit_scale, logit_scale being the largest |eager logit| over the compared steps (numpy's
    allclose rule, with the scale of the logit vectors instead of each element: float32
    rounding grows with the magnitude of the logits, so a fixed bound fails correct exports
    of models with large logits)."""

    max_abs_logit_diff: float = 1e-3
    max_rel_logit_diff: float = 1e-4
    min_sequence_match: float = 1.0
    max_accuracy_drop: float = 0.0
    # Task-metric bounds (toolchain.metrics): how much worse than eager the artifact may be on
    # the recipe's metric (wer/cer: fraction points up; chrf/bleu: sacrebleu points down).
    # Unset (None): the metric may not get worse at all, and the parity checks above decide.
    # Set for the metric in use: that bound decides, and parity misses are reported as advisory
    # (a quantized model may pick other tokens yet transcribe as well).
    max_wer_increase: float | None = None
    max_cer_increase: float | None = None
    max_chrf_drop: float | None = None
    max_bleu_drop: float | None = None


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
    # Shorter input lengths that get their own encode program besides the max_input_len
    # one (text families). An input runs the smallest that holds it, so encode costs what
    # the input needs, not the longest input the recipe allows; decode is unchanged (each
    # shorter encode pads its cross K/V to max_input_len and masks the tail). Empty: one
    # encode program. Backends that cannot hold several encode programs refuse it.
    encode_lengths: tuple[int, ...] = ()
    # The task metric verify scores with (toolchain.metrics.METRICS); auto: wer for speech, exact otherwise.
    metric: str = "auto"
    format_version: int = SPEC_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encode_lengths"] = list(self.encode_lengths)
        return d


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    backend: str
    device_class: str
    threads: int = 2
    # Backend-specific settings (NPU configuration, SoC, clock...): scalar values only;
    # the backend's check() validates the keys it knows and rejects the rest by name.
    options: dict[str, Any] = field(default_factory=dict)
    experimental: bool = False  # shown as such by `edgeseq targets`: not yet run on its device
    format_version: int = SPEC_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", bool: "true/false",
          list: "a list of integers"}
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
# Names become directory names (build output, caches): no separators, no leading dot.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def short(value: Any, limit: int = 60) -> str:
    """repr() for error messages: one line, bounded (a fuzzed value can be huge)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _check(kind: str, where: str, key: str, value: Any, typ: type) -> Any:
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if ok and typ is float and not math.isfinite(value):
        raise InputError(f"{where}: {kind} key {key!r} must be a finite number, got {short(value)}")
    if not ok:
        raise InputError(f"{where}: {kind} key {key!r} must be {_TYPES[typ]}, got {short(value)}")
    return value


def check_keys(data: dict, allowed, where: str, kind: str) -> None:
    """Unknown keys (of any YAML type: 1, null, true are keys too) -> one line naming the first."""
    unknown = sorted((k for k in data if k not in allowed), key=repr)
    if unknown:
        raise InputError(f"{where}: unknown {kind} key {short(unknown[0])}; allowed: {', '.join(allowed)}")


def _build(cls, data: Any, where: str, kind: str, key: str | None = None):
    if not isinstance(data, dict):
        if key is not None:
            raise InputError(f"{where}: {key.split('.')[0]} key {key.split('.')[-1]!r} must be a mapping, "
                             f"got {short(data)}")
        raise InputError(f"{where}: a {kind} must be a YAML mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, list(fields), where, kind)
    out = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{where}: missing required {kind} key {name!r}")
            continue
        value = data[name]
        if name == "tolerance":
            value = _build(Tolerance, value, where, "tolerance", key=f"{kind}.tolerance")
        elif name == "quantization":
            value = _check(kind, where, name, value, dict)
            for comp, scheme in value.items():
                if comp not in QUANT_COMPONENTS:
                    raise InputError(f"{where}: unknown quantization component {short(comp)}; "
                                     f"allowed: {', '.join(QUANT_COMPONENTS)}")
                _check(kind, where, f"quantization.{comp}", scheme, str)
                if scheme not in QUANT_SCHEMES:
                    raise InputError(f"{where}: unknown quantization scheme {short(scheme)} for {comp}; "
                                     f"known: {', '.join(QUANT_SCHEMES)}")
        elif name == "encode_lengths":
            value = _check(kind, where, name, value, list)
            for v in value:
                if not isinstance(v, int) or isinstance(v, bool):
                    raise InputError(f"{where}: {kind} key 'encode_lengths' must be a list of integers, "
                                     f"got {short(value)}")
            value = tuple(value)
        elif name == "options":
            value = _check(kind, where, name, value, dict)
            for k, v in value.items():
                if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
                    raise InputError(f"{where}: {kind} key 'options.{short(k)}' must be a string, number or "
                                     f"true/false, got {short(v)}")
        elif str(f.type) == "float | None":  # an optional bound: null = unset
            value = None if value is None else _check(kind, where, name, value, float)
        else:
            typ = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
            value = _check(kind, where, name, value, typ)
        out[name] = value
    obj = cls(**out)
    version = getattr(obj, "format_version", SPEC_FORMAT_VERSION)
    if version > SPEC_FORMAT_VERSION:
        raise InputError(f"{where}: format_version {version} is newer than this tool "
                         f"({SPEC_FORMAT_VERSION}); upgrade edgeseq")
    if version < 1:
        raise InputError(f"{where}: {kind} key 'format_version' must be >= 1, got {version}")
    if hasattr(obj, "name") and not NAME_RE.fullmatch(obj.name):
        raise InputError(f"{where}: {kind} key 'name' must be letters, digits, '.', '_', '+', '-' "
                         f"(it names directories), got {short(obj.name)}")
    if cls is Tolerance:
        for k in ("max_abs_logit_diff", "max_rel_logit_diff", "max_accuracy_drop", "min_sequence_match",
                  "max_wer_increase", "max_cer_increase", "max_chrf_drop", "max_bleu_drop"):
            if getattr(obj, k) is not None and getattr(obj, k) < 0:
                raise InputError(f"{where}: tolerance key {k!r} must be >= 0, got {getattr(obj, k)}")
        if obj.min_sequence_match > 1:
            raise InputError(f"{where}: tolerance key 'min_sequence_match' must be <= 1, "
                             f"got {obj.min_sequence_match}")
    return obj


def _validate_recipe(r: Recipe, where: str) -> Recipe:
    for key in ("max_input_len", "max_output_len"):
        v = getattr(r, key)
        if not 1 <= v <= 8192:
            raise InputError(f"{where}: recipe key {key!r} must be between 1 and 8192, got {v}")
    if r.group_size not in (16, 32, 64, 128, 256):
        raise InputError(f"{where}: recipe key 'group_size' must be one of 16, 32, 64, 128, 256, got {r.group_size}")
    from .metrics import METRICS

    if r.metric not in METRICS:
        raise InputError(f"{where}: recipe key 'metric' must be one of {', '.join(METRICS)}, got {short(r.metric)}")
    lengths = r.encode_lengths
    if len(lengths) > 8 or any(not 1 <= v < r.max_input_len for v in lengths) or list(lengths) != sorted(set(lengths)):
        raise InputError(f"{where}: recipe key 'encode_lengths' must be at most 8 increasing lengths, each "
                         f"between 1 and max_input_len - 1 ({r.max_input_len - 1}), got {short(list(lengths))}")
    return r


def _strict_loader():
    """yaml.SafeLoader that rejects duplicate keys (PyYAML keeps the last one, silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: let PyYAML say so
                continue
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key)}",
                                                        key_node.start_mark)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def load_yaml(path: Path | Traversable) -> Any:
    """Parse a YAML file; every way it can be unreadable is a one-line InputError with file and line."""
    import yaml  # lazily: the remote probe runner reads specs from manifests, not YAML

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}:{at} invalid YAML: {problem}") from None
    except RecursionError:
        raise InputError(f"{path}: invalid YAML: nested too deeply") from None


def is_path_like(name: str) -> bool:
    """A recipe/target argument names a file only if it looks like one; else it is a built-in name."""
    return "/" in name or os.sep in name or name.endswith((".yaml", ".yml"))


def _resolve(name_or_path: str, directory: Traversable, kind: str) -> Path | Traversable:
    if is_path_like(name_or_path):
        p = Path(name_or_path)
        try:
            if p.is_file():
                return p
        except (OSError, ValueError):  # a name too long for a path, or with a NUL byte
            pass
        raise InputError(f"{kind} file not found: {name_or_path}")
    candidate = directory.joinpath(f"{name_or_path}.yaml")
    if NAME_RE.fullmatch(name_or_path) and candidate.is_file():
        return candidate
    hint = f" (a file? give its path, e.g. ./{name_or_path}.yaml)" if NAME_RE.fullmatch(name_or_path) else ""
    raise InputError(f"unknown {kind} {short(name_or_path)}; available: {', '.join(available(directory))}{hint}")


def available(directory: Traversable) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in directory.iterdir() if p.name.endswith(".yaml") and p.is_file())


def load_recipe(name_or_path: str) -> Recipe:
    path = _resolve(name_or_path, RECIPE_DIR, "recipe")
    return _validate_recipe(_build(Recipe, load_yaml(path), str(path), "recipe"), str(path))


def with_lengths(recipe: Recipe, max_input_len: int | None = None, max_output_len: int | None = None) -> Recipe:
    """The recipe with its lengths overridden (export's --max-input-len/--max-output-len), checked
    like a recipe file's. The manifest records the result, so the override is never silent."""
    changes = {k: v for k, v in (("max_input_len", max_input_len), ("max_output_len", max_output_len))
               if v is not None}
    if not changes:
        return recipe
    said = ", ".join(f"{k} {v}" for k, v in changes.items())
    new = dataclasses.replace(recipe, description=f"{recipe.description} ({said} from the command line)", **changes)
    where = f"recipe {recipe.name} with {said}"
    for key, v in changes.items():
        if not 1 <= v <= 8192:
            raise InputError(f"--{key.replace('_', '-')} must be between 1 and 8192, got {v}")
    return _validate_recipe(new, where)


def _validate_target(t: Target, where: str) -> Target:
    from . import backends  # the registry only; backend modules are imported when used

    if t.runtime not in backends.runtimes():
        raise InputError(f"{where}: target key 'runtime' must be one of {', '.join(backends.runtimes())}, "
                         f"got {short(t.runtime)}")
    if not 1 <= t.threads <= 256:
        raise InputError(f"{where}: target key 'threads' must be between 1 and 256, got {t.threads}")
    return t


def load_target(name_or_path: str) -> Target:
    path = _resolve(name_or_path, TARGET_DIR, "target")
    return _validate_target(_build(Target, load_yaml(path), str(path), "target"), str(path))


def recipe_from_dict(d: dict[str, Any], where: str = "manifest") -> Recipe:
    return _validate_recipe(_build(Recipe, d, where, "recipe"), where)


def target_from_dict(d: dict[str, Any], where: str = "manifest") -> Target:
    return _validate_target(_build(Target, d, where, "target"), where)
