"""Bootstrap over documents (or sentences): a 95% interval on each entity F1, and a paired test of two
systems' F1.

The resampling unit is the document where the split has document markers (CoNLL-2003's `-DOCSTART-`,
kept as doc_id in the prepared data and in the prediction files), else the sentence. Mentions repeat
within a document, and `prepare.context` shares model inputs across a document's sentences, so the
sentences of one document are not independent draws: resampling them one by one makes the interval too
narrow (docs/results.md measures by how much). A split without markers (all sentences doc 0) falls
back to sentences, and metrics.json and every table say which unit was used.

Count once, resample many times. Each sentence's true positives, predicted and gold entities per
entity type (seqeval's own entity extraction, in either mode of nerpipe.evaluate.scoring) make one
(sentences, types, 3) count array. A resample draws the units with replacement: a vector of how often
each unit is drawn, spread to its sentences, so the counts of all resamples are one matrix product,
and their F1s follow with numpy. 1,000 resamples of CoNLL-2003 test (3,453 sentences) take well under
a second (docs/experiments.md, "Confidence intervals and significance").

The interval is the percentile interval (2.5th and 97.5th percentile of the resampled F1s). A resample
with neither a gold nor a predicted entity of a type has no F1 for that type (seqeval would say 0):
it is left out of that type's percentiles, so perfect predictions give the point [1, 1]. A split with
no entity at all, gold or predicted, has F1 0 (as seqeval scores it) with the point interval [0, 0],
and a paired test on it gives delta 0 with p = 1.

The paired test resamples the same units for both systems and asks how often the resampled
difference strays from the observed one by at least the observed difference: a two-sided variant of
the shift test (Efron and Tibshirani 1993, ch. 16: the bootstrap distribution of the difference,
shifted to mean 0, as the null distribution), p = (1 + that count) / (1 + resamples), so p is never 0.
Berg-Kirkpatrick, Burkett and Klein (2012, "An Empirical Investigation of Statistical Significance in
NLP") use the one-sided form, counting only resamples whose difference exceeds twice the observed one
in the observed direction; the two-sided form here is the stricter (its p is at least as large, up to
twice). When several differences are tested at once, holm_adjusted corrects their p-values for it.
"""

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Entities

from nerpipe.core.params import MIN_RESAMPLES

CONFIDENCE = 0.95
TP, PRED, GOLD = range(3)


def sentence_entities(tags, mode):
    """{(type, start, end)} of one sentence's IOB2 tags, as seqeval finds them in `mode`."""
    if mode == "strict":
        return {(e.tag, e.start, e.end) for e in Entities([tags], IOB2).entities[0]}
    return set(get_entities(tags))


def entities_of(sentences, mode):
    """[{(type, start, end)}] per sentence."""
    return [sentence_entities(tags, mode) for tags in sentences]


def types_of(*entity_lists):
    """The entity types found in any of the entities_of lists, sorted (seqeval's per_type order)."""
    return sorted({e[0] for entities in entity_lists for sentence in entities for e in sentence})


def count_entities(gold_entities, pred_entities, types):
    """int array (sentences, types, 3): true positives, predicted and gold entities of each type."""
    index = {t: i for i, t in enumerate(types)}
    counts = np.zeros((len(gold_entities), len(types), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold_entities, pred_entities)):
        for kind, entities in ((TP, g & p), (PRED, p), (GOLD, g)):
            for entity in entities:
                counts[i, index[entity[0]], kind] += 1
    return counts


def sentence_counts(gold, pred, mode):
    """(types, counts) of one prediction: the types of gold and pred, and count_entities' array."""
    gold_entities, pred_entities = entities_of(gold, mode), entities_of(pred, mode)
    types = types_of(gold_entities, pred_entities)
    return types, count_entities(gold_entities, pred_entities, types)


def resample_weights(units, resamples, seed):
    """(resamples, units) int array: how often each resample draws each unit (n draws of n)."""
    check_resamples(resamples)
    draws = np.random.default_rng(seed).integers(0, units, size=(resamples, units))
    offsets = np.arange(resamples)[:, None] * units  # one bincount for all rows
    return np.bincount((draws + offsets).ravel(), minlength=resamples * units).reshape(resamples, units)


def check_resamples(resamples):
    """ValueError below MIN_RESAMPLES (params.py refuses such a setting first; `nerpipe compare` says it
    as a UserError)."""
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"{resamples} bootstrap resamples: at least {MIN_RESAMPLES} are needed for a "
                         f"{CONFIDENCE:.0%} interval")


def resampling_units(sentences, doc_ids=None):
    """(unit index of each sentence, "document" or "sentence"): documents where `doc_ids` (one per
    sentence) name more than one, else each sentence its own unit."""
    if doc_ids is not None and len(doc_ids) != sentences:
        raise ValueError(f"{len(doc_ids)} document ids for {sentences} sentences")
    if doc_ids is None or len(set(doc_ids)) < 2:
        return np.arange(sentences), "sentence"
    return np.unique(np.asarray(doc_ids), return_inverse=True)[1], "document"


def sentence_weights(sentences, doc_ids, resamples, seed):
    """((resamples, sentences) weights, unit, number of units): each sentence weighs as often as its unit
    is drawn, so a drawn document brings all its sentences."""
    index, unit = resampling_units(sentences, doc_ids)
    units = int(index.max()) + 1 if sentences else 0
    return resample_weights(units, resamples, seed)[:, index], unit, units


