"""Stage `report`: reports/report.md with the headline table, learning curve, confusion matrix and the
most frequent error kinds with example sentences.

    python stages/report.py --train reports/train --eval reports/eval --stats data/prepared/stats.json \
        --out reports/report.md --figures reports/figures
"""

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from nerpipe.core.atomic import atomic_path, write_text
from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.data.conll import read_predictions
from nerpipe.report.error_analysis import summarize
from nerpipe.report.render import (
    errors_section,
    headline_table,
    interval_note,
    method_line,
    plot_confusion,
    plot_learning_curve,
    timings_table,
)
from nerpipe.track import runs as tracking


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="train stage reports directory")
    parser.add_argument("--eval", type=Path, required=True, help="evaluate stage output directory")
    parser.add_argument("--stats", type=Path, required=True, help="prepare stage stats.json")
    parser.add_argument("--out", type=Path, required=True, help="report.md to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="for train.method")
    parser.add_argument("--figures", type=Path, required=True, help="directory for the PNG figures")
    args = parser.parse_args()
    with exit_on_user_error():
        run_id = tracking.run_of_model(args.train / "run.json")  # an unreachable tracking server fails here
        metrics = json.loads((args.eval / "metrics.json").read_text())
        train = json.loads((args.train / "metrics.json").read_text())
        stats = json.loads(args.stats.read_text())
        with atomic_path(args.figures, is_dir=True) as tmp:
            plot_learning_curve(pd.read_csv(args.train / "history.csv"), pd.read_csv(args.train / "dev_eval.csv"),
                                tmp / "learning_curve.png")
            plot_confusion(pd.read_csv(args.eval / "confusion_test.csv"), tmp / "confusion_test.png")
        timings = {"prepare": stats["seconds"], "train": train["train_seconds"], **{
            f"evaluate ({k})": v for k, v in metrics["seconds"].items()}}
        rel = os.path.relpath(args.figures, args.out.parent)  # image links relative to report.md
        errors = summarize(*read_predictions(args.eval / "predictions_test.conll"))
        write_text(args.out, "\n\n".join([
            "# NER report", headline_table(metrics), interval_note(metrics),
            method_line(load_params(args.params).train.method, train),
            f"Training: {train['steps']} optimizer steps, {train['epochs_completed']} epoch(s), best dev F1 "
            f"{train['best_dev_f1']:.4f} at step {train['best_step']}, {train['train_sentences_per_second']} "
            "sentences/s.",
            f"![learning curve]({rel}/learning_curve.png)", f"![confusion matrix]({rel}/confusion_test.png)",
            "## Most frequent errors (test)", errors_section(errors),
            "## Stage wall times", timings_table(timings)]) + "\n")
        tracking.log_report(run_id, args.out, args.figures)
        print(f"wrote {args.out} and figures in {args.figures}")


if __name__ == "__main__":
    main()
