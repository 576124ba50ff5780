"""The device check both GPU phases' preflight use, next to where devices are decided."""

from __future__ import annotations

import pytest
import torch

from ft_assets.phases.models import ModelError, check_device


def test_check_device_refuses_a_forced_cuda_device_that_is_not_there() -> None:
    check_device("auto", "[fine_tuner] device")
    check_device("cpu", "[inferencer] device")
    if torch.cuda.is_available():
        check_device("cuda", "[inferencer] device")
        return
    with pytest.raises(ModelError) as raised:
        check_device("cuda", "[inferencer] device")
    assert str(raised.value) == (
        "[inferencer] device = 'cuda', but no CUDA device is available; set it to 'auto' or 'cpu'"
    )
