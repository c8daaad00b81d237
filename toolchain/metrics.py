"""Task metrics for `verify`, from the field's own libraries (not hand-made).

  * exact  - exact string match of the decoded text with the target (task_accuracy; every task);
  * wer/cer - word / character error rate (jiwer), both computed on text passed through
    transformers' Whisper English text normalizer (the one the Whisper paper scores with:
    case, punctuation, numbers, "Mr." -> "mister"...), so " The weather is nice today." and
    "the weather is nice today" count as equal. Corpus-level: total edits / total reference
    words (characters), as jiwer computes for lists;
  * chrf/bleu - sacrebleu's corpus chrF and BLEU with its default settings (translation).

Lower is better for wer/cer, higher for exact/chrf/bleu (`worse_by` gives the degradation
with one sign convention). The metric is chosen by `--metric`, else the recipe's `metric`
key, else the input kind's (toolchain.inputs: speech -> wer, text -> exact).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .errors import InputError

METRICS = ("auto", "exact", "wer", "cer", "chrf", "bleu")
LOWER_IS_BETTER = {"wer", "cer"}
# The recipe tolerance key that bounds each metric's degradation (artifact vs eager reference).
TOLERANCE_KEY = {"exact": "max_accuracy_drop", "wer": "max_wer_increase", "cer": "max_cer_increase",
                 "chrf": "max_chrf_drop", "bleu": "max_bleu_drop"}


def choose(option: str | None, recipe_metric: str, input_kind: str | None) -> str:
    """--metric beats the recipe's `metric` key; "auto" is the input kind's codec's metric."""
    for m in (option, recipe_metric):
        if m and m != "auto":
            if m not in METRICS:
                raise InputError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
            return m
    from .inputs import codec_for

    return codec_for(input_kind).metric


def normalizer(tokenizer_dir: Path | None) -> tuple[Callable[[str], str], str]:
    """Whisper's English normalizer and a note on which spelling map it has.

    transformers does not ship the British->American spelling map (`normalizer.json`); Whisper
    checkpoints carry it next to their tokenizer files. Without it the normalizer runs with an
    empty map (everything else, numbers and abbreviations included, still applies)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    path = tokenizer_dir / "normalizer.json" if tokenizer_dir else None
    if path is not None and path.is_file():
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable spelling map: {e}") from None
        return EnglishTextNormalizer(mapping), "whisper-english (spelling map from normalizer.json)"
    return EnglishTextNormalizer({}), "whisper-english (no spelling map: the checkpoint has no normalizer.json)"


def scores(metric: str, hyps: list[str], refs: list[str], norm: Callable[[str], str] | None = None) -> dict[str, float]:
    """The metric family's numbers for hypotheses vs references: {"exact"} | {"wer","cer"} |
    {"chrf","bleu"}. wer/cer in [0, inf) as fractions; chrf/bleu on sacrebleu's 0-100 scale."""
    if len(hyps) != len(refs) or not refs:
        raise ValueError("scores needs as many hypotheses as references, at least one")
    if metric == "exact":
        return {"exact": sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs)}
    if metric in ("wer", "cer"):
        import jiwer

        norm = norm or normalizer(None)[0]
        h, r = [norm(x) for x in hyps], [norm(x) for x in refs]
        return {"wer": float(jiwer.wer(r, h)), "cer": float(jiwer.cer(r, h))}
    if metric in ("chrf", "bleu"):
        import sacrebleu

        return {"chrf": float(sacrebleu.corpus_chrf(hyps, [refs]).score),
                "bleu": float(sacrebleu.corpus_bleu(hyps, [refs]).score)}
    raise InputError(f"unknown metric {metric!r}; known: {', '.join(METRICS[1:])}")


def worse_by(metric: str, artifact: float, reference: float) -> float:
    """How much worse the artifact is than the reference (positive = worse), in the metric's units."""
    return artifact - reference if metric in LOWER_IS_BETTER else reference - artifact
