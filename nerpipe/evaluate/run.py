"""The evaluate stage's work: predict dev and test with the trained model, score them with seqeval and
the document bootstrap, write the stage's outputs and log them onto the model's MLflow run.

Outputs (reports/eval): metrics.json (entity P/R/F1 micro and per type in conlleval and strict IOB2
modes, each F1 with its 95% bootstrap interval and the unit resampled, token accuracy and per-tag
report, before-fine-tuning F1), confusion_test.csv (per-type confusion, a DVC plot) and
predictions_{dev,test}.conll (`word gold pred` with the corpus' `-DOCSTART-` lines, scoreable by the
original conlleval). Wall times go to the timings file and MLflow only.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from nerpipe.core.atomic import atomic_path, write_json, write_text
from nerpipe.data.conll import format_predictions
from nerpipe.evaluate.bootstrap import with_f1_intervals
from nerpipe.evaluate.metrics import evaluation_metrics, flatten_metrics
from nerpipe.evaluate.splits import evaluate_splits, type_confusion
from nerpipe.model.description import usage_settings
from nerpipe.model.device import pick_device, set_tf32, use_bf16
from nerpipe.model.loading import load_tokenizer, load_trained
from nerpipe.track.results import log_evaluation
from nerpipe.track.store import run_of_model


@dataclass(frozen=True)
class EvaluatePaths:
    data: Path  # prepared data (input)
    model: Path  # data/model (input)
    untrained: Path  # reports/untrained/metrics.json (input)
    run: Path  # reports/train/run.json: the MLflow run to log onto (input)
    out: Path  # reports/eval
    timings: Path | None = None  # reports/timings/evaluate.json


def evaluate_model(params, paths):
    """Evaluate as `params` say (evaluate.batch_size, evaluate.bootstrap_samples, evaluate.bootstrap_seed);
    returns metrics.json's content."""
    started = time.perf_counter()
    run_id = run_of_model(paths.run)  # an unreachable tracking server fails here, in seconds
    device = pick_device()
    bf16 = use_bf16(usage_settings(paths.model)["bf16"], device)  # the precision the model trained in
    set_tf32(device, bf16)
    model = load_trained(paths.model).to(device)
    pad_id = load_tokenizer(str(paths.model)).pad_token_id
    results = evaluate_splits(model, paths.data, pad_id, params.evaluate.batch_size, device, bf16)
    bootstrap_started = time.perf_counter()
    scores = {name: with_f1_intervals(r["scores"], r["data"].gold, r["pred"], params.evaluate.bootstrap_samples,
                                      params.evaluate.bootstrap_seed, r["data"].doc_ids)
              for name, r in results.items()}
    bootstrap_seconds = time.perf_counter() - bootstrap_started
    print(f"bootstrap intervals ({params.evaluate.bootstrap_samples} resamples of the "
          f"{scores['test']['bootstrap']['unit']}s): {bootstrap_seconds:.2f} s")
    metrics = evaluation_metrics(scores, json.loads(paths.untrained.read_text()))
    for name, r in results.items():
        write_text(paths.out / f"predictions_{name}.conll",
                   format_predictions(r["data"].words, r["data"].gold, r["pred"], r["data"].doc_ids))
    with atomic_path(paths.out / "confusion_test.csv") as tmp:
        type_confusion(results["test"]["data"].gold, results["test"]["pred"]).to_csv(tmp, index=False)
    write_json(paths.out / "metrics.json", metrics)
    timings = {"seconds": round(time.perf_counter() - started, 2), "bootstrap_seconds": round(bootstrap_seconds, 2),
               **{f"{name}_seconds": r["seconds"] for name, r in results.items()}}
    if paths.timings:
        write_json(paths.timings, timings)
    log_evaluation(run_id, params.evaluate, metrics, timings, paths.out)
    return metrics


def summary_lines(metrics):
    """One line per split: F1 with its interval (conlleval), strict F1, and F1 before fine-tuning."""
    values = flatten_metrics(metrics)
    return [f"{name}: F1 {values[f'{name}.conlleval.f1']:.4f} [{values[f'{name}.conlleval.f1_ci_low']:.4f}, "
            f"{values[f'{name}.conlleval.f1_ci_high']:.4f}] (conlleval, {metrics[name]['bootstrap']['unit']} "
            f"bootstrap), {values[f'{name}.strict.f1']:.4f} (strict); before fine-tuning "
            f"{values[f'before_finetuning.{name}.conlleval.f1']:.4f}" for name in ("dev", "test")]
