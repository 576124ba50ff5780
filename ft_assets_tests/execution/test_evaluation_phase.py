"""The evaluation phase through the compute launcher: run in the step's process and in a Pipes subprocess,
it gives the same report value, metadata and MLflow metrics; the GenAI evaluation view is recorded from
what the subprocess wrote once its run closed."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ft_assets.asset_values import EvaluationReport, InferenceCounts, InferenceResults
from ft_assets.assets.evaluation import evaluate_with
from ft_assets.config import load_settings
from ft_assets.execution.evaluation_phase import record_evaluation_view
from ft_assets.execution.launcher import ComputeLauncher
from ft_assets.execution.request import PhaseRequest
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking
from ft_assets_tests.helpers import pipeline_resources

JUDGE_KEY = "sk-evaluationPhaseSecret7c8d"
#: (reference, fine-tuned answer, base answer): exact matches, near misses, Cyrillic and CJK text.
ANSWERS = [
    ("Paris", "Paris", "Lyon"),
    ("Москва", "Москва", "Санкт-Петербург"),
    ("東京", "東京都", "東京"),
    ("Ottawa", "Toronto", "Toronto"),
    ("Canberra", "Canberra", "Sydney"),
    ("Zürich", "Zürich", "Zürich"),
]
#: Report fields that name the run's own folder.
PATH_FIELDS = ("json_path", "xlsx_path", "row_scores_path")


def _inference(folder: Path, answers: list[tuple[str, str]], model_hash: str) -> InferenceResults:
    rows = [
        {
            "id": f"q-{index}",
            "system_prompt": None,
            "user_prompt": f"Вопрос {index}: which city?",
            "assistant_response": answer,
            "ground_truth": reference,
        }
        for index, (reference, answer) in enumerate(answers)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "inference_results.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return InferenceResults(
        path=str(path),
        rows=len(rows),
        expected_rows=len(rows),
        empty_responses=0,
        model_hash=model_hash,
        dataset_hash="sha256:test",
        metrics={"rows_per_s": float("nan")},
    )


def _evaluate(
    config: Path,
    instance: dg.DagsterInstance,
    launcher: ComputeLauncher,
    inference: InferenceResults,
    baseline: InferenceResults,
) -> dg.ExecuteInProcessResult:
    """The evaluation_report asset's step, with ``launcher`` in place of the in-process one."""

    @dg.asset(name="evaluation_report")
    def evaluated(
        context: dg.AssetExecutionContext, settings: PipelineSettings, mlflow: MlflowTracking
    ) -> dg.Output[EvaluationReport]:
        return evaluate_with(launcher, context, settings.load(), mlflow, inference, baseline)

    return dg.materialize([evaluated], resources=pipeline_resources(config), instance=instance)


