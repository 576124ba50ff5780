"""The evaluation phase's preflight: the test set and the judge as the configured metrics need them.

The rules about metrics alone (keys, embeddings, contexts, MeCab) are in
:func:`ft_assets.phases.metrics.preflight`; this adds what needs the loaded test set and the judge URL.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from ft_assets.config import Settings
from ft_assets.config_sections import JUDGE_METRICS
from ft_assets.dataset_specs import TESTING
from ft_assets.phases.datasets import DatasetError, LoadedDataset
from ft_assets.phases.metrics import OPENAI_KEY_ENV, REFERENCE_METRICS, MetricsError, preflight
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.secrets import strip_credentials

#: How many rows without a ground truth a message lists before summarising the rest as a count.
LISTED_ROWS = 10


def check_metrics(
    settings: Settings, env: Mapping[str, str], test_set: LoadedDataset, report: PreflightReport
) -> None:
    """Raise when a configured metric cannot score ``test_set`` (the loaded test set) or reach its judge."""
    evaluator = settings.evaluator
    referenced = [name for name in evaluator.metrics if name in REFERENCE_METRICS]
    unlabelled = [example.row for example in test_set.examples if not example.ground_truth]
    if referenced and unlabelled:
        listed = ", ".join(str(row) for row in unlabelled[:LISTED_ROWS])
        more = f" and {len(unlabelled) - LISTED_ROWS} more" if len(unlabelled) > LISTED_ROWS else ""
        column = settings.inferencer.ground_truth_column
        raise DatasetError(
            f"{TESTING.config_key} = {TESTING.source(settings)!r} ({test_set.resolved}): "
            f"{len(unlabelled)} of {len(test_set.examples)} rows have no ground truth (qa column {column!r} "
            f"from [inferencer] ground_truth_column, or a final assistant turn), but evaluator.metrics "
            f"{referenced} compare against it: rows {listed}{more}"
        )
    judged = [name for name in evaluator.metrics if name in JUDGE_METRICS]
    base_url = evaluator.judge.base_url
    if judged and base_url is not None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise MetricsError(
                f"evaluator.judge.base_url = {strip_credentials(base_url)!r} is not an http(s) URL "
                f"(e.g. http://127.0.0.1:8000/v1); the LLM-judge metrics {judged} call it"
            )
    preflight(
        evaluator,
        api_key=env.get(OPENAI_KEY_ENV) or None,
        has_ground_truth=not unlabelled,
        has_contexts=all(example.contexts for example in test_set.examples),
    )
    report.passed.append(f"metrics {evaluator.metrics}")
