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

Each rule lives with the phase that owns it (:mod:`~ft_assets.phases.training_checks`,
:mod:`~ft_assets.phases.generation_checks`, :mod:`~ft_assets.phases.model_checks`,
:mod:`~ft_assets.phases.metric_checks`, :mod:`~ft_assets.tracking_checks`, the datasets of
:mod:`~ft_assets.dataset_specs`); this module selects them for the run's phases and collects their report.

Nothing here loads model weights, trains, generates or writes outputs (the only folder it may create is a
sqlite MLflow store's, as the run would); a preflight of the CI config takes a few seconds, most of them
importing the tokenizer library. ``python -m ft_assets.preflight --config FILE`` runs it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from ft_assets.config import ConfigError, Settings, load_settings
from ft_assets.dataset_specs import TESTING
from ft_assets.errors import FtAssetsError
from ft_assets.phases.datasets import DatasetError, load_configured
from ft_assets.phases.generation_checks import check_inference
from ft_assets.phases.io import check_writable_folder
from ft_assets.phases.leakage import check_leakage
from ft_assets.phases.metric_checks import check_metrics
from ft_assets.phases.metrics import MetricsError
from ft_assets.phases.model_checks import check_adapter, check_base_model
from ft_assets.phases.models import ModelError
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.phases.system_prompt import preflight_warnings as system_prompt_warnings
from ft_assets.phases.training_checks import check_training, check_training_data, training_sets
from ft_assets.secrets import hf_token
from ft_assets.tracking_checks import check_tracking
from ft_assets.tracking_options import TrackingOptions, TrackingUnavailableError

#: The phases a run can select, in pipeline order (the CLI's and FineTunePipeline's phase names).
PIPELINE_PHASES = ("finetuning", "inference", "evaluation")
#: Every error preflight raises; each names what is at fault, and all derive from FtAssetsError.
PREFLIGHT_ERRORS = (ConfigError, DatasetError, ModelError, MetricsError, TrackingUnavailableError)


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
        check_training(settings, env, report)
    if "inference" in selected:
        check_inference(settings, report)
        trains, trained = "finetuning" in selected, Path(adapter) if adapter is not None else None
        report.warnings += system_prompt_warnings(settings, trains=trains, adapter=trained)
    needs_base = "finetuning" in selected or ("inference" in selected and settings.inferencer.run_baseline)
    if needs_base or adapter is not None:
        report.base_model_dir = check_base_model(settings, env, report)
    if adapter is not None:
        check_adapter(Path(adapter), report.base_model_dir, settings, report)
    training_data = check_training_data(settings, env, report) if "finetuning" in selected else {}
    if "inference" in selected or "evaluation" in selected:
        # unlabelled rows are fine for inference: the metrics check decides whether evaluation may score them
        test_set = load_configured(TESTING, settings, hf_token(env))
        report.record_dataset(TESTING.config_key, test_set)
        check_leakage(
            settings.evaluator.leakage,
            TESTING.config_key,
            test_set,
            training_data or (lambda: training_sets(settings, env, labelled=False)),
            report.warnings,
        )
        if "evaluation" in selected:
            check_metrics(settings, env, test_set, report)
    check_tracking(settings, tracking, env, report)
    report.duration_s = time.perf_counter() - started
    return report


def _selected_phases(phases: Collection[str] | None) -> tuple[str, ...]:
    if phases is None:
        return PIPELINE_PHASES
    unknown = sorted(set(phases) - set(PIPELINE_PHASES))
    if unknown:
        raise ConfigError(f"unknown phase(s) {unknown}; expected some of {list(PIPELINE_PHASES)}")
    return tuple(phase for phase in PIPELINE_PHASES if phase in phases)


# ----------------------------------------------------------------------------------------------- outputs


def _check_output_folders(settings: Settings, phases: tuple[str, ...], report: PreflightReport) -> None:
    check_writable_folder(settings.artifacts_root, "[pipeline] artifacts_root")
    if "finetuning" in phases or "inference" in phases:
        key = (
            "[pipeline] model_cache_dir" if settings.pipeline.model_cache_dir else "[pipeline] artifacts_root"
        )
        check_writable_folder(settings.model_cache_dir, key)
    report.passed.append(f"outputs can be written under {settings.artifacts_root}")


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
