"""What an evaluation report puts into MLflow: the headline metrics with their intervals, each metric's
definition as params, and the per-sample results as a table (MLflow's evaluation views read it).

Framework-free and MLflow-free: plain dicts out; the tracking layer sanitizes the keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ft_assets.phases.metrics import MetricScores

#: Artifact name of the per-sample table on the evaluation run.
PER_SAMPLE_TABLE = "evaluation_per_sample.json"


def evaluation_metrics(document: Mapping[str, Any]) -> dict[str, float]:
    """``eval_<metric>`` (+ ``_ci_low``/``_ci_high``), ``eval_base_<metric>`` (+ interval),
    ``eval_delta_<metric>`` (paired, + interval, + ``eval_pairs_<metric>``), ``eval_<metric>_judge_std``
    (judge metrics) and ``eval_<corpus score>`` / ``eval_base_<corpus score>``, from the report's summary document."""
    metrics: dict[str, float] = {}
    sides = {"eval": document["metrics"]["fine_tuned"], "eval_base": document["metrics"]["base"] or {}}
    for prefix, summary in sides.items():
        for name, stats in summary.items():
            metrics[f"{prefix}_{name}"] = stats["mean"]
            metrics[f"{prefix}_{name}_ci_low"] = stats["ci_low"]
            metrics[f"{prefix}_{name}_ci_high"] = stats["ci_high"]
    for name, entry in (document["comparison"] or {}).items():
        metrics[f"eval_delta_{name}"] = entry["delta"]
        metrics[f"eval_delta_{name}_ci_low"] = entry["delta_ci_low"]
        metrics[f"eval_delta_{name}_ci_high"] = entry["delta_ci_high"]
        metrics[f"eval_pairs_{name}"] = entry["pairs"]
    for name, spread in document["judge_spread"]["fine_tuned"].items():
        metrics[f"eval_{name}_judge_std"] = spread
    corpus = document["corpus_scores"]
    for prefix, side in (("eval", "fine_tuned"), ("eval_base", "base")):
        for name, value in (corpus.get(side) or {}).items():
            metrics[f"{prefix}_{name}"] = value
    return metrics


def definition_params(document: Mapping[str, Any]) -> dict[str, str]:
    """``metric_<metric>_<field>`` for each field of each metric's definition, plus how the intervals
    were drawn (``metric_intervals``)."""
    params = {
        f"metric_{name}_{key}": str(value)
        for name, definition in document["definitions"].items()
        for key, value in definition.items()
    }
    bootstrap = document["bootstrap"]
    params["metric_intervals"] = (
        f"{bootstrap['confidence']:.0%} paired percentile bootstrap, {bootstrap['resamples']} resamples, "
        f"seed {bootstrap['seed']}; deltas over rows scored on both sides"
    )
    return params


def _score(value: float) -> float | None:
    return None if math.isnan(value) else value


def per_sample_table(
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_rows: Sequence[Mapping[str, Any]] | None,
    baseline_scores: MetricScores | None,
) -> dict[str, list[Any]]:
    """One column per field: id, prompt, response, reference, each score (``None`` where it failed), and
    the base model's response and scores for the same id when a baseline ran."""
    table: dict[str, list[Any]] = {
        "id": [str(row.get("id", index)) for index, row in enumerate(rows)],
        "system_prompt": [row.get("system_prompt") for row in rows],
        "prompt": [row.get("user_prompt") for row in rows],
        "response": [row.get("assistant_response") for row in rows],
        "reference": [row.get("ground_truth") for row in rows],
    }
    for name, values in scores.per_row.items():
        table[name] = [_score(value) for value in values]
    if baseline_rows is not None and baseline_scores is not None:
        base_by_id = {str(row.get("id", index)): index for index, row in enumerate(baseline_rows)}
        positions = [base_by_id.get(row_id) for row_id in table["id"]]
        table["base_response"] = [
            baseline_rows[index].get("assistant_response") if index is not None else None
            for index in positions
        ]
        for name, values in baseline_scores.per_row.items():
            table[f"base_{name}"] = [
                _score(values[index]) if index is not None else None for index in positions
            ]
    return table
