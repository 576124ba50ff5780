"""The one Definitions object of the ft_assets code location."""

from __future__ import annotations

import dagster as dg

from ft_assets.assets import checks, data, evaluation, inference, models
from ft_assets.jobs import ALL_JOBS
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking, mlflow_run_failure_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data, models, inference, evaluation]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=ALL_JOBS,
    sensors=[mlflow_run_failure_sensor],
    resources={"settings": PipelineSettings(), "mlflow": MlflowTracking()},
)
