"""Stage `evaluate`: predict dev and test with the trained model and score them with seqeval.

    python stages/evaluate.py --data data/prepared --model data/model \
        --untrained reports/untrained/metrics.json --run reports/train/run.json --out reports/eval \
        --timings reports/timings/evaluate.json

Writes metrics.json (each F1 with its 95% bootstrap interval over the split's documents, or its
sentences where the corpus has no document markers), confusion_test.csv and predictions_{dev,test}.conll.
The precision (bf16 or fp32) is the model's own, from its nerpipe_model.json; params.yaml gives
evaluate.batch_size, evaluate.bootstrap_samples and evaluate.bootstrap_seed. The work is
nerpipe/evaluate/run.py's.
"""

import argparse
from pathlib import Path

from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.evaluate.run import EvaluatePaths, evaluate_model, summary_lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--model", type=Path, required=True, help="trained model directory")
    parser.add_argument("--untrained", type=Path, required=True, help="metrics of the untrained head")
    parser.add_argument("--run", type=Path, required=True, help="run.json of the train stage (MLflow run id)")
    parser.add_argument("--out", type=Path, required=True, help="directory for metrics, confusion, predictions")
    parser.add_argument("--timings", type=Path, help="JSON file for the stage's wall times (none if not given)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        metrics = evaluate_model(load_params(args.params), EvaluatePaths(args.data, args.model, args.untrained,
                                                                         args.run, args.out, args.timings))
    print("\n".join(summary_lines(metrics)))


if __name__ == "__main__":
    main()
