"""Resumable training checkpoints, written atomically, refused when they come from other settings.

Layout under the checkpoint directory (data/checkpoints: not a DVC output, and ignored by git and DVC,
so that DVC can restore train from its run-cache and never wipes it):
  last/  model.safetensors + state.pt (optimizer, scheduler, the CPU RNG and that of the GPU in use,
         TrainState, settings)
         + best/, hard links to the best model as of that step
  best/  the best model by dev F1 so far, as save_pretrained writes it

The checkpoint policy, in one place (this module; nerpipe.train.run applies it):
- fit saves every train.checkpoint_every steps, on Ctrl-C, and at the end of training;
- a checkpoint resumes only when everything that decides the training's trajectory is the same
  (run_settings: trajectory_params, the prepared data, TRAJECTORY_CODE, versions, device, precision);
- last/ is removed (finish) only once data/model, the reports and the MLflow logging are all done: a
  stage that fails after training resumes at the final step and trains no further. A later run of the
  stage (forced, or after a code change) then trains from scratch.
"""

import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, load_model, save_model
from tqdm import tqdm

from nerpipe.core.atomic import atomic_path, recover
from nerpipe.core.errors import UserError
from nerpipe.core.params import flatten
from nerpipe.model.methods import save_trained


# The code that decides what a training computes, step by step (module names; a package covers its
# modules): the model and the fit it starts (trajectory), the loop and its batches, checkpoints,
# processes, the data the steps see, the model's loading, forward pass (families, device: precision and
# padding) and methods, and the dev scoring that picks the best model and stops early. A change to it
# discards a checkpoint; a change to any other module resumes it: the stage's wiring (run: MLflow,
# export, reports), the exported model's description, tracking, reports and prediction. So the fix for a
# failure after training keeps the final checkpoint that finish() holds back for exactly that case.
TRAJECTORY_CODE = ("nerpipe.train.trajectory", "nerpipe.train.loop", "nerpipe.train.checkpoints",
                   "nerpipe.train.distributed", "nerpipe.data.batching", "nerpipe.data.prepared",
                   "nerpipe.model.loading", "nerpipe.model.families", "nerpipe.model.device", "nerpipe.model.methods",
                   "nerpipe.evaluate.inference", "nerpipe.evaluate.scoring")


def trajectory_params(params):
    """The params that decide the training's trajectory, flat: lr, model.name, train.* and prepare.* (how
    the data was cut), less train.checkpoint_every (how often it is saved, not what it computes). Where
    MLflow records, what evaluate does and where the data came from (its bytes are in run_settings) do
    not change the run, so a checkpoint resumes across changes to them."""
    return {k: v for k, v in flatten(params, ("lr", "model", "train", "prepare")).items()
            if (k == "lr" or k.startswith(("model.", "train.", "prepare."))) and k != "train.checkpoint_every"}


def run_settings(params, *examples, device, bf16, tf32):
    """Everything that must match for a checkpoint to be resumed, as a flat dict: the params (see
    trajectory_params), a digest of the prepared data (prepared.WindowedExamples), the source of the
    TRAJECTORY_CODE modules loaded, the torch/transformers versions, and where and in which precision it trains: the
    device type and the resolved bf16 and TF32 (`train.bf16: auto` is one param, but bf16 on a GPU
    and fp32 on a CPU are different runs, and a resumed run must end as an uninterrupted one)."""
    data = hashlib.sha256()
    for split in examples:
        for column in (split.input_ids, split.labels, split.word_index):
            if column is not None:
                data.update(column.values.tobytes())
                data.update(column.offsets.tobytes())
    return {**params, "prepared data": data.hexdigest()[:16], **_source_digests(),
            "torch": str(torch.__version__), "transformers": str(transformers.__version__),
            "device": torch.device(device).type, "bf16 in use": _on_off(bf16), "tf32 in use": _on_off(tf32)}


def _on_off(flag):
    return "on" if flag else "off"


