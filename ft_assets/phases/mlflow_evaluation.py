"""The evaluation in MLflow's own GenAI evaluation views: one trace per test row (prompt, answer, reference)
with the project's scores attached as assessments, through ``mlflow.genai.evaluate`` over the outputs the
inference phase already produced (no model is called again, no score is recomputed by MLflow).

Each configured metric becomes a code scorer named after it that returns the precomputed score (or the
row's error where it failed); with a baseline, ``<metric>_base`` scorers (listed next to theirs) carry the base model's score for
the same prompt, its answer as the rationale. MLflow adds ``<metric>/mean`` metrics to the run.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ft_assets.phases.metrics import MetricScores
from ft_assets.secrets import redact
from ft_assets.tracking_active import resumed_run

_MAX_WORKERS_ENV = "MLFLOW_GENAI_EVAL_MAX_WORKERS"


@contextlib.contextmanager
def _one_worker_for_sqlite(tracking_uri: str) -> Iterator[None]:
    # Parallel scorer workers exhaust SQLAlchemy's connection pool on a sqlite store and traces are lost.
    if not tracking_uri.startswith("sqlite:"):
        yield
        return
    previous = os.environ.get(_MAX_WORKERS_ENV)
    os.environ[_MAX_WORKERS_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_MAX_WORKERS_ENV, None)
        else:
            os.environ[_MAX_WORKERS_ENV] = previous


def _precomputed_scorer(name: str, lookup: Callable[[str], tuple[float, str | None, str | None]]) -> Any:
    # MLflow's GenAI evaluation API itself (scorers, assessments): what this module exists to call.
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    def score(inputs: dict[str, Any]) -> Feedback:
        value, error, rationale = lookup(inputs["id"])
        if math.isnan(value):
            return Feedback(error=error or "not scored", rationale=rationale)
        return Feedback(value=value, rationale=rationale)

    return scorer(score, name=name)


def log_genai_evaluation(
    tracking_uri: str,
    run_id: str,
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_rows: Sequence[Mapping[str, Any]] | None,
    baseline_scores: MetricScores | None,
) -> dict[str, float]:
    """Record the rows and their scores as an MLflow GenAI evaluation on the (ended) run ``run_id`` of
    ``tracking_uri``; returns the metrics MLflow computed from the scorers.

    Called after the phase run has closed: MLflow 3.17's ``genai.evaluate`` imports the autolog
    integrations while the run's system-metrics thread resolves a registry URI (an import too), and the
    two deadlock on the import locks. The run is resumed here without system metrics, then ended again.
    """
    import mlflow  # for mlflow.genai.evaluate, MLflow's GenAI evaluation API: what this module exists to call

    ids = [str(row.get("id", index)) for index, row in enumerate(rows)]
    position = {row_id: index for index, row_id in enumerate(ids)}
    base_position = {str(row.get("id", index)): index for index, row in enumerate(baseline_rows or [])}

    def tuned(name: str) -> Callable[[str], tuple[float, str | None, str | None]]:
        return lambda row_id: (
            scores.per_row[name][position[row_id]],
            scores.errors[name][position[row_id]],
            None,
        )

    def base(name: str) -> Callable[[str], tuple[float, str | None, str | None]]:
        assert baseline_rows is not None and baseline_scores is not None

        def lookup(row_id: str) -> tuple[float, str | None, str | None]:
            index = base_position.get(row_id)
            if index is None:
                return math.nan, "no base row with this id", None
            answer = baseline_rows[index].get("assistant_response")
            rationale = redact(f"base: {answer}")
            return baseline_scores.per_row[name][index], baseline_scores.errors[name][index], rationale

        return lookup

    scorers = [_precomputed_scorer(name, tuned(name)) for name in scores.per_row]
    if baseline_scores is not None:
        scorers += [_precomputed_scorer(f"{name}_base", base(name)) for name in baseline_scores.per_row]

    def text(value: Any) -> Any:
        return redact(value) if isinstance(value, str) else value

    data = [
        {
            "inputs": {
                "prompt": text(row.get("user_prompt")),
                **({"system_prompt": text(row["system_prompt"])} if row.get("system_prompt") else {}),
                "id": row_id,
            },
            "outputs": text(row.get("assistant_response")),
            "expectations": {"expected_response": text(row.get("ground_truth"))},
        }
        for row_id, row in zip(ids, rows, strict=True)
    ]
    with resumed_run(tracking_uri, run_id), _one_worker_for_sqlite(tracking_uri):
        result = mlflow.genai.evaluate(data=data, scorers=scorers)
    return {key: float(value) for key, value in result.metrics.items()}
