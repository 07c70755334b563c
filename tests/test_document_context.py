"""prepare.context: neighbouring sentences of the same document as unlabelled context, in prepare and predict."""

import argparse
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForTokenClassification

from nerpipe.core.params import PrepareParams
from nerpipe.data.alignment import (
    IGNORE,
    build_examples,
    special_affixes,
    word_subtokens,
)
from nerpipe.data.conll import read_conll
from nerpipe.data.prepare import prepare_split
from nerpipe.data.prepared import PreparedSplit
from nerpipe.evaluate.inference import predict_word_labels
from nerpipe.predict.command import add_arguments, model_settings
from nerpipe.predict.text import predict_lines, split_sentences
from tests.conftest import CONLL_LABELS

LABEL2ID = {label: i for i, label in enumerate(CONLL_LABELS)}
O, B_LOC, B_ORG, B_PER = (LABEL2ID[t] for t in ("O", "B-LOC", "B-ORG", "B-PER"))

# Two documents: three sentences, then two.
DOCS = [
    [(["Peter", "visited", "Washington", "."], ["B-PER", "O", "B-LOC", "O"]),  # Peter visited Wash ##ing ##ton .
     (["John", "met", "Maria", "."], ["B-PER", "O", "B-PER", "O"]),
     (["Reuters", "said", "."], ["B-ORG", "O", "O"])],
    [(["Paris", "."], ["B-LOC", "O"]),
     (["Berlin", "."], ["B-LOC", "O"])],
]


def two_documents():
    rows = [(d, words, tags) for d, doc in enumerate(DOCS) for words, tags in doc]
    return {"sentence_id": list(range(len(rows))), "doc_id": [r[0] for r in rows],
            "words": [r[1] for r in rows], "tags": [r[2] for r in rows]}


def tokens(tokenizer, out, row):
    return tokenizer.convert_ids_to_tokens(out["input_ids"][row])


def test_sentence_gets_left_and_right_context_of_its_document(tiny_tokenizer):
    out = build_examples(two_documents(), tiny_tokenizer, LABEL2ID, max_length=32, overlap=4,
                         label_all_tokens=False, context=4)
    assert out["sentence_id"] == [0, 1, 2, 3, 4]  # one window per sentence
    # Sentence 1: the last 4 sub-tokens of sentence 0 before it; sentence 2 (only 3 sub-tokens) after it.
    assert tokens(tiny_tokenizer, out, 1) == ["[CLS]", "Wash", "##ing", "##ton", ".", "John", "met", "Maria", ".",
                                              "Reuters", "said", ".", "[SEP]"]
    assert out["input_ids"][1] == tiny_tokenizer.convert_tokens_to_ids(tokens(tiny_tokenizer, out, 1))
    assert out["labels"][1] == [IGNORE] * 5 + [B_PER, O, B_PER, O] + [IGNORE] * 4
    assert out["word_index"][1] == [-1] * 5 + [0, 1, 2, 3] + [-1] * 4
    assert out["length"][1] == 13
    # Sentence 0 has nothing to its left; its right context runs on into sentence 2.
    assert tokens(tiny_tokenizer, out, 0) == ["[CLS]", "Peter", "visited", "Wash", "##ing", "##ton", ".",
                                              "John", "met", "Maria", ".", "[SEP]"]
    assert out["labels"][0] == [IGNORE, B_PER, O, B_LOC, IGNORE, IGNORE, O] + [IGNORE] * 5


def test_context_stops_at_the_document_boundary(tiny_tokenizer):
    out = build_examples(two_documents(), tiny_tokenizer, LABEL2ID, max_length=32, overlap=4,
                         label_all_tokens=False, context=64)
    # Sentence 2 ends document 0: context on the left only (all of sentences 0 and 1), none from "Paris".
    assert tokens(tiny_tokenizer, out, 2) == ["[CLS]", "Peter", "visited", "Wash", "##ing", "##ton", ".", "John",
                                              "met", "Maria", ".", "Reuters", "said", ".", "[SEP]"]
    # Sentences 3 and 4 form document 1: each sees only the other.
    assert tokens(tiny_tokenizer, out, 3) == ["[CLS]", "Paris", ".", "Berlin", ".", "[SEP]"]
    assert tokens(tiny_tokenizer, out, 4) == ["[CLS]", "Paris", ".", "Berlin", ".", "[SEP]"]
    assert out["word_index"][4] == [-1, -1, -1, 0, 1, -1]
    assert out["labels"][4] == [IGNORE, IGNORE, IGNORE, B_LOC, O, IGNORE]


