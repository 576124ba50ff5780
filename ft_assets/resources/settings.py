"""The pipeline configuration as a Dagster resource: a TOML file plus per-section run-config overrides."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field

from ft_assets.config import DEFAULT_CONFIG_PATH, Settings, load_settings
from ft_assets.secrets import secret_scope

CONFIG_PATH_ENV = "FT_ASSETS_CONFIG"


def default_config_path() -> str:
    """``$FT_ASSETS_CONFIG`` when set, else the bundled ``config/pipeline.toml``."""
    return os.environ.get(CONFIG_PATH_ENV, str(DEFAULT_CONFIG_PATH))


class PipelineSettings(dg.ConfigurableResource):
    """Loads ``config_path`` (TOML) and lays the launchpad's per-section overrides over it.

    Example run config: ``resources: {settings: {config: {fine_tuner: {max_steps: 5}}}}``. Every key
    of every section can be overridden this way; unknown keys fail with the key named.
    """

    config_path: str = Field(
        default_factory=default_config_path, description="TOML file with the pipeline config"
    )
    fine_tuner: dict[str, Any] = Field(default_factory=dict, description="overrides for [fine_tuner]")
    inferencer: dict[str, Any] = Field(default_factory=dict, description="overrides for [inferencer]")
    evaluator: dict[str, Any] = Field(default_factory=dict, description="overrides for [evaluator]")
    mlflow: dict[str, Any] = Field(default_factory=dict, description="overrides for [mlflow]")
    pipeline: dict[str, Any] = Field(default_factory=dict, description="overrides for [pipeline]")

    def overrides(self) -> dict[str, Any]:
        sections = {
            "fine_tuner": self.fine_tuner,
            "inferencer": self.inferencer,
            "evaluator": self.evaluator,
            "mlflow": self.mlflow,
            "pipeline": self.pipeline,
        }
        return {name: dict(values) for name, values in sections.items() if values}

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[PipelineSettings]:
        """The step (the run, with the in-process executor) is one secret scope: the ``${VAR}`` values its
        settings expand are secret until it ends, not in the later runs of a long-lived process."""
        with secret_scope():
            yield self

    def load(self) -> Settings:
        """The validated settings (a :class:`~ft_assets.config.ConfigError` names file, section and key)."""
        return load_settings(self.config_path, self.overrides())
