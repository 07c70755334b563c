"""fit() on the prepared fixtures in one process, or in several under torchrun, for tests/test_distributed.py:

    python tests/ddp_fit.py MODEL_DIR PREPARED_DIR OUT_DIR [--dropout P] [--checkpoint-every N] [--keep-step N]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_fit.py MODEL_DIR PREPARED_DIR OUT_DIR

Writes, from the main process only, OUT_DIR/result.json (the loss of every optimizer step, the dev
evaluations, the final TrainState, each process's torch seed) and OUT_DIR/model.safetensors (the trained
weights). Checkpoints go to OUT_DIR/checkpoints, and a run there resumes them. Dropout is 0 by default:
with it, N processes draw other dropout masks than one, and the runs could not be compared.
--keep-step N: a copy of the checkpoint directory as the checkpoint of step N left it, in OUT_DIR/kept.
"""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from nerpipe.core.params import TrainParams
from nerpipe.data.prepared import PreparedSplit, read_labels
from nerpipe.model.loading import load_for_training
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.distributed import close_world, init_world
from nerpipe.train.loop import DevSet, RunContext, dev_scorer, fit

# The fixtures hold 12 training windows; batches of 11 make each epoch one optimizer step of two
# micro-batches, 11 windows and 1 (in shuffled order): the first tests DDP's no_sync, and the window
# alone leaves the second process an empty share.
CFG = TrainParams(epochs=4, batch_size=11, grad_accum_steps=2, warmup_ratio=0.0, patience=0, dropout=0.0, seed=42,
                  bf16="off", checkpoint_every=0)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dropout", type=float, default=CFG.dropout)
    parser.add_argument("--checkpoint-every", type=int, default=CFG.checkpoint_every)
    parser.add_argument("--keep-step", type=int, default=0)
    return parser.parse_args()


class KeptCheckpoints(Checkpoints):
    """Checkpoints that also copy themselves to `kept` at one step: the start of a resumed run."""

    def __init__(self, directory, settings, keep_step, kept):
        super().__init__(directory, settings)
        self.keep_step, self.kept = keep_step, kept

    def save(self, model, optimizer, scheduler, state, rank_rngs=None):
        super().save(model, optimizer, scheduler, state, rank_rngs)
        if state.step == self.keep_step:
            shutil.copytree(self.directory, self.kept)


def main():
    args = parse_args()
    model_dir, prepared, out = args.model_dir, args.prepared, args.out
    cfg = dataclasses.replace(CFG, dropout=args.dropout, checkpoint_every=args.checkpoint_every)
    world, device = init_world(torch.device("cpu"))
    model = load_for_training(model_dir, read_labels(prepared), cfg.dropout, cfg.seed)
    train, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    losses = {}

    def log(metrics, step):
        if "train_loss" in metrics:
            losses[step] = metrics["train_loss"]

    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    run = RunContext(cfg, 1e-3, 0, device, False, KeptCheckpoints(out / "checkpoints", "ddp-test", args.keep_step, out / "kept"),
                     dev_scorer(devset, 0, device, False), log, world=world,
                     log_every=1)
    state = fit(model, train.examples, run)
    seeds = world.gather_to_main(torch.initial_seed())
    if world.is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
        (out / "result.json").write_text(json.dumps({
            "losses": losses, "dev_evals": state.dev_evals, "steps": state.step,
            "sentences_seen": state.sentences_seen, "tokens_seen": state.tokens_seen,
            "best_dev_f1": state.best_dev_f1, "history": state.history, "seeds": seeds}))
    close_world(world)


if __name__ == "__main__":
    main()
