"""Whisper's decoder prompt for a language and a task, built at export (the generation
config's choice, the artifact's default) and again at run time (`run`/`verify --language
--task`, an eval row's "language"/"task"): pure Python, no transformers, so it runs wherever
the artifact runs.

The prompt is what WhisperForConditionalGeneration.generate feeds after decoder_start (its
`_retrieve_init_tokens`, for one input): the deprecated forced_decoder_ids when neither a
language nor a task is set; then the language token (given, or None = detected from the first
decode step's logits over the language tokens), the task token (transcribe when only a language
is given) and <|notimestamps|>. Decode takes the token as an input, so no prompt is baked into
the programs: the manifest keeps the default prompt (tokens.decoder_prompt) and, in
tokens.task_prompt (`TaskPrompt`), what building another one takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class TaskPrompt:
    """The generation config's prompt fields as the manifest keeps them (tokens.task_prompt)."""

    lang_to_id: dict[str, int] = field(default_factory=dict)  # "<|en|>" -> id; {}: no language tokens
    task_to_id: dict[str, int] = field(default_factory=dict)  # "transcribe"/"translate" -> id
    no_timestamps_token_id: int | None = None
    is_multilingual: bool | None = None  # None: the generation config does not say
    language: str | None = None  # the generation config's own choice (the artifact's default)
    task: str | None = None
    forced_decoder_ids: tuple[tuple[int | None, ...], ...] = ()  # [position, id or None] pairs (deprecated)
    language_names: dict[str, str] = field(default_factory=dict)  # "english" -> "en", this model's languages

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (lists, not tuples)."""
        return {**asdict(self), "forced_decoder_ids": [list(f) for f in self.forced_decoder_ids]}

    @property
    def english_only(self) -> bool:
        """An English-only checkpoint (tiny.en...): transformers refuses any language or task for it."""
        return self.is_multilingual is False or (self.is_multilingual is None and not self.lang_to_id)

    def language_of(self, token_id: int) -> str | None:
        """A language token id -> its code ("en"), or None when it is not a language token."""
        for token, i in self.lang_to_id.items():
            if i == token_id:
                return token.strip("<|>")
        return None

    def codes(self) -> list[str]:
        return sorted(t.strip("<|>") for t in self.lang_to_id)


def _language_id(opts: TaskPrompt, language: str, label: str) -> int:
    """"en", "english" or "<|en|>" -> its token id, as Whisper's generate resolves it."""
    lang = language.lower()
    if lang in opts.lang_to_id:
        token = lang
    elif lang in opts.language_names:
        token = f"<|{opts.language_names[lang]}|>"
    else:
        token = f"<|{lang}|>"
    if token not in opts.lang_to_id:
        shown = ", ".join(opts.codes()[:12]) + (f" (+{len(opts.codes()) - 12} more)" if len(opts.codes()) > 12 else "")
        raise InputError(f"{label} {language!r} is not a language of this model (its languages: {shown})")
    return int(opts.lang_to_id[token])


def check_choice(opts: TaskPrompt, language: str | None, task: str | None) -> tuple[str | None, str | None]:
    """A run-time (language, task) checked against the model; an English-only checkpoint takes
    only English and transcribe, which are its default prompt (returned as (None, None))."""
    if task is not None and task not in TASKS:
        raise InputError(f"--task {task!r}: use transcribe or translate")
    if opts.english_only:
        english = language is None or language.lower() in ("en", "english", "<|en|>")
        if not english or task == "translate":
            what = f"--language {language}" if not english else "--task translate"
            why = ("is_multilingual: false" if opts.is_multilingual is False else "no lang_to_id")
            raise InputError(f"{what}: this checkpoint is English-only (its generation config has {why}); "
                             f"it only transcribes English")
        return None, None
    return language, task


def build(opts: TaskPrompt, language: str | None = None, task: str | None = None,
          label: str = "--language") -> tuple[list[int | None], list[int]]:
    """(prompt, language token ids) for `language` and `task` over the generation config's own
    (None: its choice), as generate(language=..., task=...) builds them. A None in the prompt is
    the language to detect; the language ids are then the candidates (else [])."""
    task_label = "--task" if label == "--language" else label.replace("language", "task")
    language = language if language is not None else opts.language
    task = task if task is not None else opts.task
    task_ids = {int(v) for v in opts.task_to_id.values()}
    detect = object()  # placeholder: the language generate detects
    prompt: list[Any] = []
    if task is None and language is None:  # the deprecated forced_decoder_ids, as generate reads them
        forced = [list(f) for f in opts.forced_decoder_ids]
        if forced and forced[0][0] == 1:  # entries for positions 1, 2, ... (others are ignored, as generate does)
            i = 1
            while forced and forced[0][0] == i:
                prompt.append(forced[0][1])
                forced, i = forced[1:], i + 1
            if forced:
                raise InputError(f"generation_config.forced_decoder_ids {forced} do not follow Whisper's prompt "
                                 f"pattern (one entry per position 1, 2, ...)")
    lang_undefined = not prompt or prompt[0] is None
    lang = _language_id(opts, language, label) if language is not None else (
        detect if opts.lang_to_id and lang_undefined else None)
    if lang is not None:
        if prompt:
            prompt[0] = lang
        else:
            prompt.append(lang)
    if task is not None:
        if task not in opts.task_to_id:
            raise InputError(f"{task_label} {task!r} is not in generation_config.task_to_id "
                             f"({', '.join(opts.task_to_id) or 'none'})")
        tid = int(opts.task_to_id[task])
        prompt = [tid if t in task_ids else t for t in prompt + [tid]]
    elif language is not None and task_ids and not any(t in task_ids for t in prompt):
        prompt.append(int(opts.task_to_id["transcribe"]))
    no_ts = opts.no_timestamps_token_id
    if no_ts is not None and (prompt[-1] if prompt else None) != no_ts:
        prompt.append(int(no_ts))
    prompt = [None if t is detect else int(t) for t in prompt if t is not None]
    return prompt, sorted(int(i) for i in opts.lang_to_id.values()) if None in prompt else []


@dataclass(frozen=True)
class Resolved:
    """What a generation's prompt says: the language (code) it ran in and whether it was
    detected, and the task token's name (None where the prompt has none)."""

    language: str | None
    detected: bool
    task: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"language": self.language, "language_detected": self.detected, "task": self.task}


def resolved(opts: TaskPrompt | None, asked: Sequence[int | None], fed: Sequence[int]) -> Resolved | None:
    """The prompt as asked (None = detect) and as fed (generate.Generation.prompt) -> Resolved;
    None for artifacts without language tokens (text families, older artifacts)."""
    if opts is None:
        return None
    language = next((c for c in map(opts.language_of, fed) if c is not None), None)
    by_id = {int(v): k for k, v in opts.task_to_id.items()}
    task = next((by_id[t] for t in fed if t in by_id), None)
    return Resolved(language, None in asked, task)
