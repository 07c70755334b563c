"""nerpipe.data.alignment with the tiny cased WordPiece tokenizer: exact ids, labels and windows."""

import random

from nerpipe.data.alignment import IGNORE, build_examples, plan_windows, word_subtokens
from nerpipe.data.conll import iob1_to_iob2, read_conll
from tests.conftest import CONLL_LABELS

LABEL2ID = {label: i for i, label in enumerate(CONLL_LABELS)}
O, B_LOC, I_LOC, B_PER, I_PER = (LABEL2ID[t] for t in ("O", "B-LOC", "I-LOC", "B-PER", "I-PER"))

WORDS = ["Peter", "Blackburn", "visited", "Washington", "."]
TAGS = ["B-PER", "I-PER", "O", "B-LOC", "O"]
TOKENS = ["[CLS]", "Peter", "Black", "##burn", "visited", "Wash", "##ing", "##ton", ".", "[SEP]"]


def one_sentence(tokenizer, words, tags, max_length=32, overlap=4, label_all_tokens=False):
    batch = {"words": [words], "tags": [tags], "sentence_id": [7]}
    return build_examples(batch=batch, tokenizer=tokenizer, label2id=LABEL2ID, max_length=max_length,
                          overlap=overlap, label_all_tokens=label_all_tokens)


def test_word_subtokens(tiny_tokenizer):
    ids = tiny_tokenizer.convert_tokens_to_ids
    [per_word] = word_subtokens(tiny_tokenizer, [WORDS])
    assert per_word == [ids(["Peter"]), ids(["Black", "##burn"]), ids(["visited"]),
                        ids(["Wash", "##ing", "##ton"]), ids(["."])]


def test_word_with_zero_subtokens_gets_unk(tiny_tokenizer):
    assert tiny_tokenizer.tokenize("\u200b") == []  # BertNormalizer drops the zero-width space
    [per_word] = word_subtokens(tiny_tokenizer, [["Peter", "\u200b", "Zwyxx", "London"]])
    unk = tiny_tokenizer.unk_token_id
    assert per_word == [tiny_tokenizer.convert_tokens_to_ids(["Peter"]), [unk], [unk],
                        tiny_tokenizer.convert_tokens_to_ids(["London"])]


def test_first_subtoken_carries_the_label(tiny_tokenizer):
    out = one_sentence(tiny_tokenizer, WORDS, TAGS, label_all_tokens=False)
    assert tiny_tokenizer.convert_ids_to_tokens(out["input_ids"][0]) == TOKENS
    assert out["labels"] == [[IGNORE, B_PER, I_PER, IGNORE, O, B_LOC, IGNORE, IGNORE, O, IGNORE]]
    assert out["word_index"] == [[-1, 0, 1, -1, 2, 3, -1, -1, 4, -1]]
    assert out["sentence_id"] == [7]
    assert out["length"] == [10]


def test_label_all_tokens_turns_b_into_i_on_later_subtokens(tiny_tokenizer):
    out = one_sentence(tiny_tokenizer, WORDS, TAGS, label_all_tokens=True)
    assert tiny_tokenizer.convert_ids_to_tokens(out["input_ids"][0]) == TOKENS
    assert out["labels"] == [[IGNORE, B_PER, I_PER, I_PER, O, B_LOC, I_LOC, I_LOC, O, IGNORE]]
    assert out["word_index"] == [[-1, 0, 1, -1, 2, 3, -1, -1, 4, -1]]  # only first sub-tokens map back


def test_zero_subtoken_word_keeps_its_label_aligned(tiny_tokenizer):
    out = one_sentence(tiny_tokenizer, ["Peter", "\u200b", "London"], ["B-PER", "O", "B-LOC"])
    assert tiny_tokenizer.convert_ids_to_tokens(out["input_ids"][0]) == ["[CLS]", "Peter", "[UNK]", "London", "[SEP]"]
    assert out["labels"] == [[IGNORE, B_PER, O, B_LOC, IGNORE]]
    assert out["word_index"] == [[-1, 0, 1, 2, -1]]


def test_plan_windows_by_hand():
    assert plan_windows([], 4, 1) == []
    assert plan_windows([2, 1], 4, 1) == [(0, 2, 0, 2)]
    assert plan_windows([1] * 10, 4, 1) == [(0, 4, 0, 3), (3, 7, 3, 6), (6, 10, 6, 10)]
    assert plan_windows([10], 4, 1) == [(0, 1, 0, 1)]  # one word over budget: a window of its own
    assert plan_windows([1, 9, 1], 4, 2) == [(0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 3)]