def test_room_left_by_the_sentence_is_shared_between_the_sides(tiny_tokenizer):
    # max_length 8: 6 sub-tokens after [CLS] and [SEP]; "John met Maria ." takes 4, one each side is left.
    out = build_examples(two_documents(), tiny_tokenizer, LABEL2ID, max_length=8, overlap=2,
                         label_all_tokens=False, context=4)
    assert tokens(tiny_tokenizer, out, 1) == ["[CLS]", ".", "John", "met", "Maria", ".", "Reuters", "[SEP]"]
    # Sentence 3 has no left neighbour: the right side may take all of the room it needs.
    assert tokens(tiny_tokenizer, out, 3) == ["[CLS]", "Paris", ".", "Berlin", ".", "[SEP]"]


def test_context_0_is_sentence_level(tiny_tokenizer):
    batch = two_documents()
    without_doc = {k: v for k, v in batch.items() if k != "doc_id"}
    assert (build_examples(batch, tiny_tokenizer, LABEL2ID, 32, 4, False, context=0)
            == build_examples(without_doc, tiny_tokenizer, LABEL2ID, 32, 4, False))


def _strip_context(ids, plain_ids, before, after):
    """Where the context-0 window sits inside a context window (ids without special tokens) so that what is
    left of it ends `before` (the document's sub-tokens before the sentence) and what is right of it starts
    `after`: (left context, right context, its offset). Random words repeat, so several offsets are tried."""
    for n_left in range(len(ids) - len(plain_ids) + 1):
        left, right = ids[:n_left], ids[n_left + len(plain_ids):]
        if (ids[n_left:n_left + len(plain_ids)] == plain_ids and left == before[len(before) - n_left:][:n_left]
                and right == after[:len(right)]):
            return left, right, n_left
    raise AssertionError(f"{plain_ids} with context from {before} | {after} is not {ids}")


def test_windows_with_context_own_every_word_once(tiny_tokenizer):
    """Random documents, long sentences included: stripping the context gives exactly the context-0 windows,
    the context is the document's neighbouring sub-tokens, and every word is labelled and scored once."""
    rng = random.Random(0)
    vocab = ["Peter", "visited", "Washington", ".", "John", "met", "Maria", "Reuters", "said", "Paris", "Berlin"]
    prefix, suffix = special_affixes(tiny_tokenizer)
    for trial in range(30):
        doc_ids = sorted(rng.randrange(3) for _ in range(rng.randint(1, 8)))
        words = [[rng.choice(vocab) for _ in range(rng.randint(1, 14))] for _ in doc_ids]
        tags = [[rng.choice(CONLL_LABELS) for _ in w] for w in words]
        batch = {"sentence_id": list(range(len(words))), "doc_id": doc_ids, "words": words, "tags": tags}
        max_length, overlap, context = rng.randint(8, 20), rng.randint(0, 3), rng.randint(1, 12)
        plain = build_examples(batch, tiny_tokenizer, LABEL2ID, max_length, overlap, False)
        out = build_examples(batch, tiny_tokenizer, LABEL2ID, max_length, overlap, False, context=context)
        assert out["sentence_id"] == plain["sentence_id"]
        flat = [[t for piece in sentence for t in piece] for sentence in word_subtokens(tiny_tokenizer, words)]
        seen = [[] for _ in words]
        for row, s in enumerate(out["sentence_id"]):
            assert out["length"][row] == len(out["input_ids"][row]) <= max_length
            plain_ids = plain["input_ids"][row][len(prefix):len(plain["input_ids"][row]) - len(suffix)]
            before = [t for j in range(s) if doc_ids[j] == doc_ids[s] for t in flat[j]]
            after = [t for j in range(s + 1, len(words)) if doc_ids[j] == doc_ids[s] for t in flat[j]]
            ids = out["input_ids"][row][len(prefix):len(out["input_ids"][row]) - len(suffix)]
            left, right, n_left = _strip_context(ids, plain_ids, before, after)
            assert len(left) <= context and len(right) <= context
            first = row == 0 or out["sentence_id"][row - 1] != s
            last = row + 1 == len(out["sentence_id"]) or out["sentence_id"][row + 1] != s
            assert (first or not left) and (last or not right)  # context only at the sentence's edges
            k = len(prefix) + n_left
            assert out["labels"][row][k:k + len(plain_ids)] == plain["labels"][row][len(prefix):-len(suffix)]
            assert set(out["labels"][row][:k]) <= {IGNORE} and set(out["labels"][row][k + len(plain_ids):]) <= {IGNORE}
            index = np.asarray(out["word_index"][row])
            positions = np.nonzero(index >= 0)[0]
            assert all(k <= p < k + len(plain_ids) for p in positions)
            for p in positions:
                assert out["labels"][row][p] == LABEL2ID[tags[s][index[p]]]
            seen[s] += index[positions].tolist()
        assert [sorted(w) for w in seen] == [list(range(len(w))) for w in words], trial


