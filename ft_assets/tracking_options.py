"""What a phase run is tracked with: the MLflow options resolved from ``[mlflow]``, the resource's fields
and the ``MLFLOW_*`` environment (:class:`TrackingOptions`), run-name rules, the tags and limits the run
tree uses, and the reachability check made before any work."""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ft_assets.config import ConfigError, Settings
from ft_assets.errors import FtAssetsError
from ft_assets.secrets import is_secret_name, strip_credentials

if TYPE_CHECKING:
    pass


#: Where an MLflow UI serves a non-http store (sqlite), so runs still get clickable links.
MLFLOW_UI_URL_ENV = "MLFLOW_UI_URL"
PHASES = ("finetuning", "inference", "baseline_inference", "evaluation", "promotion")
MAX_PARAM_VALUE_LENGTH = 6000
MAX_DATASET_DIGEST_LENGTH = 36
ERROR_MESSAGE_LENGTH = 5000
MAX_RUN_NAME_LENGTH = 200
#: MLflow's batch limits per call.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

#: How long a process that created (or found a very young) parent run waits before re-reading the
#: candidates, so that every process racing to create the parent settles on the same one.
PARENT_SETTLE_S = 0.5
HEALTH_TIMEOUT_S = 5.0

TAG_DAGSTER_RUN_ID = "dagster_run_id"
TAG_DAGSTER_RUN_URL = "dagster_run_url"
TAG_ROLE = "ft_assets.role"
TAG_PHASE = "ft_assets.phase"
TAG_FAILED_PHASE = "ft_assets.failed_phase"
TAG_VERSION = "ft_assets.version"
TAG_GIT_COMMIT = "git_commit"
TAG_ERROR = "error_message"
TRACEBACK_ARTIFACT = "error/traceback.txt"
#: The parent run's artifact holding the run's resolved config (defaults filled in, secrets removed).
RESOLVED_CONFIG_ARTIFACT = "config/resolved_config.toml"
#: The experiment tag the MLflow 3 UI reads for an experiment's kind; this value ("Machine learning")
#: opens it on its training runs instead of the GenAI view a new experiment gets.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"

_log = logging.getLogger(__name__)


class TrackingUnavailableError(FtAssetsError, RuntimeError):
    """The MLflow tracking store cannot be reached; the message names the URI and where it came from."""


class LogSink(Protocol):
    """What phase tracking needs from a logger (``logging.Logger`` and Dagster's ``context.log`` fit)."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


# ------------------------------------------------------------------------------------- credentials


def adopt_credentials(uri: str) -> str:
    """Move ``user:password@`` out of ``uri`` into MLflow's credential variables (unless already set).

    MLflow prints the tracking URI with every finished run; credentials must not be part of it.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    if parts.username:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(parts.username))
    if parts.password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(parts.password))
    return strip_credentials(uri)


# ------------------------------------------------------------------------------------------- names


_RUN_NAME_ALLOWED = re.compile(r"[A-Za-z0-9 _.\-:+@]")


def validate_run_name(name: str, parts: Mapping[str, str]) -> str:
    """``name`` if MLflow-friendly (letters, digits, space, ``_ . - : + @``; at most 200 chars).

    ``parts`` maps where each piece came from (``"[mlflow] run_name"``) to its value, so the error names
    the key at fault.
    """
    bad = sorted({ch for ch in name if not _RUN_NAME_ALLOWED.fullmatch(ch)})
    if bad:
        culprits = [where for where, value in parts.items() if any(ch in value for ch in bad)]
        raise ConfigError(
            f"MLflow run name {name!r} (from {', '.join(culprits) or 'the run name settings'}) contains "
            f"{''.join(bad)!r}; run names may use letters, digits, space and _ . - : + @"
        )
    if not name.strip() or len(name) > MAX_RUN_NAME_LENGTH:
        raise ConfigError(
            f"MLflow run name {name!r} (from {', '.join(parts)}) must be 1 to {MAX_RUN_NAME_LENGTH} "
            "characters and not blank"
        )
    return name


