"""The benchmark's data: CoNLL-2003 read and tokenized exactly as nerpipe's `prepare` stage does it.

Both trainers (the Hugging Face Trainer and nerpipe's loop) get the same rows: sentences parsed by
`nerpipe.data.prepare.read_corpus` (parsed, converted IOB1 -> IOB2), tokenized and windowed by
`nerpipe.data.alignment.build_examples` through `datasets.map(batched=True)`, the label list from
the label list over all splits (as the prepare stage builds it). The directory comes from
bench.inputs.data_dir.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset

from nerpipe.data.alignment import build_examples
from nerpipe.data.prepare import read_corpus

SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}


@dataclass
class Split:
    sentences: Dataset  # sentence_id, words, tags (IOB2)
    examples: Dataset  # input_ids, labels, word_index, sentence_id, length -- one row per window

    @property
    def words(self):
        return self.sentences["words"]

    @property
    def gold(self):
        return self.sentences["tags"]

    def n_subtokens(self):
        """Sub-tokens in all windows, special tokens included: what one epoch feeds the model unpadded."""
        return int(np.sum(self.examples["length"]))


@dataclass
class BenchData:
    labels: list
    splits: dict  # name -> Split
    seconds: float

    @property
    def label2id(self):
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self):
        return dict(enumerate(self.labels))


def load_data(tokenizer, data_dir, train_sentences=0, eval_sentences=0, max_length=128, overlap=32,
              label_all_tokens=False, splits=("train", "valid", "test")):
    """Parse, convert and tokenize. `train_sentences` > 0 keeps the first N training sentences,
    `eval_sentences` > 0 the first N of every other split (cut after the label list is built)."""
    started = time.perf_counter()
    parsed, labels = read_corpus({name: Path(data_dir) / SPLIT_FILES[name] for name in splits}, train_sentences)
    if eval_sentences:
        parsed = {name: s if name == "train" else s[:eval_sentences] for name, s in parsed.items()}
    label2id = {label: i for i, label in enumerate(labels)}
    out = {}
    for name, sentences in parsed.items():
        table = Dataset.from_dict({"sentence_id": list(range(len(sentences))),
                                   "words": [s.words for s in sentences],
                                   "tags": [s.tags for s in sentences]})
        examples = table.map(build_examples, batched=True, batch_size=1000, remove_columns=table.column_names,
                             fn_kwargs={"tokenizer": tokenizer, "label2id": label2id, "max_length": max_length,
                                        "overlap": overlap, "label_all_tokens": label_all_tokens},
                             desc=f"tokenize {name}")
        out[name] = Split(table, examples)
    return BenchData(labels, out, time.perf_counter() - started)


def rows_to_word_tags(row_label_ids, examples, sentences_words, id2label, order=None):
    """Word-level tag strings per sentence from per-row sub-token predictions.

    row_label_ids[j] holds the predicted label id per sub-token position of example row order[j]
    (order defaults to 0..n-1). A word is read from the first sub-token of the one window that owns
    it: `word_index` >= 0 there, and its value is the word's index in the sentence. Every word must be
    read exactly once; anything else is an alignment bug and raises.
    """
    word_index = examples["word_index"]
    sentence_id = examples["sentence_id"]
    tags = [[None] * len(words) for words in sentences_words]
    order = range(len(word_index)) if order is None else order
    for j, row in enumerate(order):
        wi = np.asarray(word_index[row])
        positions = np.nonzero(wi >= 0)[0]
        sentence = tags[sentence_id[row]]
        for p in positions:
            if sentence[wi[p]] is not None:
                raise AssertionError(f"word {wi[p]} of sentence {sentence_id[row]} predicted twice")
            sentence[wi[p]] = id2label[int(row_label_ids[j][p])]
    missing = sum(t is None for s in tags for t in s)
    if missing:
        raise AssertionError(f"{missing} words got no prediction")
    return tags