def test_prepare_split_reads_context_across_batches_of_1000(tiny_tokenizer, tmp_path):
    # 1500 one-word sentences in one document: sentence 1000 must see sentence 999 though map() batches by 1000.
    from nerpipe.data.conll import Sentence
    sentences = [Sentence(words=["Paris" if i % 2 else "Berlin"], tags=["B-LOC"], doc_id=0, line=i + 1)
                 for i in range(1500)]
    stats = prepare_split(sentences, tiny_tokenizer, CONLL_LABELS,
                          PrepareParams(max_length=16, window_overlap=2, context=2), tmp_path / "train")
    assert stats["documents"] == 1 and stats["windows"] == 1500
    from datasets import load_from_disk
    examples = load_from_disk(str(tmp_path / "train" / "examples"))
    assert tiny_tokenizer.convert_ids_to_tokens(examples[1000]["input_ids"]) == [
        "[CLS]", "Berlin", "Paris", "Berlin", "Paris", "Berlin", "[SEP]"]
    assert examples[1000]["word_index"] == [-1, -1, -1, 0, -1, -1, -1]


@pytest.mark.parametrize("words, sentences", [
    (["Peter", "left", ".", "He", "came", "back", "!", "Why", "?", "?", "Fine"],
     [(0, 3), (3, 7), (7, 10), (10, 11)]),
    (["The", "U.S.", "team", "won", "."], [(0, 5)]),  # U.S. is one word: no split after its dot
    ([], []),
])
def test_split_sentences(words, sentences):
    assert split_sentences(words) == sentences


DOCUMENT_TEXTS = [("Peter Blackburn visited Washington on Monday . John met Maria in Paris . Reuters said "
                   "that the European Union will meet in Brussels next week to talk about German beef and "
                   "English lamb , officials said ."),
                  "Berlin is big . London is bigger ."]


def _conll(texts):
    """The texts as a CoNLL file: one document each, one sentence per split_sentences range."""
    lines = []
    for text in texts:
        words = text.split()
        lines += ["-DOCSTART- O", ""]
        for start, end in split_sentences(words):
            lines += [f"{w} {'B-PER' if w in ('Peter', 'John', 'Maria') else 'O'}" for w in words[start:end]] + [""]
    return "\n".join(lines) + "\n"


def test_predict_with_context_gives_the_labels_evaluate_gives(tiny_model_dir, tiny_tokenizer, tmp_path):
    """`nerpipe predict`'s code on whole documents == evaluate's prediction on the prepared sentences."""
    (tmp_path / "docs.txt").write_text(_conll(DOCUMENT_TEXTS))
    sentences = read_conll(tmp_path / "docs.txt")
    assert [s.doc_id for s in sentences] == [0, 0, 0, 1, 1]
    cfg = PrepareParams(max_length=16, window_overlap=4, context=6)  # the long sentence becomes windows
    stats = prepare_split(sentences, tiny_tokenizer, CONLL_LABELS, cfg, tmp_path / "prepared" / "test")
    assert stats["sentences_windowed"] == 1
    split = PreparedSplit(tmp_path / "prepared", "test")
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    cpu = torch.device("cpu")
    ids, scores = predict_word_labels(model, split.examples, [len(w) for w in split.words],
                                      tiny_tokenizer.pad_token_id, 4, cpu, progress=False)
    id2label = model.config.id2label
    expected = [[id2label[int(i)] for i in ids[s]] for s in range(3)], [[id2label[int(i)] for i in ids[s]]
                                                                        for s in range(3, 5)]
    lines = list(predict_lines(model, tiny_tokenizer, DOCUMENT_TEXTS, 16, 4, 4, cpu, context=6))
    for line, doc in zip(lines, expected):
        assert line.tags == [tag for sentence in doc for tag in sentence]
    np.testing.assert_allclose(lines[0].scores, np.concatenate(scores[:3]), rtol=1e-5)
    # The context is really used: each sentence tagged alone scores differently.
    alone = list(predict_lines(model, tiny_tokenizer, [" ".join(w) for w in split.words[:3]], 16, 4, 4, cpu))
    assert not np.allclose(np.concatenate([line.scores for line in alone]), lines[0].scores)
    # A short document fits in one window: context or not, the model sees the same sequence.
    whole_line = list(predict_lines(model, tiny_tokenizer, DOCUMENT_TEXTS[1:], 16, 4, 4, cpu))
    np.testing.assert_allclose(whole_line[0].scores, lines[1].scores, rtol=1e-5)


def test_context_setting_from_the_model_and_the_flag(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare:\n  context: 32\n")  # never read: the model says
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    described = {"max_length": 128, "window_overlap": 32, "context": 64, "bf16": "auto"}
    assert model_settings(parser.parse_args([]), described, "m")["context"] == 64
    assert model_settings(parser.parse_args(["--context", "0"]), described, "m")["context"] == 0
    from nerpipe.core.errors import UserError
    with pytest.raises(UserError, match="--context: must be >= 0"):
        model_settings(parser.parse_args(["--context", "-1"]), described, "m")
    with pytest.raises(UserError, match="or give --context$"):
        model_settings(parser.parse_args([]), {k: v for k, v in described.items() if k != "context"}, "m")
