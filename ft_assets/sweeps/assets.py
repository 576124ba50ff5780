"""Sweep assets: each candidate of ``[sweep]`` is a partition of sweep copies of the model, inference and
evaluation assets; one unpartitioned leaderboard ranks them.

Why a :class:`~dagster.DynamicPartitionsDefinition` (``sweep_candidates``) and not a static one, a job per
candidate or one asset looping over candidates:

* partitions make each candidate a first-class materialization (its own status, history, logs and
  lineage in the UI), launchable as a backfill, with Dagster tracking which are missing: a killed sweep
  resumes by materializing only those, and the ``gpu`` pool still serializes the GPU steps across runs;
* dynamic, because candidates come from the TOML a run is configured with (like every other setting here):
  loading the code location reads no config (it stays fast and never breaks on a bad ``[sweep]``), a new
  sweep needs no reload or redeploy, and earlier candidates keep their history. ``ft-pipeline --sweep``
  (or :func:`ft_assets.sweeps.launch.register_candidates`) adds the candidates' names as partitions.

The base model and the base-model inference stay the pipeline's unpartitioned assets, shared by every
candidate (run once, not once per candidate). Each sweep asset runs the compute function of the pipeline
asset it copies, with the candidate's settings (``[sweep]`` values laid over the config) and with its MLflow
phase runs nested under the candidate's run: the same code, outputs and metadata as a plain run. A
partition whose name is not a candidate of the configured sweep fails with the sweep's names.

A candidate counts as done for a config when its latest ``sweep_evaluation_report`` materialization
carries that config's fingerprint; the leaderboard refuses to rank a sweep with a candidate not done.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.asset_values import EvaluationReport, FineTunedModel, InferenceResults, PromotionResult
from ft_assets.assets import evaluation, inference, models
from ft_assets.assets.common import PHASE_CODE_VERSION, preflight_run, run_output_dir
from ft_assets.assets.data import testing_dataset, training_dataset, validation_dataset
from ft_assets.config import Settings, deep_merge
from ft_assets.errors import FtAssetsError
from ft_assets.execution.launcher import GPU_STEP_TAGS, ComputeLauncher
from ft_assets.jobs import SWEEP_GROUP
from ft_assets.phases.io import write_json
from ft_assets.phases.models import ResolvedModel
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.sweeps.candidates import Candidate, SweepPlan, plan_sweep, settings_fingerprint

sweep_candidates = dg.DynamicPartitionsDefinition(name="sweep_candidates")
CANDIDATE_RECORD = "candidate.json"
#: Materialization metadata of ``sweep_evaluation_report``: whose result it is, for which config.
META_CANDIDATE, META_FINGERPRINT, META_RECORD = "candidate", "candidate_fingerprint", "candidate_record"
#: The pipeline phase each sweep asset runs (for preflight).
_PHASE_OF = {
    "sweep_fine_tuned_model": "finetuning",
    "sweep_inference_results": "inference",
    "sweep_evaluation_report": "evaluation",
}


class SweepError(FtAssetsError, RuntimeError):
    """A sweep cannot be ranked or run as asked; the message names the candidates at fault."""


@dataclass(frozen=True)
class CandidateRun:
    """One candidate inside a sweep step: its sweep, its settings (as the resource and resolved) and the
    tracking resource whose phase runs nest under the candidate's MLflow run."""

    plan: SweepPlan
    candidate: Candidate
    settings: PipelineSettings
    resolved: Settings
    mlflow: MlflowTracking
    mlflow_run_id: str | None

    @property
    def fingerprint(self) -> str:
        return settings_fingerprint(self.resolved)

    def compute(
        self, context: dg.AssetExecutionContext, step: Callable[..., dg.Output[Any]], **inputs: Any
    ) -> dg.Output[Any]:
        """A pipeline asset's own step (``step``: the function the asset calls) run for this candidate (its
        settings, and its MLflow run as the phases' parent), given the asset's other ``inputs``."""
        return step(context, settings=self.settings, mlflow=self.mlflow, **inputs)

    def output(self, phase_output: dg.Output[Any], **extra: Any) -> dg.Output[Any]:
        """The phase's output, with the candidate, its values and the config fingerprint in the metadata."""
        metadata = {
            **phase_output.metadata,
            META_CANDIDATE: self.candidate.name,
            META_FINGERPRINT: self.fingerprint,
            "sweep_id": self.plan.sweep_id,
            "candidate_values": dg.MetadataValue.json(self.candidate.params),
            **extra,
        }
        return dg.Output(phase_output.value, metadata=metadata, data_version=phase_output.data_version)


