"""What the train stage makes of a finished training: the model directory, the reports and the timings.

Kept apart from nerpipe.train.run on purpose: this code does not decide what the training computes, so
a change to it resumes a checkpoint (nerpipe.train.checkpoints.TRAJECTORY_CODE).
"""

import shutil

import pandas as pd

from nerpipe.core.atomic import atomic_path, write_json
from nerpipe.model.description import describe_trained
from nerpipe.train.footprint import footprint
from nerpipe.train.loop import speed, summary


def export_model(best_dir, tokenizer, out, prepared, params):
    """data/model: the best model (a save_pretrained directory, as Checkpoints.save_best wrote it), its
    tokenizer and nerpipe_model.json (what using it needs: labels, windows, context, method, precision,
    the data it learned from), replaced whole."""
    with atomic_path(out, is_dir=True) as tmp:
        shutil.copytree(best_dir, tmp, dirs_exist_ok=True)
        tokenizer.save_pretrained(tmp)
        describe_trained(tmp, prepared, params.prepare, params.train.bf16)


def write_reports(state, total_steps, model, device, model_dir, reports, timings_file, seconds):
    """reports/train (history.csv, dev_eval.csv, metrics.json: the same bytes for the same inputs) and
    the timings file (wall times, speed and peak memory, different on every run); returns both dicts."""
    for name, rows in (("history.csv", state.history), ("dev_eval.csv", state.dev_evals)):
        with atomic_path(reports / name) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    used = footprint(model, device, model_dir)
    memory = {k: used.pop(k) for k in ("peak_rss_mib", "peak_gpu_mib") if k in used}
    metrics = {**summary(state, total_steps), **used}
    timings = {"seconds": round(seconds, 2), **speed(state), **memory}
    write_json(reports / "metrics.json", metrics)
    if timings_file:
        write_json(timings_file, timings)
    return metrics, timings
