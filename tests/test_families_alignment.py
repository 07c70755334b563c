"""Word alignment for every tokenizer family (tests/tiny_model.py builds one of each kind): a word tokenized
alone, as prepare and predict do, gets exactly the sub-tokens it has in running text; the prepared data of
a byte-level BPE model holds running-text sub-tokens; and BERT's prepared data is pinned byte for byte."""

import hashlib
import json

import pytest
from transformers import AutoTokenizer

from nerpipe.core.params import SPLITS, PrepareParams
from nerpipe.data.alignment import running_text_subtokens, word_subtokens
from nerpipe.data.batching import collate
from nerpipe.data.conll import read_conll
from nerpipe.data.prepare import prepare_corpus
from nerpipe.data.prepared import PreparedSplit
from nerpipe.model.loading import load_tokenizer
from tests.conftest import FIXTURE_DIR

SENTENCES = [s.words for split in SPLITS for s in read_conll(FIXTURE_DIR / f"{split}.txt")]
BYTE_LEVEL = ("roberta", "modernbert")


def test_every_word_gets_its_running_text_subtokens(family_model_dir):
    family, directory = family_model_dir
    tokenizer = load_tokenizer(str(directory))
    alone = word_subtokens(tokenizer, SENTENCES)
    in_text = [running_text_subtokens(tokenizer, words) for words in SENTENCES]
    assert sum(len(w) for s in in_text for w in s) > sum(map(len, SENTENCES))  # some words split
    assert alone == in_text
    # The tokenizer as transformers loads it by default gets it wrong for byte-level BPE only.
    plain = AutoTokenizer.from_pretrained(directory)
    assert (word_subtokens(plain, SENTENCES) != in_text) == (family in BYTE_LEVEL)


def test_byte_level_words_start_with_the_space_mark(family_model_dir):
    family, directory = family_model_dir
    tokenizer = load_tokenizer(str(directory))
    [pieces] = word_subtokens(tokenizer, [["Peter", "visited", "Washington"]])
    first = [tokenizer.convert_ids_to_tokens(p)[0] for p in pieces]
    mark = {"roberta": "Ġ", "modernbert": "Ġ", "xlm-roberta": "▁", "deberta-v2": "▁"}.get(family)
    if mark:
        assert all(token.startswith(mark) for token in first), first
    else:  # WordPiece: a word's first piece has no mark, later ones start with ##
        assert first == ["Peter", "visited", "Wash"]


def test_batches_carry_no_token_type_ids(family_model_dir):
    """DistilBERT, RoBERTa and ModernBERT take no token_type_ids; the model inputs are only what every
    family's tokenizer lists."""
    family, directory = family_model_dir
    tokenizer = load_tokenizer(str(directory))
    ids = [[1, 2, 3], [4, 5]]

    class Rows:
        def row(self, i):
            return ids[i]

    batch = collate([0, 1], Rows(), tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert set(batch) <= set(tokenizer.model_input_names)


@pytest.fixture(scope="module")
def roberta_prepared(tmp_path_factory):
    from tests.tiny_model import build_tiny_family

    directory = build_tiny_family(tmp_path_factory.mktemp("roberta"), "roberta")
    tokenizer = load_tokenizer(str(directory))
    out = tmp_path_factory.mktemp("prepared-roberta") / "prepared"
    prepare_corpus({split: FIXTURE_DIR / f"{split}.txt" for split in SPLITS}, tokenizer,
                   PrepareParams(max_length=128, window_overlap=4), out)
    return tokenizer, out


def test_roberta_prepared_ids_are_the_running_text_subtokens(roberta_prepared):
    tokenizer, prepared = roberta_prepared
    split = PreparedSplit(prepared, "train")
    examples = split.examples
    assert len(examples) == len(split.words)  # max_length 128: one window a sentence
    for i, words in enumerate(split.words):
        ids = examples.input_ids.row(i).tolist()
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        text = " ".join(words)
        assert ids[1:-1] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == " " + text  # add_prefix_space: one leading space


# sha256 of the tiny BERT's prepared examples (input_ids, labels, word_index of every split) under the tiny
# profile, as the code before word alignment was checked per family gave them (commit 1f678a9).
BERT_PREPARED_SHA256 = "0fe9b9f3b43333ed70759e90fac9f6663b92a0b25572412a811cce505a2b1a23"


def test_bert_prepared_data_is_unchanged(prepared):
    rows = {split: PreparedSplit(prepared, split).examples for split in SPLITS}
    payload = {split: [[e.input_ids.row(i).tolist(), e.labels.row(i).tolist(), e.word_index.row(i).tolist()]
                       for i in range(len(e))] for split, e in rows.items()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert digest == BERT_PREPARED_SHA256
