"""train.bf16: 'auto' picks bf16 only where the hardware runs it natively."""

import pytest
import torch

from nerpipe.model.device import use_bf16

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("capabilities, expected", [
    ({"avx512_bf16": True, "amx_bf16": False}, True),   # Zen 4, Cooper Lake: native VDPBF16PS
    ({"avx512_bf16": False, "amx_bf16": True}, True),   # Sapphire Rapids and later
    ({"avx512_bf16": False, "amx_bf16": False}, False),  # AVX2 / plain AVX-512: bf16 would be emulated
    ({}, False),
])
def test_auto_on_cpu_follows_native_bf16_support(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert use_bf16("auto", CPU) is expected


def test_auto_is_on_for_cuda_and_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert use_bf16("auto", CUDA) is True
    assert use_bf16("off", CPU) is False and use_bf16("off", CUDA) is False
    assert use_bf16("on", CPU) is True
