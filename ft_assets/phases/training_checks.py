"""The fine-tuning phase's preflight: the ``[fine_tuner]`` rules pydantic cannot see, and the training rows
as the trainer will get them (templated and tokenized), without loading weights or training."""

from __future__ import annotations

from collections.abc import Mapping

from ft_assets.config import ConfigError, Settings
from ft_assets.config_sections import did_you_mean
from ft_assets.dataset_specs import TRAINING, VALIDATION
from ft_assets.phases.datasets import DatasetError, LoadedDataset, load_configured
from ft_assets.phases.model_checks import configured_tokenizer
from ft_assets.phases.models import ModelError, check_device
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.phases.training_recipe import recipe_warnings
from ft_assets.secrets import hf_token


def check_training(settings: Settings, env: Mapping[str, str], report: PreflightReport) -> None:
    """Raise at a ``[fine_tuner]`` value training would fail on; add a warning for one it would ignore."""
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
                f"[fine_tuner] {key} = {value!r} is not one transformers knows{did_you_mean(value, names)}; "
                f"choose one of {names}"
            )
    if tuner.push_to_hub and not hf_token(env):
        raise ConfigError(
            "[fine_tuner] push_to_hub = true needs a Hugging Face token: set HF_TOKEN or pass --hf-key "
            "(or set push_to_hub = false)"
        )
    check_device(tuner.device, "[fine_tuner] device")
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


def training_sets(settings: Settings, env: Mapping[str, str], *, labelled: bool) -> dict[str, LoadedDataset]:
    """The training and (when configured) validation data sets, keyed by their ``[section] key``."""
    token = hf_token(env)
    return {
        spec.config_key: load_configured(spec, settings, token, labelled=labelled)
        for spec in (TRAINING, VALIDATION)
        if spec.source(settings) is not None
    }


def check_training_data(
    settings: Settings, env: Mapping[str, str], report: PreflightReport
) -> dict[str, LoadedDataset]:
    """Load the training sets as training does and, with a base model found (``report.base_model_dir``),
    template and tokenize their rows against ``max_length``; returns the sets, keyed by ``[section] key``."""
    from ft_assets.phases.training import prepare_examples

    tuner = settings.fine_tuner
    sets = training_sets(settings, env, labelled=True)
    for key, dataset in sets.items():
        report.record_dataset(key, dataset)
    if report.base_model_dir is None:
        return sets
    tokenizer = configured_tokenizer(settings, report.base_model_dir)
    try:
        _, _, dropped = prepare_examples(
            settings, sets[TRAINING.config_key], sets.get(VALIDATION.config_key), tokenizer
        )
    except (DatasetError, ModelError) as error:
        raise type(error)(
            f"[fine_tuner] max_length = {tuner.max_length} / validation_split: {error}"
        ) from None
    if dropped:
        report.warnings.append(
            f"[fine_tuner] max_length = {tuner.max_length}: {len(dropped)} rows are longer and are dropped"
        )
    report.passed.append(f"training rows fit max_length = {tuner.max_length} after templating")
    return sets
