"""Stage `report`: reports/report.md with the headline table, learning curve, confusion matrix and the
most frequent error kinds with example sentences.

    python stages/report.py --train reports/train --eval reports/eval --timings reports/timings \
        --out reports/report.md --figures reports/figures

The stage wall times come from reports/timings/, which is not a dep (dvc.yaml says why): the table shows
the timings there when the report was made.
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
from nerpipe.track.results import log_report
from nerpipe.track.store import run_of_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="train stage reports directory")
    parser.add_argument("--eval", type=Path, required=True, help="evaluate stage output directory")
    parser.add_argument("--timings", type=Path, required=True, help="directory of the stages' timings files")
    parser.add_argument("--out", type=Path, required=True, help="report.md to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="for train.method")
    parser.add_argument("--figures", type=Path, required=True, help="directory for the PNG figures")
    args = parser.parse_args()
    with exit_on_user_error():
        run_id = run_of_model(args.train / "run.json")  # an unreachable tracking server fails here
        metrics = json.loads((args.eval / "metrics.json").read_text())
        train = json.loads((args.train / "metrics.json").read_text())
        timings = read_timings(args.timings)
        with atomic_path(args.figures, is_dir=True) as tmp:
            plot_learning_curve(pd.read_csv(args.train / "history.csv"), pd.read_csv(args.train / "dev_eval.csv"),
                                tmp / "learning_curve.png")
            plot_confusion(pd.read_csv(args.eval / "confusion_test.csv"), tmp / "confusion_test.png")
        rel = os.path.relpath(args.figures, args.out.parent)  # image links relative to report.md
        errors = summarize(*read_predictions(args.eval / "predictions_test.conll"))
        write_text(args.out, "\n\n".join([
            "# NER report", headline_table(metrics), interval_note(metrics),
            method_line(load_params(args.params).train.method, {**train, **timings.get("train", {})}),
            f"Training: {train['steps']} optimizer steps, {train['epochs_completed']} epoch(s), best dev F1 "
            f"{train['best_dev_f1']:.4f} at step {train['best_step']}.",
            f"![learning curve]({rel}/learning_curve.png)", f"![confusion matrix]({rel}/confusion_test.png)",
            "## Most frequent errors (test)", errors_section(errors),
            "## Stage wall times", timings_table(timings)]) + "\n")
        log_report(run_id, args.out, args.figures, {stage: t["seconds"] for stage, t in timings.items()})
        print(f"wrote {args.out} and figures in {args.figures}")


def read_timings(directory):
    """{stage: its timings file} for the stages that wrote one into `directory`, in pipeline order."""
    files = {stage: directory / f"{stage}.json" for stage in ("prepare", "score_untrained", "train", "evaluate")}
    return {stage: json.loads(path.read_text()) for stage, path in files.items() if path.exists()}


if __name__ == "__main__":
    main()
