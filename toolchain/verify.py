"""Parity of an artifact against eager transformers on an eval set.

For every eval input:
  * the artifact generates greedily through its runtime Session (per-step logits kept);
  * eager transformers generates greedily (`model.generate`) -> sequence_match;
  * eager transformers is run teacher-forced on the artifact's own tokens, so every
    artifact step has an eager logit row to compare with, even after a divergence
    -> max_abs_logit_diff and top1_agreement over all steps, and logit_scale (the largest
    |eager logit|), against which the recipe's tolerance is relative (specs.Tolerance).
Where transformers' own KV cache breaks for a valid config (a T5 whose num_decoder_layers
differs from num_layers), the eager side runs the same greedy search without it
(use_cache=False); a reference that fails anyway is a one-line error, never a traceback.
An eval "input" is what the artifact's input codec reads (toolchain.inputs: a text; for audio
artifacts a WAV file whose log-mel features both sides get); forced prompt tokens are compared too.
Whisper: an eval row may say its "language" and "task" (else --language/--task, else the
artifact's default prompt); the eager side is generate(language=..., task=...) with the same
choice, and a detected language must be the one generate's detect_language picks. The report's
`languages` says, per row, the language run in and whether it was detected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import backends, evalset, metrics
from .artifact import Artifact
from .checkpoint import load_checkpoint
from .errors import InputError
from .evalset import eval_examples, load_eval
from .generate import greedy
from .inputs import Codec, Context, Encoded
from .manifest import Tokens
from .native import resolve_runner, session_for
from .progress import stage
from .prompt import resolved

__all__ = ["VerifyReport", "eval_examples", "load_eval", "verify", "verify_artifact"]

@dataclass
class VerifyReport:
    examples: int
    max_abs_logit_diff: float
    logit_scale: float  # the largest |eager logit| over the compared steps
    allowed_logit_diff: float  # tolerance.max_abs_logit_diff + max_rel_logit_diff x logit_scale
    top1_agreement: float
    sequence_match: float
    task_accuracy: float | None
    reference_accuracy: float | None
    eval_source: str
    runtime: str
    passed: bool
    failures: list[str]
    # Task metric (toolchain.metrics), where the eval set has targets: its name, the artifact's
    # and eager's headline value, and all numbers of its family ({"wer", "cer"}, {"chrf", "bleu"}...).
    metric: str = "exact"
    task_metric: float | None = None
    reference_metric: float | None = None
    scores: dict[str, float] | None = None
    reference_scores: dict[str, float] | None = None
    normalizer: str | None = None  # what wer/cer normalized the texts with
    # Whisper: per row, the language it ran in, whether it was detected, and the task
    # (prompt.Resolved.as_dict); None for artifacts without a language prompt.
    languages: list[dict[str, Any]] | None = None
    decided_by: str = "parity"  # "parity" (logits, sequence match, task metric no worse) or "task_metric"
    advisory: list[str] = field(default_factory=list)  # parity misses that did not decide (task_metric)
    # Decode programs that choose the token themselves (Session.next_token): generated steps
    # where the program's next_token was compared with greedy's choice from the same step's
    # logits, and how many agreed (must be all); None where decode returns logits only.
    next_token: dict[str, int] | None = None
    # What the session checked while running, where it checks something (Session.execution_report):
    # NPU targets, per delegated subgraph its calls and integer agreement with the host reference.
    delegates: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference(model, codec: Codec, eager_in: dict, tokens: Tokens, max_output_len: int,
              prompt: Sequence[int | None], choice: Mapping[str, str | None] | None = None,
              use_cache: bool = True) -> tuple[list[int] | None, list[int]]:
    """Eager transformers greedy `generate`, as a user runs it (with `choice`: its language and
    task keywords): (the prompt it forced, or None where that cannot be read, and the tokens it
    generated after it, up to EOS). How generate is called and read depends on the input kind:
    its codec's `reference`."""
    given = {k: v for k, v in (choice or {}).items() if v is not None}
    return codec.reference(model, eager_in, tokens, max_output_len, prompt, given, use_cache=use_cache)


