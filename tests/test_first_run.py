"""What the train stage tells a user before and during a long first run: the torch build that runs
(nerpipe.model.device.torch_build, in the device line) and, after the first steps, the time left."""

import torch

from nerpipe.model.device import torch_build
from nerpipe.train.loop import time_left


def test_the_time_left_is_in_hours_minutes_or_seconds():
    # bert-base on a 2-core CPU: 7.5 s a step, 3 epochs of CoNLL
    assert time_left(75.0, 10, 1307) == ("time left: about 2 h 43 min for 1,307 more steps (7.50 s per step "
                                         "over the first 10), plus the dev evaluations")
    assert time_left(60.0, 10, 20).startswith("time left: about 2 min for 20 more steps (6.00 s per step")
    assert time_left(3.0, 10, 40).startswith("time left: about 12 s for 40 more steps (0.30 s per step")


def test_the_build_names_cuda_mps_or_the_version_alone(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert torch_build() == "torch 2.13.0+cpu"
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # PyPI's macOS build on Apple silicon
    assert torch_build() == "torch 2.13.0 (MPS)"
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # PyPI's Linux build, on a machine with or without a GPU
    assert torch_build() == "torch 2.13.0 (CUDA 13.0)"