# ------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class TrackingOptions:
    """The resolved MLflow settings for one phase, with where each value came from."""

    tracking_uri: str
    experiment_name: str
    run_name: str | None = None
    run_name_prefix: str = ""
    run_name_suffix: str = ""
    parent_run_id: str | None = None
    env_to_tag: tuple[str, ...] = ()
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    required: bool = True
    log_system_metrics: bool = True
    system_metrics_sampling_interval: float = 10.0
    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, settings: Settings, overrides: Mapping[str, Any] | None = None) -> TrackingOptions:
        """``[mlflow]`` section < ``overrides`` (resource fields; ``None`` = unset) < ``MLFLOW_*`` env vars.

        With no tracking URI anywhere, runs go to ``sqlite:///<settings.base_dir>/mlflow.db``. Relative
        ``sqlite:///`` paths from the config are resolved against ``settings.base_dir``.
        """
        section = settings.mlflow
        keys = (
            "tracking_uri", "experiment_name", "run_name", "run_name_prefix", "run_name_suffix",
            "required", "log_system_metrics", "system_metrics_sampling_interval",
        )  # fmt: skip
        values: dict[str, Any] = {key: getattr(section, key) for key in keys}
        sources = {key: f"[mlflow] {key}" for key in keys}
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
                sources[key] = f"resource config {key}"
        for key, var in (
            ("tracking_uri", "MLFLOW_TRACKING_URI"),
            ("experiment_name", "MLFLOW_EXPERIMENT_NAME"),
        ):
            if os.environ.get(var):
                values[key] = os.environ[var]
                sources[key] = f"environment variable {var}"
        uri = values["tracking_uri"]
        if not uri:
            uri = f"sqlite:///{settings.base_dir / 'mlflow.db'}"
            sources["tracking_uri"] = "default (mlflow.db in the project folder)"
        elif uri.startswith("sqlite:///") and not sources["tracking_uri"].startswith("environment"):
            path = uri[len("sqlite:///") :]
            if path and path != ":memory:" and not path.startswith("/"):
                uri = f"sqlite:///{settings.resolve_path(path)}"
        values["tracking_uri"] = uri
        if not values["experiment_name"]:
            raise ConfigError(f"{sources['experiment_name']}: the MLflow experiment name is empty")
        interval = float(values["system_metrics_sampling_interval"])
        if not interval > 0:
            raise ConfigError(
                f"{sources['system_metrics_sampling_interval']}: must be a positive number of seconds "
                f"(got {interval})"
            )
        env_to_tag = tuple(values.get("env_to_tag") or ())
        for var in env_to_tag:
            if is_secret_name(var, os.environ.get(var)):
                raise ConfigError(
                    f"resource config env_to_tag lists {var!r}, which holds a secret; "
                    "secrets are never logged"
                )
        return cls(
            tracking_uri=uri,
            experiment_name=str(values["experiment_name"]),
            run_name=values["run_name"] or None,
            run_name_prefix=values["run_name_prefix"] or "",
            run_name_suffix=values["run_name_suffix"] or "",
            parent_run_id=values.get("parent_run_id") or None,
            env_to_tag=env_to_tag,
            extra_tags=dict(values.get("extra_tags") or {}),
            required=bool(values["required"]),
            log_system_metrics=bool(values["log_system_metrics"]),
            system_metrics_sampling_interval=interval,
            sources=sources,
        )

    def source(self, key: str) -> str:
        """Where option ``key`` came from, for error messages."""
        return self.sources.get(key, key)

    def parent_run_name(self, orchestrator_run_id: str) -> str:
        """Configured name (or a timestamp plus the run id's first 8 characters), with prefix/suffix."""
        base = self.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{orchestrator_run_id[:8]}"
        parts = {self.source("run_name"): self.run_name or ""}
        parts[self.source("run_name_prefix")] = self.run_name_prefix
        parts[self.source("run_name_suffix")] = self.run_name_suffix
        return validate_run_name(f"{self.run_name_prefix}{base}{self.run_name_suffix}", parts)


def check_reachable(uri: str, source: str = "tracking_uri") -> None:
    """Raise :class:`TrackingUnavailableError` unless the store at ``uri`` can be used.

    http(s): ``GET <uri>/health`` answers (any status below 500: a server without that route is still a
    server). sqlite: the database's folder exists or can be created. Other schemes are left to MLflow.
    """
    shown = strip_credentials(uri)
    hint = "start the server, fix the URI, or set [mlflow] required = false to run untracked"
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        url = shown.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S):
                return
        except urllib.error.HTTPError as error:
            if error.code < 500:
                return
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            reason = str(getattr(error, "reason", error))
        raise TrackingUnavailableError(
            f"MLflow tracking server {shown} (from {source}) is not reachable: "
            f"GET {url} failed: {reason}; {hint}"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        if not path or path == ":memory:":
            return
        folder = Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingUnavailableError(
                f"MLflow tracking store {uri} (from {source}) is unusable: folder {folder} cannot be created "
                f"({error}); {hint}"
            ) from None
        if not os.access(folder, os.W_OK):
            raise TrackingUnavailableError(
                f"MLflow tracking store {uri} (from {source}) is unusable: "
                f"folder {folder} is not writable; {hint}"
            )
