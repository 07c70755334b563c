"""The sentence bootstrap (nerpipe.evaluate.bootstrap) against cases whose answer is known: points for
perfect and constant predictions, a slow seqeval reference on a tiny set, and paired tests of
prediction files that differ on known sentences."""

import time

import numpy as np
import pytest
from seqeval.metrics import classification_report

from nerpipe.evaluate.bootstrap import (
    f1_intervals,
    holm_adjusted,
    paired_bootstrap,
    resample_weights,
    with_f1_intervals,
)
from nerpipe.evaluate.scoring import MODES, score_split

# Twelve sentences: entities of three types, a malformed I- start (conlleval and strict disagree).
GOLD = [["B-PER", "I-PER", "O"], ["B-LOC", "O"], ["O", "B-ORG", "I-ORG"], ["B-PER", "O", "B-LOC"],
        ["O", "O"], ["B-ORG", "O", "B-PER"], ["B-LOC", "I-LOC", "O"], ["O", "B-PER"], ["B-ORG"],
        ["B-LOC", "O", "O", "B-PER", "I-PER"], ["O", "B-ORG", "O"], ["B-PER", "O"]]
PRED = [["B-PER", "I-PER", "O"], ["B-PER", "O"], ["O", "I-ORG", "I-ORG"], ["B-PER", "O", "O"],
        ["O", "B-LOC"], ["B-ORG", "O", "B-PER"], ["B-LOC", "O", "O"], ["O", "B-PER"], ["O"],
        ["B-LOC", "O", "O", "B-PER", "I-PER"], ["O", "B-ORG", "O"], ["I-PER", "O"]]


def reference_intervals(gold, pred, mode, resamples, seed):
    """The slow way: seqeval's report on each resampled list of sentences (the same draws as
    resample_weights makes), then the 2.5th and 97.5th percentiles of each F1."""
    draws = np.random.default_rng(seed).integers(0, len(gold), size=(resamples, len(gold)))
    f1s = {}
    for rows in draws:
        report = classification_report([gold[i] for i in rows], [pred[i] for i in rows], output_dict=True,
                                        zero_division=0, **MODES[mode])
        for key, scores in report.items():
            if key not in ("macro avg", "weighted avg"):
                f1s.setdefault(key, []).append(scores["f1-score"])
    return {key: tuple(np.percentile(values, [2.5, 97.5])) for key, values in f1s.items()}


@pytest.mark.parametrize("mode", ["conlleval", "strict"])
def test_intervals_equal_a_slow_seqeval_bootstrap(mode):
    fast = f1_intervals(GOLD, PRED, mode, resamples=300, seed=7)
    slow = reference_intervals(GOLD, PRED, mode, resamples=300, seed=7)
    assert (fast["f1_ci_low"], fast["f1_ci_high"]) == pytest.approx(slow["micro avg"], abs=1e-6)
    assert set(fast["per_type"]) == set(slow) - {"micro avg"}
    for entity_type, interval in fast["per_type"].items():
        assert (interval["f1_ci_low"], interval["f1_ci_high"]) == pytest.approx(slow[entity_type], abs=1e-6)
    assert fast["f1_ci_low"] < fast["f1_ci_high"]  # the predictions are imperfect: a real interval


def test_perfect_predictions_give_the_point_100():
    for mode in ("conlleval", "strict"):
        intervals = f1_intervals(GOLD, GOLD, mode, resamples=200, seed=0)
        assert (intervals["f1_ci_low"], intervals["f1_ci_high"]) == (1.0, 1.0)
        assert {t: (v["f1_ci_low"], v["f1_ci_high"]) for t, v in intervals["per_type"].items()} == {
            "LOC": (1.0, 1.0), "ORG": (1.0, 1.0), "PER": (1.0, 1.0)}


