"""train.bf16: 'auto' picks bf16 only where the hardware runs it natively, and TF32 follows the resolved
bf16, so 'off' is strict fp32 on a GPU too. The CUDA queries are monkeypatched: the tests run on the CPU."""

import pytest
import torch

from nerpipe.model.device import pad_multiple, pick_device, set_tf32, use_bf16

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


def fake_gpu(monkeypatch, major):
    """A visible GPU of compute capability `major`.x, as torch.cuda.is_bf16_supported reads it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("Props", (), {"major": major})())
    # what including_emulation=True would go on to try: a bf16 tensor on the device, which works on a T4
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)


@pytest.mark.parametrize("major, name, expected", [(7, "V100/T4", False), (8, "A100", True), (9, "H100", True)])
def test_auto_on_cuda_is_on_only_where_bf16_is_native(monkeypatch, major, name, expected):
    fake_gpu(monkeypatch, major)
    assert torch.cuda.is_bf16_supported() is True  # the emulated answer, which `auto` must not take
    assert use_bf16("auto", CUDA) is expected, name


def test_auto_on_cuda_without_a_gpu_is_off_and_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert torch.cuda.is_available() is False  # the tests are pinned to the CPU (conftest.py)
    assert use_bf16("auto", CUDA) is False
    assert use_bf16("off", CPU) is False and use_bf16("off", CUDA) is False
    assert use_bf16("on", CPU) is True and use_bf16("on", CUDA) is True


@pytest.fixture
def tf32_flags():
    """The process-wide TF32 flags, put back after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_follows_bf16_on_cuda_and_is_untouched_elsewhere(tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    assert set_tf32(CUDA, False) is False  # bf16 off: strict fp32, convolutions included
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    assert set_tf32(CUDA, True) is True
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    torch.backends.cuda.matmul.allow_tf32 = False
    assert set_tf32(CPU, True) is False  # no TF32 on a CPU, and nothing changed
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_picking_the_device_leaves_precision_alone(monkeypatch, tf32_flags):
    """TF32 used to be switched on by pick_device, whatever train.bf16 said."""
    torch.backends.cuda.matmul.allow_tf32 = False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == CUDA and pad_multiple(CUDA) == 8
    assert torch.backends.cuda.matmul.allow_tf32 is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == CPU and pad_multiple(CPU) == 1
