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
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, ClassVar

from . import schema
from .errors import InputError
from .metrics import METRICS
from .schema import AtLeast, AtMost, Keys, Newer, OneOf, Pattern, Phrase, Range, check_keys, short
from .schemes import DESCRIPTIONS, Component

__all__ = ["QUANT_COMPONENTS", "QUANT_SCHEMES", "Recipe", "Target", "Tolerance", "check_keys", "load_recipe",
           "load_target", "load_yaml", "recipe_from_dict", "short", "target_from_dict", "with_lengths"]

SPEC_FORMAT_VERSION = 1
RECIPE_DIR: Traversable = resources.files("toolchain") / "recipes"
TARGET_DIR: Traversable = resources.files("toolchain") / "targets"
QUANT_COMPONENTS = tuple(c.value for c in Component)
QUANT_SCHEMES = {s.value: what for s, what in DESCRIPTIONS.items()}
# Names become directory names (build output, caches): no separators, no leading dot.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

# The rules shared by recipes and targets.
Name = Annotated[str, Pattern(NAME_RE, "letters, digits, '.', '_', '+', '-' (it names directories)")]
Version = Annotated[int, AtLeast(1), Newer(SPEC_FORMAT_VERSION)]
Bound = Annotated[float, AtLeast(0)]
OptionalBound = Annotated[float | None, AtLeast(0)]  # null = unset
Length = Annotated[int, Range(1, 8192)]
Scheme = Annotated[str, OneOf(QUANT_SCHEMES, says="unknown {name} scheme {got} for {entry}; known: {choices}")]
Option = Annotated[str | int | float | bool, Phrase("a string, number or true/false")]


@dataclass(frozen=True)
class Tolerance:
    """What `verify` requires of an artifact made with this recipe.

    Logits pass when max |artifact - eager| <= max_abs_logit_diff + max_rel_logit_diff x
    logit_scale, logit_scale being the largest |eager logit| over the compared steps (numpy's
    allclose rule, with the scale of the logit vectors instead of each element: float32
    rounding grows with the magnitude of the logits, so a fixed bound fails correct exports
    of models with large logits)."""

    KIND: ClassVar[str] = "tolerance"

    max_abs_logit_diff: Bound = 1e-3
    max_rel_logit_diff: Bound = 1e-4
    min_sequence_match: Annotated[float, AtLeast(0), AtMost(1)] = 1.0
    max_accuracy_drop: Bound = 0.0
    # Task-metric bounds (toolchain.metrics): how much worse than eager the artifact may be on
    # the recipe's metric (wer/cer: fraction points up; chrf/bleu: sacrebleu points down).
    # Unset (None): the metric may not get worse at all, and the parity checks above decide.
    # Set for the metric in use: that bound decides, and parity misses are reported as advisory
    # (a quantized model may pick other tokens yet transcribe as well).
    max_wer_increase: OptionalBound = None
    max_cer_increase: OptionalBound = None
    max_chrf_drop: OptionalBound = None
    max_bleu_drop: OptionalBound = None


