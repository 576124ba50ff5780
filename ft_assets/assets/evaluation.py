"""The evaluation report asset (ragas metrics for the fine-tuned model and the baseline, as JSON + Excel,
scored by :mod:`ft_assets.execution.evaluation_phase`) and the model promotion it gates."""

import dagster as dg

from ft_assets.asset_values import EvaluationReport, FineTunedModel, InferenceResults, PromotionResult
from ft_assets.assets.common import PHASE_CODE_VERSION, preflight_run, run_output_dir
from ft_assets.assets.data import testing_dataset
from ft_assets.config import Settings
from ft_assets.execution.launcher import ComputeLauncher
from ft_assets.execution.request import PhaseRequest
from ft_assets.phases.gates import check_lineage, release_gates
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.secrets import redact

#: Evaluation always runs in the step's own process, whatever the ``launcher`` resource says: it is CPU
#: work (offline metrics, or HTTP calls to an LLM judge), and the launcher's modes exist for the GPU phases
#: (a GPU pod, accelerate/torchrun): a pod or subprocess would only add its start-up and imports, and a pod
#: would need the judge's key as a Secret of its own. The phase itself runs through any launcher
#: (:mod:`ft_assets.execution.evaluation_phase`), and reads the key from its environment either way.
EVALUATION_LAUNCHER = ComputeLauncher(mode="in_process")


def score_inference(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    inference_results: InferenceResults,
    base_inference_results: InferenceResults | None,
) -> dg.Output[EvaluationReport]:
    """Scores (offline ragas metrics by default, LLM judges when configured) for fine-tuned vs base, with
    bootstrap intervals for every mean and paired delta, each metric's definition and corpus-level score:
    a JSON summary, an Excel workbook (Summary, Per-sample, Comparison, chart), MLflow metrics/params and
    a per-sample MLflow table.

    A sweep candidate runs this same step with its own settings (:mod:`ft_assets.sweeps.assets`).
    """
    return evaluate_with(
        EVALUATION_LAUNCHER, context, settings.load(), mlflow, inference_results, base_inference_results
    )


def evaluate_with(
    launcher: ComputeLauncher,
    context: dg.AssetExecutionContext,
    resolved: Settings,
    mlflow: MlflowTracking,
    inference_results: InferenceResults,
    base_inference_results: InferenceResults | None,
) -> dg.Output[EvaluationReport]:
    """:func:`score_inference`'s step with the phase run where ``launcher`` says."""
    from ft_assets.execution.evaluation_phase import record_evaluation_view

    preflight_run(context, resolved, mlflow)
    request = PhaseRequest.evaluation(
        resolved,
        inference_results,
        base_inference_results,
        run_output_dir(resolved, "evaluation_report", context),
        dagster_run_id=context.run.run_id,
        tracking_required=mlflow.options(resolved).required,
    )
    with mlflow.phase_run(context, "evaluation", resolved) as run:
        result = launcher.run_phase(context, request, run)
        tracking = run.dagster_metadata()
    if resolved.evaluator.log_mlflow_evaluation and run.enabled:
        try:  # after the phase run closed: see log_genai_evaluation
            record_evaluation_view(
                result.value,  # type: ignore[arg-type]  # the evaluation phase's value
                inference_results,
                base_inference_results,
                tracking_uri=str(run.tracking_uri),
                run_id=str(run.run_id),
            )
        except Exception as error:  # a view of what is already logged: its loss must not fail the report
            context.log.warning(f"MLflow GenAI evaluation view not recorded: {redact(str(error))}")
    return result.output(tracking)


evaluation_report = dg.asset(
    name="evaluation_report",
    group_name="evaluation",
    deps=[testing_dataset],
    kinds={"mlflow", "excel", "json"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)(score_inference)


def promote_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    fine_tuned_model: FineTunedModel,
    evaluation_report: EvaluationReport,
) -> dg.Output[PromotionResult]:
    """Registers the fine-tuned model in the MLflow model registry and points ``registry_alias`` at it, when
    ``register_model = true``, the report scored this very model's inference (else it refuses, naming both
    fingerprints) and the release gates (thresholds, not worse than base, inference complete) pass.

    A sweep candidate runs this same step with its own settings (:mod:`ft_assets.sweeps.assets`).
    """
    resolved = settings.load()
    config = resolved.evaluator
    if not config.register_model:
        return dg.Output(
            PromotionResult(registered=False), metadata={"skipped": "[evaluator] register_model = false"}
        )
    check_lineage(fine_tuned_model.fingerprint, evaluation_report.model_hash)
    gates = release_gates(resolved, evaluation_report)
    failed = [name for name, gate in gates.items() if not gate.passed]
    if failed:
        context.log.warning(f"not promoting: gates failed: {', '.join(failed)}")
        return dg.Output(
            PromotionResult(registered=False, failed_gates=failed),
            metadata={"failed_gates": ", ".join(failed)},
        )
    model_uri = fine_tuned_model.mlflow_model_uri
    if not model_uri:
        raise ValueError(
            "[evaluator] register_model = true needs the model logged to MLflow ([mlflow] log_model = true)"
        )
    with mlflow.phase_run(context, "promotion", resolved) as run:
        version = run.register_model(model_uri, config.registered_model_name, config.registry_alias)
        run.set_tags({"registered_model": config.registered_model_name, "registered_version": str(version)})
        metadata = run.dagster_metadata()
    promotion = PromotionResult(
        registered=True, name=config.registered_model_name, version=str(version), alias=config.registry_alias
    )
    registered = {
        "registered": True,
        "name": promotion.name,
        "version": promotion.version,
        "alias": promotion.alias,
    }
    return dg.Output(promotion, metadata={**metadata, **registered})


promoted_model = dg.asset(
    name="promoted_model",
    group_name="evaluation",
    kinds={"mlflow"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)(promote_model)