def _source_digests():
    """A short sha256 of each loaded TRAJECTORY_CODE module, by module name."""
    out = {}
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if (any(name == m or name.startswith(m + ".") for m in TRAJECTORY_CODE) and path.endswith(".py")
                and os.path.isfile(path)):
            out[f"source of {name}"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return out


def _differences(old, new, limit=5):
    """'train.seed 42 -> 7, lr 0.001 -> 0.002' for two settings dicts (or the two values otherwise)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{old!r} -> {new!r}"
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    shown = [f"{k} {old.get(k, '(none)')} -> {new.get(k, '(none)')}" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _link_or_copy(src, dst):
    """Hard links cost no space; best/ is only ever replaced whole, never changed in place."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _device_of(model):
    return next(model.parameters()).device


def _load_state(path, **kwargs):
    """state.pt with every tensor on the CPU, wherever it was saved: a checkpoint from a GPU opens on a
    machine without one (or with fewer GPUs), and load_state_dict moves optimizer state to the
    parameters' device. weights_only: state.pt holds tensors, numbers and strings; unpickling anything
    else could run code."""
    return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


# Settings that say where a run trains rather than what it trains: a checkpoint that differs in them is refused.
WORLD_KEYS = ("train.processes", "device")


class Checkpoints:
    def __init__(self, directory, settings):
        self.directory = Path(directory)
        self.settings = settings  # run_settings(...); any other value must simply be equal
        self.last_dir = self.directory / "last"
        self.best_dir = self.directory / "best"
        self.rank_rngs = None  # set by resume(): each process's RNG state, where several trained
        self.run_id = None  # the MLflow run this training logs to; a resume continues it (nerpipe.track.training_run)

    def save(self, model, optimizer, scheduler, state, rank_rngs=None):
        """rank_rngs: with several processes, each one's CPU and CUDA RNG state (distributed.rng_state), by rank."""
        with atomic_path(self.last_dir, is_dir=True) as tmp:
            # save_model writes a tensor that several names share once (peft's prompt tuning holds the word
            # embeddings under two names); load_model restores every name.
            save_model(model, str(tmp / "model.safetensors"), force_contiguous=True)
            # The best model so far belongs to this checkpoint: a best/ written after it (by a run that
            # was then killed) must not survive a resume that may not reach the same dev F1.
            if self.best_dir.is_dir():
                shutil.copytree(self.best_dir, tmp / "best", copy_function=_link_or_copy)
            device = _device_of(model)
            # loss_sum may be a tensor on the device (fit sums the loss there); saved as the float it reads as
            progress = dataclasses.asdict(dataclasses.replace(state, loss_sum=float(state.loss_sum)))
            # The RNG of the GPU in use only: all visible GPUs' (get_rng_state_all) would fail to restore
            # where fewer are visible, and no other GPU draws numbers for this run.
            torch.save({"settings": self.settings, "mlflow_run_id": self.run_id, "state": progress,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                        **({"rank_rngs": rank_rngs} if rank_rngs else {})},
                       tmp / "state.pt")

    def saved_run_id(self):
        """The MLflow run id saved with the last checkpoint if resume() will take it (same settings), else
        None. Cheap: the tensors in state.pt are memory-mapped on the CPU, not read, and never copied to a GPU."""
        try:
            saved = _load_state(self.last_dir / "state.pt", mmap=True)
        except Exception:  # absent or unreadable: resume() starts over
            return None
        return saved.get("mlflow_run_id") if saved.get("settings") == self.settings else None

    def save_best(self, model):
        with atomic_path(self.best_dir, is_dir=True) as tmp:
            save_trained(model, tmp)

    def resume(self, model, optimizer, scheduler):
        """Load the last checkpoint into model/optimizer/scheduler; return its TrainState, or None."""
        from nerpipe.train.loop import TrainState  # the state's type lives with the loop that fills it

        for saved in (self.last_dir, self.best_dir):  # a save killed between the two renames of its swap
            recover(saved)
        for leftover in self.directory.glob(".*"):  # temporaries of a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        if not (self.last_dir / "state.pt").exists():
            self.discard()  # a stale best/ from another run must not be mistaken for this run's
            return None
        try:
            saved = _load_state(self.last_dir / "state.pt")
            load_file(self.last_dir / "model.safetensors")  # readable: a truncated file fails here
        except Exception as err:  # truncated, foreign or half-deleted: never worth a crash
            return self._discard_because(f"it cannot be read ({type(err).__name__}: {str(err).splitlines()[0]})")
        if saved.get("settings") != self.settings:
            self._refuse_other_world(saved.get("settings"))
            return self._discard_because(f"it was written with other settings: "
                                         f"{_differences(saved.get('settings'), self.settings)}")
        load_model(model, str(self.last_dir / "model.safetensors"))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        device = _device_of(model)
        if saved["cuda_rng"] is not None and device.type == "cuda":  # the settings hold the device type
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        if (self.last_dir / "best").is_dir():
            with atomic_path(self.best_dir, is_dir=True) as tmp:
                shutil.copytree(self.last_dir / "best", tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
        else:
            shutil.rmtree(self.best_dir, ignore_errors=True)
        self.rank_rngs = saved.get("rank_rngs")
        state = TrainState(**saved["state"])
        tqdm.write(f"resuming from the checkpoint at step {state.step} (epoch {state.epoch}) in {self.directory}")
        return state

    def _refuse_other_world(self, saved):
        """A checkpoint written by another number of processes or on another kind of device is kept, not
        discarded: the usual cause is a launch that went wrong (a GPU not seen, a torchrun flag), and
        hours of training should not go with it."""
        if not (isinstance(saved, dict) and isinstance(self.settings, dict)):
            return
        keys = [k for k in WORLD_KEYS if saved.get(k) != self.settings.get(k)]
        if keys:
            how = [f"{k}={saved.get(k)}" if k != "device" else f"on {saved.get(k)}" for k in keys]
            raise UserError(f"{self.last_dir}: kept, not resumed: it was written with other settings "
                            f"({_differences(saved, self.settings)}); resume it with {' and '.join(how)}, "
                            f"or delete {self.directory} to train from the start")

    def _discard_because(self, reason):
        tqdm.write(f"discarding the checkpoint in {self.directory}: {reason}; training starts over")
        self.discard()
        return None

    def finish(self):
        """Everything the run produces is written and logged: drop last/ (renamed away first, so a kill
        mid-delete leaves no half of it)."""
        if self.last_dir.exists():
            doomed = Path(tempfile.mkdtemp(prefix=".finished.", dir=self.directory))
            os.replace(self.last_dir, doomed / "last")
            shutil.rmtree(doomed)

    def discard(self):
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
