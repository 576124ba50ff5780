"""Dataset-change reruns: a sensor that versions the dataset assets and rematerializes what depends on a
changed one.

``dataset_change_sensor`` is on by default (it runs wherever the Dagster daemon runs, e.g. ``make ui``).
Every ``FT_ASSETS_DATASET_SENSOR_INTERVAL_S`` seconds (default 60) it computes the version of each dataset
in :data:`ft_assets.dataset_specs.DATASETS` (sha256 of the local content, ``hf:<revision>`` for a hub
dataset) and compares it with the versions kept in its cursor:

* first evaluation: the versions become the baseline and are recorded as observations; nothing is launched;
* no change: nothing is launched or recorded;
* a change: observations of the changed datasets are recorded and one run of ``fine_tune_pipeline`` is
  requested for everything downstream of them (training or validation data: ``fine_tuned_model`` and what
  follows; test data: both inference assets and what follows), plus any upstream asset that has never been
  materialized, without which the run could not load its inputs.

The requested run reads exactly the observed content: each local dataset is copied once into
``<artifacts_root>/dataset_snapshots/<asset>/<sha256>/`` (content-addressed, never modified afterwards) and
the run config points the dataset keys at those copies. Dagster run tags and MLflow tags
``ft_assets/data_version/<asset>`` carry the versions; the phases log each dataset's hash as the MLflow
param ``dataset_<name>_hash``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

# Private names, because Dagster 1.13 exports no public equivalent: the asset graph's type (only a type
# hint here; AssetSelection.resolve takes it) and the tag that gives a sensor's AssetObservation a data
# version (observable source assets set it for themselves; a sensor emitting observations must set it).
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from ft_assets.assets.data import asset_key, dataset_version, local_path
from ft_assets.config import Settings, deep_merge
from ft_assets.dataset_specs import DATASETS, DatasetSpec
from ft_assets.errors import FtAssetsError
from ft_assets.jobs import PIPELINE_ASSETS, fine_tune_pipeline
from ft_assets.phases.dataset_files import data_version
from ft_assets.resources.settings import PipelineSettings
from ft_assets.secrets import redact

INTERVAL_ENV = "FT_ASSETS_DATASET_SENSOR_INTERVAL_S"
DEFAULT_INTERVAL_S = 60
#: Prefix of the Dagster run tags and MLflow tags that record the dataset versions a run used.
DATA_VERSION_TAG_PREFIX = "ft_assets/data_version/"
SNAPSHOT_DIR = "dataset_snapshots"


def sensor_interval_s() -> int:
    """Seconds between sensor evaluations: ``$FT_ASSETS_DATASET_SENSOR_INTERVAL_S`` or 60."""
    raw = os.environ.get(INTERVAL_ENV, str(DEFAULT_INTERVAL_S))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a whole number of seconds") from None
    if value < 1:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: must be at least 1 second")
    return value


def rerun_selection(
    changed: Iterable[dg.AssetKey],
    asset_graph: BaseAssetGraph,
    is_materialized: Callable[[dg.AssetKey], bool],
) -> set[dg.AssetKey]:
    """Assets downstream of the ``changed`` datasets, plus never-materialized upstream assets they need."""
    downstream = dg.AssetSelection.assets(*changed).downstream(include_self=False) & PIPELINE_ASSETS
    selected = set(downstream.resolve(asset_graph))
    pending = list(selected)
    while pending:
        for parent in asset_graph.get(pending.pop()).parent_keys:
            if (
                parent not in selected
                and asset_graph.get(parent).is_materializable
                and not is_materialized(parent)
            ):
                selected.add(parent)
                pending.append(parent)
    return selected


def snapshot_dataset(source: Path, root: Path) -> tuple[str, Path]:
    """A content-addressed, never-modified copy of ``source`` (a file or parquet folder) under ``root``.

    Returns the copy's version and path (``<root>/<sha256 hex>/<source name>``). The version is that of
    the copy itself, so it is exact even when ``source`` changes while being copied. An existing copy of
    the same content is reused.
    """
    expected = data_version(str(source), base_dir=source.parent)
    existing = root / expected.split(":", 1)[1] / source.name
    if existing.exists():
        return expected, existing
    staging = root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        copy = staging / source.name
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copy2(source, copy)
        version = data_version(str(copy), base_dir=staging)
        target = root / version.split(":", 1)[1]
        final = target / source.name
        try:
            staging.rename(target)
        except OSError:
            # The content is already stored, by another evaluation or under another name (two datasets,
            # or a renamed file, with identical content): add this name beside it.
            try:
                copy.rename(final)
            except OSError:
                if not final.exists():
                    raise
        return version, final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pin_datasets(settings: Settings) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Each dataset's exact version, and the config overrides that make a run read exactly that.

    Local datasets are snapshotted (see :func:`snapshot_dataset`); a hub dataset is already pinned by its
    configured ``dataset_revision``.
    """
    root = settings.artifacts_root / SNAPSHOT_DIR
    versions: dict[str, str] = {}
    overrides: dict[str, dict[str, str]] = {}
    for spec in DATASETS:
        local = local_path(spec, settings)
        if local is None:
            versions[spec.asset] = dataset_version(spec, settings)
            continue
        versions[spec.asset], copy = snapshot_dataset(local, root / spec.asset)
        overrides.setdefault(spec.section, {})[spec.key] = str(copy)
    return versions, overrides


