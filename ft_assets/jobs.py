"""Jobs: the whole chain, and one job per phase (each materializes only its own assets)."""

from __future__ import annotations

import dagster as dg

fine_tune_pipeline = dg.define_asset_job(
    "fine_tune_pipeline",
    selection=dg.AssetSelection.all(),
    description="Base model -> fine-tuned model -> inference (fine-tuned and base) -> evaluation report.",
)
finetuning_job = dg.define_asset_job(
    "finetuning_job", selection=dg.AssetSelection.assets("base_model", "fine_tuned_model")
)
inference_job = dg.define_asset_job(
    "inference_job", selection=dg.AssetSelection.assets("inference_results", "base_inference_results")
)
evaluation_job = dg.define_asset_job(
    "evaluation_job", selection=dg.AssetSelection.assets("evaluation_report")
)

ALL_JOBS = [fine_tune_pipeline, finetuning_job, inference_job, evaluation_job]
