"""Classify entity-level errors: what a person reading the report wants to know first."""

from collections import Counter, defaultdict

from seqeval.metrics.sequence_labeling import get_entities

KINDS = {
    "wrong_type": "right span, wrong type",
    "boundary": "right type, wrong span",
    "boundary_and_type": "overlapping span of another type",
    "missed": "gold entity not found at all",
    "spurious": "predicted entity where there is none",
}


def _spans(tags):
    # seqeval's end index is inclusive; (type, start, end) with end exclusive reads better below.
    return [(t, s, e + 1) for t, s, e in get_entities(list(tags))]


def _overlaps(a, b):
    return a[1] < b[2] and b[1] < a[2]


def sentence_errors(gold_tags, pred_tags):
    """[(kind, gold_span or None, pred_span or None)] for one sentence."""
    gold, pred = _spans(gold_tags), _spans(pred_tags)
    exact = set(gold) & set(pred)
    errors = []
    for g in gold:
        if g in exact:
            continue
        over = [p for p in pred if p not in exact and _overlaps(g, p)]
        if not over:
            errors.append(("missed", g, None))
            continue
        p = over[0]
        same_span, same_type = (p[1], p[2]) == (g[1], g[2]), p[0] == g[0]
        kind = "wrong_type" if same_span else "boundary" if same_type else "boundary_and_type"
        errors.append((kind, g, p))
    matched = {e[2] for e in errors if e[2] is not None}
    errors += [("spurious", None, p) for p in pred if p not in exact and p not in matched
               and not any(_overlaps(p, g) for g in gold)]
    return errors


def mark(words, span, style):
    """The sentence with `span` bracketed: `[Sri Lanka]LOC`."""
    if span is None:
        return " ".join(words)
    t, s, e = span
    return " ".join(words[:s] + [f"{style}{' '.join(words[s:e])}{style}<sub>{t}</sub>"] + words[e:])


def summarize(words, gold, pred, examples_per_kind=3):
    """Counts per kind (with the most common type pairs) and a few example sentences per kind."""
    counts, pairs, examples = Counter(), defaultdict(Counter), defaultdict(list)
    for sentence_words, g_tags, p_tags in zip(words, gold, pred):
        for kind, g, p in sentence_errors(g_tags, p_tags):
            counts[kind] += 1
            pairs[kind][f"{g[0] if g else '-'} -> {p[0] if p else '-'}"] += 1
            if len(examples[kind]) < examples_per_kind:
                examples[kind].append({"gold": mark(sentence_words, g, "**"), "pred": mark(sentence_words, p, "**")})
    return [{"kind": kind, "description": KINDS[kind], "count": n,
             "top_pairs": pairs[kind].most_common(3), "examples": examples[kind]}
            for kind, n in counts.most_common()]