def f1_of(counts):
    """F1 from (..., types, 3) counts: (..., types) per type and (...,) over all types (micro); NaN
    where there is no gold and no predicted entity."""
    def f1(c):
        denominator = c[..., PRED] + c[..., GOLD]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, 2 * c[..., TP] / denominator, np.nan)

    return f1(counts), f1(counts.sum(axis=-2))


def resampled_counts(counts, weights):
    """(resamples, types, 3) counts of every resample: one matrix product (exact: integers in float64)."""
    n, types, _ = counts.shape
    resampled = weights.astype(np.float64) @ counts.reshape(n, types * 3).astype(np.float64)
    return resampled.reshape(len(weights), types, 3)  # explicit: with no entity type, -1 cannot be inferred


def percentile_interval(values, fallback):
    """(low, high) of the central CONFIDENCE share of the finite values; (fallback, fallback) if none."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return fallback, fallback
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return round(float(low), 6), round(float(high), 6)


def f1_intervals(gold, pred, mode, resamples, seed, doc_ids=None):
    """{"f1_ci_low", "f1_ci_high", "per_type": {type: {"f1_ci_low", "f1_ci_high"}}} of one split and mode,
    resampling documents where `doc_ids` name several (resampling_units)."""
    types, counts = sentence_counts(gold, pred, mode)
    weights, _, _ = sentence_weights(len(gold), doc_ids, resamples, seed)
    per_type, micro = f1_of(resampled_counts(counts, weights))
    point_per_type, point_micro = f1_of(counts.sum(axis=0))

    def entry(values, point):
        low, high = percentile_interval(values, float(np.nan_to_num(point)))
        return {"f1_ci_low": low, "f1_ci_high": high}

    return {**entry(micro, point_micro),
            "per_type": {t: entry(per_type[:, i], point_per_type[i]) for i, t in enumerate(types)}}


def with_f1_intervals(scores, gold, pred, resamples, seed, doc_ids=None):
    """score_split's output for one split with f1_ci_low/f1_ci_high beside each entity F1 (both modes), and
    "bootstrap": {"unit": "document" or "sentence", "units": how many} (what was resampled)."""
    _, unit = resampling_units(len(gold), doc_ids)
    out = dict(scores)
    out["bootstrap"] = {"unit": unit, "units": len(set(doc_ids)) if unit == "document" else len(gold)}
    for mode in ("conlleval", "strict"):
        intervals = f1_intervals(gold, pred, mode, resamples, seed, doc_ids)
        out[mode] = _insert_after_f1(scores[mode], intervals)
        out[mode]["per_type"] = {t: _insert_after_f1(s, intervals["per_type"][t])
                                 for t, s in scores[mode]["per_type"].items()}
    return out


def _insert_after_f1(scores, interval):
    """scores with the interval's keys right after "f1", so metrics.json reads f1, f1_ci_low, f1_ci_high."""
    out = {}
    for key, value in scores.items():
        out[key] = value
        if key == "f1":
            out |= {k: v for k, v in interval.items() if k != "per_type"}
    return out


def paired_bootstrap(gold, pred_a, pred_b, mode, resamples, seed, doc_ids=None):
    """Paired bootstrap of F1(B) - F1(A) on the same units (documents where `doc_ids` name several, else
    sentences), overall (key None) and per type: {None or type: {"a", "b", "delta", "ci_low", "ci_high",
    "p_value", "unit", "units"}}, F1 as fractions."""
    gold_entities, a_entities, b_entities = (entities_of(tags, mode) for tags in (gold, pred_a, pred_b))
    types = types_of(gold_entities, a_entities, b_entities)
    counts_a, counts_b = (count_entities(gold_entities, p, types) for p in (a_entities, b_entities))
    weights, unit, units = sentence_weights(len(gold), doc_ids, resamples, seed)
    (a_types, a_all), (b_types, b_all) = f1_of(counts_a.sum(axis=0)), f1_of(counts_b.sum(axis=0))
    (ra_types, ra_all), (rb_types, rb_all) = (f1_of(resampled_counts(c, weights)) for c in (counts_a, counts_b))
    result = {None: _difference(a_all, b_all, rb_all - ra_all)}
    for i, t in enumerate(types):
        result[t] = _difference(a_types[i], b_types[i], rb_types[:, i] - ra_types[:, i])
    return {t: {**r, "unit": unit, "units": units} for t, r in result.items()}


def _difference(a, b, resampled):
    """Observed F1s (NaN: no entity of the type, scored 0 as seqeval does), the difference's interval
    and the two-sided shift p-value (no finite resample: no evidence of a difference, p = 1)."""
    a, b = float(np.nan_to_num(a)), float(np.nan_to_num(b))
    delta = b - a
    resampled = resampled[np.isfinite(resampled)]
    low, high = percentile_interval(resampled, round(delta, 6))
    extreme = int(np.count_nonzero(np.abs(resampled - delta) >= abs(delta) - 1e-12))
    return {"a": round(a, 6), "b": round(b, 6), "delta": round(delta, 6), "ci_low": low, "ci_high": high,
            "p_value": round((1 + extreme) / (1 + resampled.size), 6)}


def holm_adjusted(p_values):
    """Holm's (1979) step-down adjustment of a family of p-values, in their order: the k-th smallest of m
    is multiplied by m - k + 1, made non-decreasing, capped at 1. Rejecting where the adjusted p < alpha
    keeps the chance of any false positive in the family at most alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = round(running, 6)
    return adjusted
