"""The inference phase's preflight checks, called directly."""

from __future__ import annotations

import importlib.util

import pytest

from ft_assets.config import build_settings
from ft_assets.phases.generation_checks import check_inference
from ft_assets.phases.models import ModelError
from ft_assets.phases.preflight_report import PreflightReport


def test_check_inference_warns_of_sampling_keys_greedy_decoding_ignores() -> None:
    report = PreflightReport(("inference",))
    greedy = build_settings({"inferencer": {"do_sample": False, "temperature": 0.7, "min_p": 0.1}})
    check_inference(greedy, report)
    assert report.warnings == [
        "[inferencer] do_sample = false (greedy): temperature = 0.7, min_p = 0.1 are ignored"
    ]
    assert report.passed == ["inference config"]
    sampled = PreflightReport(("inference",))
    check_inference(build_settings({"inferencer": {"do_sample": True, "temperature": 0.7}}), sampled)
    assert sampled.warnings == []


def test_check_inference_needs_the_vllm_package_for_the_vllm_backend() -> None:
    settings = build_settings({"inferencer": {"backend": "vllm"}})
    if importlib.util.find_spec("vllm") is not None:
        check_inference(settings, PreflightReport(("inference",)))
        return
    with pytest.raises(ModelError, match=r"^\[inferencer\] backend = 'vllm' needs the vllm package"):
        check_inference(settings, PreflightReport(("inference",)))
