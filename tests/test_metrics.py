"""The metric catalogue (nerpipe.evaluate.metrics) on hand-written metrics files: the exact names and
values MLflow gets, entity types taken from the data, and the rows of report.md and the PR comment."""

import pytest

from nerpipe.evaluate.metrics import (
    entity_types,
    evaluation_metrics,
    flatten_metrics,
    flatten_untrained,
    headline_rows,
    metric_name,
    type_order,
    untrained_metrics,
)
from nerpipe.evaluate.scoring import score_split
from nerpipe.report.pr_report import EVAL_METRICS, TRAIN_METRICS, TRAIN_TIMINGS, metrics_table
from nerpipe.report.render import headline_table, interval_note


def scores(precision, recall, f1, support, **per_type):
    out = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {**out, "per_type": per_type} if per_type else out


def mode_scores(f1, types):
    """One mode's scores: overall P = R = f1, and each type's F1 as given."""
    return scores(f1, f1, f1, 3, **{t: scores(v, v, v, 1) for t, v in types.items()})


# A dataset whose types are not CoNLL's; dev finds person only, test finds everything.
METRICS = {
    "dev": {"conlleval": mode_scores(0.5, {"creative-work": 0.0, "person": 1.0}),
            "strict": mode_scores(0.4, {"creative-work": 0.0, "person": 0.8}),
            "token": {"accuracy": 0.9, "per_tag": {}}},
    "test": {"conlleval": mode_scores(1.0, {"creative-work": 1.0, "person": 1.0}),
             "strict": mode_scores(1.0, {"creative-work": 1.0, "person": 1.0}),
             "token": {"accuracy": 1.0, "per_tag": {}}},
    "before_finetuning": {"dev": {"conlleval": mode_scores(0.1, {"person": 0.2}), "strict": mode_scores(0.0, {})},
                          "test": {"conlleval": mode_scores(0.05, {}), "strict": mode_scores(0.0, {})}},
}


def test_flatten_gives_every_named_value_with_its_mlflow_name():
    def prf(prefix, value):
        return {f"{prefix}.{k}": value for k in ("precision", "recall", "f1")}

    expected = {**prf("dev.conlleval", 0.5), **prf("dev.conlleval.creative-work", 0.0),
                **prf("dev.conlleval.person", 1.0), "before_finetuning.dev.conlleval.f1": 0.1,
                **prf("dev.strict", 0.4), **prf("dev.strict.creative-work", 0.0), **prf("dev.strict.person", 0.8),
                "before_finetuning.dev.strict.f1": 0.0, "dev.token_accuracy": 0.9,
                **prf("test.conlleval", 1.0), **prf("test.conlleval.creative-work", 1.0),
                **prf("test.conlleval.person", 1.0), "before_finetuning.test.conlleval.f1": 0.05,
                **prf("test.strict", 1.0), **prf("test.strict.creative-work", 1.0), **prf("test.strict.person", 1.0),
                "before_finetuning.test.strict.f1": 0.0, "test.token_accuracy": 1.0}
    flat = flatten_metrics(METRICS)
    assert flat == expected
    assert list(flat) == list(expected)  # grouped by split, then mode
    assert not any(".PER." in name or "per_type" in name or "support" in name for name in flat)
    assert metric_name("test", "strict", "f1", "person") == "test.strict.person.f1"
    assert metric_name("dev", "conlleval", "f1", before=True) == "before_finetuning.dev.conlleval.f1"


def test_entity_types_come_from_the_file_sorted_by_name():
    assert entity_types(METRICS) == ["creative-work", "person"]
    other = {"dev": {"conlleval": mode_scores(1.0, {"ORG": 1.0, "LOC": 1.0})}}
    assert entity_types(METRICS, other) == ["LOC", "ORG", "creative-work", "person"]
    assert entity_types({}) == []
    assert type_order(["O", "PER", "MISC", "LOC", "ORG", "PER"]) == ["LOC", "MISC", "ORG", "PER", "O"]


