"""The prepared data on disk: per split, a sentence dataset and a window (model input) dataset.

  <dir>/labels.json              the label list, written once; its order is the model's label ids
  <dir>/stats.json               sentences, words, sub-tokens per word, windowed sentences, label counts;
                                 "sources": download's record of each split's original file and sha256
  <dir>/<split>/sentences/       sentence_id, doc_id, line, words, tags (IOB2)  -- for scoring and output
  <dir>/<split>/examples/        input_ids, labels, word_index, sentence_id, length  -- unpadded
"""

import json
from pathlib import Path

from datasets import load_from_disk

from nerpipe.core.errors import UserError
from nerpipe.data.batching import RaggedColumn


class WindowedExamples:
    """The columns of a prepared split that prediction needs, loaded once from Arrow."""

    def __init__(self, dataset):
        self.input_ids = RaggedColumn(dataset, "input_ids")
        self.word_index = RaggedColumn(dataset, "word_index")
        self.sentence_id = dataset.data.table.column("sentence_id").to_numpy()
        self.labels = RaggedColumn(dataset, "labels") if "labels" in dataset.column_names else None

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


def read_labels(directory):
    return json.loads((Path(directory) / "labels.json").read_text())