def candidate_run(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    name: str | None = None,
) -> CandidateRun:
    """The candidate this partition is (or ``name``), with its settings validated, its MLflow run found or
    created and the run's phases preflighted (once per run)."""
    from ft_assets.sweeps.tracking import candidate_run as mlflow_candidate_run

    plan = plan_sweep(settings.load(), source=settings.config_path)
    candidate = plan.candidate(name or context.partition_key)
    overrides = deep_merge(settings.overrides(), candidate.overrides)
    candidate_settings = PipelineSettings(config_path=settings.config_path, **overrides)
    resolved = candidate_settings.load()
    run_id = mlflow_candidate_run(mlflow.options(resolved), plan, candidate, context.log)
    fields = {field: getattr(mlflow, field) for field in MlflowTracking.model_fields}
    tracking = MlflowTracking(**{**fields, "parent_run_id": run_id or mlflow.parent_run_id})
    preflight_run(context, resolved, tracking, phase_of=lambda key: _PHASE_OF.get(key.to_user_string()))
    return CandidateRun(plan, candidate, candidate_settings, resolved, tracking, run_id)


_SWEEP_ASSET: dict[str, Any] = {
    "group_name": SWEEP_GROUP,
    "partitions_def": sweep_candidates,
    "code_version": PHASE_CODE_VERSION,
    "owners": ["team:ml-platform"],
}
_GPU_STEP: dict[str, Any] = {
    "pool": "gpu",
    "op_tags": GPU_STEP_TAGS,
    "kinds": {"pytorch", "huggingface", "mlflow"},
}


@dg.asset(**_SWEEP_ASSET, **_GPU_STEP, deps=[training_dataset, validation_dataset])
def sweep_fine_tuned_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    launcher: ComputeLauncher,
    base_model: ResolvedModel,
) -> dg.Output[FineTunedModel]:
    """``fine_tuned_model`` for one sweep candidate: the shared base model trained with the candidate's
    ``[fine_tuner]`` values (checkpoints, resume and MLflow logging as in the pipeline)."""
    run = candidate_run(context, settings, mlflow)
    return run.output(
        run.compute(context, models.train_fine_tuned_model, launcher=launcher, base_model=base_model)
    )


@dg.asset(**_SWEEP_ASSET, **_GPU_STEP, deps=[testing_dataset])
def sweep_inference_results(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    launcher: ComputeLauncher,
    sweep_fine_tuned_model: FineTunedModel,
) -> dg.Output[InferenceResults]:
    """``inference_results`` for one sweep candidate: its model's answers on the test split, with the
    candidate's ``[inferencer]`` values."""
    run = candidate_run(context, settings, mlflow)
    model = {"launcher": launcher, "fine_tuned_model": sweep_fine_tuned_model}
    return run.output(run.compute(context, inference.infer_fine_tuned_model, **model))


