"""The MLflow dataset inputs a phase logs carry the dataset table's names (real Dagster job, sqlite store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from ft_assets import definitions as code_location
from ft_assets.config import load_settings
from ft_assets.dataset_specs import TESTING, TRAINING, VALIDATION
from ft_assets.phases.dataset_files import data_version
from ft_assets_tests.helpers import pipeline_resources


def dataset_inputs(run: Any) -> dict[str, tuple[str, str]]:
    """name -> (context, digest) of each dataset input of an MLflow run."""
    inputs = {}
    for item in run.inputs.dataset_inputs:
        context = next(tag.value for tag in item.tags if tag.key == MLFLOW_DATASET_CONTEXT)
        inputs[item.dataset.name] = (context, item.dataset.digest)
    return inputs


def test_finetuning_and_inference_log_their_datasets_by_the_table_names(
    write_config: Any, tmp_path: Path
) -> None:
    config = write_config({"fine_tuner": {"max_steps": 1}, "inferencer": {"run_baseline": False}})
    settings = load_settings(config)
    job = code_location.defs.resolve_job_def("fine_tune_pipeline")
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), resources=pipeline_resources(config)
    )
    assert result.success

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(settings.mlflow.experiment_name)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'"
    )
    by_name = {run.info.run_name: run for run in runs}
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    name = parent.info.run_name
    versions = {
        spec.name: data_version(str(spec.source(settings)), base_dir=settings.base_dir)
        for spec in (TRAINING, VALIDATION, TESTING)
    }
    assert set(dataset_inputs(by_name[f"{name}_finetuning"])) == {"training", "validation"}
    assert set(dataset_inputs(by_name[f"{name}_inference"])) == {"testing"}
    for spec in (TRAINING, VALIDATION, TESTING):
        context, digest = dataset_inputs(parent)[spec.name]
        assert context == spec.name
        assert versions[spec.name].startswith(digest), (spec, digest)  # MLflow keeps a prefix of it
        assert parent.data.params[f"dataset_{spec.name}_hash"] == versions[spec.name]
    assert {key for key in parent.data.params if key.startswith("dataset_")} == {
        "dataset_training_hash",
        "dataset_validation_hash",
        "dataset_testing_hash",
    }
