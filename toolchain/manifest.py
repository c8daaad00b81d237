"""An artifact's manifest.json as frozen dataclasses, read by the one strict loader (schema.py).

    format_version   FORMAT_VERSION; an older one loads, a newer one is refused in one line
    checkpoint       name, the path it was exported from, sha256 of its files (+ what it is)
    recipe, target   the specs it was made with (specs.Recipe / specs.Target, checked as such)
    programs         per program (encode, decode): file, method/signature/function, inputs,
                     outputs, where the self-attention cache lives, shorter encode lengths
    input            how user input becomes encode's inputs: a kind (toolchain.inputs) + settings
    tokens           start/eos/pad ids, vocabulary size, the tokenizer file(s), generation facts
    files            name -> sha256 and bytes of every file the artifact holds
    verification_files  the files of `files` kept for verify only (not model bytes)
    tool_versions, sizes, created, export_seconds, verify (the last report, a dict)
plus each backend's own sections (delegation, quantization, onnx, npu, ...), kept as they are
(`Manifest.reports`): backends read them from the raw JSON (`Artifact.manifest`).

Export writes the JSON; `parse` reads it: `Artifact.meta` is the typed view every reader uses.
Sections a backend fills (a program's entries, a tensor's) keep the keys this module does not
name (`facts`); everything else is strict: an unknown key is refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from . import schema
from .errors import InputError
from .prompt import TaskPrompt, build, check_choice
from .schema import AtLeast, KeyRule, NonEmpty, Pattern, Phrase, Rest, Says
from .specs import Recipe, Target

# 2: "tokens.tokenizer" may be a Marian SentencePiece description (an object)
# 3: "tokens.task_prompt" (Whisper: the language/task prompt is chosen at run time; prompt.TaskPrompt)
FORMAT_VERSION = 3
SHA256_RE = re.compile(r"[0-9a-f]{64}")
Facts = Annotated[dict[str, Any], Rest()]


def safe_name(name: Any) -> bool:
    """A manifest file name: a relative path inside the artifact (Core ML packages are dirs)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


@dataclass(frozen=True)
class FileEntry:
    sha256: Annotated[str, Pattern(SHA256_RE, "64 hex digits")]
    bytes: Annotated[int, AtLeast(0)]


Files = Annotated[
    dict[str, Annotated[FileEntry, Says("'files' entry {entry!r} needs a sha256 (64 hex digits) and bytes")]],
    Phrase("a non-empty mapping of name -> sha256 and bytes"), NonEmpty(),
    KeyRule(safe_name, "file name {entry!r} is not a plain path inside the artifact")]


@dataclass(frozen=True)
class Tensor:
    """A program input, output or cache tensor as the runtime session feeds or reads it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy/torch name: int64, float32...
    facts: Facts = field(default_factory=dict)  # the backend's (the signature tensor's name, its dtype)


@dataclass(frozen=True)
class EncodeLength:
    """A shorter encode program (recipe encode_lengths): inputs [1, length], outputs padded to S."""

    length: int
    method: str | None = None
    file: str | None = None
    facts: Facts = field(default_factory=dict)


@dataclass(frozen=True)
class Program:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    file: str | None = None  # the model file (an ExecuTorch .pte, an .onnx, a .tflite, an .mlpackage dir)
    data_file: str | None = None  # weights stored apart (ExecuTorch .ptd, ONNX external data)
    method: str | None = None  # ExecuTorch method
    signature: str | None = None  # LiteRT signature
    function: str | None = None  # Core ML function
    cache_mode: str | None = None  # decode: "buffer" (state in the program) or "io" (cache in/out tensors)
    cache: tuple[Tensor, ...] = ()  # decode: per layer cache_k [H, Dh, T], cache_v [H, T, Dh]
    lengths: tuple[EncodeLength, ...] = ()
    facts: Facts = field(default_factory=dict)  # the backend's (quantization, opset, provider, states...)

    @property
    def entry(self) -> str | None:
        """The name this program has inside its file."""
        return self.method or self.signature or self.function

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]


@dataclass(frozen=True)
class InputSpec:
    """How user input becomes the encode program's inputs: a kind (its codec in toolchain.inputs
    checks the settings) and the settings (log_mel: the feature extractor's)."""

    kind: str = "text"
    settings: Facts = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings}

    @property
    def codec(self) -> Any:
        from .inputs import codec_for

        return codec_for(self.kind)

    def validate(self, where: str) -> None:
        try:
            codec = self.codec
        except InputError as e:  # a kind from a newer edgeseq (or a typo)
            raise InputError(f"{where}: 'input.kind': {e}") from None
        codec.check_spec(self.as_dict(), where)


