"""The report stage's work: reports/report.md with the headline table, learning curve, confusion matrix
and the most frequent error kinds with example sentences, and its logging onto the model's MLflow run.

report.md is a function of the stage's deps, the same bytes for the same inputs: wall times, speed and
memory are not in it. The stages' timings files (reports/timings/, not a dep: dvc.yaml says why) are
read only to log stage_seconds.* to MLflow.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nerpipe.core.atomic import atomic_path, write_text
from nerpipe.data.conll import read_predictions
from nerpipe.report.error_analysis import summarize
from nerpipe.report.render import (
    TIMINGS_NOTE,
    errors_section,
    headline_table,
    interval_note,
    method_line,
    plot_confusion,
    plot_learning_curve,
)
from nerpipe.track.results import log_report
from nerpipe.track.store import run_of_model

TIMED_STAGES = ("prepare", "score_untrained", "train", "evaluate")


@dataclass(frozen=True)
class ReportPaths:
    train: Path  # reports/train (input)
    eval: Path  # reports/eval (input)
    timings: Path  # reports/timings (read for MLflow only)
    out: Path  # reports/report.md
    figures: Path  # reports/figures


def write_report(params, paths):
    """Write report.md and the figures as `params` say (train.method), and log them to MLflow."""
    run_id = run_of_model(paths.train / "run.json")  # an unreachable tracking server fails here
    metrics = json.loads((paths.eval / "metrics.json").read_text())
    train = json.loads((paths.train / "metrics.json").read_text())
    with atomic_path(paths.figures, is_dir=True) as tmp:
        plot_learning_curve(pd.read_csv(paths.train / "history.csv"), pd.read_csv(paths.train / "dev_eval.csv"),
                            tmp / "learning_curve.png")
        plot_confusion(pd.read_csv(paths.eval / "confusion_test.csv"), tmp / "confusion_test.png")
    rel = os.path.relpath(paths.figures, paths.out.parent)  # image links relative to report.md
    errors = summarize(*read_predictions(paths.eval / "predictions_test.conll"))
    write_text(paths.out, "\n\n".join([
        "# NER report", headline_table(metrics), interval_note(metrics), method_line(params.train.method, train),
        f"Training: {train['steps']} optimizer steps, {train['epochs_completed']} epoch(s), best dev F1 "
        f"{train['best_dev_f1']:.4f} at step {train['best_step']}.",
        f"![learning curve]({rel}/learning_curve.png)", f"![confusion matrix]({rel}/confusion_test.png)",
        "## Most frequent errors (test)", errors_section(errors), TIMINGS_NOTE]) + "\n")
    seconds = {stage: t["seconds"] for stage, t in read_timings(paths.timings).items()}
    log_report(run_id, paths.out, paths.figures, seconds)


def read_timings(directory):
    """{stage: its timings file} for the stages that wrote one into `directory`, in pipeline order."""
    files = {stage: directory / f"{stage}.json" for stage in TIMED_STAGES}
    return {stage: json.loads(path.read_text()) for stage, path in files.items() if path.exists()}
