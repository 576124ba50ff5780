"""MLflow tracking for the pipeline, free of any orchestrator: the run tree (one parent run per orchestrator
run, one child run per phase), with keys from :mod:`ft_assets.tracking_keys` and every value redacted by
:mod:`ft_assets.secrets`.

The Dagster resource in :mod:`ft_assets.resources.tracking` is a thin wrapper over
:func:`open_phase_run`. ``mlflow`` is imported inside functions because this module is imported by the
Dagster code location, which must load quickly.

Choices documented here once:

* Keys (metrics, params, tags) are valid MLflow keys, stable per run, collisions reported: see
  :mod:`ft_assets.tracking_keys`.
* Metric values: anything ``float()`` accepts except strings (ints, bools, numpy and 0-d torch
  scalars) is a metric; other values become tags, ``None`` is dropped. NaN is stored as NaN and
  ``±inf`` as ``±1.797e308`` (MLflow's own handling), so a diverged loss stays visible.
* Params are immutable in MLflow. Re-logging a param with the value it already has is skipped; a
  different value is logged under ``<key>.2`` (then ``.3``...: the first free slot, or the slot that
  already holds that value) with a warning, instead of failing the phase.
* Secrets (see :mod:`ft_assets.secrets`: secret variables, ``${VAR}`` expansions, URL credentials) are
  redacted from every param, tag, error message, traceback and JSON/YAML artifact written here.
  Credentials embedded in an http(s) tracking URI are moved to ``MLFLOW_TRACKING_USERNAME``/
  ``MLFLOW_TRACKING_PASSWORD`` so MLflow never prints them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ft_assets.config import ConfigError, Settings
from ft_assets.errors import FtAssetsError
from ft_assets.secrets import is_secret_name, redact, redact_value, refuse_secrets, strip_credentials
from ft_assets.tracking_keys import (
    MAX_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    TAG_KEY_COLLISIONS,
    RunKeys,
    run_keys,
    sanitize_metrics,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

#: Where an MLflow UI serves a non-http store (sqlite), so runs still get clickable links.
MLFLOW_UI_URL_ENV = "MLFLOW_UI_URL"
PHASES = ("finetuning", "inference", "baseline_inference", "evaluation", "promotion")
MAX_PARAM_VALUE_LENGTH = 6000
MAX_DATASET_DIGEST_LENGTH = 36
ERROR_MESSAGE_LENGTH = 5000
MAX_RUN_NAME_LENGTH = 200
#: MLflow's batch limits per call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

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


def _adopt_credentials(uri: str) -> str:
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


# ------------------------------------------------------------------------------------ MLflow helpers


def _client(uri: str) -> MlflowClient:
    # MLflow otherwise reports usage to an outside host from every process that logs.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_key_map(
    run_id: str, names: Iterable[Any], log: LogSink | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The run's keys for ``names``; a new collision is warned about (the caller records the tag)."""
    mapping, added = run_keys(run_id).assign(str(n) for n in names)
    _warn_collisions(run_id, added, log)
    return mapping, added


def _warn_collisions(run_id: str, added: Mapping[str, str], log: LogSink | None) -> None:
    for name, key in added.items():
        (log or _log).warning(
            f"MLflow run {run_id}: {name!r} sanitizes to a key another name of this run already has; "
            f"logged as {key!r} (listed in tag {TAG_KEY_COLLISIONS})"
        )


def _collision_tag(run_id: str) -> dict[str, str]:
    listing = json.dumps(run_keys(run_id).collisions, ensure_ascii=False, sort_keys=True)
    return {TAG_KEY_COLLISIONS: redact(listing)[:MAX_TAG_VALUE_LENGTH]}


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any], log: LogSink | None = None) -> None:
    from mlflow.entities import RunTag

    mapping, added = _run_key_map(run_id, tags, log)
    clean = {mapping[str(k)]: redact(str(v))[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}
    if added:
        clean.update(_collision_tag(run_id))
    for batch in _chunks(clean.items(), _PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in batch])


def _log_metrics(
    client: MlflowClient, run_id: str, values: Mapping[str, Any], step: int | None, log: LogSink | None = None
) -> None:
    from mlflow.entities import Metric

    keys = run_keys(run_id)
    before = len(keys.collisions)
    metrics, texts = sanitize_metrics(values, keys)
    now = int(time.time() * 1000)
    for batch in _chunks(metrics.items(), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=[Metric(k, v, now, step or 0) for k, v in batch])
    if len(keys.collisions) > before:
        _warn_collisions(run_id, dict(list(keys.collisions.items())[before:]), log)
        texts = {**texts, **_collision_tag(run_id)}
    if texts:
        _set_tags(client, run_id, texts, log)


