"""What the train stage tells a user before and during a long first run: the torch build that runs
(nerpipe.model.device.torch_build, in the device line) and, after the first steps, the time left."""

import select
import subprocess
import sys
import textwrap

import torch

from nerpipe.core.params import TrainParams
from nerpipe.model.device import torch_build
from nerpipe.train.loop import time_left
from tests.pipeline_repo import PROJECT
from tests.test_early_stopping import fit_with_flat_dev_f1


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


def test_fit_prints_the_time_left_once_after_the_first_ten_steps(tiny_model_dir, prepared, tmp_path, capsys):
    # 12 training windows, batch 4: 3 steps an epoch, 15 in 5 epochs
    cfg = TrainParams(epochs=5, batch_size=4, warmup_ratio=0.0, patience=0, checkpoint_every=0, bf16="off")
    state = fit_with_flat_dev_f1(tiny_model_dir, prepared, tmp_path / "ckpt", cfg)
    assert state.step == 15
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("time left: about ")]
    assert len(lines) == 1 and " for 5 more steps (" in lines[0] and "over the first 10), plus the dev" in lines[0]


# fit() in a process whose stdout is a pipe, as under `make repro | tee log` or CI, with a dev evaluation that
# never ends (the first after the estimate, at step 12): the time left must arrive while the run goes on.
STALLED_AFTER_THE_ESTIMATE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from nerpipe.core.params import TrainParams
    from nerpipe.data.prepared import PreparedSplit
    from nerpipe.model.loading import load_for_training
    from nerpipe.train.checkpoints import Checkpoints
    from nerpipe.train.loop import RunContext, fit
    from tests.conftest import CONLL_LABELS

    model_dir, prepared, checkpoints = sys.argv[1:]
    cfg = TrainParams(epochs=5, batch_size=4, warmup_ratio=0.0, patience=0, checkpoint_every=0, bf16="off")
    model = load_for_training(model_dir, CONLL_LABELS, cfg.dropout, cfg.seed)
    calls = iter(range(100))
    def evaluate(model):
        if next(calls) == 3:  # step 12
            time.sleep(600)
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    run = RunContext(cfg, 1e-3, 0, torch.device("cpu"), False, Checkpoints(Path(checkpoints), "t"), evaluate)
    fit(model, PreparedSplit(Path(prepared), "train").examples, run)
""")


def test_the_time_left_arrives_through_a_pipe_while_training_goes_on(tiny_model_dir, prepared, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", STALLED_AFTER_THE_ESTIMATE, str(tiny_model_dir), str(prepared),
                                str(tmp_path / "ckpt")], cwd=PROJECT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    try:
        # Buffered, the line would come only at the process's end, 600 s on: wait 120 s at most.
        ready, _, _ = select.select([process.stdout], [], [], 120)
        assert ready, "no line on stdout within 120 s of starting"
        line = process.stdout.readline()
        assert line.startswith("time left: about ") and " for 5 more steps (" in line
        assert process.poll() is None  # still in the stalled evaluation
    finally:
        process.kill()
        process.wait()