def rerun_request(
    settings: PipelineSettings,
    versions: Mapping[str, str],
    overrides: Mapping[str, Any],
    selection: set[dg.AssetKey],
) -> dg.RunRequest:
    """The run of ``fine_tune_pipeline`` for ``selection``, reading the pinned datasets and tagged with
    their versions (Dagster run tags and MLflow tags alike)."""
    tags = {f"{DATA_VERSION_TAG_PREFIX}{asset}": version for asset, version in versions.items()}
    settings_config = {"config_path": settings.config_path, **deep_merge(settings.overrides(), overrides)}
    return dg.RunRequest(
        asset_selection=sorted(selection, key=lambda key: key.to_user_string()),
        run_config={
            "resources": {
                "settings": {"config": settings_config},
                "mlflow": {"config": {"extra_tags": tags}},
            }
        },
        tags=tags,
    )


def recorded_versions(instance: dg.DagsterInstance) -> dict[str, str]:
    """The newest data version recorded for each dataset asset, by this sensor or by a run's observation."""
    versions = {}
    for spec in DATASETS:
        records = instance.fetch_observations(asset_key(spec), limit=1).records
        observation = records[0].asset_observation if records else None
        if observation is not None and DATA_VERSION_TAG in observation.tags:
            versions[spec.asset] = observation.tags[DATA_VERSION_TAG]
    return versions


def _observation(spec: DatasetSpec, version: str, settings: Settings) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=asset_key(spec),
        tags={DATA_VERSION_TAG: version},
        metadata={"source": redact(spec.source(settings) or "not configured"), "data_version": version},
    )


@dg.sensor(
    name="dataset_change_sensor",
    job=fine_tune_pipeline,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Versions the datasets (content hash / hub revision); when one changes, rematerializes the assets "
        "that depend on it, pinned to the observed version. An unchanged dataset launches nothing."
    ),
)
def dataset_change_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SensorResult:
    """See the module docstring."""
    resolved = settings.load()
    current = {spec.asset: dataset_version(spec, resolved) for spec in DATASETS}
    previous: dict[str, str] | None = json.loads(context.cursor) if context.cursor else None
    if previous is None:
        return dg.SensorResult(
            cursor=json.dumps(current),
            asset_events=[_observation(spec, current[spec.asset], resolved) for spec in DATASETS],
            skip_reason="recorded the dataset versions as the baseline",
        )
    # a run that observed a dataset itself (its job observes the datasets first) recorded a newer baseline
    previous = {**previous, **recorded_versions(context.instance)}
    changed = [spec for spec in DATASETS if previous.get(spec.asset) != current[spec.asset]]
    if not changed:
        return dg.SensorResult(skip_reason="no dataset changed")
    try:
        versions, overrides = pin_datasets(resolved)
    except (OSError, FtAssetsError) as error:
        # Report and move on: retrying every tick would fail the same way until someone fixes it.
        problem = (
            f"could not snapshot the changed datasets {[spec.asset for spec in changed]}: {error}; "
            "no run was requested for this change: fix the cause, then launch the run by hand "
            "(the next change of a dataset is picked up as usual)"
        )
        context.log.error(problem)
        return dg.SensorResult(cursor=json.dumps(current), skip_reason=problem)
    for spec in changed:
        context.log.info(f"{spec.asset} changed: {previous.get(spec.asset)} -> {versions[spec.asset]}")
    asset_graph = context.repository_def.asset_graph
    selection = rerun_selection(
        (asset_key(spec) for spec in changed),
        asset_graph,
        lambda key: context.instance.get_latest_materialization_event(key) is not None,
    )
    return dg.SensorResult(
        run_requests=[rerun_request(settings, versions, overrides, selection)],
        cursor=json.dumps(versions),
        asset_events=[_observation(spec, versions[spec.asset], resolved) for spec in changed],
    )
