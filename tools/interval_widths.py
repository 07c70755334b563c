"""How much wider is a document bootstrap than a sentence bootstrap? Both 95% intervals of each F1
(conlleval, overall and per type) of one run's prediction files, side by side (docs/results.md,
"Document-level intervals").

    python tools/interval_widths.py reports/eval                   # a run's predictions_{dev,test}.conll
    python tools/interval_widths.py --baseline /path/to/conll2003 out   # first write CoNLL's classic baseline

--baseline writes real predictions without a model: each word's most frequent training tag (O where the word
never occurs in train.txt), on the real dev and test files, in the evaluate stage's format with the corpus'
documents; then measures them.
"""

import argparse
import time
from collections import Counter, defaultdict
from pathlib import Path

from nerpipe.data.conll import format_predictions, parse_prediction_documents, read_conll, to_iob2
from nerpipe.evaluate.bootstrap import f1_intervals
from nerpipe.evaluate.scoring import entity_scores

SPLITS = {"dev": "valid", "test": "test"}


def write_baseline(data, out):
    """predictions_{dev,test}.conll of the most-frequent-training-tag tagger."""
    counts = defaultdict(Counter)
    for sentence in read_conll(data / "train.txt"):
        for word, tag in zip(sentence.words, to_iob2(sentence.tags)):
            counts[word][tag[2:] if tag != "O" else "O"] += 1
    out.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        sentences = read_conll(data / f"{name}.txt")
        pred = [to_iob2(["O" if t == "O" else f"I-{t}" for t in
                         (counts[w].most_common(1)[0][0] if w in counts else "O" for w in s.words)])
                for s in sentences]
        (out / f"predictions_{split}.conll").write_text(format_predictions(
            [s.words for s in sentences], [to_iob2(s.tags) for s in sentences], pred, [s.doc_id for s in sentences]))


def width_rows(directory, resamples=1000, seed=0):
    """Markdown rows: split, type, F1, the sentence and the document interval (width), the width ratio."""
    rows = []
    for split in SPLITS:
        _, gold, pred, docs = parse_prediction_documents((directory / f"predictions_{split}.conll").read_text())
        if docs is None:
            raise SystemExit(f"{directory}/predictions_{split}.conll has no -DOCSTART- lines: no documents to "
                             "resample")
        point = entity_scores(gold, pred)
        started = time.perf_counter()
        by_doc = f1_intervals(gold, pred, "conlleval", resamples, seed, docs)
        by_sentence = f1_intervals(gold, pred, "conlleval", resamples, seed)
        print(f"{split}: {len(gold)} sentences in {len(set(docs))} documents; both bootstraps "
              f"{time.perf_counter() - started:.2f} s")
        pairs = [("all", point["f1"], by_doc, by_sentence)] + [
            (t, point["per_type"][t]["f1"], by_doc["per_type"][t], by_sentence["per_type"][t])
            for t in by_doc["per_type"]]
        for name, f1, d, s in pairs:
            wd, ws = d["f1_ci_high"] - d["f1_ci_low"], s["f1_ci_high"] - s["f1_ci_low"]
            rows.append(f"| {split} | {name} | {100 * f1:.2f} | [{100 * s['f1_ci_low']:.2f}, {100 * s['f1_ci_high']:.2f}] "
                        f"({100 * ws:.2f}) | [{100 * d['f1_ci_low']:.2f}, {100 * d['f1_ci_high']:.2f}] ({100 * wd:.2f})"
                        f" | {wd / ws:.2f}x |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path, help="directory of predictions_{dev,test}.conll")
    parser.add_argument("--baseline", type=Path, help="CoNLL directory: write the baseline's predictions first")
    args = parser.parse_args()
    if args.baseline:
        write_baseline(args.baseline, args.predictions)
    print("| split | type | F1 | sentence bootstrap (width) | document bootstrap (width) | ratio |")
    print("|---|---|---:|---|---|---:|")
    print("\n".join(width_rows(args.predictions)))


if __name__ == "__main__":
    main()
