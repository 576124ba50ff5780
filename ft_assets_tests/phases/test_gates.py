"""Release gates: failed rows count against thresholds, not-worse decides on the paired delta's interval,
completeness, and the lineage check of promotion."""

from __future__ import annotations

import math

import pytest

from ft_assets.phases.comparison import Bootstrap, failed_row_ids, paired_comparison
from ft_assets.phases.gates import (
    LineageError,
    check_lineage,
    completeness_gate,
    not_worse_gate,
    threshold_gate,
)
from ft_assets.phases.metrics import summarize
from ft_assets_tests.helpers import scores_without_errors

NAN = math.nan


def _rows(count: int) -> list[dict]:
    return [{"id": f"q-{index}"} for index in range(count)]


def _threshold(values: list[float], minimum: float, share: float = 1.0):
    scores = scores_without_errors(rouge_score=values)
    return threshold_gate(
        summarize(scores),
        {"rouge_score": minimum},
        failed_ids=failed_row_ids(_rows(len(values)), scores, "fine-tuned"),
        min_scored_share=share,
    )


def test_one_good_score_and_99_failed_rows_fail_the_threshold_gate() -> None:
    gate = _threshold([1.0] + [NAN] * 99, 0.9)
    assert not gate.passed and gate.details["failing"] == ["rouge_score"]
    assert gate.details["means"]["rouge_score"] == 1.0  # the mean alone would have passed
    assert gate.details["scored_share"]["rouge_score"] == pytest.approx(0.01)
    listed = gate.details["failed_rows"]["rouge_score"]
    assert listed[:3] == ["q-1", "q-2", "q-3"] and listed[-1] == "... and 79 more" and len(listed) == 21


def test_threshold_gate_with_a_tolerated_failed_share() -> None:
    values = [0.8] * 19 + [NAN]
    assert not _threshold(values, 0.5).passed  # the default asks for every row
    tolerant = _threshold(values, 0.5, share=0.95)
    assert tolerant.passed and tolerant.details["failed_rows"] == {"rouge_score": ["q-19"]}
    assert not _threshold(values, 0.81, share=0.95).passed  # the mean still has to reach the minimum
    assert _threshold([0.5, 0.6], 0.5).passed


def test_threshold_gate_fails_a_missing_metric_or_nan_mean() -> None:
    assert not _threshold([NAN, NAN], 0.0, share=0.0).passed
    gate = threshold_gate({}, {"bleu_score": 0.1}, failed_ids={}, min_scored_share=0.0)
    assert not gate.passed and gate.details["failing"] == ["bleu_score"]


def _comparison(tuned: list[float], base: list[float]) -> dict:
    rows = _rows(len(tuned))
    return paired_comparison(
        rows,
        scores_without_errors(rouge_score=tuned),
        rows,
        scores_without_errors(rouge_score=base),
        Bootstrap(resamples=2000, seed=1),
    )


def test_not_worse_decides_on_the_interval_of_the_paired_delta() -> None:
    # mean delta +0.01, but the pairs disagree widely: the interval reaches far below -0.02
    noisy = _comparison([0.5, 1.0, 0.0, 1.0, 0.05, 0.9], [1.0, 0.5, 0.5, 0.44, 0.0, 0.95])
    entry = noisy["rouge_score"]
    assert entry["delta"] == pytest.approx(0.01) and entry["delta_ci_low"] < -0.02
    gate = not_worse_gate(noisy, "rouge_score", margin=0.02)
    assert not gate.passed
    assert gate.details["delta_ci_low"] == entry["delta_ci_low"] and gate.details["margin"] == 0.02
    assert gate.details["rule"] == "passes when delta_ci_low >= -0.02"
    # the same data passes a margin wider than its interval's lower end
    assert not_worse_gate(noisy, "rouge_score", margin=-entry["delta_ci_low"]).passed


def test_not_worse_passes_a_consistent_improvement_and_an_exact_tie() -> None:
    better = _comparison([0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8])
    assert not_worse_gate(better, "rouge_score", margin=0.0).passed
    tie = _comparison([0.0] * 5, [0.0] * 5)
    assert not_worse_gate(tie, "rouge_score", margin=0.0).passed
    slightly_worse = _comparison([0.5] * 8, [0.52] * 8)
    assert not_worse_gate(slightly_worse, "rouge_score", margin=0.03).passed
    assert not not_worse_gate(slightly_worse, "rouge_score", margin=0.01).passed


def test_not_worse_without_pairs_fails_and_without_baseline_passes() -> None:
    rows = _rows(2)
    unpaired = paired_comparison(
        rows,
        scores_without_errors(rouge_score=[NAN, 1.0]),
        rows,
        scores_without_errors(rouge_score=[1.0, NAN]),
        Bootstrap(),
    )
    assert not not_worse_gate(unpaired, "rouge_score", margin=1.0).passed
    assert not not_worse_gate({}, "rouge_score", margin=1.0).passed
    assert not_worse_gate(None, "rouge_score", margin=0.0).passed


def test_completeness_gate() -> None:
    assert completeness_gate(60, 60, 0, 0.0).passed
    assert not completeness_gate(59, 60, 0, 0.0).passed
    assert not completeness_gate(60, 60, 7, 0.1).passed
    assert completeness_gate(60, 60, 6, 0.1).passed


def test_lineage_names_both_fingerprints() -> None:
    check_lineage("sha256:aaa", "sha256:aaa")
    with pytest.raises(LineageError, match=r"fine_tuned_model sha256:new.*model sha256:old"):
        check_lineage("sha256:new", "sha256:old")
    with pytest.raises(LineageError, match="model None"):
        check_lineage("sha256:new", None)
