"""The metric catalogue: the one place that knows the layout of the metrics files and the names of
their values (in MLflow, report.md and the pull-request comment).

    reports/untrained/metrics.json  {split: {mode: scores}}
    reports/eval/metrics.json       {split: {mode: scores, "token": {...}}, "before_finetuning": <the
                                     untrained file>}

split is dev or test; mode is conlleval or strict (nerpipe.evaluate.scoring); scores is {precision,
recall, f1, f1_ci_low, f1_ci_high, support, per_type: {entity type: {the same but per_type}}}, the
interval only after fine-tuning. A value's name is its path without `per_type`: test.strict.f1,
test.strict.PER.f1, test.conlleval.f1_ci_low, before_finetuning.dev.conlleval.f1, plus
dev.token_accuracy (docs/mlflow.md lists them). Wall times are not in these files, which are DVC
outputs and hold the same bytes for the same inputs: they go to reports/timings/ (see dvc.yaml).

Entity types are the per_type keys the files hold, never a fixed list. Every table and plot lists
them sorted by name, "O" (no entity) last: the order seqeval's per_type has in the file, and the same
for every run and revision (an order by support would move with the data).

Standard library only: the `nerpipe` CLI imports this through `nerpipe pr-report` on every command.
"""

SPLITS = ("dev", "test")
MODES = ("conlleval", "strict")
SCORES = ("precision", "recall", "f1")  # the per-entity values tracked; support is the data's, not the model's
INTERVAL = ("f1_ci_low", "f1_ci_high")  # F1's 95% bootstrap interval (nerpipe.evaluate.bootstrap)


def untrained_metrics(scores):
    """reports/untrained/metrics.json from score_split's output per split."""
    return {split: {mode: s[mode] for mode in MODES} for split, s in scores.items()}


def evaluation_metrics(scores, untrained):
    """reports/eval/metrics.json from score_split's output per split and the untrained file."""
    return {**scores, "before_finetuning": untrained}


def type_order(types):
    """Entity types sorted by name, "O" last: the order of every table and plot."""
    return sorted(set(types), key=lambda t: (t == "O", t))


def entity_types(*metrics, splits=SPLITS):
    """The entity types scored (per_type keys after fine-tuning) in any of the metrics files, in type_order."""
    return type_order(t for m in metrics for split in splits for mode in MODES
                      for t in m.get(split, {}).get(mode, {}).get("per_type", {}))


def scores_in(metrics, split, mode="conlleval", entity_type=None, before=False):
    """{precision, recall, f1, support} of one split and mode, over all entities or of one type, after
    fine-tuning or before it (the untrained head); {} where the file has none."""
    scores = (metrics.get("before_finetuning", {}) if before else metrics).get(split, {}).get(mode, {})
    if entity_type is not None:
        return scores.get("per_type", {}).get(entity_type, {})
    return {k: v for k, v in scores.items() if k != "per_type"}


def metric_name(split, mode, score, entity_type=None, before=False):
    """The flattened name of one value: metric_name("test", "strict", "f1", "PER") == "test.strict.PER.f1"."""
    parts = ("before_finetuning",) * before + (split, mode) + ((entity_type,) if entity_type is not None else ())
    return ".".join((*parts, score))


def flatten_metrics(metrics):
    """Every named value of an evaluate metrics.json, {name: float}: P/R/F1 and F1's interval per split
    and mode, overall and per type; F1 before fine-tuning; token accuracy. A value the file lacks (an
    older layout) is left out."""
    values = {}
    for split in SPLITS:
        for mode in MODES:
            for entity_type in (None, *entity_types(metrics, splits=(split,))):
                scores = scores_in(metrics, split, mode, entity_type)
                values |= {metric_name(split, mode, k, entity_type): float(scores[k]) for k in SCORES + INTERVAL
                           if k in scores}
            before = scores_in(metrics, split, mode, before=True)
            if "f1" in before:
                values[metric_name(split, mode, "f1", before=True)] = float(before["f1"])
        accuracy = metrics.get(split, {}).get("token", {}).get("accuracy")
        if accuracy is not None:
            values[f"{split}.token_accuracy"] = float(accuracy)
    return values


def flatten_untrained(untrained):
    """The named values of reports/untrained/metrics.json, by the names they have in the evaluate file."""
    return flatten_metrics({"before_finetuning": untrained})


def headline_rows(*metrics):
    """(label, name) of the summary rows, for one metrics file or several compared: entity F1
    (conlleval) of each split overall and per type, then each split's F1 before fine-tuning."""
    types = entity_types(*metrics)  # the same rows for both splits, and for every file compared
    rows = []
    for split in SPLITS:
        rows.append((f"{split} F1", metric_name(split, "conlleval", "f1")))
        rows += [(f"{split} F1 {t}", metric_name(split, "conlleval", "f1", t)) for t in types]
    rows += [(f"{split} F1 before fine-tuning", metric_name(split, "conlleval", "f1", before=True))
             for split in SPLITS]
    return rows
