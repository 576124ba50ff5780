"""The MLflow store calls of the run tree: the client, batched tags/metrics/params under stable keys,
experiments, finding or creating the parent run, and the resolved-config artifact."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_assets.config import ConfigError, Settings
from ft_assets.secrets import redact, refuse_secrets
from ft_assets.tracking_keys import (
    MAX_KEY_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    TAG_KEY_COLLISIONS,
    run_keys,
    sanitize_metrics,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

from ft_assets.tracking_options import (
    ERROR_MESSAGE_LENGTH,
    EXPERIMENT_KIND_TAG,
    MAX_DATASET_DIGEST_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    PARENT_SETTLE_S,
    TAG_DAGSTER_RUN_ID,
    TAG_ERROR,
    TAG_FAILED_PHASE,
    TAG_ROLE,
    TRAINING_EXPERIMENT_KIND,
    LogSink,
    adopt_credentials,
)

_log = logging.getLogger(__name__)


def client_for(uri: str) -> MlflowClient:
    """The one way this project opens an MLflow client: credentials in an http(s) ``uri`` are moved to
    MLflow's variables first (:func:`adopt_credentials`), so no client holds, prints or logs them."""
    # MLflow otherwise reports usage to an outside host from every process that logs.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    uri = adopt_credentials(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def store_artifacts(
    client: MlflowClient, run_id: str, files: Iterable[Path], artifact_path: str | None = None
) -> None:
    """Upload ``files`` to the run; refused (:class:`~ft_assets.secrets.SecretFoundError`) when any holds a
    secret's value, before anything is uploaded."""
    paths = list(files)
    refuse_secrets(paths)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


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


def store_tags(
    client: MlflowClient, run_id: str, tags: Mapping[str, Any], log: LogSink | None = None
) -> None:
    from mlflow.entities import RunTag

    mapping, added = _run_key_map(run_id, tags, log)
    clean = {mapping[str(k)]: redact(str(v))[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}
    if added:
        clean.update(_collision_tag(run_id))
    for batch in _chunks(clean.items(), PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in batch])


def store_metrics(
    client: MlflowClient, run_id: str, values: Mapping[str, Any], step: int | None, log: LogSink | None = None
) -> None:
    from mlflow.entities import Metric

    keys = run_keys(run_id)
    before = len(keys.collisions)
    metrics, texts = sanitize_metrics(values, keys)
    now = int(time.time() * 1000)
    for batch in _chunks(metrics.items(), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=[Metric(k, v, now, step or 0) for k, v in batch])
    if len(keys.collisions) > before:
        _warn_collisions(run_id, dict(list(keys.collisions.items())[before:]), log)
        texts = {**texts, **_collision_tag(run_id)}
    if texts:
        store_tags(client, run_id, texts, log)


def _free_slot(key: str, value: str, taken: Mapping[str, str]) -> str | None:
    """Where ``value`` goes for param ``key``: ``None`` when it is already logged there."""
    slot, n = key, 1
    while slot in taken:
        if taken[slot] == value:
            return None
        n += 1
        slot = f"{key[: MAX_KEY_LENGTH - 8]}.{n}"
    return slot


def store_params(client: MlflowClient, run_id: str, params: Mapping[str, Any], log: LogSink) -> None:
    """Idempotent ``log_params`` (see the module notes); retried once when another process wins a race."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    for attempt in (1, 2):
        taken = dict(client.get_run(run_id).data.params)
        new: dict[str, str] = {}
        mapping, added = _run_key_map(run_id, params, log if attempt == 1 else None)
        if added:
            store_tags(client, run_id, _collision_tag(run_id))
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
            for batch in _chunks(new.items(), PARAMS_PER_BATCH):
                client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
            return
        except MlflowException:
            if attempt == 2:
                raise


def dataset_entity(name: str, digest: str, source: str) -> Any:
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


def git_commit(folder: Path) -> str | None:
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


def package_version() -> str:
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


def ensure_experiment(client: MlflowClient, uri: str, name: str, source: str) -> str:
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
    client = client_for(tracking_uri)
    if client.get_run(parent_run_id).info.status == "FAILED":
        return False
    store_tags(
        client, parent_run_id, {TAG_FAILED_PHASE: "orchestrator", TAG_ERROR: reason[:ERROR_MESSAGE_LENGTH]}
    )
    client.set_terminated(parent_run_id, "FAILED")
    return True
