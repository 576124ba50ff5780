"""Jobs: the whole chain, and one job per phase (each materializes only its own asset group)."""

from __future__ import annotations

import dagster as dg

#: Asset group of each pipeline phase, in pipeline order (the groups set on the assets).
PHASE_GROUPS = {"finetuning": "models", "inference": "inference", "evaluation": "evaluation"}
PHASES = tuple(PHASE_GROUPS)
#: Asset group of the sweep copies of the phase assets (:mod:`ft_assets.sweeps.assets`), partitioned by
#: candidate: not part of the pipeline's jobs.
SWEEP_GROUP = "sweep"
PIPELINE_ASSETS = dg.AssetSelection.all() - dg.AssetSelection.groups(SWEEP_GROUP)


def observing_datasets(selection: dg.AssetSelection) -> dg.AssetSelection:
    """``selection`` plus the dataset assets upstream of it: a run observes them (content hash) before its
    first step, so every materialization records the version of the data it read, and an unchanged
    dataset never makes an asset look stale."""
    return selection | selection.upstream_source_assets()


fine_tune_pipeline = dg.define_asset_job(
    "fine_tune_pipeline",
    selection=observing_datasets(PIPELINE_ASSETS),
    description="Base model -> fine-tuned model -> inference (fine-tuned and base) -> evaluation report.",
)
finetuning_job = dg.define_asset_job(
    "finetuning_job",
    selection=observing_datasets(dg.AssetSelection.groups(PHASE_GROUPS["finetuning"])),
    description="Resolve the base model and fine-tune it.",
)
inference_job = dg.define_asset_job(
    "inference_job",
    selection=observing_datasets(dg.AssetSelection.groups(PHASE_GROUPS["inference"])),
    description="Batched inference on the test split with the latest fine-tuned model and the base model.",
)
evaluation_job = dg.define_asset_job(
    "evaluation_job",
    selection=observing_datasets(dg.AssetSelection.groups(PHASE_GROUPS["evaluation"])),
    description="Score the latest inference results and write the evaluation report.",
)

ALL_JOBS = [fine_tune_pipeline, finetuning_job, inference_job, evaluation_job]
