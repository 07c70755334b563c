"""Stage `score_untrained`: the pretrained model with its untrained head, scored on dev and test.

    python stages/score_untrained.py --data data/prepared --out reports/untrained/metrics.json \
        --timings reports/timings/score_untrained.json

The "before fine-tuning" row of the report. Its own stage, so a change of lr or any train.* param
does not redo it: it depends only on the data, model.name and the seed of the head.
"""

import argparse
import time
from pathlib import Path

from nerpipe.core.atomic import write_json
from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.data.prepared import read_labels
from nerpipe.evaluate.metrics import flatten_untrained, untrained_metrics
from nerpipe.evaluate.splits import evaluate_splits
from nerpipe.model.device import pick_device, set_tf32
from nerpipe.model.loading import load_for_training, load_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--timings", type=Path, help="JSON file for the stage's wall time (none if not given)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        params = load_params(args.params)
        started = time.perf_counter()
        model = load_for_training(params.model.name, read_labels(args.data), 0.0, params.train.seed)
        device = pick_device()
        set_tf32(device, False)  # strict fp32, as this stage always scores
        results = evaluate_splits(model.to(device), args.data, load_tokenizer(params.model.name).pad_token_id,
                                  params.evaluate.batch_size, device)
        untrained = untrained_metrics({name: r["scores"] for name, r in results.items()})
        write_json(args.out, untrained)
        if args.timings:  # for MLflow and the report
            write_json(args.timings, {"seconds": round(time.perf_counter() - started, 2)})
        values = flatten_untrained(untrained)
        for name in results:
            print(f"{name}: untrained-head F1 {values[f'before_finetuning.{name}.conlleval.f1']:.4f}")


if __name__ == "__main__":
    main()