def test_evaluation_gives_the_same_report_in_process_and_in_a_subprocess(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", JUDGE_KEY)
    config = write_config()
    folder = tmp_path / "вывод 出力"
    inference = _inference(folder / "tuned", [(ref, tuned) for ref, tuned, _ in ANSWERS], "sha256:tuned")
    baseline = _inference(folder / "base", [(ref, base) for ref, _, base in ANSWERS], "sha256:base")
    instance = dg.DagsterInstance.ephemeral()
    local = _evaluate(config, instance, ComputeLauncher(), inference, baseline)
    external = _evaluate(config, instance, ComputeLauncher(mode="subprocess"), inference, baseline)
    assert local.success and external.success

    # the subprocess really went through Pipes; the judge's key never travelled in the request
    for result, piped in ((local, False), (external, True)):
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("opened dagster pipes" in m for m in messages) is piped
        assert any(m.startswith(f"scored {len(ANSWERS)} rows in ") for m in messages)
    request = PhaseRequest.evaluation(
        load_settings(config),
        inference,
        baseline,
        tmp_path / "report",
        dagster_run_id="r",
        tracking_required=True,
    )
    wire = json.dumps(request.to_json())
    assert JUDGE_KEY not in wire
    restored = PhaseRequest.from_json(json.loads(wire)).inference_results()
    assert [json.dumps(r.to_json()) for r in restored] == [
        json.dumps(r.to_json()) for r in (inference, baseline)
    ]

    mine, theirs = local.output_for_node("evaluation_report"), external.output_for_node("evaluation_report")
    assert isinstance(mine, EvaluationReport) and isinstance(theirs, EvaluationReport)
    assert all(getattr(mine, name) != getattr(theirs, name) for name in PATH_FIELDS)  # a folder per run
    unplaced = {name: "" for name in PATH_FIELDS}
    assert dataclasses.replace(mine, **unplaced) == dataclasses.replace(theirs, **unplaced)
    assert mine.model_hash == "sha256:tuned" and mine.rows == len(ANSWERS)
    assert mine.inference == InferenceCounts(len(ANSWERS), len(ANSWERS), 0)
    # exact match, counted here: 4 of the 6 fine-tuned answers and 2 of the base ones equal their reference
    tuned_hits = sum(tuned == ref for ref, tuned, _ in ANSWERS)
    base_hits = sum(base == ref for ref, _, base in ANSWERS)
    assert mine.summary["exact_match"]["mean"] == pytest.approx(tuned_hits / len(ANSWERS))
    assert mine.base_summary["exact_match"]["mean"] == pytest.approx(base_hits / len(ANSWERS))
    assert mine.comparison is not None
    assert mine.comparison["exact_match"]["delta"] == pytest.approx((tuned_hits - base_hits) / len(ANSWERS))
    for report in (mine, theirs):
        assert folder not in Path(report.json_path).parents  # the report goes to the artifacts root
        summary = json.loads(Path(report.json_path).read_text(encoding="utf-8"))
        assert summary["metrics"]["fine_tuned"] == report.summary
        assert summary["provenance"]["fine_tuned_model"] == "sha256:tuned"
        assert Path(report.xlsx_path).is_file()

    local_meta = local.asset_materializations_for_node("evaluation_report")[0].metadata
    external_meta = external.asset_materializations_for_node("evaluation_report")[0].metadata
    assert set(local_meta) == set(external_meta)
    assert {"summary_json", "workbook", "preview", "eval_exact_match", "eval_rouge_score"} <= set(local_meta)
    for key, value in local_meta.items():
        assert type(value) is type(external_meta[key]), key
    assert local_meta["summary_json"].value == mine.json_path
    assert local_meta["eval_exact_match"].value == pytest.approx(tuned_hits / len(ANSWERS))
    assert isinstance(local_meta["preview"], dg.MarkdownMetadataValue)
    assert "exact_match" in local_meta["preview"].value

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [client.get_run(meta["mlflow_run_id"].value) for meta in (local_meta, external_meta)]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    metrics = [{k: v for k, v in run.data.metrics.items() if not k.startswith("system/")} for run in runs]
    assert set(metrics[0]) == set(metrics[1])
    evals = [{k: v for k, v in m.items() if k.startswith("eval_")} for m in metrics]
    assert evals[0] == evals[1] and evals[0]["eval_exact_match"] == pytest.approx(tuned_hits / len(ANSWERS))
    assert runs[0].data.params == runs[1].data.params
    for run in runs:
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"evaluation_summary.json", "evaluation_report.xlsx"} <= artifacts
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.metrics["eval_exact_match"] == evals[0]["eval_exact_match"]
        assert JUDGE_KEY not in json.dumps([run.data.params, run.data.tags])

    # the GenAI view, from the per-row scores the subprocess wrote, on its closed run
    external_run = runs[1].info.run_id
    view = record_evaluation_view(
        theirs, inference, baseline, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", run_id=external_run
    )
    assert view["exact_match/mean"] == pytest.approx(tuned_hits / len(ANSWERS))
    traces = client.search_traces(locations=[runs[1].info.experiment_id], run_id=external_run, max_results=20)
    assert len(traces) == len(ANSWERS)
