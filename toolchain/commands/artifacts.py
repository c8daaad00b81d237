"""Commands on an artifact: verify it against eager PyTorch, run it on an input."""

from __future__ import annotations

from typing import Any

import click

from .. import progress
from ..errors import CheckFailed
from . import device_option, emit, language_option, runner_option, task_option


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--checkpoint", help="Checkpoint to compare against (default: the path recorded in the manifest).")
@click.option("--eval", "eval_file", type=click.Path(),
              help="JSONL eval set ({\"input\", \"target\"}); default: the checkpoint's eval.jsonl.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N eval examples.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights for the reference model.")
@runner_option
@device_option
@click.option("--metric", type=click.Choice(["auto", "exact", "wer", "cer", "chrf", "bleu"]),
              help="Task metric for rows with a target (default: the recipe's `metric`; auto: wer for speech, "
                   "exact match otherwise).")
@language_option
@task_option
@click.option("--json", "as_json", is_flag=True, help="Print the verify report as JSON.")
def verify(artifact: str, checkpoint: str | None, eval_file: str | None, limit: int | None,
           allow_pickle: bool, runner: str | None, device: str | None, metric: str | None, language: str | None,
           task: str | None, as_json: bool) -> None:
    """Compare ARTIFACT with eager PyTorch: logits, greedy tokens, task accuracy.

    Exits 1 when the recipe's tolerance is not met. The result is stored in the manifest.
    Whisper: --language/--task apply to eval rows without their own "language"/"task" keys; the
    eager side is generate(language=..., task=...) with the same choice.

    \b
    Examples:
      edgeseq verify build/a --json
      edgeseq verify build/whisper --eval clips.jsonl --language fr --task translate
    """
    from ..artifact import open_artifact
    from ..verify import verify_artifact

    art = open_artifact(artifact)
    rep = verify_artifact(art, checkpoint=checkpoint, eval_file=eval_file, limit=limit, allow_pickle=allow_pickle,
                          progress=progress.Counter("verify: rows", 0), runner=runner, device=device, metric=metric,
                          language=language, task=task)
    progress.clear()
    emit(rep, as_json, verify_text(artifact, rep))
    if not rep["passed"]:
        raise CheckFailed("; ".join(rep["failures"]))


def verify_text(artifact: str, rep: dict[str, Any]) -> str:
    """What `verify` prints: the parity numbers and task scores against eager, and the verdict."""
    verdict = "PASS" if rep["passed"] else "FAIL: " + "; ".join(rep["failures"])
    if rep.get("structure_only"):  # e.g. Core ML on Linux: what was checked, and what was not run
        return (f"verify {artifact} ({rep['runtime']}): STRUCTURE ONLY, numerics not run "
                f"({rep['why_not_executed']})\n"
                f"  checked: {', '.join(rep['checked'])}\n"
                f"  {'PASS (structure only)' if rep['passed'] else verdict}")
    acc = ("" if rep["task_accuracy"] is None else
           f"  task_accuracy {rep['task_accuracy']:.4f} (eager reference {rep['reference_accuracy']:.4f})\n")
    if rep.get("scores") and rep.get("metric") != "exact":
        acc += "  " + "  ".join(f"{k} {v:.4f} (eager {rep['reference_scores'][k]:.4f})"
                                for k, v in rep["scores"].items()) + f"  [decided by {rep['decided_by']}]\n"
    if rep.get("languages"):  # Whisper: the language each row ran in, and whether it was detected
        acc += "  languages: " + ", ".join(f"{k} x{n}" for k, n in _language_counts(rep["languages"]).items()) + "\n"
    if rep.get("next_token"):  # the decode program's own argmax, checked against its logits
        nt = rep["next_token"]
        acc += f"  next_token chosen in the program: {nt['agreed']}/{nt['steps']} steps equal greedy on its logits\n"
    for g in (rep.get("delegates") or {}).get("subgraphs", []):  # NPU subgraphs on the TOSA reference model
        acc += (f"  {g['program']} subgraph {g['index']} ({g['file']}): {g['calls']} calls, {g['exact']}/{g['values']} "
                f"int values bit-equal to the host reference, max diff {g['max_steps']} steps\n")
    if rep.get("advisory"):
        acc += "  advisory (parity, not deciding): " + "; ".join(rep["advisory"]) + "\n"
    return (f"verify {artifact} ({rep['runtime']}, {rep['examples']} examples from {rep['eval_source']})\n"
            f"  sequence_match {rep['sequence_match']:.4f}  top1_agreement {rep['top1_agreement']:.4f}  "
            f"max_abs_logit_diff {rep['max_abs_logit_diff']:.3g} (allowed {rep['allowed_logit_diff']:.3g} at "
            f"logit scale {rep['logit_scale']:.3g})\n{acc}  {verdict}")


def _language_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per-row languages -> "en (detected)": count, in first-seen order."""
    out: dict[str, int] = {}
    for r in rows:
        lang = r["language"] or "no language token (English-only model)"
        key = f"{lang}{' (detected)' if r['language_detected'] else ''}{' ' + r['task'] if r['task'] else ''}"
        out[key] = out.get(key, 0) + 1
    return out


@click.command()
@click.argument("artifact", type=click.Path())
@click.argument("text")
@click.option("--max-new-tokens", type=int, help="Stop after N tokens (default: the artifact's cache size).")
@click.option("--min-new-tokens", type=int, default=0, show_default=True, help="Suppress EOS for the first N tokens.")
@click.option("--truncate", is_flag=True,
              help="Truncate input longer than the recipe's max_input_len instead of failing.")
@click.option("--allow-unknown", is_flag=True,
              help="Let characters the tokenizer does not know become its unknown token instead of failing.")
@click.option("--threads", type=int, help="Runtime threads (default: the target's).")
@runner_option
@device_option
@language_option
@task_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the text, token ids, decoder prompt, stop reason and (Whisper) language and task as JSON.")
def run(artifact: str, text: str, max_new_tokens: int | None, min_new_tokens: int, truncate: bool,
        allow_unknown: bool, threads: int | None, runner: str | None, device: str | None, language: str | None,
        task: str | None, as_json: bool) -> None:
    """Generate greedily from TEXT with ARTIFACT; prints only the output text.

    Notes on stderr say when the output stopped at the artifact's cache size, and (Whisper) which
    language was detected when none was given.

    \b
    Examples:
      edgeseq run build/a "the 3rd of March, 2021"
      edgeseq run build/whisper clip.wav --language fr --task translate
    """
    from ..runner import generate

    r = generate(artifact, text, max_new_tokens, min_new_tokens, truncate, threads, allow_unknown, runner, device,
                 language, task)
    emit(r.as_dict(), as_json, r.text)
    for note in (r.note, f"detected language: {r.language}" if r.language_detected else None):
        if note:
            click.echo(f"note: {note}", err=True)


COMMANDS = [verify, run]
