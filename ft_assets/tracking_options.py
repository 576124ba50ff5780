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
from pathlib import Path
from typing import Any, Protocol

from pydantic import ConfigDict, Field, ValidationError

from ft_assets.config import ConfigError, Settings
from ft_assets.config_sections import ENV_OVERRIDE, MlflowConfig
from ft_assets.errors import FtAssetsError
from ft_assets.secrets import is_secret_name, strip_credentials

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


class TrackingOptions(MlflowConfig):
    """The resolved MLflow settings for one phase, with where each value came from.

    Its fields are every ``[mlflow]`` key (inherited from :class:`MlflowConfig`, so a new key is a resolved
    option too) plus the options only the tracking resource sets; the ``MlflowTracking`` resource's fields
    are derived from them (:data:`OPTION_NAMES`). ``TrackingOptions(uri, experiment, **others)`` takes the
    first two positionally.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str = Field(description=MlflowConfig.model_fields["tracking_uri"].description)
    parent_run_id: str | None = Field(None, description="attach to this existing MLflow parent run")
    env_to_tag: list[str] = Field(
        default_factory=list, description="environment variables whose values tag every run"
    )
    extra_tags: dict[str, str] = Field(default_factory=dict, description="tags put on every run")
    sources: dict[str, str] = Field(default_factory=dict, exclude=True)

    def __init__(self, *positional: str, **values: Any) -> None:
        if len(positional) > 2:
            raise TypeError("TrackingOptions takes at most tracking_uri and experiment_name positionally")
        super().__init__(**dict(zip(("tracking_uri", "experiment_name"), positional, strict=False)), **values)

    @classmethod
    def resolve(cls, settings: Settings, overrides: Mapping[str, Any] | None = None) -> TrackingOptions:
        """``[mlflow]`` section < ``overrides`` (resource fields; ``None`` = unset) < environment variables
        (:data:`ENV_OVERRIDES`: ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``).

        With no tracking URI anywhere, runs go to ``sqlite:///<settings.base_dir>/mlflow.db``. Relative
        ``sqlite:///`` paths from the config are resolved against ``settings.base_dir``.
        """
        values: dict[str, Any] = settings.mlflow.model_dump()
        sources = {key: f"[mlflow] {key}" for key in values}
        for key, value in (overrides or {}).items():
            if key not in OPTION_NAMES:
                raise ConfigError(f"resource config {key}: not an MLflow option ({', '.join(OPTION_NAMES)})")
            if value is not None:
                values[key] = value
                sources[key] = f"resource config {key}"
        for key, var in ENV_OVERRIDES.items():
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
        for var in values.get("env_to_tag") or ():
            if is_secret_name(var, os.environ.get(var)):
                raise ConfigError(
                    f"{sources['env_to_tag']} lists {var!r}, which holds a secret; secrets are never logged"
                )
        try:
            return cls(**values, sources=sources)
        except ValidationError as error:
            problem = error.errors()[0]
            key = str(problem["loc"][0]) if problem["loc"] else "?"
            raise ConfigError(
                f"{sources.get(key, key)}: {problem['msg']}"
            ) from None  # no value: it may be secret

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


#: The options a tracking resource can set: every field of :class:`TrackingOptions` but ``sources``.
OPTION_NAMES = tuple(name for name in TrackingOptions.model_fields if name != "sources")
#: ``[mlflow]`` keys an environment variable overrides (declared on :class:`MlflowConfig`'s fields).
ENV_OVERRIDES = {
    name: str(info.json_schema_extra[ENV_OVERRIDE])
    for name, info in MlflowConfig.model_fields.items()
    if isinstance(info.json_schema_extra, dict) and ENV_OVERRIDE in info.json_schema_extra
}


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
