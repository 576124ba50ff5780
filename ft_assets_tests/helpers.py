"""Helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pipeline_resources(config_path: Path, **overrides: Any) -> dict[str, Any]:
    """The code location's own resources, with the settings pointed at ``config_path``."""
    from ft_assets.definitions import defs
    from ft_assets.resources.settings import PipelineSettings

    return {**defs.resources, "settings": PipelineSettings(config_path=str(config_path)), **overrides}


def scores_without_errors(**per_row: list[float]) -> Any:
    """:class:`~ft_assets.phases.metrics.MetricScores` with these per-row values and no error text."""
    from ft_assets.phases.metrics import MetricScores

    return MetricScores(per_row=per_row, errors={name: [None] * len(v) for name, v in per_row.items()})
