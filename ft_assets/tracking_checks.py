"""MLflow's part of a run's preflight: the tracking URI's scheme, the experiment and run names, and
whether the store answers (a warning instead of an error with ``[mlflow] required = false``)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

from ft_assets.config import ConfigError, Settings
from ft_assets.config_sections import did_you_mean
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.secrets import strip_credentials
from ft_assets.tracking_options import TrackingOptions, TrackingUnavailableError, check_reachable

#: MLflow's limit on experiment names.
MAX_EXPERIMENT_NAME_LENGTH = 500
#: Tracking URI schemes MLflow 3 has stores for (``dialect+driver`` URIs are matched on the dialect).
TRACKING_SCHEMES = (
    "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc",
    "file", "",
)  # fmt: skip
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_experiment_name(options: TrackingOptions) -> None:
    """Raise a ConfigError naming where the experiment name came from when MLflow or its store refuses it."""
    name, source = options.experiment_name, options.source("experiment_name")
    problem = None
    if not name.strip():
        problem = "is blank"
    elif len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        problem = f"is longer than MLflow's {MAX_EXPERIMENT_NAME_LENGTH} characters"
    elif _CONTROL_CHARACTERS.search(name):
        problem = "contains control characters"
    elif not name.strip("."):
        # the sqlite store keeps artifacts in a folder named after the experiment: '..' would leave it
        problem = "is only dots, which names no folder for its artifacts"
    if problem:
        raise ConfigError(f"{source}: the MLflow experiment name {name!r} {problem}")


def check_tracking(
    settings: Settings, tracking: TrackingOptions | None, env: Mapping[str, str], report: PreflightReport
) -> None:
    """Check the resolved MLflow options (``tracking``; default: resolved from ``settings``) and that the
    store answers; sets ``report.tracking_uri`` (credentials stripped) and ``report.tracked``."""
    options = tracking or TrackingOptions.resolve(settings)
    uri, source = options.tracking_uri, options.source("tracking_uri")
    report.tracking_uri = strip_credentials(uri)
    check_experiment_name(options)
    if not options.parent_run_id:
        options.parent_run_name("preflight")  # a bad run name, prefix or suffix raises ConfigError
    scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{source}: MLflow tracking URI {report.tracking_uri!r} has an unknown scheme {scheme!r}"
            f"{did_you_mean(scheme, TRACKING_SCHEMES)}; use http(s)://host:port or sqlite:///path/mlflow.db"
        )
    if scheme in ("file", "") and env.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(
            f"{source}: {report.tracking_uri!r} is an MLflow file store, which MLflow 3 refuses unless "
            "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///path/mlflow.db instead"
        )
    try:
        check_reachable(uri, source)
    except TrackingUnavailableError as error:
        if options.required:
            raise
        report.tracked = False
        report.warnings.append(f"{error} (the run goes on untracked: [mlflow] required = false)")
        return
    report.passed.append(f"MLflow store {report.tracking_uri} answers")
