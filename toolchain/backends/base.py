"""The contract every runtime implements: a `Backend` (export side: check, lower, structure
checks) and the `Session` it opens (run side: encode once, decode per token).

A runtime is one package under `backends/` whose `__init__` defines a Backend subclass and
imports nothing heavy: the exporter lives in its `export`/`quantize` modules and the runtime
in `session`, both imported inside the methods that need them, so `edgeseq --help` stays
fast and a device needs only the session module.

Session tensors (numpy, what `run`, `verify` and `probe` share):

    encode(*inputs) -> state    the encode program's inputs in the order the manifest's
                                programs.encode.inputs lists them (or one dict name -> array);
                                text families: input_ids int64[1, S], attention_mask int64[1, S],
                                S = the recipe's max_input_len, right-padded by the caller;
                                Whisper: input_features float32[1, n_mels, frames]
    decode(token, position, state) -> logits float32[V]
                                one step; position p holds the token fed at p (cache slot p)
    step(token, position, state, token_bias, want_logits) -> (next token, logits or None)
                                one step of a decode program that chooses greedy's token
                                itself (`next_token`; Capabilities.next_token): token_bias
                                float32[1, V] (generate.TokenBias), logits copied out only
                                when `want_logits`
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import InputError
from ..schemes import SchemeTable, check_schemes

if TYPE_CHECKING:
    from ..artifact import Artifact
    from ..specs import Recipe, Target
    from ..split import Seq2SeqParts


def check_options(target: Target, allowed: Mapping[str, str], choices: Mapping[str, Sequence[str]]) -> None:
    """A target's `options`: only the `allowed` keys, and each key of `choices` one of its values
    (a missing one included). One-line InputErrors naming the key."""
    unknown = sorted(set(target.options) - set(allowed))
    if unknown:
        raise InputError(f"target {target.name}: unknown option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    for key, values in choices.items():
        value = target.options.get(key)
        if value not in values:
            raise InputError(f"target {target.name}: option {key!r} must be one of {', '.join(values)}, "
                             f"got {value!r}")


def cross_input_problem(manifest: Mapping[str, Any],
                        decode_inputs: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """The structure checks' rule on decode's cross-attention inputs, from the recipe's
    cross_attention: "kv" decode takes no encoder-states-shaped input [1, S, d_model] (the
    encoder ran once, its K/V came in per layer); "memory" it takes exactly memory_t
    [1, D, S] and memory [1, S, D]. Returns (what was checked, the failure or None);
    `decode_inputs` as the compiled program declares them (dicts with "shape" and "name", or
    "tensor" as a TFLite signature names them)."""
    s = manifest["recipe"]["max_input_len"]
    if manifest["recipe"].get("cross_attention", "kv") == "memory":
        names = [str(i.get("name", i.get("tensor", ""))) for i in decode_inputs]
        states = sorted(n for n in names if n.startswith("memory"))
        ok = states == ["memory", "memory_t"]
        return "decode takes the encoder states once (cross_attention: memory)", \
            None if ok else f"decode's encoder-state inputs are {states}, not memory_t and memory"
    hidden = any(len(i["shape"]) == 3 and list(i["shape"][:2]) == [1, s] for i in decode_inputs)
    return "decode has no encoder hidden-states input", \
        "decode has an encoder-hidden-states-shaped input [1, S, d_model]" if hidden else None


class CacheMode(StrEnum):
    """Where decode's self-attention KV cache lives."""

    BUFFER = "buffer"  # inside the program, as mutable state blended in place (Core ML states)
    # Mutable state too; attention reads the cache as it was plus the step's own k/v, and the
    # step's slot is written after it with index_put, which ExecuTorch's reinplace pass turns
    # into an in-place write: no whole-cache blend and write-back per layer and step.
    SLOT = "slot"
    IO = "io"  # explicit decode inputs and outputs, carried by the Session


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once and read by export, verify, probe and inspect."""

    cache_mode: CacheMode
    # Per component: the schemes it honours -> what it turns each into (check_schemes).
    schemes: SchemeTable
    # Said after the supported schemes when a recipe asks for another one.
    scheme_note: str = ""
    # Several encode programs (the recipe's encode_lengths) in one artifact.
    encode_lengths: bool = False
    # The recipe's encoder_attention: fused (edgeseq's own rel_attention kernel in the program).
    fused_attention: bool = False
    # decode chooses greedy's next token in the program (Seq2SeqParts.with_next_token).
    next_token: bool = False
    # probe reports the compiler's estimate instead of running (NPU programs).
    estimates: bool = False
    # What "executed" means when it is not the deployed program itself (NPU: TOSA reference model).
    executes: str = ""


@dataclass
class Lowered:
    """What a backend wrote: its files, program signatures and per-program facts.
    `files` are what a device loads (the model bytes); `verification_files` are kept only so
    `verify` can check what the device will compute (Ethos-U: the host reference program, the
    partitioned program and each delegate's TOSA subgraph): hashed like the others, not counted."""

    files: list[str]
    programs: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    verification_files: list[str] = field(default_factory=list)


class Session(ABC):
    """A loaded artifact: encode once per input, then decode per token."""

    # The input length the last encode ran at (shorter encode programs); None: the recipe's.
    encode_length: int | None = None
    # True when the session runs the whole greedy loop itself (the native runner): then
    # generate.greedy hands the loop to its `generate` method (same keywords as greedy's, see
    # native.NativeSession) instead of calling decode per token.
    runs_loop: ClassVar[bool] = False
    # True when the artifact's decode program chooses the next token (then `step` runs it and
    # `vocab_size` is its logits' width): generate.greedy calls step instead of decode.
    next_token: bool = False
    vocab_size: int = 0

    @abstractmethod
    def encode(self, *inputs: np.ndarray | dict[str, np.ndarray]) -> Any:
        """The decode state of one input. It may alias the runtime's own output buffers: valid
        until this session's next `encode`, so decode one input before encoding the next."""

    @abstractmethod
    def decode(self, token: int, position: int, state: Any) -> np.ndarray:
        """One step's logits [V], a copy the caller may keep."""

    def executed(self) -> str | None:
        """What this session executes when that is not simply the artifact's runtime (verify's
        `runtime` says it); None: the backend's Capabilities.executes, if any."""
        return None

    def execution_report(self) -> dict[str, Any] | None:
        """Checks the session made while running (an NPU session: per delegated subgraph, its
        agreement with the host reference), with "failures" (one line each) that fail verify."""
        return None

    def step(self, token: int, position: int, state: Any, token_bias: np.ndarray,
             want_logits: bool) -> tuple[int, np.ndarray | None]:
        """One step of a next-token decode program: (argmax(logits + token_bias), the logits
        [V] if `want_logits`). Sessions with `next_token` implement it."""
        raise NotImplementedError(f"{type(self).__name__}: the artifact's decode returns logits only")


class Backend(ABC):
    """One runtime (and delegate). Subclasses set `capabilities` and implement lower and
    open_session; the rest has defaults that say "nothing special"."""

    capabilities: ClassVar[Capabilities]
    # Distributions whose versions go into the manifest and into build's cache key.
    distributions: ClassVar[tuple[str, ...]] = ()

    def available(self) -> tuple[bool, str]:
        """Can this machine export (and run) it: (ok, why not)."""
        return True, ""

    def can_execute(self) -> tuple[bool, str]:
        """Can this machine *run* its artifacts (Core ML needs macOS, NPU programs the device)."""
        return self.available()

    def check(self, recipe: Recipe, target: Target) -> None:
        """Raise InputError for anything this backend cannot honour, before any work: what the
        capabilities say (encode lengths, schemes), then `check_target`."""
        caps = self.capabilities
        if recipe.encode_lengths and not caps.encode_lengths:
            from . import runtimes_with

            raise InputError(f"recipe {recipe.name}: encode_lengths (several encode programs) is not supported by "
                             f"{target.name}; supported by runtime {', '.join(runtimes_with('encode_lengths'))}; "
                             f"remove the key for this target")
        if recipe.encoder_attention == "fused" and not caps.fused_attention:
            from . import runtimes_with

            raise InputError(f"recipe {recipe.name}: encoder_attention: fused (edgeseq's attention kernel) is not "
                             f"supported by {target.name}; supported by runtime "
                             f"{', '.join(runtimes_with('fused_attention'))}; use encoder_attention: graph")
        self.check_target(recipe, target)
        check_schemes(recipe, target, caps.schemes, caps.scheme_note)

    def check_target(self, recipe: Recipe, target: Target) -> None:  # noqa: B027 (optional hook)
        """Backend-specific refusals (delegates, options, group sizes)."""

    def check_parts(self, parts: Seq2SeqParts) -> None:
        """Parts built for another cache mode are a caller's bug (export builds them from
        `capabilities.cache_mode`): a ValueError, not an input error."""
        if parts.cache_mode != self.capabilities.cache_mode:
            raise ValueError(f"{type(self).__name__} needs parts built with cache_mode="
                             f"{self.capabilities.cache_mode.value!r}, got {parts.cache_mode!r}")

    @abstractmethod
    def lower(self, parts: Seq2SeqParts, recipe: Recipe, target: Target, out: Path,
              calibration: list[Any] | None = None) -> Lowered:
        """Write the model files into `out`. `calibration`: the recipe's calibration inputs
        (token id lists, or encode arrays for audio) when a scheme needs them, else None."""

    @abstractmethod
    def open_session(self, artifact: Artifact, threads: int | None = None) -> Session: ...

    def preload(self) -> None:  # noqa: B027 (optional hook)
        """Import the runtime, so a probe's load time measures the model, not Python imports."""

    def verify_structure(self, artifact: Artifact) -> dict[str, Any]:
        """Check an artifact that cannot execute here (files, signatures, delegation)."""
        raise InputError(f"{artifact.path}: cannot execute here: {self.can_execute()[1]}")

    def estimate(self, artifact: Artifact, output_len: int) -> dict[str, Any]:
        """The compiler's latency estimate (capabilities.estimates)."""
        raise NotImplementedError(type(self).__name__)

    def versions(self) -> dict[str, str]:
        """The installed versions of `distributions` ("missing" when not installed)."""
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for dist in self.distributions:
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                out[dist] = "missing"
        return out

