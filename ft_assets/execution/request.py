"""What crosses between the orchestrator and a phase: the :class:`PhaseRequest` a phase is launched with
(as JSON across processes, the settings object itself in process), the :class:`PhaseOutcome` it returns,
the Pipes names both travel under, and the launcher's process layout (rank, world size).

Imports neither ``dagster`` nor ``dagster_pipes``: the phase bodies
(:mod:`~ft_assets.execution.finetune_phase`, :mod:`~ft_assets.execution.inference_phase`,
:mod:`~ft_assets.execution.evaluation_phase`) and the entry point (:mod:`~ft_assets.execution.phase`) share it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.asset_values import AssetValue, EvaluationReport, FineTunedModel, InferenceResults
from ft_assets.config import Settings, build_settings, settings_as_data
from ft_assets.phases.models import ResolvedModel

#: The Pipes extra that carries the :class:`PhaseRequest`.
REQUEST_EXTRA = "ft_assets_phase_request"
#: The key of the custom Pipes message that carries the asset's value.
VALUE_MESSAGE_KEY = "ft_assets_value"
#: Each phase's asset value type (what the value message is read back as).
VALUE_TYPES: dict[str, type[AssetValue]] = {
    "finetuning": FineTunedModel,
    "inference": InferenceResults,
    "baseline_inference": InferenceResults,
    "evaluation": EvaluationReport,
}
REMOTE_PHASES = tuple(VALUE_TYPES)


@dataclass(frozen=True)
class PhaseRequest:
    """Everything a phase needs, as JSON: resolved settings (no secrets), model locations or the inference
    results to score, output path."""

    phase: str
    settings: dict[str, Any]
    base_dir: str
    output: str
    base_model: dict[str, str] | None = None
    model_dir: str | None = None
    model_hash: str | None = None
    tracking_required: bool = True
    #: Evaluation: the scored inference's value and the baseline's (:meth:`InferenceResults.to_json`).
    scored_inference: dict[str, Any] | None = None
    baseline_inference: dict[str, Any] | None = None
    dagster_run_id: str | None = None
    #: The settings object itself, for a phase run in this process (never serialized).
    local_settings: Settings | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.phase not in REMOTE_PHASES:
            raise ValueError(f"phase {self.phase!r} cannot be launched; expected one of {REMOTE_PHASES}")

    @classmethod
    def _of(
        cls, phase: str, settings: Settings, output: Path, *, tracking_required: bool, **inputs: Any
    ) -> PhaseRequest:
        return cls(
            phase=phase,
            settings=settings_as_data(settings),
            base_dir=str(settings.base_dir),
            output=str(output),
            tracking_required=tracking_required,
            local_settings=settings,
            **inputs,
        )

    @classmethod
    def finetuning(
        cls, settings: Settings, base_model: ResolvedModel, output_dir: Path, *, tracking_required: bool
    ) -> PhaseRequest:
        """Train ``base_model`` and publish the adapter (or full model) at ``output_dir``."""
        return cls._of(
            "finetuning",
            settings,
            output_dir,
            tracking_required=tracking_required,
            base_model=base_model.to_json(),
        )

    @classmethod
    def inference(
        cls,
        phase: str,
        settings: Settings,
        *,
        model_dir: Path,
        model_hash: str,
        output_path: Path,
        tracking_required: bool,
    ) -> PhaseRequest:
        """Generate answers of ``model_dir`` on the test split into the JSONL ``output_path``."""
        return cls._of(
            phase,
            settings,
            output_path,
            tracking_required=tracking_required,
            model_dir=str(model_dir),
            model_hash=model_hash,
        )

    @classmethod
    def evaluation(
        cls,
        settings: Settings,
        inference: InferenceResults,
        base_inference: InferenceResults | None,
        output_dir: Path,
        *,
        dagster_run_id: str,
        tracking_required: bool,
    ) -> PhaseRequest:
        """Score ``inference`` (against ``base_inference`` when a baseline ran) into the report folder
        ``output_dir``; ``dagster_run_id`` goes into the report's provenance."""
        return cls._of(
            "evaluation",
            settings,
            output_dir,
            tracking_required=tracking_required,
            scored_inference=inference.to_json(),
            baseline_inference=base_inference.to_json() if base_inference else None,
            dagster_run_id=dagster_run_id,
        )

    @property
    def value_type(self) -> type[AssetValue]:
        return VALUE_TYPES[self.phase]

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "local_settings"}

    @classmethod
    def from_json(cls, data: Any) -> PhaseRequest:
        if not isinstance(data, dict):
            raise ValueError(f"Pipes extra {REQUEST_EXTRA!r} is missing or not an object: {data!r}")
        return cls(**data)

    def load_settings(self) -> Settings:
        if self.local_settings is not None:
            return self.local_settings
        return build_settings(
            self.settings, source=f"phase request ({self.phase})", base_dir=Path(self.base_dir)
        )

    def resolved_base_model(self) -> ResolvedModel:
        if self.base_model is None:
            raise ValueError(f"phase request ({self.phase}) names no base model")
        values = self.base_model
        return ResolvedModel(
            values["model_id"], Path(values["path"]), values["content_hash"], values["source"]
        )

    def inference_results(self) -> tuple[InferenceResults, InferenceResults | None]:
        """The inference an evaluation scores, and the baseline's (None when no baseline ran)."""
        if self.scored_inference is None:
            raise ValueError(f"phase request ({self.phase}) names no inference results to score")
        baseline = self.baseline_inference
        return (
            InferenceResults.from_json(self.scored_inference),
            InferenceResults.from_json(baseline) if baseline else None,
        )


@dataclass
class PhaseOutcome:
    """What a phase produced: the asset's value, its materialization metadata in the Pipes wire format
    (``{"raw_value": ..., "type": ...}``), and its data version."""

    value: AssetValue
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_version: str | None = None


def pipes_meta(value: Any, kind: str) -> dict[str, Any]:
    """One metadata entry in the Pipes wire format (``kind``: ``float``, ``path``, ``md``, ``json``...)."""
    return {"raw_value": value, "type": kind}


def process_rank() -> int:
    """This process's global rank under torchrun / accelerate launch (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 unless launched by torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
