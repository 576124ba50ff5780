"""The one table of the pipeline's datasets: where each is configured and how it is read.

Every site that names a dataset reads it here: the loader (:func:`ft_assets.phases.datasets.load_configured`),
preflight, the Dagster source assets and the dataset sensor, :func:`ft_assets.config.relocated_config` and
the MLflow dataset inputs. A dataset has one name everywhere: its asset is ``<name>_dataset`` and its MLflow
dataset input is named ``<name>`` with context ``<name>`` (param ``dataset_<name>_hash``).

Columns and system prompt: each dataset is read with the column keys of its ``section`` (the validation set
with ``[fine_tuner]``'s, like the training set). A dataset with ``columns_inherit_from`` takes that section's
value for each key of :data:`~ft_assets.dataset_columns.INHERITED_COLUMN_KEYS` its own section does not set
(see :mod:`ft_assets.dataset_columns`); the test set, read for a model this project trained and configured
with no system prompt, uses the one the model was trained with (:mod:`ft_assets.phases.system_prompt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ft_assets.config_sections import FineTunerConfig, InferencerConfig

Section = Literal["fine_tuner", "inferencer"]


class DatasetSections(Protocol):
    """What the table reads from :class:`ft_assets.config.Settings` (which imports this module)."""

    fine_tuner: FineTunerConfig
    inferencer: InferencerConfig


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the pipeline and the config keys that describe it."""

    #: ``training``, ``validation`` or ``testing``: the MLflow dataset name and context, the asset's prefix.
    name: str
    section: Section
    #: The key naming its file, parquet folder or hub id.
    key: str
    #: The key naming the split of a hub dataset.
    split_key: str
    #: Whether every row needs a ground truth (a final assistant answer).
    labelled: bool
    #: The section whose column keys fill the ones ``section`` does not set (None: only its own).
    columns_inherit_from: Section | None = None

    @property
    def asset(self) -> str:
        """The Dagster source asset's name."""
        return f"{self.name}_dataset"

    @property
    def config_key(self) -> str:
        """``[section] key``, as error messages and preflight name it."""
        return f"[{self.section}] {self.key}"

    def columns(self, settings: DatasetSections) -> FineTunerConfig | InferencerConfig:
        """The config section holding this dataset's source, split, revision and column mapping."""
        return getattr(settings, self.section)

    def source(self, settings: DatasetSections) -> str | None:
        """The configured path or hub id; ``None`` when the dataset is not configured."""
        return getattr(self.columns(settings), self.key) or None

    def split(self, settings: DatasetSections) -> str:
        return getattr(self.columns(settings), self.split_key)

    def describe_columns(self) -> str:
        """How this dataset's column mapping and system prompt are resolved, in words."""
        own = f"columns and system prompt from [{self.section}]"
        if self.columns_inherit_from is None:
            return own
        return (
            f"{own}, each key it leaves unset from [{self.columns_inherit_from}]; with no system prompt "
            "configured, a model this project trained uses the one it was trained with"
        )


TRAINING = DatasetSpec("training", "fine_tuner", "training_data_id", "dataset_split", labelled=True)
VALIDATION = DatasetSpec(
    "validation", "fine_tuner", "validation_data_id", "validation_dataset_split", labelled=True
)
#: Unlabelled rows are fine for inference; preflight refuses them when reference metrics score them.
TESTING = DatasetSpec(
    "testing", "inferencer", "testing_data_id", "dataset_split", labelled=False,
    columns_inherit_from="fine_tuner",
)  # fmt: skip
DATASETS = (TRAINING, VALIDATION, TESTING)
#: ``(section, section it inherits unset column keys from)`` of each dataset that inherits.
COLUMN_INHERITANCE: tuple[tuple[Section, Section], ...] = tuple(
    (spec.section, spec.columns_inherit_from) for spec in DATASETS if spec.columns_inherit_from is not None
)
