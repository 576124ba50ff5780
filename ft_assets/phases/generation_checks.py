"""The inference phase's preflight: the ``[inferencer]`` rules pydantic cannot see."""

from __future__ import annotations

import importlib.util

from ft_assets.config import Settings
from ft_assets.phases.models import ModelError, check_device
from ft_assets.phases.preflight_report import PreflightReport


def check_inference(settings: Settings, report: PreflightReport) -> None:
    """Raise when the configured backend or device is not there; warn of sampling keys greedy decoding
    ignores."""
    config = settings.inferencer
    if config.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ModelError(
            "[inferencer] backend = 'vllm' needs the vllm package; install it or set backend = 'hf'"
        )
    check_device(config.device, "[inferencer] device")
    if not config.do_sample:
        ignored = [
            f"{key} = {value}"
            for key, value, neutral in (
                ("temperature", config.temperature, 0.0),
                ("top_p", config.top_p, 1.0),
                ("min_p", config.min_p, None),
            )
            if value != neutral
        ]
        if ignored:
            report.warnings.append(
                f"[inferencer] do_sample = false (greedy): {', '.join(ignored)} are ignored"
            )
    report.passed.append("inference config")
