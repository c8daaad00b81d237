"""Task metrics (toolchain.metrics) against jiwer / sacrebleu on known strings, and how the
recipe's task-metric tolerance decides verify (no export needed: the check is a function)."""

from __future__ import annotations

import jiwer
import pytest
import sacrebleu

from toolchain import metrics
from toolchain.errors import InputError
from toolchain.specs import Tolerance, recipe_from_dict
from toolchain.verify import VerifyReport, _task_check

REFS = ["The weather is nice today.", "Mr. Smith arrives at 7:30 pm.", "colour me surprised"]
HYPS = [" the weather is nice today", "Mister Smith arrives at 7 30 p.m.", "colour me surprise"]


def test_wer_cer_after_whisper_normalizer():
    s = metrics.scores("wer", HYPS, REFS)
    # Normalized: case, punctuation and "Mr." -> "mister" vanish; "pm"/"p m" and "surprise(d)" stay.
    # Word edits: row 2 "pm" -> "p m" (1 sub + 1 ins), row 3 1 sub = 3 of 5+7+3 reference words.
    assert s["wer"] == pytest.approx(3 / 15)
    norm = metrics.normalizer(None)[0]
    assert s["wer"] == pytest.approx(jiwer.wer([norm(r) for r in REFS], [norm(h) for h in HYPS]))
    assert s["cer"] == pytest.approx(jiwer.cer([norm(r) for r in REFS], [norm(h) for h in HYPS]))
    assert 0 < s["cer"] < s["wer"]
    assert metrics.scores("wer", REFS, REFS) == {"wer": 0.0, "cer": 0.0}
    assert metrics.scores("exact", HYPS, REFS) == {"exact": 0.0}


def test_normalizer_spelling_map(tmp_path):
    (tmp_path / "normalizer.json").write_text('{"colour": "color"}')
    norm, note = metrics.normalizer(tmp_path)
    assert norm("Colour!") == "color" and "normalizer.json" in note
    assert "no spelling map" in metrics.normalizer(tmp_path / "none")[1]


def test_chrf_bleu_match_sacrebleu():
    hyps, refs = ["the cat sat on the mat", "a quick brown dog"], ["the cat sat on a mat", "the quick brown fox"]
    s = metrics.scores("chrf", hyps, refs)
    assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert 0 < s["chrf"] < 100 and metrics.scores("chrf", refs, refs)["chrf"] == pytest.approx(100)


def test_metric_choice_and_recipe_keys():
    assert metrics.choose(None, "auto", "log_mel") == "wer"
    assert metrics.choose(None, "auto", None) == "exact"
    assert metrics.choose("cer", "chrf", "log_mel") == "cer" and metrics.choose(None, "chrf", None) == "chrf"
    base = {"name": "r", "description": "d", "max_input_len": 8, "max_output_len": 8}
    r = recipe_from_dict({**base, "metric": "wer", "tolerance": {"max_wer_increase": 0.01, "max_chrf_drop": None}})
    assert r.metric == "wer" and r.tolerance.max_wer_increase == 0.01 and r.tolerance.max_chrf_drop is None
    with pytest.raises(InputError, match="'metric' must be one of"):
        recipe_from_dict({**base, "metric": "rouge"})
    with pytest.raises(InputError, match="max_wer_increase' must be >= 0"):
        recipe_from_dict({**base, "tolerance": {"max_wer_increase": -0.1}})
    with pytest.raises(InputError, match="must be a number"):
        recipe_from_dict({**base, "tolerance": {"max_cer_increase": "1%"}})


def _report(failures: list[str]) -> VerifyReport:
    return VerifyReport(examples=2, max_abs_logit_diff=0.5, logit_scale=10, allowed_logit_diff=0.01, top1_agreement=0.9,
                        sequence_match=0.5, task_accuracy=0.0, reference_accuracy=0.0, eval_source="t", runtime="t",
                        passed=False, failures=list(failures))


def test_task_metric_tolerance_decides(tmp_path):
    targets = ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa"]  # no number words: the
    eager = list(targets)  # normalizer would turn "one two" into "1 2"
    artifact = ["alpha beta gamma delta epsilon", "zeta eta theta iota kapa"]  # 1 word of 10 wrong: WER +0.1
    parity = ["sequence_match 0.5000 < 1"]
    # Unset bound: parity decides, and the WER increase fails too.
    rep = _report(parity)
    _task_check(rep, "wer", artifact, eager, targets, tmp_path, Tolerance())
    assert rep.decided_by == "parity" and rep.failures[0] == parity[0]
    assert rep.failures[1].startswith("wer increase 0.1000 > 0 (tolerance.max_wer_increase")
    assert rep.scores["wer"] == pytest.approx(0.1) and rep.reference_scores["wer"] == 0.0
    # A bound that holds: the task metric decides; the parity miss is advisory.
    rep = _report(parity)
    _task_check(rep, "wer", artifact, eager, targets, tmp_path, Tolerance(max_wer_increase=0.15))
    assert rep.decided_by == "task_metric" and rep.failures == [] and rep.advisory == parity
    # A bound that does not hold fails on the metric alone.
    rep = _report(parity)
    _task_check(rep, "wer", artifact, eager, targets, tmp_path, Tolerance(max_wer_increase=0.05))
    assert rep.decided_by == "task_metric" and len(rep.failures) == 1 and "wer increase" in rep.failures[0]
    # chrF is higher-is-better: a drop beyond the bound fails.
    rep = _report([])
    _task_check(rep, "chrf", artifact, eager, targets, tmp_path, Tolerance(max_chrf_drop=1.0))
    assert rep.reference_scores["chrf"] == pytest.approx(100) and rep.failures[0].startswith("chrf drop")
