"""The one Definitions object of the ft_assets code location."""

from __future__ import annotations

import dagster as dg

from ft_assets.assets import checks, data, evaluation, inference, models
from ft_assets.automation import dataset_change_sensor
from ft_assets.execution.launcher import ComputeLauncher
from ft_assets.execution.recovery import orphaned_run_sensor
from ft_assets.jobs import ALL_JOBS
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking, mlflow_run_failure_sensor
from ft_assets.sweeps.assets import SWEEP_ASSETS, SWEEP_JOBS

# Steps run one after another in the run's own process: the GPU steps are serialized by the `gpu` pool
# anyway, and a process per step would import torch and transformers again for each (~10 s on a CPU).
# The `launcher` resource moves the heavy phases into subprocesses or pods when wanted.
defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([data, models, inference, evaluation]), *SWEEP_ASSETS],
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[*ALL_JOBS, *SWEEP_JOBS],
    sensors=[dataset_change_sensor, mlflow_run_failure_sensor, orphaned_run_sensor],
    resources={"settings": PipelineSettings(), "mlflow": MlflowTracking(), "launcher": ComputeLauncher()},
    executor=dg.in_process_executor,
)
