"""Dataset assets: observable sources whose data version is a content hash (local) or hub revision.

:data:`DATASETS` says where each dataset asset's source sits in the config; the observations here and the
dataset sensor in :mod:`ft_assets.automation` both version datasets through it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg

from ft_assets.config import FineTunerConfig, InferencerConfig, Settings
from ft_assets.phases.dataset_files import data_version
from ft_assets.resources.settings import PipelineSettings

NO_DATASET_VERSION = "none"


@dataclass(frozen=True)
class DatasetSlot:
    """A dataset asset and the config key (``section.key``) that names its file or hub id."""

    asset: str
    section: Literal["fine_tuner", "inferencer"]
    key: Literal["training_data_id", "validation_data_id", "testing_data_id"]

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey(self.asset)

    def columns(self, settings: Settings) -> FineTunerConfig | InferencerConfig:
        """The config section holding this dataset's source, revision and column mapping."""
        return getattr(settings, self.section)

    def source(self, settings: Settings) -> str | None:
        """The configured path or hub id; ``None`` when the dataset is not configured."""
        return getattr(self.columns(settings), self.key) or None

    def local_path(self, settings: Settings) -> Path | None:
        """The dataset's file or parquet folder when it is local (``None`` for a hub dataset or none)."""
        source = self.source(settings)
        path = settings.resolve_path(source) if source else None
        return path if path is not None and path.exists() else None

    def version(self, settings: Settings) -> str:
        """``sha256:<hex>`` of the local content, ``hf:<revision>`` for a hub dataset, or ``none``."""
        source = self.source(settings)
        if not source:
            return NO_DATASET_VERSION
        return data_version(
            source, base_dir=settings.base_dir, revision=self.columns(settings).dataset_revision
        )


TRAINING = DatasetSlot("training_dataset", "fine_tuner", "training_data_id")
VALIDATION = DatasetSlot("validation_dataset", "fine_tuner", "validation_data_id")
EVALUATION = DatasetSlot("evaluation_dataset", "inferencer", "testing_data_id")
DATASETS = (TRAINING, VALIDATION, EVALUATION)


def _observe(settings: PipelineSettings, slot: DatasetSlot) -> dg.ObserveResult:
    resolved = settings.load()
    source = slot.source(resolved)
    version = slot.version(resolved)
    metadata: dict[str, str] = {"source": source or "not configured", "data_version": version}
    if source:
        metadata["format"] = slot.columns(resolved).dataset_format
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


@dg.observable_source_asset(group_name="data", description="Training split (fine_tuner.training_data_id).")
def training_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The training data; its version is the file's content hash (or the hub revision)."""
    return _observe(settings, TRAINING)


@dg.observable_source_asset(
    group_name="data", description="Validation split (fine_tuner.validation_data_id)."
)
def validation_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The explicit validation data, or ``none`` when a ``validation_split`` of the training data is used."""
    return _observe(settings, VALIDATION)


@dg.observable_source_asset(
    group_name="data", description="Held-out test split (inferencer.testing_data_id)."
)
def evaluation_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The test data that inference runs on and evaluation scores against."""
    return _observe(settings, EVALUATION)