@dg.asset(**_SWEEP_ASSET, kinds={"mlflow", "excel", "json"}, deps=[testing_dataset])
def sweep_evaluation_report(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    sweep_fine_tuned_model: FineTunedModel,
    sweep_inference_results: InferenceResults,
    base_inference_results: InferenceResults | None,
) -> dg.Output[EvaluationReport]:
    """``evaluation_report`` for one sweep candidate against the shared base-model inference, plus the
    candidate's record for the leaderboard (its primary metric per row, paired delta vs base, training
    cost and model)."""
    run = candidate_run(context, settings, mlflow)
    inputs = {"inference_results": sweep_inference_results, "base_inference_results": base_inference_results}
    report = run.compute(context, evaluation.score_inference, **inputs)
    record = _candidate_record(run, sweep_fine_tuned_model, report.value)
    path = write_json(
        run_output_dir(run.resolved, f"sweep_candidates/{run.candidate.name}", context) / CANDIDATE_RECORD,
        record,
    )
    if run.mlflow_run_id:
        from ft_assets.sweeps.tracking import log_candidate_metrics

        log_candidate_metrics(
            run.mlflow.options(run.resolved), run.mlflow_run_id, record["cost"], context.log
        )
    return run.output(report, **{META_RECORD: dg.MetadataValue.path(str(path))})


def _candidate_record(run: CandidateRun, model: FineTunedModel, report: EvaluationReport) -> dict[str, Any]:
    """What the leaderboard needs of a candidate: its primary metric as the evaluation report wrote it
    (per-row scores and ids, for the paired comparison with the leader; summary; paired delta vs base),
    read from the report's JSON rather than scored again (an LLM judge would cost, and sample, twice)."""
    from ft_assets.phases.reports import primary_metric_result

    result = primary_metric_result(report.json_path)
    metrics = model.metrics
    return {
        "candidate": run.candidate.name,
        "params": run.candidate.params,
        "fingerprint": run.fingerprint,
        "sweep_id": run.plan.sweep_id,
        "primary_metric": result["metric"],
        "ids": result["ids"],
        "scores": result["scores"],
        "summary": result["summary"],
        "vs_base": result["vs_base"],
        "cost": {
            "steps": metrics["steps"],
            "trained_tokens": metrics["trained_tokens"],
            "train_seconds": metrics["duration_s"],
        },
        "model": {
            key: getattr(model, key) for key in ("path", "merged_path", "fingerprint", "mlflow_model_uri")
        },
        # what promotion of this candidate is given, as promoted_model would get them
        "values": {"fine_tuned_model": model.to_json(), "evaluation_report": report.to_json()},
        "evaluation": {
            "json_path": report.json_path,
            "xlsx_path": report.xlsx_path,
            "mlflow_candidate_run_id": run.mlflow_run_id,
        },
    }


def completed_candidates(instance: dg.DagsterInstance, plan: SweepPlan) -> dict[str, Path]:
    """The candidates of ``plan`` whose latest evaluation was of their current config: name -> record file."""
    done = {}
    for candidate in plan.candidates:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=sweep_evaluation_report.key, asset_partitions=[candidate.name]),
            limit=1,
        ).records
        materialization = records[0].asset_materialization if records else None
        if materialization is None:
            continue
        metadata = materialization.metadata
        fingerprint = getattr(metadata.get(META_FINGERPRINT), "value", None)
        record = getattr(metadata.get(META_RECORD), "value", None)
        if (
            fingerprint == settings_fingerprint(plan.settings[candidate.name])
            and record
            and Path(record).is_file()
        ):
            done[candidate.name] = Path(record)
    return done


