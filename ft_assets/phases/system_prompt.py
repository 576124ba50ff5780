"""The system prompt a model is trained with: stored with the model, used by inference when none is configured.

Training writes it into the model's ``ft_assets_model.json`` (key ``system_prompt``). Inference of that
model reads its test set with the configured system prompt (``[inferencer]``'s own keys, else
``[fine_tuner]``'s, see :mod:`ft_assets.dataset_columns`) and, when neither configures one, with the one
the model was trained with. A configured prompt other than the trained one is a warning, in preflight and
in the inference run's log: the model answers prompts it never saw in training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ft_assets.config import InferencerConfig, Settings
from ft_assets.config_sections import DatasetColumns
from ft_assets.phases.models import MODEL_INFO_FILE

#: The key of ``ft_assets_model.json`` that holds the trained system prompt.
SYSTEM_PROMPT_KEY = "system_prompt"


@dataclass(frozen=True)
class SystemPrompt:
    """Where a dataset's system turn comes from: a fixed text (it wins) or a column of each row."""

    override_text: str | None = None
    column: str | None = None

    @classmethod
    def of(cls, columns: DatasetColumns) -> SystemPrompt:
        return cls(columns.system_prompt_override_text or None, columns.system_prompt_column or None)

    @property
    def configured(self) -> bool:
        return bool(self.override_text or self.column)

    def describe(self) -> str:
        if self.override_text:
            return f"system_prompt_override_text = {self.override_text!r}"
        if self.column:
            return f"system_prompt_column = {self.column!r}"
        return "no system prompt (the chat template's default)"

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)


def trained_system_prompt(model_dir: Path) -> SystemPrompt | None:
    """The system prompt stored with a trained model (its folder, or the adapter folder holding a merged
    model); None for a model this project did not train, or one trained before it was stored."""
    for folder in (model_dir, model_dir.parent):
        info_file = folder / MODEL_INFO_FILE
        if info_file.is_file():
            stored: Any = json.loads(info_file.read_text(encoding="utf-8")).get(SYSTEM_PROMPT_KEY)
            return SystemPrompt(**stored) if isinstance(stored, dict) else None
    return None


def mismatch(trained: SystemPrompt, configured: SystemPrompt, where: str) -> str | None:
    """A warning when ``configured`` (the inference set's) differs from ``trained``; None when they agree."""
    if not configured.configured or configured == trained:
        return None
    return (
        f"{where}: inference uses {configured.describe()}, but the model was trained with "
        f"{trained.describe()}: it answers prompts it never saw in training"
    )


def inference_columns(config: InferencerConfig, model_dir: Path) -> tuple[InferencerConfig, str | None]:
    """The ``[inferencer]`` config to read the test set with for ``model_dir``, and a mismatch warning.

    With no system prompt configured, the model's trained one (when it has one) is used.
    """
    trained = trained_system_prompt(model_dir)
    if trained is None:
        return config, None
    configured = SystemPrompt.of(config)
    if not configured.configured:
        updated = {
            "system_prompt_override_text": trained.override_text,
            "system_prompt_column": trained.column,
        }
        return config.model_copy(update=updated), None
    return config, mismatch(trained, configured, f"model {model_dir}")


def preflight_warnings(settings: Settings, *, trains: bool, adapter: Path | None = None) -> list[str]:
    """Mismatches between the system prompt inference uses and the one the model is trained with:
    ``[fine_tuner]``'s for a model the run ``trains``, the stored one of ``adapter`` when given (a model
    trained by an earlier run is checked when its inference starts: see :func:`inference_columns`)."""
    where = "[inferencer] system prompt"
    if adapter is not None and (stored := trained_system_prompt(adapter)) is not None:
        trained, where = stored, f"{where} for adapter {adapter}"
    elif trains:
        trained = SystemPrompt.of(settings.fine_tuner)
    else:
        return []
    warning = mismatch(trained, SystemPrompt.of(settings.inferencer), where)
    return [warning] if warning else []
