"""The MLflow options are declared once (``MlflowConfig``): the tracking resource's fields and the resolved
``TrackingOptions`` follow it, and each key resolves TOML < resource < environment."""

from __future__ import annotations

import logging
import types
import typing
from pathlib import Path
from typing import Any

import mlflow
import pytest

from ft_assets.config import ConfigError, build_settings
from ft_assets.config_sections import MlflowConfig
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.tracking import open_phase_run
from ft_assets.tracking_active import attach_phase_run
from ft_assets.tracking_options import ENV_OVERRIDES, OPTION_NAMES, TrackingOptions
from ft_assets.tracking_run import LOG_MODEL_ENV, OrchestratorRun

#: What the resource sets beyond the ``[mlflow]`` keys, with dagster-mlflow's names.
RESOURCE_ONLY = {"parent_run_id", "env_to_tag", "extra_tags"}
DAGSTER_MLFLOW_NAMES = {"mlflow_tracking_uri", "experiment_name", "parent_run_id", "env_to_tag", "extra_tags"}


def _non_optional(annotation: Any) -> Any:
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if is_union and len(args) == 1 else annotation


def _samples(key: str, default: Any, annotation: Any, base_dir: Path) -> tuple[Any, Any]:
    """Two values of ``key``, both different from its default and from each other: (TOML, resource)."""
    kind = _non_optional(annotation)
    if key == "tracking_uri":
        return f"sqlite:///{base_dir / 'toml.db'}", f"sqlite:///{base_dir / 'resource.db'}"
    if kind is bool:
        return (not default, default) if default is not None else (True, False)
    if kind is float:
        return (default or 1.0) * 2, (default or 1.0) * 3
    if kind is int:
        return (default or 1) + 1, (default or 1) + 2
    if kind is str:
        return f"toml-{key}", f"resource-{key}"
    raise AssertionError(f"[mlflow] {key}: give this test sample values for {annotation}")


def test_every_mlflow_key_is_a_resource_field_and_a_resolved_option() -> None:
    config_keys = set(MlflowConfig.model_fields)
    assert set(OPTION_NAMES) == config_keys | RESOURCE_ONLY
    assert set(MlflowTracking.model_fields) == set(OPTION_NAMES) | {"mlflow_tracking_uri"}
    assert set(MlflowTracking.model_fields) >= DAGSTER_MLFLOW_NAMES
    for key, info in MlflowConfig.model_fields.items():
        option = TrackingOptions.model_fields[key]
        assert _non_optional(option.annotation) == _non_optional(info.annotation), key
        field = MlflowTracking.model_fields[key]
        assert _non_optional(field.annotation) == _non_optional(info.annotation), key
        assert field.default is None and field.description == info.description and info.description, key
    # a key every process reads from the environment, whatever the TOML or the resource says
    assert ENV_OVERRIDES == {
        "tracking_uri": "MLFLOW_TRACKING_URI",
        "experiment_name": "MLFLOW_EXPERIMENT_NAME",
    }


def test_the_launchpad_shows_every_resource_field_optional_with_its_description() -> None:
    fields = MlflowTracking.to_config_schema().as_field().config_type.fields  # type: ignore[attr-defined]
    assert set(fields) == set(MlflowTracking.model_fields)
    for name, model_field in MlflowTracking.model_fields.items():
        assert not fields[name].is_required, name
        assert fields[name].description == model_field.description and fields[name].description, name


def test_each_key_resolves_toml_then_resource_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ENV_OVERRIDES.values():
        monkeypatch.delenv(var, raising=False)
    samples = {
        key: _samples(key, info.default, info.annotation, tmp_path)
        for key, info in MlflowConfig.model_fields.items()
    }
    settings = build_settings(
        {"mlflow": {key: toml for key, (toml, _) in samples.items()}}, base_dir=tmp_path
    )
    from_toml = MlflowTracking().options(settings)
    for key, (toml, resource) in samples.items():
        assert getattr(from_toml, key) == toml, key
        assert from_toml.source(key) == f"[mlflow] {key}"
        options = MlflowTracking(**{key: resource}).options(settings)
        assert getattr(options, key) == resource, key
        assert options.source(key) == f"resource config {key}"
    for key, var in ENV_OVERRIDES.items():
        value = samples[key][1].replace("resource", "environment")
        monkeypatch.setenv(var, value)
        options = MlflowTracking(**{key: samples[key][1]}).options(settings)
        assert (getattr(options, key), options.source(key)) == (value, f"environment variable {var}")
    dagster_mlflow = MlflowTracking(mlflow_tracking_uri="sqlite:///x.db", experiment_name="e").options(
        settings
    )
    assert dagster_mlflow.sources["tracking_uri"] == "environment variable MLFLOW_TRACKING_URI"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    alias = MlflowTracking(mlflow_tracking_uri="sqlite:///x.db").options(settings)
    assert alias.tracking_uri == f"sqlite:///{tmp_path / 'x.db'}"


def test_a_resource_value_is_validated_like_the_toml_key(tmp_path: Path) -> None:
    settings = build_settings({}, base_dir=tmp_path)
    with pytest.raises(
        Exception, match=r"resource config system_metrics_sampling_interval: .*greater than 0"
    ):
        MlflowTracking(system_metrics_sampling_interval=-1.0).options(settings)
    with pytest.raises(ConfigError, match=r"resource config not_an_option: not an MLflow option"):
        TrackingOptions.resolve(settings, {"not_an_option": 1})


def test_a_resource_override_of_log_model_reaches_the_phase_run_and_its_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = build_settings({"mlflow": {"log_model": True}}, base_dir=tmp_path)
    options = MlflowTracking(log_model=False, log_system_metrics=False).options(settings)
    log = logging.getLogger("test")
    with open_phase_run(options, "finetuning", settings, OrchestratorRun("run-log-model"), log) as run:
        assert run.enabled and run.log_model is False
        assert run.log_peft_model(tmp_path / "no-model-here", "fine_tuned_model") is None
        env = run.subprocess_env(with_credentials=True)
    assert env[LOG_MODEL_ENV] == "false"
    attached = attach_phase_run("finetuning", log, required=True, env=env)
    try:
        assert (attached.run_id, attached.parent_run_id) == (run.run_id, run.parent_run_id)
        assert attached.log_model is False
    finally:
        mlflow.end_run()
    on = MlflowTracking(log_system_metrics=False).options(settings)
    with open_phase_run(on, "finetuning", settings, OrchestratorRun("run-log-model-on"), log) as run:
        assert run.log_model is True and LOG_MODEL_ENV not in run.subprocess_env()
