"""Parity of an artifact against eager transformers on an eval set.

For every eval input:
  * the artifact generates greedily through its runtime Session (per-step logits kept);
  * eager transformers generates greedily (`model.generate`) -> sequence_match;
  * eager transformers is run teacher-forced on the artifact's own tokens, so every
    artifact step has an eager logit row to compare with, even after a divergence
    -> max_abs_logit_diff and top1_agreement over all steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import backends
from .artifact import Artifact
from .checkpoint import load_checkpoint
from .errors import InputError
from .generate import greedy, tokenize

BUILTIN_INPUTS = ["the quick brown fox", "hello world", "a b c d e f g"]


@dataclass
class VerifyReport:
    examples: int
    max_abs_logit_diff: float
    top1_agreement: float
    sequence_match: float
    task_accuracy: float | None
    reference_accuracy: float | None
    eval_source: str
    runtime: str
    passed: bool
    failures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_eval(path: Path) -> list[dict[str, str]]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read eval set: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: invalid JSON: {e.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("input"), str):
            raise InputError(f'{path}:{n}: each line must be an object with a string "input"')
        out.append(row)
    if not out:
        raise InputError(f"{path}: eval set is empty")
    return out


def eval_examples(eval_file: str | None, checkpoint_dir: Path, limit: int | None) -> tuple[list[dict], str]:
    if eval_file:
        rows, src = load_eval(Path(eval_file)), str(eval_file)
    elif (checkpoint_dir / "eval.jsonl").is_file():
        rows, src = load_eval(checkpoint_dir / "eval.jsonl"), str(checkpoint_dir / "eval.jsonl")
    else:
        rows, src = [{"input": s} for s in BUILTIN_INPUTS], "built-in inputs"
    return (rows[:limit] if limit else rows), src


def verify(artifact: Artifact, checkpoint: str | None = None, eval_file: str | None = None,
           limit: int | None = None, allow_pickle: bool = False, progress=None) -> VerifyReport:
    import torch

    m = artifact.manifest
    ck_path = checkpoint or m["checkpoint"]["path"]
    source = load_checkpoint(ck_path, allow_pickle=allow_pickle)
    if checkpoint is None and source.file_hashes() != m["checkpoint"]["sha256"]:
        raise InputError(f"{ck_path}: checkpoint files changed since export (sha256 differs from the "
                         f"manifest); pass --checkpoint to compare against it anyway")
    recipe, target = artifact.recipe, artifact.target
    tok = source.load_tokenizer()
    model = source.load_model()
    session = backends.for_target(target).open(artifact, threads=target.threads)
    spec = m["tokens"]
    rows, src = eval_examples(eval_file, source.path, limit)

    diffs, agree, steps, seq_hits, task_hits, ref_hits, n_targets = [], 0, 0, 0, 0, 0, 0
    for i, row in enumerate(rows):
        ids = tokenize(tok, row["input"], recipe.max_input_len)
        gen = greedy(session, ids, max_input_len=recipe.max_input_len, max_output_len=recipe.max_output_len,
                     start_id=spec["decoder_start_token_id"], eos_id=spec["eos_token_id"],
                     pad_id=spec["pad_token_id"], keep_logits=True)
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=recipe.max_output_len,
                                 do_sample=False, num_beams=1,
                                 decoder_start_token_id=spec["decoder_start_token_id"],
                                 eos_token_id=spec["eos_token_id"], pad_token_id=spec["pad_token_id"])
            ref_tokens = ref[0, 1:].tolist()
            if spec["eos_token_id"] in ref_tokens:
                ref_tokens = ref_tokens[: ref_tokens.index(spec["eos_token_id"])]
            # Teacher-forced on the artifact's own steps (including the EOS step, if any).
            fed = [spec["decoder_start_token_id"], *gen.tokens][: len(gen.logits)]
            eager = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([fed])).logits[0].numpy()
        art = np.stack(gen.logits)
        diffs.append(float(np.abs(art - eager).max()))
        agree += int((art.argmax(-1) == eager.argmax(-1)).sum())
        steps += len(fed)
        seq_hits += gen.tokens == ref_tokens
        if isinstance(row.get("target"), str):
            n_targets += 1
            task_hits += tok.decode(gen.tokens, skip_special_tokens=True) == row["target"]
            ref_hits += tok.decode(ref_tokens, skip_special_tokens=True) == row["target"]
        if progress:
            progress(i + 1, len(rows))

    tol = recipe.tolerance
    report = VerifyReport(
        examples=len(rows), max_abs_logit_diff=max(diffs), top1_agreement=agree / steps,
        sequence_match=seq_hits / len(rows),
        task_accuracy=task_hits / n_targets if n_targets else None,
        reference_accuracy=ref_hits / n_targets if n_targets else None,
        eval_source=src, runtime=f"{target.runtime}/{target.backend}", passed=True, failures=[])
    if report.max_abs_logit_diff > tol.max_abs_logit_diff:
        report.failures.append(f"max_abs_logit_diff {report.max_abs_logit_diff:.3g} > {tol.max_abs_logit_diff:g}")
    if report.sequence_match < tol.min_sequence_match:
        report.failures.append(f"sequence_match {report.sequence_match:.4f} < {tol.min_sequence_match:g}")
    if n_targets and report.reference_accuracy - report.task_accuracy > tol.max_accuracy_drop + 1e-12:
        report.failures.append(f"accuracy drop {report.reference_accuracy - report.task_accuracy:.4f} "
                               f"> {tol.max_accuracy_drop:g}")
    report.passed = not report.failures
    return report