@dg.asset(
    group_name=SWEEP_GROUP,
    deps=[sweep_evaluation_report],
    kinds={"mlflow", "excel", "json"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)
def sweep_leaderboard(
    context: dg.AssetExecutionContext, settings: PipelineSettings, mlflow: MlflowTracking
) -> dg.Output[dict[str, Any]]:
    """Every candidate of the configured sweep ranked on the primary metric, with paired confidence
    intervals against the base model and the leader, training cost, and the winner (by the rule in
    :mod:`ft_assets.sweeps.leaderboard`); JSON + xlsx, a table in the metadata, and the sweep's MLflow run.
    The value's ``winner_model`` is the winner's fine-tuned model, for promotion."""
    from ft_assets.phases.comparison import Bootstrap
    from ft_assets.sweeps.leaderboard import build_leaderboard, markdown_table, write_leaderboard
    from ft_assets.sweeps.tracking import record_leaderboard

    resolved = settings.load()
    plan = plan_sweep(resolved, source=settings.config_path)
    done = completed_candidates(context.instance, plan)
    missing = [name for name in plan.names if name not in done]
    if missing:
        raise SweepError(
            f"sweep {plan.name} ({plan.sweep_id}): no evaluation of the current config for candidate(s) "
            f"{', '.join(missing)}; materialize those partitions of sweep_evaluation_report "
            "(ft-pipeline --sweep runs only the missing ones)"
        )
    records = [json.loads(done[name].read_text(encoding="utf-8")) for name in plan.names]
    evaluator = resolved.evaluator
    board = build_leaderboard(
        records, bootstrap=Bootstrap.from_config(evaluator), margin=evaluator.not_worse_margin
    )
    json_path, xlsx_path = write_leaderboard(run_output_dir(resolved, "sweep_leaderboard", context), board)
    sweep_run_id = record_leaderboard(
        mlflow.options(resolved), plan, board, (json_path, xlsx_path), context.log
    )
    winner_record = str(done[board["winner"]]) if board["winner"] else None
    value = {**board, "sweep_id": plan.sweep_id, "json_path": str(json_path), "xlsx_path": str(xlsx_path),
             "mlflow_sweep_run_id": sweep_run_id, "winner_record": winner_record}  # fmt: skip
    context.log.info(f"sweep {plan.name}: winner {board['winner']} ({board['rule']})")
    return dg.Output(
        value,
        metadata={
            "leaderboard": dg.MetadataValue.md(markdown_table(board)),
            "winner": board["winner"] or "none",
            "leaderboard_json": dg.MetadataValue.path(str(json_path)),
            "leaderboard_xlsx": dg.MetadataValue.path(str(xlsx_path)),
            "sweep_id": plan.sweep_id,
            "candidates": len(records),
            **({"mlflow_sweep_run_id": sweep_run_id} if sweep_run_id else {}),
        },
    )


@dg.asset(
    group_name=SWEEP_GROUP, kinds={"mlflow"}, code_version=PHASE_CODE_VERSION, owners=["team:ml-platform"]
)
def sweep_promoted_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    sweep_leaderboard: dict[str, Any],
) -> dg.Output[PromotionResult]:
    """``promoted_model`` for the sweep's winner: its model registered (``[evaluator] register_model``) after
    the same lineage check and release gates, with the promotion run nested under the winner's MLflow run."""
    winner = sweep_leaderboard["winner"]
    if winner is None:
        return dg.Output(PromotionResult(registered=False), metadata={"skipped": "the sweep has no winner"})
    run = candidate_run(context, settings, mlflow, name=winner)
    values = json.loads(Path(sweep_leaderboard["winner_record"]).read_text(encoding="utf-8"))["values"]
    model = FineTunedModel.from_json(values["fine_tuned_model"])
    report = EvaluationReport.from_json(values["evaluation_report"])
    return run.output(
        run.compute(context, evaluation.promote_model, fine_tuned_model=model, evaluation_report=report)
    )


SWEEP_ASSETS = [
    sweep_fine_tuned_model,
    sweep_inference_results,
    sweep_evaluation_report,
    sweep_leaderboard,
    sweep_promoted_model,
]
sweep_candidate_job = dg.define_asset_job(
    "sweep_candidate_job",
    selection=dg.AssetSelection.assets(
        sweep_fine_tuned_model, sweep_inference_results, sweep_evaluation_report
    ),
    partitions_def=sweep_candidates,
    description="One sweep candidate (a partition): fine-tune, infer, evaluate. Base model and base inference "
    "must have been materialized (they are shared).",
)
sweep_leaderboard_job = dg.define_asset_job(
    "sweep_leaderboard_job",
    selection=dg.AssetSelection.assets(sweep_leaderboard, sweep_promoted_model),
    description="Rank the configured sweep's candidates, choose the winner and promote it.",
)
SWEEP_JOBS = [sweep_candidate_job, sweep_leaderboard_job]
