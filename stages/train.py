"""Stage `train`: fine-tune model.name for token classification, keep the best model by dev F1.

    python stages/train.py --data data/prepared --model-out data/model --checkpoints data/checkpoints \
        --reports reports/train

With train.processes: N > 1 it runs again as N processes under torchrun (nerpipe/train/distributed.py).
Resumes from the last checkpoint when one from the same params exists; Ctrl-C stops cleanly after
writing one. Records the run to MLflow (see nerpipe/track/runs.py).
"""

import argparse
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from nerpipe.core.atomic import atomic_path, write_json
from nerpipe.core.errors import Interrupted, exit_on_user_error
from nerpipe.core.params import TRAIN_SECTIONS, flatten, load_params
from nerpipe.data.prepared import PreparedSplit, read_labels
from nerpipe.model.description import describe_trained
from nerpipe.model.device import pick_device, set_tf32, use_bf16
from nerpipe.model.loading import count_parameters, load_for_training, load_tokenizer
from nerpipe.model.methods import prepare_for_training
from nerpipe.track import runs as tracking
from nerpipe.track.trained_model import log_training
from nerpipe.train.checkpoints import Checkpoints, run_settings
from nerpipe.train.distributed import close_world, init_world, launch
from nerpipe.train.footprint import footprint
from nerpipe.train.loop import DevSet, RunContext, dev_scorer, fit, plan_steps, summary


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--model-out", type=Path, required=True, help="where the best model is saved")
    parser.add_argument("--checkpoints", type=Path, required=True, help="resumable checkpoint directory")
    parser.add_argument("--reports", type=Path, required=True, help="history CSVs, metrics.json, run.json")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser.parse_args()


def main():
    started = time.perf_counter()
    args = parse_args()
    with exit_on_user_error():
        params = load_params(args.params)
        launch(params.train.processes)  # with N > 1 this script runs again, N times, under torchrun
        world, device = init_world(pick_device())
        try:
            train(args, params, world, device, started)
        finally:
            close_world(world)


def train(args, params, world, device, started):
    """Every process trains; the main one alone records to MLflow and writes the outputs."""
    # An unreachable tracking server fails here, in seconds, before the model loads.
    experiment_id = tracking.connect(params.mlflow.experiment) if world.is_main else None
    labels = read_labels(args.data)
    model = prepare_for_training(load_for_training(params.model.name, labels, params.train.dropout, params.train.seed),
                                 params.train, params.prepare.max_length)
    tokenizer = load_tokenizer(params.model.name)
    bf16 = use_bf16(params.train.bf16, device)
    tf32 = set_tf32(device, bf16)
    train_split, dev = PreparedSplit(args.data, "train"), PreparedSplit(args.data, "valid")
    # How often checkpoints are written, what evaluate does and where MLflow records do not change
    # the training run, so a checkpoint resumes across changes to them.
    resumable = {k: v for k, v in flatten(params, TRAIN_SECTIONS).items()
                 if not k.startswith(("mlflow.", "evaluate.")) and k != "train.checkpoint_every"}
    checkpoints = Checkpoints(args.checkpoints, run_settings(resumable, train_split.examples, dev.examples,
                                                            device=device, bf16=bf16, tf32=tf32))
    trainable, total = count_parameters(model)
    steps_per_epoch, total_steps = plan_steps(len(train_split.examples), params.train)
    if world.is_main:
        print(f"device {device} (bf16 {'on' if bf16 else 'off'}, TF32 {'on' if tf32 else 'off'}) x {world.size} "
              f"process(es), method {params.train.method}: {trainable:,} of {total:,} parameters train "
              f"({100 * trainable / total:.2f}%), {total_steps} optimizer steps")
    recording = (tracking.training_run(experiment_id, params, checkpoints, device, args.data) if world.is_main
                 else nullcontext())
    with recording as run:
        devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, params.train.batch_size)
        state = fit(model.to(device), train_split.examples, RunContext(
            params.train, params.lr, tokenizer.pad_token_id, device, bf16, checkpoints,
            evaluate_dev=dev_scorer(devset, tokenizer.pad_token_id, device, bf16),
            log_metrics=tracking.step_logger(steps_per_epoch), world=world))
        if not world.is_main:
            return
        with atomic_path(args.model_out, is_dir=True) as tmp:
            shutil.copytree(checkpoints.best_dir, tmp, dirs_exist_ok=True)
            tokenizer.save_pretrained(tmp)
            describe_trained(tmp, args.data, params.prepare, params.train.bf16)  # nerpipe_model.json
        for name, rows in (("history.csv", state.history), ("dev_eval.csv", state.dev_evals)):
            with atomic_path(args.reports / name) as tmp:
                pd.DataFrame(rows).to_csv(tmp, index=False)
        metrics = {**summary(state, total_steps), **footprint(model, device, args.model_out)}
        write_json(args.reports / "metrics.json", metrics)
        log_training(metrics, time.perf_counter() - started, args.data, args.reports, args.model_out, params)
        tracking.write_run_file(args.reports / "run.json", run)  # last: evaluate and report resume this run
    print(f"best dev F1 {state.best_dev_f1:.4f} at step {state.best_step}; model saved to {args.model_out}")


if __name__ == "__main__":
    try:
        main()
    except Interrupted as stop:
        print(stop)
        raise SystemExit(130)
