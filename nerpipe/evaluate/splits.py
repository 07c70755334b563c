"""Score a model on prepared splits and build the evaluate stage's outputs (metrics, confusion)."""

import time
from collections import Counter

import pandas as pd

from nerpipe.data.prepared import PreparedSplit
from nerpipe.evaluate.inference import predict_tags
from nerpipe.evaluate.scoring import score_split

EVAL_SPLITS = {"dev": "valid", "test": "test"}


def evaluate_splits(model, data_dir, pad_id, batch_size, device, bf16=False):
    """{'dev': (split, predicted tags, scores), 'test': ...} plus seconds spent per split."""
    results = {}
    for name, split in EVAL_SPLITS.items():
        started = time.perf_counter()
        data = PreparedSplit(data_dir, split)
        pred = predict_tags(model, data.examples, data.words, model.config.id2label, pad_id, batch_size, device,
                            bf16, desc=name)
        results[name] = {"data": data, "pred": pred, "scores": score_split(data.gold, pred),
                         "seconds": round(time.perf_counter() - started, 3)}
    return results


def entity_type(tag):
    return "O" if tag == "O" else tag[2:]


def type_confusion(gold, pred):
    """One row per word: the entity type of its gold and predicted tag (DVC's confusion template input)."""
    pairs = Counter((entity_type(g), entity_type(p)) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    rows = [{"actual": a, "predicted": p} for (a, p), n in sorted(pairs.items()) for _ in range(n)]
    return pd.DataFrame(rows, columns=["actual", "predicted"])
