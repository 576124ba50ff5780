"""What preflight found: the checks passed, the warnings, the datasets as loaded. Each phase's checks add to
one :class:`PreflightReport`; :mod:`ft_assets.preflight` runs them and prints its summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ft_assets.phases.datasets import LoadedDataset


@dataclass(frozen=True)
class DatasetCheck:
    """A dataset as preflight found it."""

    key: str
    source: str
    format: str
    rows: int
    usable: int
    version: str


@dataclass
class PreflightReport:
    """What preflight checked, and what it found worth a warning (nothing in it stops the run)."""

    phases: tuple[str, ...]
    passed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    datasets: list[DatasetCheck] = field(default_factory=list)
    base_model_dir: Path | None = None
    tracking_uri: str | None = None
    tracked: bool = True
    duration_s: float = 0.0

    def record_dataset(self, key: str, dataset: LoadedDataset) -> None:
        """A dataset preflight loaded (``key``: its ``[section] key``), with a warning for dropped rows."""
        self.datasets.append(
            DatasetCheck(
                key,
                dataset.source,
                dataset.format,
                dataset.num_rows,
                len(dataset.examples),
                dataset.content_hash,
            )
        )
        if dataset.bad_rows:
            self.warnings.append(
                f"{key}: {len(dataset.bad_rows)} unusable rows are dropped (on_bad_rows = 'drop')"
            )
        self.passed.append(f"{key}: {len(dataset.examples)} usable rows ({dataset.format})")

    def summary(self) -> str:
        """Human-readable lines: the checks passed, then the warnings."""
        lines = [f"preflight of {', '.join(self.phases)}: passed in {self.duration_s:.1f} s"]
        lines += [f"  ok       {item}" for item in self.passed]
        lines += [f"  warning  {item}" for item in self.warnings]
        return "\n".join(lines)
