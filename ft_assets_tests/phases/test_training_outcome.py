"""What the fine_tuned_model asset records of a QLoRA run: the base it is evaluated on, trained vs seen tokens."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ft_assets.config import load_settings
from ft_assets.execution.phase import execute
from ft_assets.execution.request import PhaseRequest
from ft_assets.phases.models import MODEL_INFO_FILE, ResolvedModel
from ft_assets.tracking_run import PhaseRun
from ft_assets_tests.conftest import CI_CONFIG


def test_a_qlora_outcome_says_it_is_evaluated_on_the_unquantized_base(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel
) -> None:
    overrides: dict[str, Any] = {
        "fine_tuner": {"max_steps": 1, "load_in_4bit": True, "validation_data_id": None},
        "pipeline": {"artifacts_root": str(tmp_path / "artifacts"), "model_cache_dir": str(model_cache)},
    }
    settings = load_settings(CI_CONFIG, overrides=overrides)
    request = PhaseRequest.finetuning(settings, tiny_model, tmp_path / "adapter", tracking_required=False)
    untracked = PhaseRun("finetuning", logging.getLogger(__name__))
    outcome = execute(request, untracked)

    assert outcome.value.base_quantization == "nf4-4bit"
    assert "unquantized" in outcome.value.evaluation_base
    assert outcome.metadata["evaluation_base"]["raw_value"] == outcome.value.evaluation_base
    trained = outcome.metadata["trained_tokens"]["raw_value"]
    assert 0 < trained < outcome.metadata["seen_tokens"]["raw_value"]
    info = json.loads((tmp_path / "adapter" / MODEL_INFO_FILE).read_text())
    assert info["evaluation_base"] == outcome.value.evaluation_base
    assert info["config"]["train_on_turns"] == "all", "the settings survive the request's JSON round trip"
