"""Stage `evaluate`: predict dev and test with the trained model and score them with seqeval.

    python stages/evaluate.py --data data/prepared --model data/model \
        --untrained reports/untrained/metrics.json --run reports/train/run.json --out reports/eval \
        --timings reports/timings/evaluate.json

Writes metrics.json (entity P/R/F1 micro and per type in conlleval and strict IOB2 modes, each F1 with
its 95% bootstrap interval over the split's sentences, token accuracy and per-tag report,
before-fine-tuning F1), confusion_test.csv (per-type confusion, a DVC
plot) and predictions_{dev,test}.conll (`word gold pred`, scoreable by the original conlleval).
The precision (bf16 or fp32) is the model's own, from its nerpipe_model.json; params.yaml gives only
evaluate.batch_size.
"""

import argparse
import json
import time
from pathlib import Path

from nerpipe.core.atomic import atomic_path, write_json, write_text
from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.data.conll import format_predictions
from nerpipe.evaluate.bootstrap import with_f1_intervals
from nerpipe.evaluate.metrics import evaluation_metrics, flatten_metrics
from nerpipe.evaluate.splits import evaluate_splits, type_confusion
from nerpipe.model.description import usage_settings
from nerpipe.model.device import pick_device, set_tf32, use_bf16
from nerpipe.model.loading import load_tokenizer, load_trained
from nerpipe.track.results import log_evaluation
from nerpipe.track.store import run_of_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--model", type=Path, required=True, help="trained model directory")
    parser.add_argument("--untrained", type=Path, required=True, help="metrics of the untrained head")
    parser.add_argument("--run", type=Path, required=True, help="run.json of the train stage (MLflow run id)")
    parser.add_argument("--out", type=Path, required=True, help="directory for metrics, confusion, predictions")
    parser.add_argument("--timings", type=Path, help="JSON file for the stage's wall times (none if not "
                        "given)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        params = load_params(args.params)
        started = time.perf_counter()
        run_id = run_of_model(args.run)  # an unreachable tracking server fails here, in seconds
        device = pick_device()
        bf16 = use_bf16(usage_settings(args.model)["bf16"], device)  # the precision the model trained in
        set_tf32(device, bf16)
        model = load_trained(args.model).to(device)
        pad_id = load_tokenizer(str(args.model)).pad_token_id
        results = evaluate_splits(model, args.data, pad_id, params.evaluate.batch_size, device, bf16)
        bootstrap_started = time.perf_counter()
        scores = {name: with_f1_intervals(r["scores"], r["data"].gold, r["pred"], params.evaluate.bootstrap_samples,
                                          params.evaluate.bootstrap_seed) for name, r in results.items()}
        bootstrap_seconds = time.perf_counter() - bootstrap_started
        print(f"bootstrap intervals ({params.evaluate.bootstrap_samples} resamples): {bootstrap_seconds:.2f} s")
        metrics = evaluation_metrics(scores, json.loads(args.untrained.read_text()))
        for name, r in results.items():
            write_text(args.out / f"predictions_{name}.conll", format_predictions(r["data"].words, r["data"].gold,
                                                                                  r["pred"]))
        with atomic_path(args.out / "confusion_test.csv") as tmp:
            type_confusion(results["test"]["data"].gold, results["test"]["pred"]).to_csv(tmp, index=False)
        write_json(args.out / "metrics.json", metrics)
        timings = {"seconds": round(time.perf_counter() - started, 2),
                   "bootstrap_seconds": round(bootstrap_seconds, 2), **{
            f"{name}_seconds": r["seconds"] for name, r in results.items()}}
        if args.timings:
            write_json(args.timings, timings)
        log_evaluation(run_id, params.evaluate, metrics, timings, args.out)
        values = flatten_metrics(metrics)
        for name in results:
            print(f"{name}: F1 {values[f'{name}.conlleval.f1']:.4f} [{values[f'{name}.conlleval.f1_ci_low']:.4f}, "
                  f"{values[f'{name}.conlleval.f1_ci_high']:.4f}] (conlleval), {values[f'{name}.strict.f1']:.4f} "
                  f"(strict); before fine-tuning {values[f'before_finetuning.{name}.conlleval.f1']:.4f}")


if __name__ == "__main__":
    main()
