"""Preflight: the cheap checks of a run, before any expensive work.

:func:`preflight` validates what a run of the selected phases will need and raises the project's own error
at the first problem, with a message that names the config section and key and, where it applies, the file,
row or column at fault:

* config semantics pydantic cannot see: quantized full fine-tuning, unknown scheduler or optimizer names,
  a hub push without a token, a CUDA device that is not there, output folders that cannot be written
  (:class:`~ft_assets.config.ConfigError`, :class:`~ft_assets.phases.models.ModelError`);
* the base model: path, ``config.json``, tokenizer files and chat template, read from the files without
  loading weights; an adapter (``adapter=``) whose modules do not fit the base model's weight shapes, read
  from the safetensors headers (:class:`~ft_assets.phases.models.ModelError`);
* the datasets, loaded and normalised exactly as the phases load them; training rows longer than
  ``max_length`` after templating (tokenizer only); test rows without a ground truth when reference metrics
  are configured (:class:`~ft_assets.phases.datasets.DatasetError`);
* metrics and the judge: keys, embeddings, contexts, the judge URL (:class:`~ft_assets.phases.metrics.MetricsError`);
* MLflow: the URI's scheme, the experiment and run names, and whether the store answers
  (:class:`~ft_assets.tracking.TrackingUnavailableError`, or a warning with ``[mlflow] required = false``).

Nothing here loads model weights, trains, generates or writes outputs (the only folder it may create is a
sqlite MLflow store's, as the run would); a preflight of the CI config takes a few seconds, most of them
importing the tokenizer library. ``python -m ft_assets.preflight --config FILE`` runs it alone.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_assets.config import ConfigError, Settings, load_settings
from ft_assets.config_sections import JUDGE_METRICS
from ft_assets.errors import FtAssetsError
from ft_assets.phases.datasets import DatasetError, LoadedDataset, load_dataset
from ft_assets.phases.leakage import check_leakage
from ft_assets.phases.metrics import OPENAI_KEY_ENV, REFERENCE_METRICS, MetricsError
from ft_assets.phases.metrics import preflight as metrics_preflight
from ft_assets.phases.model_checks import check_adapter, check_base_model, configured_tokenizer
from ft_assets.phases.models import (
    ModelError,
)
from ft_assets.phases.preflight_report import DatasetCheck, PreflightReport
from ft_assets.phases.system_prompt import preflight_warnings as system_prompt_warnings
from ft_assets.phases.training_recipe import recipe_warnings
from ft_assets.secrets import hf_token, strip_credentials
from ft_assets.tracking_options import TrackingOptions, TrackingUnavailableError, check_reachable

#: The phases a run can select, in pipeline order (the CLI's and FineTunePipeline's phase names).
PIPELINE_PHASES = ("finetuning", "inference", "evaluation")
#: Every error preflight raises; each names what is at fault, and all derive from FtAssetsError.
PREFLIGHT_ERRORS = (ConfigError, DatasetError, ModelError, MetricsError, TrackingUnavailableError)

#: MLflow's limit on experiment names.
MAX_EXPERIMENT_NAME_LENGTH = 500
#: Tracking URI schemes MLflow 3 has stores for (``dialect+driver`` URIs are matched on the dialect).
TRACKING_SCHEMES = (
    "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc",
    "file", "",
)  # fmt: skip
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
#: How many offending rows a message lists before summarising the rest as a count.
_LISTED_ROWS = 10


def preflight(
    settings: Settings,
    *,
    phases: Collection[str] | None = None,
    env: Mapping[str, str] | None = None,
    tracking: TrackingOptions | None = None,
    adapter: str | os.PathLike[str] | None = None,
) -> PreflightReport:
    """Check everything the ``phases`` of a run need that can be checked cheaply; raise at the first problem.

    ``phases``: a subset of :data:`PIPELINE_PHASES` (default: all of them). ``env``: where secrets and
    ``HF_HUB_OFFLINE`` are looked up (default ``os.environ``). ``tracking``: the resolved MLflow options
    (the Dagster resource's ``MlflowTracking.options(settings)``; default: resolved from ``settings`` and the
    environment). ``adapter``: a PEFT adapter folder that will run on the configured base model.

    Raises one of :data:`PREFLIGHT_ERRORS`; returns a :class:`PreflightReport` otherwise.
    """
    started = time.perf_counter()
    env = os.environ if env is None else env
    selected = _selected_phases(phases)
    report = PreflightReport(selected)
    _check_output_folders(settings, selected, report)
    if "finetuning" in selected:
        _check_training_config(settings, env, report)
    if "inference" in selected:
        _check_inference_config(settings, report)
        trains, trained = "finetuning" in selected, Path(adapter) if adapter is not None else None
        report.warnings += system_prompt_warnings(settings, trains=trains, adapter=trained)
    needs_base = "finetuning" in selected or ("inference" in selected and settings.inferencer.run_baseline)
    if needs_base or adapter is not None:
        report.base_model_dir = check_base_model(settings, env, report)
    if adapter is not None:
        check_adapter(Path(adapter), report.base_model_dir, settings, report)
    training_sets: dict[str, LoadedDataset] = {}
    if "finetuning" in selected:
        training_sets = _check_training_data(settings, env, report)
    if "inference" in selected or "evaluation" in selected:
        test_set = _check_test_data(settings, env, report)
        check_leakage(
            settings.evaluator.leakage,
            "[inferencer] testing_data_id",
            test_set,
            training_sets or (lambda: _training_sets(settings, env, labelled=False)),
            report.warnings,
        )
        if "evaluation" in selected:
            _check_metrics(settings, env, test_set, report)
    _check_tracking(settings, tracking, env, report)
    report.duration_s = time.perf_counter() - started
    return report


def _selected_phases(phases: Collection[str] | None) -> tuple[str, ...]:
    if phases is None:
        return PIPELINE_PHASES
    unknown = sorted(set(phases) - set(PIPELINE_PHASES))
    if unknown:
        raise ConfigError(f"unknown phase(s) {unknown}; expected some of {list(PIPELINE_PHASES)}")
    return tuple(phase for phase in PIPELINE_PHASES if phase in phases)


def _suggest(value: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(value, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ----------------------------------------------------------------------------------------------- config


def _check_writable_folder(folder: Path, key: str) -> None:
    """``folder`` can be created and written: its nearest existing ancestor is a writable directory.

    Nothing is created: preflight leaves no trace on disk.
    """
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} = {str(folder)!r}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} = {str(folder)!r}: {existing} is not writable")


def _check_output_folders(settings: Settings, phases: tuple[str, ...], report: PreflightReport) -> None:
    _check_writable_folder(settings.artifacts_root, "[pipeline] artifacts_root")
    if "finetuning" in phases or "inference" in phases:
        key = (
            "[pipeline] model_cache_dir" if settings.pipeline.model_cache_dir else "[pipeline] artifacts_root"
        )
        _check_writable_folder(settings.model_cache_dir, key)
    report.passed.append(f"outputs can be written under {settings.artifacts_root}")


def _check_device(preference: str, key: str) -> None:
    if preference != "cuda":  # "auto" and "cpu" always work; only a forced CUDA device can be missing
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelError(f"{key} = 'cuda', but no CUDA device is available; set it to 'auto' or 'cpu'")


def _check_training_config(settings: Settings, env: Mapping[str, str], report: PreflightReport) -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    tuner = settings.fine_tuner
    if isinstance(tuner.target_modules, list) and not tuner.target_modules:
        raise ConfigError("[fine_tuner] target_modules is an empty list; name modules or use 'all-linear'")
    for key, value, names in (
        ("lr_scheduler_type", tuner.lr_scheduler_type, [item.value for item in SchedulerType]),
        ("optim", tuner.optim, [item.value for item in OptimizerNames]),
    ):
        if value not in names:
            raise ConfigError(
                f"[fine_tuner] {key} = {value!r} is not one transformers knows{_suggest(value, names)}; "
                f"choose one of {names}"
            )
    if tuner.push_to_hub and not hf_token(env):
        raise ConfigError(
            "[fine_tuner] push_to_hub = true needs a Hugging Face token: set HF_TOKEN or pass --hf-key "
            "(or set push_to_hub = false)"
        )
    _check_device(tuner.device, "[fine_tuner] device")
    has_validation = bool(tuner.validation_data_id) or tuner.validation_split > 0
    if not has_validation:
        for key in ("early_stopping_patience", "eval_steps"):
            if getattr(tuner, key) is not None:
                report.warnings.append(
                    f"[fine_tuner] {key} is set, but there is no validation data "
                    "(validation_data_id / validation_split): it has no effect"
                )
    report.warnings.extend(recipe_warnings(tuner))
    report.passed.append("training config")


def _check_inference_config(settings: Settings, report: PreflightReport) -> None:
    config = settings.inferencer
    if config.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ModelError(
            "[inferencer] backend = 'vllm' needs the vllm package; install it or set backend = 'hf'"
        )
    _check_device(config.device, "[inferencer] device")
    if not config.do_sample:
        ignored = [
            f"{key} = {value}"
            for key, value, neutral in (
                ("temperature", config.temperature, 0.0),
                ("top_p", config.top_p, 1.0),
                ("min_p", config.min_p, None),
            )
            if value != neutral
        ]
        if ignored:
            report.warnings.append(
                f"[inferencer] do_sample = false (greedy): {', '.join(ignored)} are ignored"
            )
    report.passed.append("inference config")


# ------------------------------------------------------------------------------------------------- data


def _load(
    key: str, source: str, settings: Settings, section: Any, split: str, token: str | None, labelled: bool
) -> LoadedDataset:
    try:
        return load_dataset(
            source,
            section,
            base_dir=settings.base_dir,
            split=split,
            revision=section.dataset_revision,
            token=token,
            require_ground_truth=labelled,
        )
    except DatasetError as error:
        raise DatasetError(f"{key} = {source!r}: {error}") from None


def _record(report: PreflightReport, key: str, dataset: LoadedDataset) -> None:
    report.datasets.append(
        DatasetCheck(
            key, dataset.source, dataset.format, dataset.num_rows, len(dataset.examples), dataset.content_hash
        )
    )
    if dataset.bad_rows:
        report.warnings.append(
            f"{key}: {len(dataset.bad_rows)} unusable rows are dropped (on_bad_rows = 'drop')"
        )
    report.passed.append(f"{key}: {len(dataset.examples)} usable rows ({dataset.format})")


def _training_sets(settings: Settings, env: Mapping[str, str], *, labelled: bool) -> dict[str, LoadedDataset]:
    """The training and (when configured) validation data sets, keyed by their config keys."""
    tuner, token = settings.fine_tuner, hf_token(env)
    sources = [("training_data_id", tuner.training_data_id, tuner.dataset_split)]
    if tuner.validation_data_id:
        sources.append(("validation_data_id", tuner.validation_data_id, tuner.validation_dataset_split))
    return {
        f"[fine_tuner] {key}": _load(f"[fine_tuner] {key}", source, settings, tuner, split, token, labelled)
        for key, source, split in sources
    }


def _check_training_data(
    settings: Settings, env: Mapping[str, str], report: PreflightReport
) -> dict[str, LoadedDataset]:
    from ft_assets.phases.training import prepare_examples

    tuner = settings.fine_tuner
    training_sets = _training_sets(settings, env, labelled=True)
    for key, dataset in training_sets.items():
        _record(report, key, dataset)
    train_set = training_sets["[fine_tuner] training_data_id"]
    validation_set = training_sets.get("[fine_tuner] validation_data_id")
    if report.base_model_dir is None:
        return training_sets
    tokenizer = configured_tokenizer(settings, report.base_model_dir)
    try:
        _, _, dropped = prepare_examples(settings, train_set, validation_set, tokenizer)
    except (DatasetError, ModelError) as error:
        raise type(error)(
            f"[fine_tuner] max_length = {tuner.max_length} / validation_split: {error}"
        ) from None
    if dropped:
        report.warnings.append(
            f"[fine_tuner] max_length = {tuner.max_length}: {len(dropped)} rows are longer and are dropped"
        )
    report.passed.append(f"training rows fit max_length = {tuner.max_length} after templating")
    return training_sets


def _check_test_data(settings: Settings, env: Mapping[str, str], report: PreflightReport) -> LoadedDataset:
    config = settings.inferencer
    key = "[inferencer] testing_data_id"
    # unlabelled rows are fine for inference: the evaluation check below decides whether they may be
    test_set = _load(
        key, config.testing_data_id, settings, config, config.dataset_split, hf_token(env), False
    )
    _record(report, key, test_set)
    return test_set


def _check_metrics(
    settings: Settings, env: Mapping[str, str], test_set: LoadedDataset, report: PreflightReport
) -> None:
    evaluator = settings.evaluator
    referenced = [name for name in evaluator.metrics if name in REFERENCE_METRICS]
    unlabelled = [example.row for example in test_set.examples if not example.ground_truth]
    if referenced and unlabelled:
        listed = ", ".join(str(row) for row in unlabelled[:_LISTED_ROWS])
        more = f" and {len(unlabelled) - _LISTED_ROWS} more" if len(unlabelled) > _LISTED_ROWS else ""
        column = settings.inferencer.ground_truth_column
        raise DatasetError(
            f"[inferencer] testing_data_id = {settings.inferencer.testing_data_id!r} ({test_set.resolved}): "
            f"{len(unlabelled)} of {len(test_set.examples)} rows have no ground truth (qa column {column!r} "
            f"from [inferencer] ground_truth_column, or a final assistant turn), but evaluator.metrics "
            f"{referenced} compare against it: rows {listed}{more}"
        )
    judged = [name for name in evaluator.metrics if name in JUDGE_METRICS]
    base_url = evaluator.judge.base_url
    if judged and base_url is not None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise MetricsError(
                f"evaluator.judge.base_url = {strip_credentials(base_url)!r} is not an http(s) URL "
                f"(e.g. http://127.0.0.1:8000/v1); the LLM-judge metrics {judged} call it"
            )
    metrics_preflight(
        evaluator,
        api_key=env.get(OPENAI_KEY_ENV) or None,
        has_ground_truth=not unlabelled,
        has_contexts=all(example.contexts for example in test_set.examples),
    )
    report.passed.append(f"metrics {evaluator.metrics}")


# --------------------------------------------------------------------------------------------- tracking


def _check_experiment_name(options: TrackingOptions) -> None:
    name, source = options.experiment_name, options.source("experiment_name")
    problem = None
    if not name.strip():
        problem = "is blank"
    elif len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        problem = f"is longer than MLflow's {MAX_EXPERIMENT_NAME_LENGTH} characters"
    elif _CONTROL_CHARACTERS.search(name):
        problem = "contains control characters"
    elif not name.strip("."):
        # the sqlite store keeps artifacts in a folder named after the experiment: '..' would leave it
        problem = "is only dots, which names no folder for its artifacts"
    if problem:
        raise ConfigError(f"{source}: the MLflow experiment name {name!r} {problem}")


def _check_tracking(
    settings: Settings, tracking: TrackingOptions | None, env: Mapping[str, str], report: PreflightReport
) -> None:
    options = tracking or TrackingOptions.resolve(settings)
    uri, source = options.tracking_uri, options.source("tracking_uri")
    report.tracking_uri = strip_credentials(uri)
    _check_experiment_name(options)
    if not options.parent_run_id:
        options.parent_run_name("preflight")  # a bad run name, prefix or suffix raises ConfigError
    scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{source}: MLflow tracking URI {report.tracking_uri!r} has an unknown scheme {scheme!r}"
            f"{_suggest(scheme, TRACKING_SCHEMES)}; use http(s)://host:port or sqlite:///path/mlflow.db"
        )
    if scheme in ("file", "") and env.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(
            f"{source}: {report.tracking_uri!r} is an MLflow file store, which MLflow 3 refuses unless "
            "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///path/mlflow.db instead"
        )
    try:
        check_reachable(uri, source)
    except TrackingUnavailableError as error:
        if options.required:
            raise
        report.tracked = False
        report.warnings.append(f"{error} (the run goes on untracked: [mlflow] required = false)")
        return
    report.passed.append(f"MLflow store {report.tracking_uri} answers")


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Preflight a config file; exit 1 with the error on stderr when a check fails."""
    parser = argparse.ArgumentParser(prog="python -m ft_assets.preflight", description=main.__doc__)
    parser.add_argument("--config", default=None, help="pipeline TOML (default: config/pipeline.toml)")
    parser.add_argument(
        "--phases", default=",".join(PIPELINE_PHASES), help="comma-separated phases (default: all)"
    )
    parser.add_argument(
        "--adapter", default=None, help="a PEFT adapter folder to check against the base model"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
        report = preflight(settings, phases=phases, adapter=args.adapter)
    except FtAssetsError as error:
        print(f"preflight: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
