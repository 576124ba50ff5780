"""The evaluation phase's preflight checks, called directly on a loaded test set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_assets.config import build_settings
from ft_assets.dataset_specs import TESTING
from ft_assets.phases.datasets import DatasetError, load_configured
from ft_assets.phases.metric_checks import LISTED_ROWS, check_metrics
from ft_assets.phases.metrics import MetricsError
from ft_assets.phases.preflight_report import PreflightReport


def write_test_set(tmp_path: Path, answers: list[str | None]) -> tuple[dict, object]:
    path = tmp_path / "test.jsonl"
    rows = [{"question": f"Pregunta {i} ¿?", **({"answer": a} if a else {})} for i, a in enumerate(answers)]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return {"inferencer": {"testing_data_id": str(path)}}, path


def test_reference_metrics_refuse_rows_without_a_ground_truth(tmp_path: Path) -> None:
    answers: list[str | None] = [None if i % 2 else "sí" for i in range(2 * LISTED_ROWS + 4)]
    data, path = write_test_set(tmp_path, answers)
    settings = build_settings(
        {**data, "evaluator": {"metrics": ["exact_match"], "primary_metric": "exact_match"}}
    )
    loaded = load_configured(TESTING, settings)
    with pytest.raises(DatasetError) as raised:
        check_metrics(settings, {}, loaded, PreflightReport(("evaluation",)))
    message = str(raised.value)
    assert message.startswith(f"[inferencer] testing_data_id = {str(path)!r} ({path}): 12 of 24 rows")
    assert "evaluator.metrics ['exact_match']" in message and message.endswith(
        "rows 2, 4, 6, 8, 10, 12, 14, 16, 18, 20 and 2 more"
    )

    labelled = build_settings(
        {
            **write_test_set(tmp_path, ["sí", "no"])[0],
            "evaluator": {"metrics": ["exact_match"], "primary_metric": "exact_match"},
        }
    )
    report = PreflightReport(("evaluation",))
    check_metrics(labelled, {}, load_configured(TESTING, labelled), report)
    assert report.passed == ["metrics ['exact_match']"]


def test_the_judge_url_must_be_http(tmp_path: Path) -> None:
    data, _ = write_test_set(tmp_path, ["sí"])
    judged = {"metrics": ["answer_accuracy"], "primary_metric": "answer_accuracy"}
    settings = build_settings(
        {**data, "evaluator": {**judged, "judge": {"base_url": "ftp://user:pw@judge/v1"}}}
    )
    with pytest.raises(MetricsError) as raised:
        check_metrics(
            settings, {"OPENAI_API_KEY": "k"}, load_configured(TESTING, settings), PreflightReport(())
        )
    assert str(raised.value).startswith("evaluator.judge.base_url = 'ftp://judge/v1' is not an http(s) URL")
    # the metrics' own rules (metrics.preflight) still run: a judge without a key
    settings = build_settings({**data, "evaluator": judged})
    with pytest.raises(MetricsError, match="need an API key"):
        check_metrics(settings, {}, load_configured(TESTING, settings), PreflightReport(()))