def test_constant_predictions_give_a_point():
    nothing = [["O"] * len(s) for s in GOLD]
    intervals = f1_intervals(GOLD, nothing, "conlleval", resamples=200, seed=0)
    assert (intervals["f1_ci_low"], intervals["f1_ci_high"]) == (0.0, 0.0)
    assert all((v["f1_ci_low"], v["f1_ci_high"]) == (0.0, 0.0) for v in intervals["per_type"].values())
    every_word_a_person = [["B-PER"] * len(s) for s in GOLD]  # finds each one-word person, nothing else
    intervals = f1_intervals(GOLD, every_word_a_person, "conlleval", resamples=200, seed=0)
    assert (intervals["per_type"]["LOC"]["f1_ci_low"], intervals["per_type"]["LOC"]["f1_ci_high"]) == (0.0, 0.0)


def test_seeded_and_refusing_too_few_resamples():
    assert f1_intervals(GOLD, PRED, "conlleval", 200, seed=1) == f1_intervals(GOLD, PRED, "conlleval", 200, seed=1)
    assert f1_intervals(GOLD, PRED, "conlleval", 200, seed=1) != f1_intervals(GOLD, PRED, "conlleval", 200, seed=2)
    weights = resample_weights(12, 150, seed=3)
    assert weights.shape == (150, 12) and (weights.sum(axis=1) == 12).all()
    with pytest.raises(ValueError, match="1 bootstrap resamples: at least 100 are needed for a 95% interval"):
        resample_weights(12, 1, seed=0)


def test_metrics_get_the_interval_beside_each_f1():
    scores = with_f1_intervals(score_split(GOLD, PRED), GOLD, PRED, resamples=200, seed=0)
    for mode in ("conlleval", "strict"):
        assert list(scores[mode])[:5] == ["precision", "recall", "f1", "f1_ci_low", "f1_ci_high"]
        assert scores[mode]["f1_ci_low"] <= scores[mode]["f1"] <= scores[mode]["f1_ci_high"]
        for entity_type, s in scores[mode]["per_type"].items():
            assert list(s) == ["precision", "recall", "f1", "f1_ci_low", "f1_ci_high", "support"], entity_type
            assert 0.0 <= s["f1_ci_low"] <= s["f1_ci_high"] <= 1.0
    assert scores["token"] == score_split(GOLD, PRED)["token"]


def many_sentences(n=300):
    """n one-person sentences: gold, and a baseline that misses the person in every third sentence."""
    gold = [["O", "B-PER", "I-PER", "O"] if i % 2 else ["B-LOC", "O", "O"] for i in range(n)]
    base = [["O"] * len(s) if i % 3 == 0 else list(s) for i, s in enumerate(gold)]
    return gold, base


def test_paired_difference_when_b_fixes_many_errors():
    gold, base = many_sentences()
    missed = [i for i, s in enumerate(base) if s != gold[i]]
    better = [list(gold[i]) if i in missed[:60] else list(s) for i, s in enumerate(base)]  # fixes 60 of 100
    result = paired_bootstrap(gold, base, better, "conlleval", resamples=1000, seed=0)
    # A finds 200 of 300 entities (F1 = 2*200/(200+300) = 0.8), B 260 (F1 = 520/560).
    overall = result[None]
    assert overall["a"] == pytest.approx(0.8) and overall["b"] == pytest.approx(520 / 560, abs=1e-6)
    assert overall["delta"] == pytest.approx(520 / 560 - 0.8, abs=1e-6)
    assert 0 < overall["ci_low"] < overall["delta"] < overall["ci_high"]
    assert overall["p_value"] < 0.01
    assert set(result) == {None, "LOC", "PER"}
    reversed_result = paired_bootstrap(gold, better, base, "conlleval", resamples=1000, seed=0)[None]
    assert reversed_result["delta"] == -overall["delta"] and reversed_result["p_value"] == overall["p_value"]
    assert reversed_result["ci_high"] < 0