def test_the_written_files_flatten_to_the_scores_of_known_predictions():
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O"]]
    found_per = [["B-PER", "I-PER", "O"], ["O", "O"]]  # 1 of 2 entities, no false positive
    untrained = untrained_metrics({"dev": score_split(gold, [["O"] * 3, ["B-PER", "O"]]),
                                   "test": score_split(gold, [["O"] * 3, ["O"] * 2])})
    assert set(untrained) == {"dev", "test"}  # no wall time: a DVC output, the same bytes for the same inputs
    assert set(untrained["dev"]) == {"conlleval", "strict"}  # no token report before fine-tuning
    assert flatten_untrained(untrained) == {
        "before_finetuning.dev.conlleval.f1": 0.0, "before_finetuning.dev.strict.f1": 0.0,
        "before_finetuning.test.conlleval.f1": 0.0, "before_finetuning.test.strict.f1": 0.0}
    metrics = evaluation_metrics({"dev": score_split(gold, found_per), "test": score_split(gold, gold)}, untrained)
    assert list(metrics) == ["dev", "test", "before_finetuning"]
    flat = flatten_metrics(metrics)
    assert flat["dev.conlleval.precision"] == 1.0 and flat["dev.conlleval.recall"] == 0.5
    assert flat["dev.conlleval.f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert flat["dev.strict.PER.f1"] == 1.0 and flat["dev.strict.LOC.f1"] == 0.0
    assert flat["dev.token_accuracy"] == 0.8 and flat["test.token_accuracy"] == 1.0
    assert len(flat) == 2 * (2 * 3 * 3 + 2 + 1)  # per split: 2 modes x (all, LOC, PER) x P/R/F1, before, token


def test_an_older_file_without_some_values_flattens_to_those_it_has():
    older = {"dev": {"conlleval": scores(0.5, 0.5, 0.5, 2)}}
    assert flatten_metrics(older) == {"dev.conlleval.precision": 0.5, "dev.conlleval.recall": 0.5,
                                      "dev.conlleval.f1": 0.5}


def test_headline_rows_and_report_table_list_the_types_of_the_data():
    assert headline_rows(METRICS) == [
        ("dev F1", "dev.conlleval.f1"), ("dev F1 creative-work", "dev.conlleval.creative-work.f1"),
        ("dev F1 person", "dev.conlleval.person.f1"),
        ("test F1", "test.conlleval.f1"), ("test F1 creative-work", "test.conlleval.creative-work.f1"),
        ("test F1 person", "test.conlleval.person.f1"),
        ("dev F1 before fine-tuning", "before_finetuning.dev.conlleval.f1"),
        ("test F1 before fine-tuning", "before_finetuning.test.conlleval.f1")]
    assert headline_table(METRICS).splitlines()[2:] == [
        "| dev | **all** | 50.00 | 50.00 | **50.00** | 40.00 | 10.00 | 3 |",
        "| dev | creative-work | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 1 |",  # no before-fine-tuning score: 0
        "| dev | person | 100.00 | 100.00 | 100.00 | 80.00 | 20.00 | 1 |",
        "| test | **all** | 100.00 | 100.00 | **100.00** | 100.00 | 5.00 | 3 |",
        "| test | creative-work | 100.00 | 100.00 | 100.00 | 100.00 | 0.00 | 1 |",
        "| test | person | 100.00 | 100.00 | 100.00 | 100.00 | 0.00 | 1 |"]


def test_pr_table_compares_the_types_either_revision_has():
    # `dvc metrics diff --all --json`: keys of the file joined with dots; the base scored `person` only.
    diff = {EVAL_METRICS: {"dev.conlleval.f1": {"old": 0.25, "new": 0.5},
                           "dev.conlleval.per_type.person.f1": {"old": 0.5, "new": 1.0},
                           "dev.conlleval.per_type.person.support": {"old": 1, "new": 1},
                           "dev.conlleval.per_type.creative-work.f1": {"old": None, "new": 0.0},
                           "before_finetuning.dev.conlleval.f1": {"old": 0.1, "new": 0.1}},
            TRAIN_TIMINGS: {"train_seconds": {"old": None, "new": 90.5}},
            TRAIN_METRICS: {"train_seconds": {"old": 100.0, "new": None}}}  # where a base before the timings file had it
    assert metrics_table(diff).splitlines()[2:] == [
        "| dev F1 | 25.00 | 50.00 | +25.00 | – | – |",
        "| dev F1 creative-work | – | 0.00 | – | – | – |",
        "| dev F1 person | 50.00 | 100.00 | +50.00 | – | – |",
        "| test F1 | – | – | – | – | – |",
        "| test F1 creative-work | – | – | – | – | – |",
        "| test F1 person | – | – | – | – | – |",
        "| dev F1 before fine-tuning | 10.00 | 10.00 | +0.00 | – | – |",
        "| test F1 before fine-tuning | – | – | – | – | – |",
        "| train time (s) | 100.0 | 90.5 | -9.5 | – | – |"]
    # With the paired bootstrap's results (nerpipe.report.compare), keyed by metric name.
    # The primary test (test F1) at its own p; the other rows exploratory, at their Holm-adjusted p.
    paired = {"dev.conlleval.person.f1": {"a": 0.5, "b": 1.0, "delta": 0.5, "ci_low": 0.1, "ci_high": 0.9,
                                          "p_value": 0.012, "p_holm": 0.036},
              "dev.conlleval.f1": {"a": 0.25, "b": 0.5, "delta": 0.25, "ci_low": -0.05, "ci_high": 0.5,
                                   "p_value": 0.025, "p_holm": 0.075},
              "test.conlleval.f1": {"a": 0.25, "b": 0.5, "delta": 0.25, "ci_low": 0.01, "ci_high": 0.03,
                                    "p_value": 0.03, "p_holm": 0.03, "primary": True}}
    rows = metrics_table(diff, paired).splitlines()
    assert rows[0] == "| metric | base | PR | Δ | Δ 95% interval | p (significant at 0.05?) |"
    assert rows[2] == ("| dev F1 | 25.00 | 50.00 | +25.00 | [-5.00, +50.00] | Holm 0.075, not significant "
                       "(exploratory) |")  # 0.025 alone would pass 0.05: the correction decides
    assert rows[4] == ("| dev F1 person | 50.00 | 100.00 | +50.00 | [+10.00, +90.00] | Holm 0.036, significant "
                       "(exploratory) |")
    assert rows[5] == "| test F1 | – | – | – | [+1.00, +3.00] | 0.030, significant (primary) |"


def test_report_table_shows_each_f1_with_its_interval():
    with_interval = {**METRICS, "test": {
        "conlleval": {**scores(1.0, 1.0, 1.0, 3), "f1_ci_low": 0.84, "f1_ci_high": 0.853,
                      "per_type": {"person": {**scores(0.9, 0.9, 0.9, 1), "f1_ci_low": 0.8, "f1_ci_high": 1.0}}},
        "strict": {**scores(0.8, 0.8, 0.8, 3), "f1_ci_low": 0.75, "f1_ci_high": 0.85,
                   "per_type": {"person": scores(0.8, 0.8, 0.8, 1)}}}}
    assert headline_table(with_interval).splitlines()[5:] == [
        "| test | **all** | 100.00 | 100.00 | **100.00** [84.0, 85.3] | 80.00 [75.0, 85.0] | 5.00 | 3 |",
        "| test | person | 90.00 | 90.00 | 90.00 [80.0, 100.0] | 80.00 | 0.00 | 1 |"]
    flat = flatten_metrics(with_interval)
    assert flat["test.conlleval.f1_ci_low"] == 0.84 and flat["test.conlleval.person.f1_ci_high"] == 1.0
    assert "test.strict.person.f1_ci_low" not in flat  # a value the file lacks is left out
    assert interval_note(with_interval).startswith("F1 [95% interval]: a bootstrap over the split's sentences")
    with_unit = {**with_interval, "dev": {**with_interval["test"], "bootstrap": {"unit": "document", "units": 216}},
                 "test": {**with_interval["test"], "bootstrap": {"unit": "document", "units": 231}}}
    assert interval_note(with_unit).startswith("F1 [95% interval]: a bootstrap over the split's 216 dev documents, "
                                               "231 test documents (evaluate.bootstrap_samples resamples")
    assert interval_note(METRICS).startswith("No confidence intervals")
