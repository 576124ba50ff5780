"""Dataset assets: observable sources whose data version is a content hash (local) or hub revision.

One source asset per entry of the dataset table :data:`ft_assets.dataset_specs.DATASETS` (asset
``<name>_dataset``); the observations here and the dataset sensor in :mod:`ft_assets.automation` both
version datasets through it.
"""

from pathlib import Path

import dagster as dg

from ft_assets.config import Settings
from ft_assets.dataset_specs import TESTING, TRAINING, VALIDATION, DatasetSpec
from ft_assets.phases.dataset_files import data_version
from ft_assets.resources.settings import PipelineSettings

NO_DATASET_VERSION = "none"


def asset_key(spec: DatasetSpec) -> dg.AssetKey:
    return dg.AssetKey(spec.asset)


def local_path(spec: DatasetSpec, settings: Settings) -> Path | None:
    """The dataset's file or parquet folder when it is local (``None`` for a hub dataset or none)."""
    source = spec.source(settings)
    path = settings.resolve_path(source) if source else None
    return path if path is not None and path.exists() else None


def dataset_version(spec: DatasetSpec, settings: Settings) -> str:
    """``sha256:<hex>`` of the local content, ``hf:<revision>`` for a hub dataset, or ``none``."""
    source = spec.source(settings)
    if not source:
        return NO_DATASET_VERSION
    return data_version(source, base_dir=settings.base_dir, revision=spec.columns(settings).dataset_revision)


def _observe(settings: PipelineSettings, spec: DatasetSpec) -> dg.ObserveResult:
    resolved = settings.load()
    source = spec.source(resolved)
    version = dataset_version(spec, resolved)
    metadata: dict[str, str] = {"source": source or "not configured", "data_version": version}
    if source:
        metadata["format"] = spec.columns(resolved).dataset_format
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


def _description(spec: DatasetSpec, what: str) -> str:
    return f"{what} ({spec.section}.{spec.key})."


@dg.observable_source_asset(group_name="data", description=_description(TRAINING, "Training split"))
def training_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The training data; its version is the file's content hash (or the hub revision)."""
    return _observe(settings, TRAINING)


@dg.observable_source_asset(group_name="data", description=_description(VALIDATION, "Validation split"))
def validation_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The explicit validation data, or ``none`` when a ``validation_split`` of the training data is used."""
    return _observe(settings, VALIDATION)


@dg.observable_source_asset(group_name="data", description=_description(TESTING, "Held-out test split"))
def testing_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The test data that inference runs on and evaluation scores against."""
    return _observe(settings, TESTING)