def test_paired_difference_of_one_flipped_sentence_is_not_significant():
    gold, base = many_sentences()
    one_fixed = [list(gold[0])] + base[1:]
    result = paired_bootstrap(gold, base, one_fixed, "conlleval", resamples=1000, seed=0)[None]
    assert result["delta"] == pytest.approx(2 * 201 / 501 - 0.8, abs=1e-6) and result["delta"] > 0
    assert result["ci_low"] <= 0 and result["p_value"] > 0.3
    same = paired_bootstrap(gold, base, base, "conlleval", resamples=1000, seed=0)[None]
    assert (same["delta"], same["ci_low"], same["ci_high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_a_test_set_of_3500_sentences_takes_seconds():
    gold, base = many_sentences(3500)
    started = time.perf_counter()
    f1_intervals(gold, base, "conlleval", resamples=1000, seed=0)
    f1_intervals(gold, base, "strict", resamples=1000, seed=0)
    assert time.perf_counter() - started < 10  # 0.6 s on the 2-core development machine


def test_a_split_without_entities_gives_f1_0_with_a_point_interval_and_p_1():
    """No gold and no predicted entity: score_split says F1 0, and so do the interval and the paired test
    (it used to be a ValueError from a reshape to (-1, 0, 3))."""
    nothing = [["O"] * len(s) for s in GOLD]
    scores = with_f1_intervals(score_split(nothing, nothing), nothing, nothing, resamples=200, seed=0)
    for mode in ("conlleval", "strict"):
        assert (scores[mode]["f1"], scores[mode]["f1_ci_low"], scores[mode]["f1_ci_high"]) == (0.0, 0.0, 0.0)
        assert scores[mode]["per_type"] == {}
    result = paired_bootstrap(nothing, nothing, nothing, "conlleval", resamples=200, seed=0)
    assert set(result) == {None}
    assert {k: result[None][k] for k in ("a", "b", "delta", "ci_low", "ci_high", "p_value")} == {
        "a": 0.0, "b": 0.0, "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def documents_of(sentences, size):
    return [i // size for i in range(sentences)]


def test_documents_are_resampled_where_the_split_has_them():
    gold, base = many_sentences(600)
    # Errors clustered by document (documents of 10 sentences, all wrong or all right) make the units
    # dependent: drawing the sentences one by one understates the spread.
    clustered = [list(g) if (i // 10) % 3 else ["O"] * len(g) for i, g in enumerate(gold)]
    docs = documents_of(len(gold), 10)
    by_document = with_f1_intervals(score_split(gold, clustered), gold, clustered, 1000, 0, docs)
    by_sentence = with_f1_intervals(score_split(gold, clustered), gold, clustered, 1000, 0)
    assert by_document["bootstrap"] == {"unit": "document", "units": 60}
    assert by_sentence["bootstrap"] == {"unit": "sentence", "units": 600}
    width = {name: s["conlleval"]["f1_ci_high"] - s["conlleval"]["f1_ci_low"]
             for name, s in (("document", by_document), ("sentence", by_sentence))}
    assert width["document"] > 2 * width["sentence"]
    # One document per sentence is the sentence bootstrap, draw for draw; a single document falls back to it.
    for docs in (list(range(len(gold))), [0] * len(gold)):
        assert f1_intervals(gold, base, "conlleval", 300, 5, docs) == f1_intervals(gold, base, "conlleval", 300, 5)
    paired = paired_bootstrap(gold, base, clustered, "conlleval", 300, 0, documents_of(len(gold), 10))
    assert (paired[None]["unit"], paired[None]["units"]) == ("document", 60)


def test_holm_adjusts_a_family_of_p_values_step_down():
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (never below an earlier one); 0.2 x 1
    assert holm_adjusted([0.01, 0.04, 0.03, 0.2]) == [0.04, 0.09, 0.09, 0.2]
    assert holm_adjusted([0.5, 0.6]) == [1.0, 1.0] and holm_adjusted([]) == []
