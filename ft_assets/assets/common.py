"""Small helpers shared by the asset modules: per-run output folders and secrets from the environment."""

import os
from pathlib import Path

import dagster as dg

from ft_assets.config import Settings

#: Code version of the phase logic; bump when outputs for the same inputs would change.
PHASE_CODE_VERSION = "1"


def run_output_dir(settings: Settings, asset_name: str, context: dg.AssetExecutionContext) -> Path:
    """``<artifacts_root>/<asset>/<dagster run id>``: one folder per run, so reruns never mix outputs."""
    root = settings.artifacts_root.resolve()
    target = (root / asset_name / context.run.run_id).resolve()
    if root not in target.parents:
        raise ValueError(f"output path {target} escapes the artifacts root {root}")
    return target


def secret(name: str) -> str | None:
    """A secret from the environment (set there by the user or by ``ft-pipeline --hf-key/--openai-key``)."""
    return os.environ.get(name) or None


def hf_token() -> str | None:
    return secret("HF_TOKEN") or secret("HUGGING_FACE_HUB_TOKEN")