def _eager(model, codec: Codec, encoded: Encoded, tokens: Tokens, max_output_len: int, prompt: Sequence[int | None],
           choice: Mapping[str, str | None], fed: list[int],
           what: str) -> tuple[list[int] | None, list[int], np.ndarray]:
    """The eager side of one row: generate's (prompt, tokens) as the input codec runs it, and the
    teacher-forced logits [len(fed), V]. transformers failing here is not the artifact's fault:
    one line, exit 2."""
    import torch

    eager_in = codec.eager_kwargs(encoded)
    try:
        with torch.no_grad():
            try:
                ref_prompt, out = reference(model, codec, eager_in, tokens, max_output_len, prompt, choice)
            except (IndexError, ValueError, RuntimeError, AttributeError):
                # transformers' own KV cache breaks for some valid configs (a T5 whose
                # num_decoder_layers differs from num_layers): the same greedy search without it.
                ref_prompt, out = reference(model, codec, eager_in, tokens, max_output_len, prompt, choice,
                                            use_cache=False)
            eager = _teacher_forced(model, eager_in, fed)
    except Exception as e:  # noqa: BLE001 (any failure of the reference model is reported, not raised)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"the eager reference (transformers) failed on input {what[:40]!r}: "
                         f"{type(e).__name__}: {first}; nothing to compare against (--debug for the traceback)") from e
    return ref_prompt, out, eager


