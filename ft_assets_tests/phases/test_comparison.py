"""Paired comparison and bootstrap intervals, cross-checked against scipy.stats.bootstrap, the normal
approximation, and a coverage simulation."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from scipy import stats

from ft_assets.phases.comparison import (
    Bootstrap,
    ComparisonError,
    failed_row_ids,
    mean_interval,
    paired_comparison,
)
from ft_assets_tests.helpers import scores_without_errors

NAN = math.nan


def _rows(ids: list[str]) -> list[dict]:
    return [{"id": row_id, "assistant_response": f"réponse {row_id}"} for row_id in ids]


def _data(n: int, seed: int) -> list[float]:
    generator = random.Random(seed)
    return [min(1.0, max(0.0, generator.gauss(0.6, 0.25))) for _ in range(n)]


def test_mean_interval_matches_scipy_percentile_bootstrap() -> None:
    values = _data(300, seed=1)
    ours = mean_interval(values, Bootstrap(resamples=20_000, seed=3, confidence=0.95))
    theirs = stats.bootstrap(
        (np.asarray(values),), np.mean, n_resamples=20_000, method="percentile", random_state=7
    ).confidence_interval
    assert ours["mean"] == pytest.approx(statistics.fmean(values))
    assert ours["n"] == 300
    # two Monte Carlo estimates of the same quantiles: they agree to well under the interval's width
    assert ours["ci_low"] == pytest.approx(theirs.low, abs=0.004)
    assert ours["ci_high"] == pytest.approx(theirs.high, abs=0.004)
    assert ours["ci_high"] - ours["ci_low"] > 0.04


def test_paired_delta_matches_scipy_paired_bootstrap_and_the_normal_approximation() -> None:
    tuned = _data(2000, seed=2)
    base = [
        max(0.0, value - 0.1 + random.Random(index).uniform(-0.2, 0.2)) for index, value in enumerate(tuned)
    ]
    ids = [f"東京-{index}" for index in range(len(tuned))]
    result = paired_comparison(
        _rows(ids),
        scores_without_errors(rouge_score=tuned),
        _rows(ids[::-1]),
        scores_without_errors(rouge_score=base[::-1]),
        Bootstrap(resamples=10_000, seed=0, confidence=0.9),
    )["rouge_score"]
    differences = np.asarray(tuned) - np.asarray(base)
    assert result["pairs"] == 2000 and result["unpaired_ids"] == []
    assert result["delta"] == pytest.approx(float(differences.mean()))
    assert result["fine_tuned_mean"] - result["base_mean"] == pytest.approx(result["delta"])

    scipy_ci = stats.bootstrap(
        (np.asarray(tuned), np.asarray(base)),
        lambda x, y, axis=-1: np.mean(x - y, axis=axis),
        paired=True,
        n_resamples=10_000,
        confidence_level=0.9,
        method="percentile",
        random_state=11,
    ).confidence_interval
    assert result["delta_ci_low"] == pytest.approx(scipy_ci.low, abs=0.002)
    assert result["delta_ci_high"] == pytest.approx(scipy_ci.high, abs=0.002)

    z = statistics.NormalDist().inv_cdf(0.95)
    half_width = z * statistics.stdev(differences.tolist()) / math.sqrt(len(differences))
    assert result["delta_ci_low"] == pytest.approx(result["delta"] - half_width, abs=0.002)
    assert result["delta_ci_high"] == pytest.approx(result["delta"] + half_width, abs=0.002)


def test_pairs_by_id_and_leaves_out_rows_failed_on_either_side() -> None:
    tuned_rows = _rows(["a", "Москва", "c", "only-tuned"])
    base_rows = _rows(["c", "a", "Москва", "only-base"])
    result = paired_comparison(
        tuned_rows,
        scores_without_errors(rouge_score=[1.0, NAN, 0.5, 0.9], bleu_score=[0.2, 0.2, 0.2, 0.2]),
        base_rows,
        scores_without_errors(rouge_score=[NAN, 0.25, 0.0, 0.1]),
        Bootstrap(resamples=500),
    )
    assert list(result) == ["rouge_score"]  # bleu was not scored on the base side
    rouge = result["rouge_score"]
    # a: 1.0 vs 0.25; Москва failed (tuned); c failed (base); only-tuned / only-base have no partner
    assert rouge["pairs"] == 1
    assert rouge["unpaired_ids"] == ["Москва", "c", "only-tuned", "only-base"]
    assert (rouge["fine_tuned_mean"], rouge["base_mean"], rouge["delta"]) == (1.0, 0.25, 0.75)
    assert rouge["delta_ci_low"] == rouge["delta_ci_high"] == 0.75


def test_no_pair_gives_nan_and_duplicate_ids_are_refused() -> None:
    none = paired_comparison(
        _rows(["a"]),
        scores_without_errors(m=[NAN]),
        _rows(["a"]),
        scores_without_errors(m=[1.0]),
        Bootstrap(resamples=100),
    )["m"]
    assert none["pairs"] == 0 and math.isnan(none["delta"]) and math.isnan(none["delta_ci_low"])
    assert math.isnan(mean_interval([NAN, NAN], Bootstrap())["mean"])
    with pytest.raises(
        ComparisonError, match=r"base inference results: id 'x' occurs twice \(again at row 1\)"
    ):
        paired_comparison(
            _rows(["x"]),
            scores_without_errors(m=[1.0]),
            _rows(["x", "x"]),
            scores_without_errors(m=[1.0, 0.0]),
            Bootstrap(),
        )


def test_all_equal_data_gives_a_zero_width_interval_at_the_mean() -> None:
    interval = mean_interval([0.7] * 57, Bootstrap(resamples=300))
    assert interval["ci_low"] == interval["mean"] == interval["ci_high"]
    assert interval["mean"] == pytest.approx(0.7)
    paired = paired_comparison(
        _rows(["1", "2", "3"]),
        scores_without_errors(m=[0.4] * 3),
        _rows(["3", "2", "1"]),
        scores_without_errors(m=[0.1] * 3),
        Bootstrap(),
    )["m"]
    assert paired["delta_ci_low"] == paired["delta"] == paired["delta_ci_high"]
    assert paired["delta"] == pytest.approx(0.3)


def test_intervals_contain_the_estimate_are_seeded_and_grow_with_confidence() -> None:
    values = _data(40, seed=5)
    narrow = mean_interval(values, Bootstrap(resamples=2000, seed=9, confidence=0.8))
    wide = mean_interval(values, Bootstrap(resamples=2000, seed=9, confidence=0.99))
    assert wide["ci_low"] < narrow["ci_low"] <= narrow["mean"] <= narrow["ci_high"] < wide["ci_high"]
    assert mean_interval(values, Bootstrap(resamples=2000, seed=9, confidence=0.8)) == narrow
    other_seed = mean_interval(values, Bootstrap(resamples=2000, seed=10, confidence=0.8))
    assert other_seed != narrow and other_seed["ci_low"] == pytest.approx(narrow["ci_low"], abs=0.02)


def test_coverage_of_the_true_mean_is_close_to_the_confidence_level() -> None:
    generator = random.Random(42)
    covered = 0
    trials = 300
    for trial in range(trials):
        sample = [generator.betavariate(2, 3) for _ in range(60)]  # true mean 0.4
        interval = mean_interval(sample, Bootstrap(resamples=1000, seed=trial, confidence=0.9))
        covered += interval["ci_low"] <= 0.4 <= interval["ci_high"]
    # binomial(300, ~0.9): 0.84..0.95 holds with overwhelming probability; a broken interval misses it
    assert 0.84 <= covered / trials <= 0.95


def test_failed_row_ids_names_each_metric_s_failures() -> None:
    rows = _rows(["α", "β", "γ"])
    failed = failed_row_ids(
        rows, scores_without_errors(rouge_score=[NAN, 0.1, NAN], exact_match=[1.0, 0.0, 0.0]), "fine-tuned"
    )
    assert failed == {"rouge_score": ["α", "γ"], "exact_match": []}