@dataclass(frozen=True)
class Recipe:
    KIND: ClassVar[str] = "recipe"

    name: Name
    description: str
    max_input_len: Length
    max_output_len: Length
    # Per component (encoder, decoder, embeddings, lm_head) -> scheme (schemes.QuantScheme).
    # A missing component stays fp32. Each backend maps schemes onto its own
    # toolchain and rejects, by name, what it cannot honour.
    quantization: Annotated[dict[str, Scheme], Keys(QUANT_COMPONENTS, noun="component")] = field(default_factory=dict)
    group_size: Annotated[int, OneOf((16, 32, 64, 128, 256))] = 32  # for the group-wise 4-bit schemes
    calibration: str = ""  # JSONL ({"input": ...}) for static schemes; "" = the checkpoint's eval.jsonl
    tolerance: Tolerance = field(default_factory=Tolerance)
    # Shorter input lengths that get their own encode program besides the max_input_len
    # one (text families). An input runs the smallest that holds it, so encode costs what
    # the input needs, not the longest input the recipe allows; decode is unchanged (each
    # shorter encode pads its cross K/V to max_input_len and masks the tail). Empty: one
    # encode program. Backends that cannot hold several encode programs refuse it.
    encode_lengths: tuple[int, ...] = ()
    # What encode hands decode for the cross-attention (toolchain/arch/memory.py): "kv", each
    # decoder layer's keys and values (projected once per input); "memory", the encoder's
    # states once, the K/V projections applied per step. memory makes encode cheaper and its
    # outputs 2 * layers times smaller, for more work per step: for long inputs.
    cross_attention: Annotated[str, OneOf(("kv", "memory"))] = "kv"
    # How encode runs its self-attention: "graph", as graph ops (bmm, bias add, softmax, bmm)
    # every runtime delegates; "fused", one edgeseq::rel_attention kernel per layer
    # (arch/rel_attention.py; ExecuTorch only, T5-style relative-position biases): bf16
    # products with fp32 accumulation on CPUs with AVX512-BF16, fp32 vector blocks elsewhere.
    encoder_attention: Annotated[str, OneOf(("graph", "fused"))] = "graph"
    # The task metric verify scores with (toolchain.metrics.METRICS); auto: the input kind's
    # (wer for speech, exact otherwise).
    metric: Annotated[str, OneOf(METRICS)] = "auto"
    # Whether the family's quantization defaults apply (arch Adapter.keep_8bit: components a family
    # keeps at 8 bits where the recipe asks 4, e.g. Whisper's encoder); false: the schemes as written.
    family_defaults: bool = True
    format_version: Version = SPEC_FORMAT_VERSION

    def validate(self, where: str) -> None:
        """The rule across keys: shorter encode lengths below max_input_len, increasing."""
        lengths = self.encode_lengths
        if len(lengths) > 8 or any(not 1 <= v < self.max_input_len for v in lengths) or \
                list(lengths) != sorted(set(lengths)):
            raise InputError(f"{where}: recipe key 'encode_lengths' must be at most 8 increasing lengths, each "
                             f"between 1 and max_input_len - 1 ({self.max_input_len - 1}), got {short(list(lengths))}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encode_lengths"] = list(self.encode_lengths)
        return d


@dataclass(frozen=True)
class Target:
    KIND: ClassVar[str] = "target"

    name: Name
    description: str
    # A registered runtime (toolchain.backends: the registry only, no backend is imported).
    runtime: Annotated[str, OneOf(_runtimes)]
    backend: str
    device_class: str
    threads: Annotated[int, Range(1, 256)] = 2
    # Backend-specific settings (NPU configuration, SoC, clock...): scalar values only;
    # the backend's check() validates the keys it knows and rejects the rest by name.
    options: dict[str, Option] = field(default_factory=dict)
    experimental: bool = False  # shown as such by `edgeseq targets`: not yet run on its device
    format_version: Version = SPEC_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _runtimes() -> list[str]:
    from . import backends

    return backends.runtimes()


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
    return schema.load(Recipe, load_yaml(path), str(path))


def with_lengths(recipe: Recipe, max_input_len: int | None = None, max_output_len: int | None = None) -> Recipe:
    """The recipe with its lengths overridden (export's --max-input-len/--max-output-len), checked
    like a recipe file's. The manifest records the result, so the override is never silent."""
    changes = {k: v for k, v in (("max_input_len", max_input_len), ("max_output_len", max_output_len))
               if v is not None}
    if not changes:
        return recipe
    said = ", ".join(f"{k} {v}" for k, v in changes.items())
    new = dataclasses.replace(recipe, description=f"{recipe.description} ({said} from the command line)",
                              max_input_len=changes.get("max_input_len", recipe.max_input_len),
                              max_output_len=changes.get("max_output_len", recipe.max_output_len))
    for key, v in changes.items():
        if not 1 <= v <= 8192:
            raise InputError(f"--{key.replace('_', '-')} must be between 1 and 8192, got {v}")
    new.validate(f"recipe {recipe.name} with {said}")
    return new


def load_target(name_or_path: str) -> Target:
    path = _resolve(name_or_path, TARGET_DIR, "target")
    return schema.load(Target, load_yaml(path), str(path))


def recipe_from_dict(d: dict[str, Any], where: str = "manifest") -> Recipe:
    return schema.load(Recipe, d, where)


def target_from_dict(d: dict[str, Any], where: str = "manifest") -> Target:
    return schema.load(Target, d, where)
