"""Early stopping counts no dev evaluation made during the warm-up: on small data with many epochs, dev F1
stays at 0 while the rate warms up, and a patience of 2 used to end the run there (README, learning curve)."""

import torch

from nerpipe.core.params import TrainParams
from nerpipe.data.prepared import PreparedSplit
from nerpipe.model.loading import load_for_training
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.loop import RunContext, fit
from tests.conftest import CONLL_LABELS


def fit_with_flat_dev_f1(model_dir, prepared, checkpoint_dir, cfg):
    """fit() with a dev F1 of 0.0 at every evaluation, as a model that has not learnt yet scores."""
    model = load_for_training(str(model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    flat = {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    run = RunContext(cfg, 1e-3, 0, torch.device("cpu"), False, Checkpoints(checkpoint_dir, "flat"), lambda m: flat)
    return fit(model, PreparedSplit(prepared, "train").examples, run)


def test_patience_starts_after_the_warm_up(tiny_model_dir, prepared, tmp_path):
    # 12 training windows, batch 4: 3 steps an epoch, 90 in 30 epochs; warm-up 0.1 = steps 1-9 (3 epochs).
    cfg = TrainParams(epochs=30, batch_size=4, warmup_ratio=0.1, patience=2, checkpoint_every=0, bf16="off")
    state = fit_with_flat_dev_f1(tiny_model_dir, prepared, tmp_path / "ckpt", cfg)
    # Steps 3, 6 and 9 are warm-up evaluations; 12 and 15 are the two without improvement.
    assert [e["step"] for e in state.dev_evals] == [3, 6, 9, 12, 15]
    assert (state.stopped_early, state.step, state.epoch, state.best_step) == (True, 15, 5, 3)


def test_without_warm_up_patience_counts_from_the_first_evaluation(tiny_model_dir, prepared, tmp_path):
    cfg = TrainParams(epochs=30, batch_size=4, warmup_ratio=0.0, patience=2, checkpoint_every=0, bf16="off")
    state = fit_with_flat_dev_f1(tiny_model_dir, prepared, tmp_path / "ckpt", cfg)
    assert [e["step"] for e in state.dev_evals] == [3, 6, 9]
    assert (state.stopped_early, state.step) == (True, 9)


def test_stop_when_ends_the_run_at_the_first_evaluation_it_accepts(tiny_model_dir, prepared, tmp_path):
    # A time-to-accuracy target as bench/ sets one: dev F1 rises 0.1 an evaluation, the target is 0.3.
    cfg = TrainParams(epochs=30, batch_size=4, warmup_ratio=0.0, patience=0, checkpoint_every=0, bf16="off")
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    evals = iter(range(1, 100))
    rising = lambda m: dict.fromkeys(("f1", "precision", "recall"), next(evals) / 10)  # noqa: E731
    run = RunContext(cfg, 1e-3, 0, torch.device("cpu"), False, Checkpoints(tmp_path / "ckpt", "rising"), rising,
                     stop_when=lambda scores: scores["f1"] >= 0.3)
    state = fit(model, PreparedSplit(prepared, "train").examples, run)
    assert [e["step"] for e in state.dev_evals] == [3, 6, 9]
    assert (state.stopped_early, state.step, state.best_step) == (True, 9, 9)
