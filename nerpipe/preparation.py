"""Turn parsed sentences of one split into the prepared Arrow datasets and their statistics."""

from collections import Counter

from datasets import Dataset

from nerpipe.alignment import build_examples, special_affixes


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
    examples = table.map(build_examples, batched=True, batch_size=1000, remove_columns=table.column_names,
                         fn_kwargs={"tokenizer": tokenizer, "label2id": label2id, "max_length": cfg.max_length,
                                    "overlap": cfg.window_overlap, "label_all_tokens": cfg.label_all_tokens},
                         desc=f"tokenize {out_dir.name}")
    table.save_to_disk(str(out_dir / "sentences"))
    examples.save_to_disk(str(out_dir / "examples"))
    n_words = sum(len(s.words) for s in sentences)
    windows_per_sentence = Counter(examples["sentence_id"])
    special = sum(map(len, special_affixes(tokenizer)))
    subtokens = sum(examples["length"]) - special * len(examples)
    return {"sentences": len(sentences), "words": n_words, "windows": len(examples),
            "sentences_windowed": sum(1 for n in windows_per_sentence.values() if n > 1),
            "subtokens_per_word": round(subtokens / max(n_words, 1), 4),
            "label_counts": dict(sorted(Counter(t for s in sentences for t in s.tags).items()))}
