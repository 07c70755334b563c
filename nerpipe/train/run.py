"""The train stage's work: fine-tune model.name on the prepared data, keep the best model by dev F1,
write data/model and the reports, record the run to MLflow.

Every process trains (train.processes > 1: torchrun, nerpipe.train.distributed); the main one alone
records to MLflow and writes the outputs. The checkpoint policy is nerpipe.train.checkpoints'; here it
is applied: settings from trajectory_params, and finish() only once everything is written and logged.
What the training computes is set up in nerpipe.train.trajectory: this module is only the wiring
around it (MLflow, export, reports), outside the checkpoint's code digest.
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from nerpipe.data.prepared import PreparedSplit, read_labels
from nerpipe.model.device import pick_device, set_tf32, torch_build, use_bf16
from nerpipe.model.loading import count_parameters, load_tokenizer
from nerpipe.track.store import connect
from nerpipe.track.trained_model import log_training
from nerpipe.track.training_run import training_run
from nerpipe.train.checkpoints import Checkpoints, run_settings, trajectory_params
from nerpipe.train.distributed import close_world, init_world, launch
from nerpipe.train.loop import plan_steps
from nerpipe.train.outputs import export_model, write_reports
from nerpipe.train.trajectory import train_on, training_model


@dataclass(frozen=True)
class TrainPaths:
    data: Path  # prepared data (input)
    model_out: Path  # data/model
    checkpoints: Path  # resumable checkpoints, not a DVC output
    reports: Path  # reports/train: history.csv, dev_eval.csv, metrics.json, run.json
    timings: Path | None = None  # reports/timings/train.json


def train_model(params, paths):
    """Train as `params` say; returns the final TrainState in the main process, None in the others.
    With train.processes N > 1 and not under torchrun yet, the calling script runs again N times instead."""
    started = time.perf_counter()
    launch(params.train.processes)
    world, device = init_world(pick_device())
    try:
        return _train(params, paths, world, device, started)
    finally:
        close_world(world)


def _train(params, paths, world, device, started):
    # An unreachable tracking server fails here, in seconds, before the model loads.
    experiment_id = connect(params.mlflow.experiment) if world.is_main else None
    model = training_model(params, read_labels(paths.data))
    tokenizer = load_tokenizer(params.model.name)
    bf16 = use_bf16(params.train.bf16, device)
    tf32 = set_tf32(device, bf16)
    train_split, dev = PreparedSplit(paths.data, "train"), PreparedSplit(paths.data, "valid")
    checkpoints = Checkpoints(paths.checkpoints, run_settings(trajectory_params(params), train_split.examples,
                                                              dev.examples, device=device, bf16=bf16, tf32=tf32))
    steps_per_epoch, total_steps = plan_steps(len(train_split.examples), params.train)
    if world.is_main:
        _describe(model, device, bf16, tf32, world, params.train.method, total_steps)
    recording = (training_run(experiment_id, params, checkpoints, device, paths.data) if world.is_main
                 else nullcontext())
    with recording as run:
        state = train_on(model, train_split, dev, params, tokenizer.pad_token_id, device, bf16, checkpoints,
                         run.step_logger(steps_per_epoch) if run else (lambda metrics, step: None), world)
        if not world.is_main:
            return None
        export_model(checkpoints.best_dir, tokenizer, paths.model_out, paths.data, params)
        metrics, timings = write_reports(state, total_steps, model, device, paths.model_out, paths.reports,
                                         paths.timings, time.perf_counter() - started)
        log_training(run, metrics, timings, paths.data, paths.reports, paths.model_out, params)
        run.write_run_file(paths.reports / "run.json")  # last: evaluate and report resume this run
    if run.complete:  # everything is written and logged: nothing left that the checkpoint could save
        checkpoints.finish()
    return state


def _describe(model, device, bf16, tf32, world, method, total_steps):
    trainable, total = count_parameters(model)
    print(f"device {device} ({torch_build()}; bf16 {'on' if bf16 else 'off'}, TF32 {'on' if tf32 else 'off'}) x {world.size} "
          f"process(es), method {method}: {trainable:,} of {total:,} parameters train "
          f"({100 * trainable / total:.2f}%), {total_steps} optimizer steps")
