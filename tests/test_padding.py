"""Pad-to-8 (what CUDA batches get) never pads past the model's max_position_embeddings, in training and
in prediction. The pad multiple is CUDA's here, on the CPU, by monkeypatching nerpipe's pad_multiple."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from nerpipe.core.params import SPLITS, PrepareParams
from nerpipe.data.batching import collate, padded_width
from nerpipe.data.prepare import prepare_corpus
from nerpipe.data.prepared import PreparedSplit
from nerpipe.evaluate import inference
from nerpipe.train import loop
from tests.conftest import CONLL_LABELS
from tests.tiny_model import VOCAB

CPU = torch.device("cpu")


@pytest.mark.parametrize("longest, multiple, limit, width", [
    (5, 1, None, 5), (5, 8, None, 8), (16, 8, None, 16),
    (19, 8, 26, 24),   # the multiple of 8 fits
    (25, 8, 26, 26),   # 32 would not: capped
    (26, 8, 26, 26),
    (510, 8, 514, 512), (513, 8, 514, 514),  # RoBERTa's 514 positions
    (30, 8, 26, 30),   # a row longer than the limit is not cut here (prepare.max_length forbids it)
])
def test_padded_width_rounds_up_but_not_past_the_limit(longest, multiple, limit, width):
    assert padded_width(longest, multiple, limit) == width


class Rows:
    def __init__(self, rows):
        self.rows = [np.asarray(r) for r in rows]

    def row(self, i):
        return self.rows[i]


def test_collate_caps_the_width_and_keeps_every_token():
    ids, labels = Rows([[2, 5, 6, 3], list(range(10, 35))]), Rows([[-100, 1, 0, -100], [0] * 25])
    batch = collate([0, 1], ids, 0, labels, pad_to_multiple_of=8, max_width=26)
    assert batch["input_ids"].shape == (2, 26)
    assert batch["input_ids"][1].tolist() == list(range(10, 35)) + [0]
    assert batch["attention_mask"].sum(1).tolist() == [4, 25]
    assert batch["labels"][0].tolist() == [-100, 1, 0, -100] + [-100] * 22
    assert collate([0, 1], ids, 0, labels, pad_to_multiple_of=8)["input_ids"].shape == (2, 32)  # no limit


POSITIONS = 20  # not a multiple of 8


@pytest.fixture(scope="module")
def prepared_to_the_limit(tmp_path_factory, fixture_dir, tiny_tokenizer):
    """The fixtures prepared with windows of POSITIONS sub-tokens, as many as the model below has positions."""
    out = tmp_path_factory.mktemp("prepared20") / "prepared"
    prepare_corpus({split: fixture_dir / f"{split}.txt" for split in SPLITS}, tiny_tokenizer,
                   PrepareParams(max_length=POSITIONS, window_overlap=4), out)
    return out


@pytest.fixture
def short_position_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=POSITIONS, num_labels=len(CONLL_LABELS))
    return BertForTokenClassification(config)


def test_training_and_prediction_pad_to_8_within_the_positions(monkeypatch, short_position_model,
                                                               prepared_to_the_limit):
    train = PreparedSplit(prepared_to_the_limit, "train")
    lengths = train.examples.input_ids.lengths()
    longest = [int(np.argmax(lengths))]
    assert 17 <= lengths[longest[0]] <= POSITIONS  # rounded up to 8, it would need 24 positions
    widths = []
    real_collate = loop.collate

    def recording_collate(*args, **kwargs):
        batch = real_collate(*args, **kwargs)
        widths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(loop, "collate", recording_collate)
    step = loop.collate_step([longest], train.examples, lengths, 0, 8,
                             short_position_model.config.max_position_embeddings)  # fit's arguments on a GPU
    loss = loop.run_step(short_position_model, step, CPU, False)
    assert widths == [POSITIONS] and torch.isfinite(loss)

    words = [len(w) for w in train.words]  # prediction over the same long rows
    expected, _ = inference.predict_word_labels(short_position_model, train.examples, words, 0, 8, CPU,
                                                progress=False)
    monkeypatch.setattr(inference, "pad_multiple", lambda device: 8)
    padded, _ = inference.predict_word_labels(short_position_model, train.examples, words, 0, 8, CPU,
                                              progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(padded, expected))  # padding is masked: same labels
