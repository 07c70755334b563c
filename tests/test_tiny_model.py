"""The offline tiny model the other tests rely on: deterministic, cased, and loadable by Auto* classes."""

import hashlib

from transformers import AutoModelForTokenClassification

from tests.conftest import CONLL_LABELS
from tests.tiny_model import VOCAB, build_tiny_model


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", labels=CONLL_LABELS)
    assert sorted(digests(again)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert digests(again) == digests(tiny_model_dir)


def test_reloaded_tokenizer_is_cased_and_splits_words(tiny_tokenizer):
    assert tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer("Peter visited Washington , Zwyxx")["input_ids"]) == [
        "[CLS]", "Peter", "visited", "Wash", "##ing", "##ton", ",", "[UNK]", "[SEP]"]
    assert tiny_tokenizer.tokenize("peter") == ["[UNK]"]  # not lowercased on reload
    assert (tiny_tokenizer.pad_token_id, tiny_tokenizer.unk_token_id, tiny_tokenizer.cls_token_id,
            tiny_tokenizer.sep_token_id, tiny_tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    assert len(tiny_tokenizer) == len(VOCAB) == 105
    assert VOCAB[5:] == sorted(VOCAB[5:])


def test_model_config(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "BertForTokenClassification"
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.max_position_embeddings) == (105, 32, 2, 2, 64, 512)
    assert config.id2label == dict(enumerate(CONLL_LABELS))
    assert config.label2id == {label: i for i, label in enumerate(CONLL_LABELS)}
    logits = model(**tiny_tokenizer(["Peter visited Paris ."], return_tensors="pt")).logits
    assert tuple(logits.shape) == (1, 6, 9)  # (batch, seq_len, num_labels)


def test_without_labels_keeps_the_config_default(tmp_path):
    model = AutoModelForTokenClassification.from_pretrained(build_tiny_model(tmp_path))
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
