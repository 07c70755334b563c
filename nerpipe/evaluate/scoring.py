"""seqeval scores on word-level tag sequences (IOB2), in both of seqeval's modes.

- `conlleval`: seqeval's default, which reproduces the conlleval perl script (an `I-X` after `O`
  still starts an entity).
- `strict`: IOB2 scheme in strict mode; only well-formed entities count.
"""

from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2
from sklearn.metrics import classification_report as token_classification_report

MODES = {"conlleval": {}, "strict": {"mode": "strict", "scheme": IOB2}}


def entity_scores(gold, pred, mode="conlleval"):
    """Micro P/R/F1 over entities plus the same per type: {'precision', ..., 'per_type': {'PER': ...}}."""
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **MODES[mode])
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    per_type = {t: _round(v) for t, v in sorted(report.items())}
    return {**_round(micro), "per_type": per_type}


def _round(scores):
    return {"precision": round(float(scores["precision"]), 6), "recall": round(float(scores["recall"]), 6),
            "f1": round(float(scores["f1-score"]), 6), "support": int(scores["support"])}


def token_report(gold, pred):
    """Token-level accuracy and per-tag P/R/F1 (B-PER, I-PER, ...): where the model is wrong at word level."""
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in pred for t in s]
    tags = sorted(set(flat_gold) | set(flat_pred), key=lambda t: (t == "O", t[2:], t))
    report = token_classification_report(flat_gold, flat_pred, labels=tags, output_dict=True, zero_division=0)
    per_tag = {t: _round(report[t]) for t in tags}
    return {"accuracy": round(float(accuracy_score(gold, pred)), 6), "per_tag": per_tag}


def score_split(gold, pred):
    """Everything metrics.json holds for one split."""
    return {"conlleval": entity_scores(gold, pred, "conlleval"), "strict": entity_scores(gold, pred, "strict"),
            "token": token_report(gold, pred)}