def check_windows(counts, budget, overlap):
    windows = plan_windows(counts, budget, overlap)
    n = len(counts)
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert windows[0][2] == 0 and windows[-1][3] == n
    owned = []
    for i, (start, end, own_start, own_end) in enumerate(windows):
        assert start <= own_start <= own_end <= end
        assert sum(counts[start:end]) <= budget or end - start == 1
        owned += range(own_start, own_end)
        if i:
            prev = windows[i - 1]
            assert prev[0] < start <= prev[1]  # moves forward, no gap in coverage
            assert own_start == prev[3]
    assert owned == list(range(n))  # every word owned exactly once, in order
    return windows


def test_plan_windows_owns_every_word_once():
    rng = random.Random(1234)
    n_multi = 0
    for _ in range(3000):
        budget = rng.randint(2, 24)
        overlap = rng.randint(0, budget // 2)
        big = rng.random() < 0.2  # sometimes words longer than the whole budget
        counts = [rng.randint(1, budget * 2 if big else 6) for _ in range(rng.randint(1, 60))]
        n_multi += len(check_windows(counts, budget, overlap)) > 1
    assert n_multi > 1000  # the property was checked on many multi-window sentences


def test_long_sentence_becomes_windows_that_own_each_word_once(tiny_tokenizer, fixture_dir):
    sentence = read_conll(fixture_dir / "train.txt")[4]
    tags = iob1_to_iob2(sentence.tags)
    assert len(sentence.words) == 37
    for label_all_tokens in (False, True):
        out = one_sentence(tiny_tokenizer, sentence.words, tags, max_length=16, overlap=4,
                           label_all_tokens=label_all_tokens)
        assert out["sentence_id"] == [7] * len(out["input_ids"])
        owned = []
        for ids, labels, word_index, length in zip(out["input_ids"], out["labels"], out["word_index"],
                                                   out["length"]):
            assert len(ids) == len(labels) == len(word_index) == length <= 16
            assert ids[0] == tiny_tokenizer.cls_token_id and ids[-1] == tiny_tokenizer.sep_token_id
            for label, w in zip(labels, word_index):
                if w >= 0:
                    owned.append(w)
                    assert label == LABEL2ID[tags[w]]
        assert sorted(owned) == list(range(37))
        assert out["length"] == [16, 16, 16, 14]
        assert [min(w for w in wi if w >= 0) for wi in out["word_index"]] == [0, 9, 19, 27]
    # The second window starts with 2 words of left context that the first window owns.
    assert tiny_tokenizer.convert_ids_to_tokens(out["input_ids"][1]) == [
        "[CLS]", "in", "Munich", ",", "told", "Reuters", "on", "Tuesday", "that", "the", "German", "company",
        "expects", "sales", "in", "[SEP]"]
    assert out["word_index"][1] == [-1, -1, -1, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, -1, -1, -1]
    assert out["labels"][1][:6] == [IGNORE, IGNORE, IGNORE, LABEL2ID["O"], LABEL2ID["O"], LABEL2ID["B-ORG"]]


def test_batch_of_fixture_sentences(tiny_tokenizer, fixture_dir):
    sentences = read_conll(fixture_dir / "valid.txt")
    batch = {"words": [s.words for s in sentences], "tags": [iob1_to_iob2(s.tags) for s in sentences],
             "sentence_id": list(range(len(sentences)))}
    out = build_examples(batch=batch, tokenizer=tiny_tokenizer, label2id=LABEL2ID, max_length=128, overlap=32,
                         label_all_tokens=False)
    assert out["sentence_id"] == list(range(8))  # short sentences: one window each
    for s, labels, word_index in zip(sentences, out["labels"], out["word_index"]):
        assert [w for w in word_index if w >= 0] == list(range(len(s.words)))
        assert [l for l in labels if l != IGNORE] == [LABEL2ID[t] for t in iob1_to_iob2(s.tags)]


def test_every_window_owns_a_word_and_adds_new_ones():
    # A window that owns no word is a row whose labels are all -100: no signal, and a NaN loss if a
    # batch holds only such rows. In [1, 1, 1, 4] with budget 4, overlap 2, word 3 fills the budget
    # alone: a window that steps back for 2 sub-tokens of context cannot reach it, so it only
    # repeats words 1-2, and one of those repeats owns nothing.
    cases = [([1, 1, 1, 4], 4, 2)]
    rng = random.Random(99)
    for _ in range(3000):
        budget = rng.randint(2, 24)
        cases.append(([rng.randint(1, budget * 2) for _ in range(rng.randint(1, 40))], budget,
                      rng.randint(0, budget // 2)))
    for counts, budget, overlap in cases:
        windows = plan_windows(counts, budget, overlap)
        assert all(own_start < own_end for _, _, own_start, own_end in windows), (counts, budget, overlap)
        assert all(b[1] > a[1] for a, b in zip(windows, windows[1:])), (counts, budget, overlap)
