"""Stage `train`: fine-tune model.name for token classification, keep the best model by dev F1.

    python stages/train.py --data data/prepared --model-out data/model --checkpoints data/checkpoints \
        --reports reports/train --timings reports/timings/train.json

With train.processes: N > 1 it runs again as N processes under torchrun (nerpipe/train/distributed.py).
Resumes from the last checkpoint when one from the same settings exists; Ctrl-C stops cleanly after
writing one. Records the run to MLflow. The work is nerpipe/train/run.py's.
"""

import argparse
import sys
from pathlib import Path

from nerpipe.core.errors import Interrupted, exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.train.run import TrainPaths, train_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--model-out", type=Path, required=True, help="where the best model is saved")
    parser.add_argument("--checkpoints", type=Path, required=True,
                        help="resumable checkpoint directory (not a DVC output: git- and DVC-ignored)")
    parser.add_argument("--reports", type=Path, required=True, help="history CSVs, metrics.json, run.json")
    parser.add_argument("--timings", type=Path, help="JSON file for wall times, speed and memory (none if not "
                        "given)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # the device line and the time left as they come, piped too
    with exit_on_user_error():
        state = train_model(load_params(args.params), TrainPaths(args.data, args.model_out, args.checkpoints,
                                                                 args.reports, args.timings))
    if state is not None:  # the main process
        print(f"best dev F1 {state.best_dev_f1:.4f} at step {state.best_step}; model saved to {args.model_out}")


if __name__ == "__main__":
    try:
        main()
    except Interrupted as stop:
        print(stop)
        raise SystemExit(130)
