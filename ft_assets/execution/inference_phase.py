"""The inference phase's body (fine-tuned or base model): batched generation on the test split into a JSONL,
with its throughput logged to MLflow (:class:`InferenceResults`)."""

from __future__ import annotations

from pathlib import Path

from ft_assets.asset_values import InferenceResults
from ft_assets.config import Settings
from ft_assets.dataset_specs import TESTING
from ft_assets.execution.request import PhaseOutcome, PhaseRequest, pipes_meta
from ft_assets.phases.progress import InferenceProgress
from ft_assets.secrets import hf_token
from ft_assets.tracking_options import LogSink
from ft_assets.tracking_run import PhaseRun


def infer(request: PhaseRequest, settings: Settings, run: PhaseRun, log: LogSink) -> PhaseOutcome:
    """Generate the answers of the request's model on the test split; the value is :class:`InferenceResults`."""
    from ft_assets.phases.generation import generate, load_test_set_for
    from ft_assets.phases.models import configured_chat_template

    if request.model_dir is None or request.model_hash is None:
        raise ValueError(f"phase request ({request.phase}) names no model directory or model hash")
    output = Path(request.output)
    config, dataset, prompt_warning = load_test_set_for(Path(request.model_dir), settings, hf_token())
    if prompt_warning:
        log.warning(prompt_warning)
    run.log_dataset(TESTING.name, dataset.content_hash, dataset.resolved, TESTING.name)
    template = configured_chat_template(settings)
    progress = InferenceProgress(len(dataset.examples), log.info, label=request.phase)
    result = generate(
        Path(request.model_dir), dataset, config, output, chat_template=template, progress=progress
    )
    run.log_metrics(result.metrics)
    run.log_params(
        {"backend": result.backend, "device": result.device.device, "model_hash": request.model_hash}
    )
    run.log_artifact(output)
    log.info(
        f"{result.rows} rows from {request.model_dir} in {result.duration_s:.1f} s on {result.device.device}"
    )
    value = InferenceResults(
        path=str(output),
        rows=result.rows,
        expected_rows=len(dataset.examples),
        empty_responses=result.empty_responses,
        model_hash=request.model_hash,
        dataset_hash=dataset.content_hash,
        metrics=result.metrics,
    )
    metrics = result.metrics
    metadata = {
        "output_path": pipes_meta(str(output), "path"),
        "rows": pipes_meta(result.rows, "int"),
        "rows_per_s": pipes_meta(metrics["rows_per_s"], "float"),
        "generated_tokens_per_s": pipes_meta(metrics["generated_tokens_per_s"], "float"),
        "empty_responses": pipes_meta(result.empty_responses, "int"),
        "finish_reasons": pipes_meta(result.finish_reasons, "json"),
        "device": pipes_meta(f"{result.device.device} ({result.device.dtype})", "text"),
    }
    return PhaseOutcome(value, metadata)
