"""The prepare stage's work: read a corpus, convert its tags to IOB2, build the label list from the
entity types the data holds, and write each split as the prepared Arrow datasets (layout in
nerpipe/data/prepared.py) with its statistics."""

import sys
from collections import Counter

from datasets import Dataset

from nerpipe.core.atomic import atomic_path, write_json
from nerpipe.data.alignment import build_examples, special_affixes
from nerpipe.data.conll import label_list, read_conll, to_iob2


def read_corpus(files, max_train_sentences=0, sources=None):
    """Parse every split ({split: path}), tags converted to IOB2; returns (sentences by split, labels).

    The label list is built over all splits, so a tag seen only in dev or test still has an id.
    `max_train_sentences` > 0 keeps the first N training sentences (the labels still cover all).
    `sources` (download's sources.json) names each copy's original in error messages.
    """
    origins = {split: (sources or {}).get(split, {}).get("file") for split in files}
    sentences = {split: read_conll(path, origin=origins[split]) for split, path in files.items()}
    if max_train_sentences and "train" in sentences:
        sentences["train"] = sentences["train"][:max_train_sentences]
    for split_sentences in sentences.values():
        for s in split_sentences:
            s.tags = to_iob2(s.tags)
    labels = label_list(s.tags for split_sentences in sentences.values() for s in split_sentences)
    if "train" in sentences:
        for warning in unlearnable_types(sentences, files, origins, max_train_sentences):
            print(f"warning: {warning}", file=sys.stderr)
    return sentences, labels


def unlearnable_types(sentences, files, origins, max_train_sentences=0):
    """One message per entity type of a dev or test split that the training sentences never show, naming
    the file and the first line it is on: the model gets its labels but no example of them."""
    trained = {tag[2:] for s in sentences["train"] for tag in s.tags if tag != "O"}
    kept = f" (the first {max_train_sentences} sentences prepare.max_train_sentences keeps)" \
        if max_train_sentences else ""
    out = []
    for split, split_sentences in sentences.items():
        first_line = {}
        for s in split_sentences:
            for i, tag in enumerate(s.tags):  # a sentence's tokens are consecutive lines from s.line
                if tag != "O" and tag[2:] not in trained:
                    first_line.setdefault(tag[2:], s.line + i)
        for entity_type, line in sorted(first_line.items()):
            at = f"{files[split]}:{line}" + (f" (copied from {origins[split]}:{line})" if origins[split] else "")
            out.append(f"entity type {entity_type!r} occurs in {split} ({at}) but not in the training data{kept}: "
                       f"the model cannot predict it (B-{entity_type} and I-{entity_type} get no training "
                       "example). A typo? Fix the tag there; else add training sentences with it.")
    return out


def prepare_corpus(files, tokenizer, cfg, out_dir, sources=None):
    """Read, convert, tokenize and write the whole prepared directory atomically; returns its stats.
    `sources` (download's sources.json) is copied into stats.json: where the data came from, its sha256.
    No wall time in it: stats.json is a DVC output, the same bytes for the same inputs."""
    sentences, labels = read_corpus(files, cfg.max_train_sentences, sources)
    with atomic_path(out_dir, is_dir=True) as tmp:
        stats = {split: prepare_split(split_sentences, tokenizer, labels, cfg, tmp / split)
                 for split, split_sentences in sentences.items()}
        write_json(tmp / "labels.json", labels)
        write_json(tmp / "stats.json", {"labels": labels, "splits": stats, "sources": sources})
    return stats


def prepare_split(sentences, tokenizer, labels, cfg, out_dir):
    """Write <out_dir>/sentences and <out_dir>/examples; return the split's stats."""
    table = Dataset.from_dict({
        "sentence_id": list(range(len(sentences))),
        "doc_id": [s.doc_id for s in sentences],
        "line": [s.line for s in sentences],
        "words": [s.words for s in sentences],
        "tags": [s.tags for s in sentences],
    })
    label2id = {label: i for i, label in enumerate(labels)}
    fn_kwargs = {"tokenizer": tokenizer, "label2id": label2id, "max_length": cfg.max_length,
                 "overlap": cfg.window_overlap, "label_all_tokens": cfg.label_all_tokens}
    batch_size = 1000
    if cfg.context:
        # Context reads a sentence's neighbours, so each batch must hold whole documents: one batch per split.
        # (At 0 the call is left exactly as before, so the prepared data stays byte-identical.)
        fn_kwargs["context"], batch_size = cfg.context, None
    examples = table.map(build_examples, batched=True, batch_size=batch_size, remove_columns=table.column_names,
                         fn_kwargs=fn_kwargs, desc=f"tokenize {out_dir.name}")
    table.save_to_disk(str(out_dir / "sentences"))
    examples.save_to_disk(str(out_dir / "examples"))
    n_words = sum(len(s.words) for s in sentences)
    windows_per_sentence = Counter(examples["sentence_id"])
    special = sum(map(len, special_affixes(tokenizer)))
    subtokens = sum(examples["length"]) - special * len(examples)
    stats = {"sentences": len(sentences), "words": n_words, "windows": len(examples),
             "sentences_windowed": sum(1 for n in windows_per_sentence.values() if n > 1),
             "subtokens_per_word": round(subtokens / max(n_words, 1), 4),
             "label_counts": dict(sorted(Counter(t for s in sentences for t in s.tags).items()))}
    if cfg.context:
        # subtokens_per_word above counts the context too; the mean input length is what costs speed.
        stats["documents"] = len(set(table["doc_id"]))
        stats["mean_window_length"] = round(sum(examples["length"]) / max(len(examples), 1), 2)
    return stats
