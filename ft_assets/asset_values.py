"""The values the phase assets hand each other: the fine-tuned model, the inference results, the evaluation
report and the promotion.

Written by the phase bodies (:mod:`ft_assets.execution`), read by attribute by the assets, asset checks,
release gates, the sweep and :class:`~ft_assets.pipeline.FineTunePipeline`. Dagster's IO manager pickles
them; an external phase process sends its value as JSON over Dagster Pipes (:meth:`AssetValue.to_json`,
:meth:`AssetValue.from_json`); the sweep's candidate record stores them as JSON too. Framework-free: no
Dagster import here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from ft_assets.errors import FtAssetsError


class AssetValueError(FtAssetsError, ValueError):
    """JSON that is not the asset value it claims to be; the message names the value and its keys."""


@dataclass(frozen=True)
class AssetValue:
    """Base of the asset values: a frozen dataclass of JSON-ready fields (str, numbers, lists, dicts)."""

    #: Fields holding another :class:`AssetValue`, by name (rebuilt by :meth:`from_json`).
    _NESTED: ClassVar[dict[str, type[AssetValue]]] = {}

    def to_json(self) -> dict[str, Any]:
        """The value as plain JSON data (floats stay floats: NaN and infinity included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The value :meth:`to_json` gave; :class:`AssetValueError` naming the keys when ``data`` is not one."""
        if not isinstance(data, dict):
            raise AssetValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = {
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing, unknown = sorted(required - set(data)), sorted(set(data) - set(fields))
        if missing or unknown:
            raise AssetValueError(
                f"{cls.__name__}: "
                + "; ".join(
                    part
                    for part in (
                        f"missing key(s) {', '.join(missing)}" if missing else "",
                        f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                    )
                    if part
                )
            )
        values = {
            name: cls._NESTED[name].from_json(value) if name in cls._NESTED and value is not None else value
            for name, value in data.items()
        }
        return cls(**values)


@dataclass(frozen=True)
class FineTunedModel(AssetValue):
    """The ``fine_tuned_model`` asset: where the adapter (and the merged model) is, what it was trained
    from, its training metrics and its MLflow model."""

    path: str
    merged_path: str | None
    base_model_id: str
    base_model_hash: str
    #: Content fingerprint of base model + data + training config: the model's identity in lineage checks.
    fingerprint: str
    #: Content hash of each training split (``train``, ``validation``: None without one).
    data_versions: dict[str, str | None]
    metrics: dict[str, float]
    mlflow_model_uri: str | None
    base_quantization: str | None
    #: Which base the adapter is meant to be evaluated on (e.g. the unquantized base of a QLoRA run).
    evaluation_base: str
    #: The system prompt the model was trained with (:meth:`ft_assets.phases.system_prompt.SystemPrompt.to_json`).
    system_prompt: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        """The directory inference loads: the merged model when one was written, else the adapter."""
        return Path(self.merged_path or self.path)


@dataclass(frozen=True)
class InferenceResults(AssetValue):
    """The ``inference_results`` / ``base_inference_results`` assets: the answers' JSONL and its counts."""

    path: str
    rows: int
    #: Test examples, i.e. the rows a complete inference writes.
    expected_rows: int
    empty_responses: int
    #: The model that answered (the fine-tuned model's fingerprint or the base model's content hash).
    model_hash: str
    dataset_hash: str
    metrics: dict[str, float]

    def counts(self) -> InferenceCounts:
        """The counts the completeness gate looks at."""
        return InferenceCounts(self.rows, self.expected_rows, self.empty_responses)


@dataclass(frozen=True)
class InferenceCounts(AssetValue):
    """Rows written, rows expected and empty responses of the inference an evaluation report scored."""

    rows: int
    expected_rows: int
    empty_responses: int


@dataclass(frozen=True)
class EvaluationReport(AssetValue):
    """The ``evaluation_report`` asset: the report files and what the release gates read of them."""

    _NESTED: ClassVar[dict[str, type[AssetValue]]] = {"inference": InferenceCounts}

    json_path: str
    xlsx_path: str
    #: Per metric of the fine-tuned model: mean, interval, count, nan_count...
    summary: dict[str, dict[str, Any]]
    #: The same for the base model (empty without a baseline).
    base_summary: dict[str, dict[str, Any]]
    #: Per metric: the paired fine-tuned - base delta and its interval (None without a baseline).
    comparison: dict[str, dict[str, Any]] | None
    #: Per metric: the ids of the rows that failed to score.
    failed_rows: dict[str, list[str]]
    primary_metric: str
    rows: int
    #: The model whose inference was scored, and that inference's completeness: what promotion checks.
    model_hash: str
    inference: InferenceCounts
    #: Per-row scores and errors (``row_scores.json``), for the MLflow GenAI evaluation view.
    row_scores_path: str


@dataclass(frozen=True)
class PromotionResult(AssetValue):
    """The ``promoted_model`` asset: the registered model version, or the gates that refused it."""

    registered: bool
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    failed_gates: list[str] = field(default_factory=list)