def _row_choice(row: dict[str, Any], n: int, source: str, language: str | None,
                task: str | None) -> tuple[str | None, str | None]:
    """An eval row's own "language"/"task" (Whisper), else the command's --language/--task."""
    for key in ("language", "task"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise InputError(f"{source}: row {n}: {key!r} must be a string, got {row[key]!r}")
    return row.get("language") or language, row.get("task") or task


def _teacher_forced(model, eager_in: dict, fed: list[int]) -> np.ndarray:
    """Eager logits [len(fed), V] for the decoder fed `fed` in one pass. One pass reads no cache,
    but transformers still builds one, and for some configs that fails (a T5 whose
    num_decoder_layers differs from num_layers): then without it. Not always without it: for
    T5Gemma's sliding-window layers the no-cache path builds other masks (logits 2.0 off the
    cached path, which step-by-step generation and the artifact both follow)."""
    import torch

    ids = torch.tensor([fed])
    try:
        return model(**eager_in, decoder_input_ids=ids).logits[0].numpy()
    except (IndexError, ValueError, RuntimeError, AttributeError):
        return model(**eager_in, decoder_input_ids=ids, use_cache=False).logits[0].numpy()


def _executed(target, session) -> str:
    """What actually ran: the runtime, plus the session's or the backend's own words when that is
    not the device program itself (an NPU target runs its TOSA subgraphs on the reference model)."""
    what = session.executed() if hasattr(session, "executed") else None
    what = what or backends.for_target(target).capabilities.executes
    return f"{target.runtime}/{target.backend}" + (f": {what}" if what else "")


def _native_note(runner: str | None, device: str | None) -> str:
    if resolve_runner(runner, device) != "native":
        return ""
    return f" (native runner{', ' + device + ', emulated' if device not in (None, 'local') else ''})"


def verify(artifact: Artifact, checkpoint: str | None = None, eval_file: str | None = None,
           limit: int | None = None, allow_pickle: bool = False, progress=None, runner: str | None = None,
           device: str | None = None, metric: str | None = None, language: str | None = None,
           task: str | None = None) -> VerifyReport:
    meta = artifact.meta
    meta.tokens.decoding(language, task)  # a language/task the artifact or model cannot take: refused first
    ck_path = checkpoint or meta.checkpoint.path
    source = load_checkpoint(ck_path, allow_pickle=allow_pickle)
    if checkpoint is None and source.file_hashes() != meta.checkpoint.sha256:
        raise InputError(f"{ck_path}: checkpoint files changed since export (sha256 differs from the "
                         f"manifest); pass --checkpoint to compare against it anyway")
    recipe, target, tokens = meta.recipe, meta.target, meta.tokens
    with stage(f"verify: loading {source.name} (eager reference) and the artifact"):
        tok = source.load_tokenizer()
        model = source.load_model()
        session = session_for(artifact, target.threads, runner, device)  # --runner / --device (native.py)
    codec = meta.input.codec  # text, or log-mel audio (Whisper): what an eval "input" is
    evals = evalset.choose(eval_file, source.path, codec, limit)
    ctx = Context(meta.input.as_dict(), recipe.max_input_len, lambda: tok)
    metric = metrics.choose(metric, recipe.metric, meta.input.kind)
    hyps, ref_texts, targets = [], [], []

    diffs, agree, steps, seq_hits, task_hits, ref_hits, n_targets = [], 0, 0, 0, 0, 0, 0
    chosen = {"steps": 0, "agreed": 0}
    scale = 0.0
    languages: list[dict[str, Any]] = []
    for i, row in enumerate(evals.rows):
        row_language, row_task = _row_choice(row, i + 1, evals.source, language, task)
        kw = tokens.decoding(row_language, row_task)
        choice = dict(zip(("language", "task"), tokens.choice(row_language, row_task), strict=True))
        encoded = codec.read(row["input"], ctx, base=evals.base)
        gen = greedy(session, encoded.ids, inputs=encoded.arrays, max_input_len=recipe.max_input_len,
                     max_output_len=recipe.max_output_len, keep_logits=True, **kw)
        chosen["steps"] += gen.argmax_checked
        chosen["agreed"] += gen.argmax_agreed
        said = resolved(tokens.task_prompt, kw["prompt"], gen.prompt)
        if said is not None:
            languages.append(said.as_dict())
        # Teacher-forced on the artifact's own steps (prompt included, and the EOS step, if any).
        fed = [tokens.decoder_start_token_id, *gen.prompt, *gen.tokens][: len(gen.logits)]
        ref_prompt, ref_tokens, eager = _eager(model, codec, encoded, tokens, recipe.max_output_len,
                                               kw["prompt"], choice, fed, row["input"])
        art = np.stack(gen.logits)
        diffs.append(float(np.abs(art - eager).max()))
        scale = max(scale, float(np.abs(eager).max()))
        agree += int((art.argmax(-1) == eager.argmax(-1)).sum())
        steps += len(fed)
        seq_hits += gen.tokens == ref_tokens and ref_prompt in (None, gen.prompt)
        if isinstance(row.get("target"), str):
            n_targets += 1
            hyps.append(tok.decode(gen.tokens, skip_special_tokens=True))
            ref_texts.append(tok.decode(ref_tokens, skip_special_tokens=True))
            targets.append(row["target"])
            task_hits += hyps[-1] == row["target"]
            ref_hits += ref_texts[-1] == row["target"]
        if progress:
            progress(i + 1, len(evals.rows))

    tol = recipe.tolerance
    allowed = tol.max_abs_logit_diff + tol.max_rel_logit_diff * scale
    report = VerifyReport(
        examples=len(evals.rows), max_abs_logit_diff=max(diffs), logit_scale=scale, allowed_logit_diff=allowed,
        top1_agreement=agree / steps,
        sequence_match=seq_hits / len(evals.rows),
        task_accuracy=task_hits / n_targets if n_targets else None,
        reference_accuracy=ref_hits / n_targets if n_targets else None,
        eval_source=evals.source, runtime=_executed(target, session) + _native_note(runner, device),
        passed=True, failures=[],
        languages=languages if tokens.task_prompt is not None else None,
        next_token=chosen if chosen["steps"] else None)
    if report.max_abs_logit_diff > allowed:
        report.failures.append(f"max_abs_logit_diff {report.max_abs_logit_diff:.3g} > {allowed:.3g} "
                               f"({tol.max_abs_logit_diff:g} + {tol.max_rel_logit_diff:g} x logit scale {scale:.3g})")
    if report.sequence_match < tol.min_sequence_match:
        report.failures.append(f"sequence_match {report.sequence_match:.4f} < {tol.min_sequence_match:g}")
    report.metric = metric
    if n_targets:
        _task_check(report, metric, hyps, ref_texts, targets, source.path, tol)
    checked = session.execution_report() if hasattr(session, "execution_report") else None
    if checked is not None:  # an NPU subgraph off its host reference: a lowering bug, never advisory
        report.delegates = checked
        report.failures.extend(checked.get("failures", []))
    if chosen["agreed"] < chosen["steps"]:  # a program bug, whatever the task metric says: never advisory
        report.failures.append(f"decode's next_token differs from greedy's choice on its own logits at "
                               f"{chosen['steps'] - chosen['agreed']} of {chosen['steps']} steps")
    report.passed = not report.failures
    return report


def _task_check(report: VerifyReport, metric: str, hyps: list[str], ref_texts: list[str], targets: list[str],
                tokenizer_dir: Path, tol) -> None:
    """Score artifact and eager texts against the targets; bound the artifact's degradation.

    Exact match keeps its own bound (max_accuracy_drop). For the other metrics, a bound the
    recipe sets (max_wer_increase...) decides alone: parity failures so far become advisory.
    Unset, the metric may not get worse at all, on top of the parity checks."""
    if metric in ("wer", "cer"):
        norm, report.normalizer = metrics.normalizer(tokenizer_dir)
    else:
        norm = None
    report.scores = metrics.scores(metric, hyps, targets, norm)
    report.reference_scores = metrics.scores(metric, ref_texts, targets, norm)
    report.task_metric, report.reference_metric = report.scores[metric], report.reference_scores[metric]
    key = metrics.TOLERANCE_KEY[metric]
    bound = getattr(tol, key)
    worse = metrics.worse_by(metric, report.task_metric, report.reference_metric)
    if metric != "exact" and bound is not None:
        report.decided_by, report.advisory, report.failures = "task_metric", report.failures, []
    bound = 0.0 if bound is None else bound
    if worse > bound + 1e-12:
        what = ("accuracy drop" if metric == "exact" else
                f"{metric} increase" if metric in metrics.LOWER_IS_BETTER else f"{metric} drop")
        report.failures.append(f"{what} {worse:.4f} > {bound:g} (tolerance.{key}; artifact {report.task_metric:.4f}, "
                               f"eager {report.reference_metric:.4f})")


def verify_artifact(artifact: Artifact, checkpoint: str | None = None, eval_file: str | None = None,
                    limit: int | None = None, allow_pickle: bool = False, progress=None,
                    runner: str | None = None, device: str | None = None, metric: str | None = None,
                    language: str | None = None, task: str | None = None) -> dict[str, Any]:
    """Verify what can be verified here and record it in the manifest: the numerics (`verify`)
    where this machine can execute the runtime, else the artifact's structure, with
    `why_not_executed` saying why (Core ML off macOS). Returns the report as a dict, whose
    `passed` and `failures` say the outcome; "structure_only" is true in the second case."""
    artifact.meta.tokens.decoding(language, task)  # refused in one line even where only the structure is checked
    backend = backends.for_target(artifact.target)
    ok, why = backend.can_execute()
    if ok:
        rep = verify(artifact, checkpoint=checkpoint, eval_file=eval_file, limit=limit,
                     allow_pickle=allow_pickle, progress=progress, runner=runner, device=device,
                     metric=metric, language=language, task=task).to_dict()
    else:
        rep = {**backend.verify_structure(artifact), "why_not_executed": why, "structure_only": True}
    artifact.update("verify", rep)
    return rep
