"""The prepared data on disk: per split, a sentence dataset and a window (model input) dataset.

  <dir>/labels.json              the label list, written once; its order is the model's label ids
  <dir>/stats.json               sentences, words, sub-tokens per word, windowed sentences, label counts;
                                 "sources": download's record of each split's original file and sha256
  <dir>/<split>/sentences/       sentence_id, doc_id, line, words, tags (IOB2)  -- for scoring and output
  <dir>/<split>/examples/        input_ids, labels, word_index, sentence_id, length  -- unpadded
"""

import json
from pathlib import Path

import pyarrow as pa
from datasets import load_from_disk

from nerpipe.core.errors import UserError
from nerpipe.data.batching import RaggedColumn


class WindowedExamples:
    """The columns of a prepared split that prediction needs, loaded once from Arrow: from a datasets.Dataset
    (the examples prepare wrote) or a pyarrow.Table (windows built in memory, `from_rows`)."""

    def __init__(self, dataset):
        table = dataset if isinstance(dataset, pa.Table) else dataset.data.table
        self.input_ids = RaggedColumn(table, "input_ids")
        self.word_index = RaggedColumn(table, "word_index")
        self.sentence_id = table.column("sentence_id").to_numpy()
        self.labels = RaggedColumn(table, "labels") if "labels" in table.column_names else None

    @classmethod
    def from_rows(cls, rows):
        """build_examples' windows (a dict of lists) without their labels, as nerpipe predict builds them. A
        pyarrow.Table, not a datasets.Dataset: building one fingerprints its contents, 7 ms for a single
        sentence, more than that sentence's forward pass."""
        return cls(pa.table({"input_ids": pa.array(rows["input_ids"], pa.list_(pa.int64())),
                             "word_index": pa.array(rows["word_index"], pa.list_(pa.int64())),
                             "sentence_id": pa.array(rows["sentence_id"], pa.int64())}))

    def __len__(self):
        return len(self.input_ids)


class PreparedSplit:
    def __init__(self, directory, split):
        base = Path(directory) / split
        try:
            self.sentences = load_from_disk(str(base / "sentences"))
            self.examples = WindowedExamples(load_from_disk(str(base / "examples")))
        except FileNotFoundError:
            raise UserError(f"{base}: prepared data not found; run `dvc repro prepare` first") from None
        self.words = self.sentences["words"]
        self.gold = self.sentences["tags"]
        self.doc_ids = self.sentences["doc_id"]  # the bootstrap resamples documents (nerpipe.evaluate.bootstrap)


def read_labels(directory):
    return json.loads((Path(directory) / "labels.json").read_text())
