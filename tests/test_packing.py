"""Packed rows must encode every sentence exactly as an unpacked, padded batch does."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForTokenClassification

from nerpipe.alignment import IGNORE
from nerpipe.batching import collate
from nerpipe.packing import first_fit_decreasing, pack


class Ragged:
    """The two RaggedColumn methods pack() uses, over plain lists."""

    def __init__(self, rows):
        self.rows = [np.asarray(r, dtype=np.int64) for r in rows]

    def row(self, i):
        return self.rows[i]


def test_first_fit_decreasing_places_every_sequence_once_within_the_width():
    lengths = [5, 9, 3, 7, 2, 6]
    rows = first_fit_decreasing(lengths, 10)
    assert rows == [[1], [3, 2], [5, 4], [0]]  # 9 | 7+3 | 6+2 | 5
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)


def test_a_sequence_longer_than_the_width_is_refused():
    with pytest.raises(ValueError, match="a sequence of 11 sub-tokens does not fit a packed row of 10"):
        first_fit_decreasing([3, 11], 10)


def test_pack_layout_positions_labels_and_mask():
    ids = Ragged([[101, 5, 102], [101, 6, 7, 8, 102], [101, 9, 102]])
    labels = Ragged([[IGNORE, 1, IGNORE], [IGNORE, 2, 0, 3, IGNORE], [IGNORE, 4, IGNORE]])
    batch = pack([0, 1, 2], ids, pad_id=0, width=8, labels=labels)
    # longest first: row 0 = sentence 1 (5) + sentence 0 (3); row 1 = sentence 2 (3) + padding
    assert batch["input_ids"].tolist() == [[101, 6, 7, 8, 102, 101, 5, 102], [101, 9, 102, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 0, 3, IGNORE, IGNORE, 1, IGNORE], [IGNORE, 4] + [IGNORE] * 6]
    visible = (batch["attention_mask"][:, 0] == 0).int()
    assert batch["attention_mask"].shape == (2, 1, 8, 8)
    assert visible[0, 1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # sentence 1 sees only itself
    assert visible[0, 6].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert visible[1, 4].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # padding sees padding: no empty softmax row


def test_packed_logits_equal_unpacked_logits(tiny_model_dir):
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir).eval()
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, 60, size=n).tolist() for n in (12, 3, 30, 7, 19, 25, 4)]
    ids = Ragged([[2] + r + [3] for r in rows])
    indices = list(range(len(rows)))
    with torch.no_grad():
        padded = model(**collate(indices, ids, pad_id=0)).logits
        packed_batch = pack(indices, ids, pad_id=0, width=40)
        packed = model(**packed_batch).logits
    assert packed.shape[:2] == (3, 40)  # 113 sub-tokens in 3 rows of 40
    seg_start = {}
    for r, members in enumerate(first_fit_decreasing([len(ids.row(i)) for i in indices], 40)):
        start = 0
        for m in members:
            seg_start[m] = (r, start)
            start += len(ids.row(m))
    for i in indices:
        r, start = seg_start[i]
        n = len(ids.row(i))
        torch.testing.assert_close(packed[r, start:start + n], padded[i, :n], atol=1e-5, rtol=1e-4)
    assert not torch.isnan(packed).any()


class Examples:
    """What predict_word_labels reads from WindowedExamples: ids, word_index and sentence_id per window."""

    def __init__(self, windows):
        self.input_ids = Ragged([w[0] for w in windows])
        self.input_ids.lengths = lambda: np.array([len(r) for r in self.input_ids.rows])
        self.word_index = Ragged([w[1] for w in windows])
        self.sentence_id = np.array([w[2] for w in windows])


def test_packed_prediction_equals_unpacked_prediction(tiny_model_dir):
    from nerpipe.inference import predict_word_labels

    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    rng = np.random.default_rng(1)
    windows, words = [], []
    for sentence, n_words in enumerate((5, 1, 17, 9, 2, 30, 12)):
        ids = [2] + rng.integers(5, 60, size=2 * n_words).tolist() + [3]
        word_index = [-1] + [w if k == 0 else -1 for w in range(n_words) for k in range(2)] + [-1]
        windows.append((ids, word_index, sentence))
        words.append(n_words)
    examples = Examples(windows)
    device = torch.device("cpu")
    plain_ids, plain_scores = predict_word_labels(model, examples, words, 0, 3, device, progress=False)
    packed_ids, packed_scores = predict_word_labels(model, examples, words, 0, 2, device, progress=False,
                                                    pack_width=40)
    assert [a.tolist() for a in packed_ids] == [a.tolist() for a in plain_ids]
    for a, b in zip(packed_scores, plain_scores):
        np.testing.assert_allclose(a, b, rtol=1e-4)
    assert all(len(a) == n for a, n in zip(packed_ids, words))
    assert min(s.min() for s in packed_scores) > 0  # every word was written, none left at its initial 0
