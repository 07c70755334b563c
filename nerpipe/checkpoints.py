"""Resumable training checkpoints, written atomically, refused when they come from other params.

Layout under the checkpoint directory (a DVC `persist` output, so `dvc repro` does not wipe it):
  last/  model.safetensors + state.pt (optimizer, scheduler, RNG states, TrainState, fingerprint)
  best/  the best model by dev F1 so far, as save_pretrained writes it
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nerpipe.atomic import atomic_path


def fingerprint(settings):
    """A short hash of everything that must match for a checkpoint to be resumed."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoints:
    def __init__(self, directory, fingerprint):
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.last_dir = self.directory / "last"
        self.best_dir = self.directory / "best"

    def save(self, model, optimizer, scheduler, state):
        with atomic_path(self.last_dir, is_dir=True) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
            torch.save({"fingerprint": self.fingerprint, "state": dataclasses.asdict(state),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       tmp / "state.pt")

    def save_best(self, model):
        with atomic_path(self.best_dir, is_dir=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)

    def resume(self, model, optimizer, scheduler):
        """Load the last checkpoint into model/optimizer/scheduler; return its TrainState, or None."""
        from nerpipe.training import TrainState  # the state's type lives with the loop that fills it

        state_file = self.last_dir / "state.pt"
        if not state_file.exists():
            self.discard()  # a stale best/ from another run must not be mistaken for this run's
            return None
        saved = torch.load(state_file, weights_only=False)
        if saved["fingerprint"] != self.fingerprint:
            tqdm.write(f"discarding the checkpoint in {self.directory}: it was written with other params "
                       f"(fingerprint {saved['fingerprint']}, now {self.fingerprint}); training starts over")
            self.discard()
            return None
        model.load_state_dict(load_file(self.last_dir / "model.safetensors"))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        state = TrainState(**saved["state"])
        tqdm.write(f"resuming from the checkpoint at step {state.step} (epoch {state.epoch}) in {self.directory}")
        return state

    def discard(self):
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
