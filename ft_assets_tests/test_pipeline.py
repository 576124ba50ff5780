"""FineTunePipeline: the seed's API, materializing the real assets on a persistent Dagster instance."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ft_assets.pipeline import PHASES_TAG, FineTunePipeline, PipelineError

#: Fast settings: one training step, no model upload, no system-metrics sampling.
FAST = {"fine_tuner": {"max_steps": 1}, "mlflow": {"log_system_metrics": False, "log_model": False}}
EXPERIMENT = "fine-tune-pipeline-ci"


def materialized(home: Path) -> set[str]:
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return {
            key.to_user_string()
            for key in instance.get_asset_keys()
            if instance.get_latest_materialization_event(key) is not None
        }
    finally:
        instance.dispose()


@pytest.mark.parametrize(
    ("pipeline", "runs", "skipped"),
    [
        ({}, ["finetuning", "inference", "evaluation"], {}),
        (
            {"stop_after_finetuning": True},
            ["finetuning"],
            {
                "inference": "[pipeline] stop_after_finetuning = true",
                "evaluation": "[pipeline] stop_after_finetuning = true",
            },
        ),
        (
            {"stop_after_inference": True},
            ["finetuning", "inference"],
            {"evaluation": "[pipeline] stop_after_inference = true"},
        ),
        (
            {"enable_finetuning": False},
            ["inference", "evaluation"],
            {"finetuning": "[pipeline] enable_finetuning = false"},
        ),
        (
            {"enable_finetuning": False, "stop_after_inference": True},
            ["inference"],
            {
                "finetuning": "[pipeline] enable_finetuning = false",
                "evaluation": "[pipeline] stop_after_inference = true",
            },
        ),
        (
            {"enable_inference": False},
            ["finetuning", "evaluation"],
            {"inference": "[pipeline] enable_inference = false"},
        ),
        (
            {"enable_finetuning": False, "enable_inference": False, "stop_after_finetuning": True},
            [],
            {
                "finetuning": "[pipeline] enable_finetuning = false",
                "inference": "[pipeline] stop_after_finetuning = true",
                "evaluation": "[pipeline] stop_after_finetuning = true",
            },
        ),
    ],
)
def test_plan_follows_enable_and_stop_after(
    write_config: Callable[..., Path], tmp_path: Path, pipeline: dict, runs: list, skipped: dict
) -> None:
    config = write_config({"pipeline": pipeline})
    assert FineTunePipeline(config, dagster_home=tmp_path / "home").plan() == (runs, skipped)


def test_nothing_enabled_runs_nothing(write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = write_config()
    flags = {"enable_finetuning": False, "enable_inference": False, "enable_evaluation": False}
    results = FineTunePipeline(
        config, overrides={"pipeline": flags}, dagster_home=tmp_path / "home"
    ).run_pipeline()
    assert results["dagster_run_id"] is None
    assert {phase: r["status"] for phase, r in results["phases"].items()} == dict.fromkeys(
        ("finetuning", "inference", "evaluation"), "skipped"
    )


def test_inference_without_a_fine_tuned_model_fails_before_any_run(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config({"pipeline": {"enable_finetuning": False}})
    pipeline = FineTunePipeline(config, dagster_home=tmp_path / "home")
    with pytest.raises(PipelineError) as raised:
        pipeline.run_pipeline()
    message = str(raised.value)
    assert "\n" not in message
    assert "needs base_model, fine_tuned_model, never materialized" in message
    assert str(tmp_path / "home") in message
    assert pipeline.instance.get_runs() == []


def test_phases_in_separate_calls_share_outputs_and_one_mlflow_parent(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(FAST)
    home = tmp_path / "home"

    first = FineTunePipeline(
        config, overrides={"pipeline": {"stop_after_finetuning": True}}, dagster_home=home
    )
    results = first.run_pipeline()
    first.close()
    phases = results["phases"]
    assert phases["finetuning"]["status"] == "completed"
    assert phases["inference"] == {"status": "skipped", "reason": "[pipeline] stop_after_finetuning = true"}
    assert phases["evaluation"]["status"] == "skipped"
    model = phases["finetuning"]["assets"]["fine_tuned_model"]
    assert (Path(model["value"].path) / "adapter_config.json").is_file()
    assert model["mlflow_run_id"] and model["mlflow_parent_run_id"] == results["mlflow_parent_run_id"]
    assert materialized(home) == {"base_model", "fine_tuned_model"}

    # A new pipeline object (a new process, as far as Dagster knows) continues from the instance.
    second = FineTunePipeline(config, dagster_home=home)
    second.setup_mlflow()
    second.start_mlflow_run()
    inference = second.run_inference()
    evaluation = second.run_evaluation()
    parent = second.stop_mlflow_run()
    second.close()
    tuned = inference["assets"]["inference_results"]["value"]
    assert tuned.model_hash == model["value"].fingerprint  # the latest materialized fine-tuned model
    report = evaluation["assets"]["evaluation_report"]["value"]
    assert Path(report.json_path).is_file() and report.rows == 60
    assert all(evaluation["checks"].values()) and evaluation["checks"]
    assert inference["dagster_run_id"] != evaluation["dagster_run_id"]
    assert parent and inference["mlflow_parent_run_id"] == evaluation["mlflow_parent_run_id"] == parent

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    parent_name = client.get_run(parent).info.run_name
    assert sorted(run.info.run_name for run in children) == [
        f"{parent_name}_baseline_inference",
        f"{parent_name}_evaluation",
        f"{parent_name}_inference",
    ]
    assert client.get_run(parent).info.status == "FINISHED"
    assert parent != results["mlflow_parent_run_id"]  # the first pipeline's run had its own parent

    # Evaluation only: scores the inference results above again, in a run of its own.
    third = FineTunePipeline(
        config,
        overrides={"pipeline": {"enable_finetuning": False, "enable_inference": False}},
        dagster_home=home,
    )
    again = third.run_pipeline()
    assert [again["phases"][p]["status"] for p in ("finetuning", "inference", "evaluation")] == [
        "skipped",
        "skipped",
        "completed",
    ]
    rerun = again["phases"]["evaluation"]["assets"]["evaluation_report"]["value"]
    assert rerun.json_path != report.json_path and rerun.summary == report.summary
    run = third.instance.get_run_by_id(again["dagster_run_id"])
    assert run.tags[PHASES_TAG] == "evaluation"
    # the evaluation assets, after observing the datasets upstream of them (so their lineage is exact)
    datasets = {"training_dataset", "validation_dataset", "testing_dataset"}
    assert {key.to_user_string() for key in run.asset_selection} == {
        "evaluation_report",
        "promoted_model",
    } | datasets

    # A step that fails at run time (its input file deleted since): one line naming the step and the cause.
    Path(tuned.path).unlink()
    with pytest.raises(PipelineError) as raised:
        third.run_evaluation()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"evaluation failed: evaluation_report: FileNotFoundError: {tuned.path}: ")
    third.close()


def test_a_phase_that_fails_preflight_raises_one_line_and_starts_no_run(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "a"}\n{not json\n')
    config = write_config({**FAST, "fine_tuner": {"training_data_id": str(broken), "max_steps": 1}})
    secret = "hf_pipeline-test-secret-value"
    pipeline = FineTunePipeline(config, hf_key=secret, dagster_home=tmp_path / "home")
    assert secret not in repr(pipeline) and secret not in repr(vars(pipeline).get("settings"))
    with pytest.raises(PipelineError) as raised:
        pipeline.run_finetuning()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("finetuning failed: preflight: DatasetError: [fine_tuner] training_data_id = ")
    assert f"{broken}: line 2: malformed JSON" in message
    assert pipeline.instance.get_runs() == []
    assert os.environ.get("HF_TOKEN") != secret  # only set while the phase ran


def test_unknown_override_section_or_key_is_a_config_error(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    from ft_assets.config import ConfigError

    config = write_config()
    with pytest.raises(ConfigError, match="unknown key 'enable_finetunning'"):
        FineTunePipeline(config, overrides={"pipeline": {"enable_finetunning": False}}, dagster_home=tmp_path)