def _free_slot(key: str, value: str, taken: Mapping[str, str]) -> str | None:
    """Where ``value`` goes for param ``key``: ``None`` when it is already logged there."""
    slot, n = key, 1
    while slot in taken:
        if taken[slot] == value:
            return None
        n += 1
        slot = f"{key[: MAX_KEY_LENGTH - 8]}.{n}"
    return slot


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any], log: LogSink) -> None:
    """Idempotent ``log_params`` (see the module notes); retried once when another process wins a race."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    for attempt in (1, 2):
        taken = dict(client.get_run(run_id).data.params)
        new: dict[str, str] = {}
        mapping, added = _run_key_map(run_id, params, log if attempt == 1 else None)
        if added:
            _set_tags(client, run_id, _collision_tag(run_id))
        for raw_key, raw_value in params.items():
            key = mapping[str(raw_key)]
            value = redact(str(raw_value))[:MAX_PARAM_VALUE_LENGTH]
            slot = _free_slot(key, value, {**taken, **new})
            if slot is None:
                continue
            if slot != key and attempt == 1:
                held = taken.get(key, new.get(key))
                log.warning(f"MLflow param {key!r} already holds {held!r}; logging {value!r} as {slot!r}")
            new[slot] = value
        try:
            for batch in _chunks(new.items(), _PARAMS_PER_BATCH):
                client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
            return
        except MlflowException:
            if attempt == 2:
                raise


def _dataset_entity(name: str, digest: str, source: str) -> Any:
    from mlflow.entities import Dataset

    shown = redact(source)
    if re.match(r"https?://", source):
        source_type, payload = "http", {"url": shown}
    elif Path(source).expanduser().exists():
        source_type, payload = "local", {"uri": str(Path(source).expanduser().resolve())}
    else:
        source_type, payload = "hugging_face", {"path": shown}
    return Dataset(
        name=name,
        digest=digest[:MAX_DATASET_DIGEST_LENGTH],
        source_type=source_type,
        source=json.dumps(payload),
    )


def _git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _package_version() -> str:
    try:
        return metadata.version("ft-assets")
    except metadata.PackageNotFoundError:
        return "unknown"


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    """Next to the database for sqlite stores (MLflow's default, ``./mlruns``, depends on the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :])
    folder = re.sub(r"[^A-Za-z0-9_.\-]", "_", experiment_name)
    if set(folder) <= {"."}:  # "." and ".." would share or leave the mlartifacts folder
        folder = folder.replace(".", "_")
    return (database.parent / "mlartifacts" / folder).as_uri()


def resolved_config_toml(settings: Settings) -> str:
    """The settings a run resolved to, as TOML that loads back: ``${VAR}`` values as their templates and
    no URL credentials (removed by structure, never by substring replacement, which corrupts paths)."""
    import tomli_w

    from ft_assets.config import settings_as_data

    def without_none(value: Any) -> Any:  # TOML has no null: an unset key is left out
        if isinstance(value, dict):
            return {key: without_none(item) for key, item in value.items() if item is not None}
        return value

    header = (
        f"# The resolved config of this run (defaults filled in; relative paths from {settings.base_dir})\n"
    )
    return header + tomli_w.dumps(without_none(settings_as_data(settings)))


def _experiment_id(client: MlflowClient, uri: str, name: str, source: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=_artifact_location(uri, name),
                tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND},
            )
        except MlflowException:
            # Another process created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} (from {source}) is deleted; restore it in the MLflow UI or choose "
            "another experiment_name"
        )
    return experiment.experiment_id


