"""Dataset assets: observable sources whose data version is a content hash (local) or hub revision."""

from pathlib import Path

import dagster as dg

from ft_assets.config import DatasetColumns
from ft_assets.phases.datasets import data_version
from ft_assets.resources.settings import PipelineSettings

NO_DATASET_VERSION = "none"


def _observe(
    source: str | None, columns: DatasetColumns, base_dir: Path, revision: str | None
) -> dg.ObserveResult:
    if not source:
        return dg.ObserveResult(
            data_version=dg.DataVersion(NO_DATASET_VERSION), metadata={"source": "not configured"}
        )
    version = data_version(source, base_dir=base_dir, revision=revision)
    return dg.ObserveResult(
        data_version=dg.DataVersion(version),
        metadata={"source": source, "data_version": version, "format": columns.dataset_format},
    )


@dg.observable_source_asset(group_name="data", description="Training split (fine_tuner.training_data_id).")
def training_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The training data; its version is the file's content hash (or the hub revision)."""
    resolved = settings.load()
    config = resolved.fine_tuner
    return _observe(config.training_data_id, config, resolved.base_dir, config.dataset_revision)


@dg.observable_source_asset(
    group_name="data", description="Validation split (fine_tuner.validation_data_id)."
)
def validation_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The explicit validation data, or ``none`` when a ``validation_split`` of the training data is used."""
    resolved = settings.load()
    config = resolved.fine_tuner
    return _observe(config.validation_data_id, config, resolved.base_dir, config.dataset_revision)


@dg.observable_source_asset(
    group_name="data", description="Held-out test split (inferencer.testing_data_id)."
)
def evaluation_dataset(settings: PipelineSettings) -> dg.ObserveResult:
    """The test data that inference runs on and evaluation scores against."""
    resolved = settings.load()
    config = resolved.inferencer
    return _observe(config.testing_data_id, config, resolved.base_dir, config.dataset_revision)