@dataclass(frozen=True)
class Tokens:
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    vocab_size: int
    tokenizer: str | dict[str, Any] | None = None  # a file name, or a Marian description (tokenizer.py)
    # Generation facts (older artifacts have none): see split.Seq2SeqParts and generate.greedy.
    decoder_prompt: tuple[int | None, ...] = ()  # forced after the start token; None: the detected language
    language_token_ids: tuple[int, ...] = ()
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    forced_eos_token_id: int | None = None
    # Whisper (format 3): what building the prompt for another language/task takes; None: a text
    # family, or an artifact exported before run-time language choice.
    task_prompt: TaskPrompt | None = None

    def decoding(self, language: str | None = None, task: str | None = None) -> dict[str, Any]:
        """generate.greedy's token keywords; with a `language` and/or `task` (run/verify
        --language/--task, an eval row's keys), the prompt generate(language=..., task=...) feeds."""
        prompt, language_ids = self.prompt_for(language, task)
        return {"start_id": self.decoder_start_token_id, "eos_id": self.eos_token_id, "pad_id": self.pad_token_id,
                "prompt": prompt, "language_ids": language_ids,
                "suppress": self.suppress_tokens, "begin_suppress": self.begin_suppress_tokens,
                "forced_eos": self.forced_eos_token_id}

    def choice(self, language: str | None, task: str | None) -> tuple[str | None, str | None]:
        """A run-time (language, task) as generate(language=..., task=...) takes it for this model;
        (None, None): the exported default (nothing chosen, or English on an English-only model)."""
        if language is None and task is None:
            return None, None
        if self.task_prompt is None:
            what = "--language" if language is not None else "--task"
            raise InputError(f"{what}: this artifact has no language/task prompt to choose (only Whisper "
                             f"artifacts have one, from edgeseq with manifest format_version >= 3; re-export)")
        return check_choice(self.task_prompt, language, task)

    def prompt_for(self, language: str | None, task: str | None) -> tuple[tuple[int | None, ...], tuple[int, ...]]:
        """(decoder prompt, language token ids) for a run-time choice; none: the exported default."""
        language, task = self.choice(language, task)
        if language is None and task is None or self.task_prompt is None:
            return self.decoder_prompt, self.language_token_ids
        prompt, ids = build(self.task_prompt, language, task)
        return tuple(prompt), tuple(ids)


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: str  # where it was exported from: verify's default reference
    sha256: dict[str, str]  # file name -> sha256: verify refuses a checkpoint that changed since
    params: int | None = None
    facts: Facts = field(default_factory=dict)  # what it is (family, sizes): the adapter's describe()


@dataclass(frozen=True)
class Sizes:
    model_bytes: int
    fp32_param_bytes: int
    ratio_to_fp32_params: float


@dataclass(frozen=True)
class Manifest:
    format_version: int
    files: Files
    programs: Annotated[dict[str, Program], Phrase("a mapping of program name -> signature")]
    recipe: Recipe
    target: Target
    checkpoint: CheckpointInfo
    tokens: Tokens
    input: InputSpec = field(default_factory=InputSpec)  # older artifacts: text
    created: str | None = None
    sizes: Sizes | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    export_seconds: float | None = None
    verify: dict[str, Any] | None = None  # the last verify report (verify.VerifyReport, or structure only)
    reports: Facts = field(default_factory=dict)  # each backend's own sections, by name
    # Files kept for verify only (backends.base.Lowered): listed and hashed, not model bytes.
    verification_files: list[str] = field(default_factory=list)

    def tokenizer_files(self, where: str) -> list[str]:
        from .tokenizer import check_spec

        return check_spec(self.tokens.tokenizer, Path(where))

    def validate(self, where: str) -> None:
        """Every file a runtime will load is one the manifest lists (and so hash-checks)."""
        def listed(ref: str | None, what: str) -> None:
            if ref is None:
                return
            if not safe_name(ref) or not (ref in self.files or any(n.startswith(ref + "/") for n in self.files)):
                raise InputError(f"{where}: {what} {ref!r} is not a file listed (and hashed) in the manifest")

        for name, prog in self.programs.items():
            listed(prog.file, f"program {name!r} file")
            listed(prog.data_file, f"program {name!r} data_file")
            for e in prog.lengths:
                listed(e.file, f"program {name!r} length {e.length} file")
        for ref in self.tokenizer_files(where):
            listed(ref, "tokenizer")
        for ref in self.verification_files:
            listed(ref, "verification file")


def parse(data: dict[str, Any], where: str) -> Manifest:
    """The manifest (a parsed JSON object) checked and typed; refused in one line naming `where`
    and the key. The format_version comes first: a newer manifest may not fit these classes."""
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{where}: missing format_version")
    if version > FORMAT_VERSION:
        raise InputError(f"{where}: format_version {version} is newer than this tool ({FORMAT_VERSION}); "
                         f"upgrade edgeseq")
    return schema.load(Manifest, data, where)