def _parent_candidates(
    client: MlflowClient,
    experiment_id: str,
    key: str,
    key_tag: str = TAG_DAGSTER_RUN_ID,
    role: str = "parent",
) -> list[Run]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{key_tag}` = '{key}' and tags.`{TAG_ROLE}` = '{role}'",
        max_results=100,
    )
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def find_or_create_parent(
    client: MlflowClient,
    experiment_id: str,
    orchestrator_run_id: str,
    run_name: str,
    tags: Mapping[str, str],
    *,
    key_tag: str = TAG_DAGSTER_RUN_ID,
    role: str = "parent",
) -> Run:
    """The one parent run of an orchestrator run, safe when several processes ask at once.

    Every process keeps the earliest ``(start_time, run_id)`` candidate; one that created a later
    duplicate deletes it. Creators (and finders of a parent younger than :data:`PARENT_SETTLE_S`) wait
    that long and look again, so a candidate committed concurrently is seen by everyone. ``key_tag`` and
    ``role`` find other shared runs the same way (a sweep's run, keyed by its sweep id).
    """
    candidates = _parent_candidates(client, experiment_id, orchestrator_run_id, key_tag, role)
    mine = None
    if not candidates:
        mine = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={**tags, key_tag: orchestrator_run_id, TAG_ROLE: role},
        )
    young = not candidates or time.time() * 1000 - candidates[0].info.start_time < PARENT_SETTLE_S * 1000
    if young:
        time.sleep(PARENT_SETTLE_S)
        candidates = _parent_candidates(client, experiment_id, orchestrator_run_id, key_tag, role)
    winner = candidates[0]
    if mine is not None and mine.info.run_id != winner.info.run_id:
        client.delete_run(mine.info.run_id)
    return winner


def mark_parent_failed(tracking_uri: str, parent_run_id: str, reason: str) -> bool:
    """Mark a parent run FAILED (for failures outside any phase); ``False`` if it already was."""
    client = _client(tracking_uri)
    if client.get_run(parent_run_id).info.status == "FAILED":
        return False
    _set_tags(
        client, parent_run_id, {TAG_FAILED_PHASE: "orchestrator", TAG_ERROR: reason[:ERROR_MESSAGE_LENGTH]}
    )
    client.set_terminated(parent_run_id, "FAILED")
    return True


# ---------------------------------------------------------------------------------------- phase runs


@dataclass(frozen=True)
class OrchestratorRun:
    """What the orchestrator knows about the run a phase belongs to."""

    run_id: str
    url: str | None = None
    child_tags: Mapping[str, str] = field(default_factory=dict)


class PhaseRun:
    """The MLflow child run of one phase. Every method is a no-op when tracking is disabled.

    With ``required = false`` a logging call that fails only logs a warning.
    """

    def __init__(
        self,
        phase: str,
        log: LogSink,
        *,
        client: MlflowClient | None = None,
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        required: bool = True,
    ) -> None:
        self.phase = phase
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        #: Set by :meth:`log_peft_model` when it registered a model version.
        self.registered_model_version: str | None = None
        self._client = client
        self._log = log
        self._required = required

    @property
    def enabled(self) -> bool:
        return self.run_id is not None and self._client is not None

    @property
    def url(self) -> str | None:
        """Link to the run in the tracking server's UI: the server itself for http(s) stores, else the
        UI that ``MLFLOW_UI_URL`` names (e.g. ``make mlflow-ui`` serving the same sqlite store)."""
        if not self.enabled:
            return None
        uri = str(self.tracking_uri)
        base = uri if uri.startswith(("http://", "https://")) else os.environ.get(MLFLOW_UI_URL_ENV, "")
        if not base:
            return None
        return f"{strip_credentials(base).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    @contextmanager
    def _guard(self, action: str) -> Iterator[MlflowClient]:
        assert self._client is not None
        try:
            yield self._client
        except Exception as error:
            if self._required:
                raise
            self._log.warning(f"MLflow: could not {action} (run {self.run_id}): {redact(str(error))}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params on the child run (idempotent; a changed value goes to ``<key>.2``)."""
        if self.enabled:
            with self._guard("log params") as client:
                _log_params(client, str(self.run_id), params, self._log)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Metrics on the child run, names sanitized; non-numeric values become tags."""
        if self.enabled:
            with self._guard("log metrics") as client:
                _log_metrics(client, str(self.run_id), metrics, step, self._log)

    def log_parent_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Metrics on the parent run (e.g. headline scores comparable across runs)."""
        if self.enabled:
            with self._guard("log parent metrics") as client:
                _log_metrics(client, str(self.parent_run_id), metrics, None, self._log)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags on the child run, keys sanitized, values redacted."""
        if self.enabled:
            with self._guard("set tags") as client:
                _set_tags(client, str(self.run_id), tags, self._log)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload one file; refused (``ValueError``) when it contains a secret's value."""
        if self.enabled:
            with self._guard(f"log artifact {path}") as client:
                refuse_secrets([Path(path)])
                client.log_artifact(str(self.run_id), str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a folder; refused (``ValueError``) when any file in it contains a secret's value."""
        if self.enabled:
            with self._guard(f"log artifacts {directory}") as client:
                refuse_secrets(p for p in Path(directory).rglob("*") if p.is_file())
                client.log_artifacts(str(self.run_id), str(directory), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """``obj`` as JSON (or YAML for ``.yaml``/``.yml``), each string in it redacted (never the serialized
        text: a secret such as ``true`` would break it), as artifact ``artifact_file``."""
        if self.enabled:
            with self._guard(f"log {artifact_file}") as client:
                clean = redact_value(json.loads(json.dumps(obj, default=str)))
                if artifact_file.endswith((".yaml", ".yml")):
                    import yaml

                    text = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
                else:
                    text = json.dumps(clean, indent=2, ensure_ascii=False)
                client.log_text(str(self.run_id), text, artifact_file)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """``columns`` (name -> values) as an MLflow table artifact (the UI's table and evaluation views
        read it), text values redacted."""
        if self.enabled:
            with self._guard(f"log table {artifact_file}") as client:
                table = {
                    name: [redact(value) if isinstance(value, str) else value for value in values]
                    for name, values in columns.items()
                }
                client.log_table(str(self.run_id), table, artifact_file)

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """An MLflow dataset input (``context``: training, validation, evaluation...) on child and parent,
        plus param ``dataset_<name>_hash`` holding the full digest."""
        if not self.enabled:
            return
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with self._guard(f"log dataset {name}") as client:
            dataset_input = DatasetInput(
                _dataset_entity(name, digest, source), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]
            )
            for run_id in (str(self.run_id), str(self.parent_run_id)):
                client.log_inputs(run_id, datasets=[dataset_input])
                _log_params(client, run_id, {f"dataset_{name}_hash": digest}, self._log)

    def log_peft_model(
        self, model_dir: Path, name: str, registered_model_name: str | None = None
    ) -> str | None:
        """Log a PEFT adapter folder (adapter + tokenizer, ``save_pretrained``) as an MLflow
        transformers model in this run; returns its model URI. A local base model is referenced by
        path (adapter-only artifact). With ``registered_model_name`` the version lands in
        :attr:`registered_model_version`."""
        if not self.enabled:
            return None
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError("log_peft_model must be called inside its phase_run block, in the same thread")
        with self._guard(f"log model {name}"):
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from ft_assets.phases.prompts import adapter_base_path

            # adapter_config.json names the base portably (hub id, embedded name); the local copy is beside it
            base = str(adapter_base_path(Path(model_dir)))
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(model_dir))
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name=name,
                task="text-generation",
                pip_requirements=_model_requirements(),
                registered_model_name=registered_model_name,
                base_model_path=base if base and Path(base).is_dir() else None,
            )
            self.registered_model_version = (
                str(info.registered_model_version) if info.registered_model_version is not None else None
            )
            return info.model_uri
        return None

    def set_registry_alias(self, registered_model_name: str, version: str | int, alias: str) -> None:
        """Point registry alias ``alias`` (e.g. ``champion``) at ``version`` of a registered model."""
        if self.enabled:
            with self._guard(f"set alias {alias}") as client:
                client.set_registered_model_alias(registered_model_name, alias, str(version))

    def metadata(self) -> dict[str, str]:
        """Run id, UI link and parent id, for the orchestrator's materialization metadata."""
        values = {
            "mlflow_run_id": self.run_id,
            "mlflow_run_url": self.url,
            "mlflow_parent_run_id": self.parent_run_id,
        }
        return {key: value for key, value in values.items() if value}

    def subprocess_env(self, *, with_credentials: bool = False) -> dict[str, str]:
        """Variables that let a subprocess log into this child run. http(s) credentials stay in the
        inherited ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``; a database URI's own credentials
        are kept only ``with_credentials`` (a local child's environment, never a pod spec or a tag)."""
        if not self.enabled:
            return {}
        uri = str(self.tracking_uri)
        return {
            "MLFLOW_TRACKING_URI": uri if with_credentials else strip_credentials(uri),
            "MLFLOW_RUN_ID": str(self.run_id),
            "MLFLOW_EXPERIMENT_ID": str(self.experiment_id),
        }


def _model_requirements() -> list[str]:
    pins = []
    for package in ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{package}=={metadata.version(package)}")
    return pins


class _Tracker:
    """Opens the parent/child runs for :func:`open_phase_run` and closes them."""

    def __init__(
        self,
        options: TrackingOptions,
        phase: str,
        settings: Settings,
        orchestrator: OrchestratorRun,
        log: LogSink,
    ) -> None:
        self.options = options
        self.phase = phase
        self.settings = settings
        self.orchestrator = orchestrator
        self.log = log
        self.uri = _adopt_credentials(options.tracking_uri)
        self.client = _client(self.uri)
        self.monitor: SystemMetricsMonitor | None = None
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; the user's value must come back
        # afterwards, or the next phase in this process would take ours for an override.
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")

    def restore_tracking_uri(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self._env_uri)

    def start(self, run_cls: type[PhaseRun]) -> PhaseRun:
        import mlflow
        from mlflow.tracking.context.registry import resolve_tags

        client, options = self.client, self.options
        if options.parent_run_id:
            parent = client.get_run(options.parent_run_id)
            if parent.info.lifecycle_stage == "deleted":
                raise ConfigError(
                    f"{options.source('parent_run_id')}: MLflow run {parent.info.run_id} is deleted"
                )
            experiment_id = parent.info.experiment_id
        else:
            experiment_id = _experiment_id(
                client, self.uri, options.experiment_name, options.source("experiment_name")
            )
            parent = find_or_create_parent(
                client,
                experiment_id,
                self.orchestrator.run_id,
                options.parent_run_name(self.orchestrator.run_id),
                self._shared_tags(),
            )
        parent_id = parent.info.run_id
        child_id = None
        try:
            _set_tags(client, parent_id, self._parent_tags())
            _log_params(client, parent_id, self.settings.flat_params(), self.log)
            client.log_text(parent_id, resolved_config_toml(self.settings), RESOLVED_CONFIG_ARTIFACT)
            child_tags = {
                **self._shared_tags(),
                **self.orchestrator.child_tags,
                TAG_DAGSTER_RUN_ID: self.orchestrator.run_id,
                TAG_ROLE: "child",
                TAG_PHASE: self.phase,
            }
            context_tags = {k: redact(str(v)) for k, v in resolve_tags().items()}
            child_id = client.create_run(
                experiment_id,
                run_name=f"{parent.info.run_name}_{self.phase}",
                tags={**context_tags, **_clean_tags(child_tags), "mlflow.parentRunId": parent_id},
            ).info.run_id
            if parent.data.tags.get(TAG_FAILED_PHASE, self.phase) == self.phase:
                client.update_run(parent_id, status="RUNNING")
            self._start_monitor(child_id)
            mlflow.set_tracking_uri(self.uri)
            # Active in this thread, so phase code (and transformers' MLflowCallback) logs into the child.
            mlflow.start_run(run_id=child_id, nested=True)
        except Exception as error:
            # Never leave a half-opened tree RUNNING.
            if self.monitor is not None:
                self.monitor.finish()
            with contextlib.suppress(Exception):
                message = redact(f"tracking setup failed: {type(error).__name__}: {error}")[
                    :ERROR_MESSAGE_LENGTH
                ]
                for run_id in filter(None, (child_id, parent_id)):
                    _set_tags(client, run_id, {TAG_ERROR: message})
                    client.set_terminated(run_id, "FAILED")
            self.restore_tracking_uri()
            raise
        run = run_cls(
            self.phase,
            self.log,
            client=client,
            tracking_uri=self.uri,
            experiment_id=experiment_id,
            run_id=child_id,
            parent_run_id=parent_id,
            required=options.required,
        )
        self.log.info(
            f"MLflow {self.phase} run {run.url or child_id} (parent {parent_id}) "
            f"in {strip_credentials(self.uri)}"
        )
        return run

    def _shared_tags(self) -> dict[str, str]:
        tags = {f"env.{var}": os.environ[var] for var in self.options.env_to_tag if var in os.environ}
        tags.update(self.options.extra_tags)
        return _clean_tags(tags)

    def _parent_tags(self) -> dict[str, str]:
        tags = {
            **self._shared_tags(),
            TAG_DAGSTER_RUN_ID: self.orchestrator.run_id,
            TAG_VERSION: _package_version(),
        }
        if self.orchestrator.url:
            tags[TAG_DAGSTER_RUN_URL] = self.orchestrator.url
        if commit := _git_commit(self.settings.base_dir):
            tags[TAG_GIT_COMMIT] = commit
        return tags

    def _start_monitor(self, run_id: str) -> None:
        if not self.options.log_system_metrics:
            return
        import importlib.util

        if importlib.util.find_spec("psutil") is None:
            self.log.warning("MLflow system metrics are off: the psutil package is not installed")
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(
            run_id, sampling_interval=self.options.system_metrics_sampling_interval, tracking_uri=self.uri
        )
        self.monitor.start()

    def finish(self, run: PhaseRun, seconds: float, error: BaseException | None) -> None:
        """Durations, statuses and (on failure) the redacted error; the child run is always ended."""
        import mlflow

        child_id, parent_id = str(run.run_id), str(run.parent_run_id)
        status = "FINISHED" if error is None else ("FAILED" if isinstance(error, Exception) else "KILLED")
        duration = {f"{self.phase}_duration_s": seconds}
        try:
            if self.monitor is not None:
                self.monitor.finish()
            _log_metrics(self.client, child_id, duration, None)
            if error is not None:
                message = redact(f"{type(error).__name__}: {error}")[:ERROR_MESSAGE_LENGTH]
                _set_tags(self.client, child_id, {TAG_ERROR: message})
                self.client.log_text(
                    child_id, redact("".join(traceback.format_exception(error))), TRACEBACK_ARTIFACT
                )
        finally:
            # End any run the phase left open on top of ours, then ours.
            while (active := mlflow.active_run()) is not None:
                mlflow.end_run(status)
                if active.info.run_id == child_id:
                    break
            else:
                self.client.set_terminated(child_id, status)
            self.restore_tracking_uri()
        parent = self.client.get_run(parent_id)
        total = max(0.0, time.time() - parent.info.start_time / 1000)
        _log_metrics(self.client, parent_id, {**duration, "total_duration_s": total}, None)
        if error is not None:
            _set_tags(
                self.client, parent_id, {TAG_FAILED_PHASE: self.phase, TAG_ERROR: f"{self.phase}: {message}"}
            )
            self.client.set_terminated(parent_id, status)
            return
        failed = parent.data.tags.get(TAG_FAILED_PHASE)
        if failed == self.phase:  # a retry of the phase that failed has now succeeded
            self.client.delete_tag(parent_id, TAG_FAILED_PHASE)
        self.client.set_terminated(parent_id, "FINISHED" if failed in (None, self.phase) else "FAILED")


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """``tags`` for ``create_run`` (no run id yet): two names on one key keep both, the second hashed."""
    mapping, _ = RunKeys().assign(str(k) for k in tags)
    return {mapping[str(k)]: redact(str(v))[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}


@contextmanager
def open_phase_run(
    options: TrackingOptions,
    phase: str,
    settings: Settings,
    orchestrator: OrchestratorRun,
    log: LogSink = _log,
    run_cls: type[PhaseRun] = PhaseRun,
) -> Iterator[PhaseRun]:
    """Track one phase as a child of the orchestrator run's parent run; see :mod:`ft_assets.tracking`.

    Reachability and names are checked before any work. An unreachable store raises
    :class:`TrackingUnavailableError`, or with ``required = false`` logs a warning and yields a disabled
    :class:`PhaseRun`. An exception from the block marks child and parent FAILED (tag
    ``error_message``, artifact ``error/traceback.txt``, both redacted) and propagates unchanged.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    if not options.parent_run_id:
        options.parent_run_name(orchestrator.run_id)  # a bad name is a config error, tracked or not
    tracker: _Tracker | None = None
    try:
        check_reachable(options.tracking_uri, options.source("tracking_uri"))
        tracker = _Tracker(options, phase, settings, orchestrator, log)
        run = tracker.start(run_cls)
    except ConfigError:
        raise
    except Exception as error:
        if options.required:
            raise
        log.warning(f"MLflow tracking is off for phase {phase!r} (required = false): {redact(str(error))}")
        tracker = None
        run = run_cls(phase, log)
    if tracker is None:
        yield run
        return
    started = time.monotonic()
    try:
        yield run
    except BaseException as error:
        try:
            tracker.finish(run, time.monotonic() - started, error)
        except Exception as tracking_error:  # never hide the phase's own exception
            log.warning(
                f"MLflow: could not record the failure of phase {phase!r}: {redact(str(tracking_error))}"
            )
        raise
    with run._guard(f"finish phase {phase}"):
        tracker.finish(run, time.monotonic() - started, None)
