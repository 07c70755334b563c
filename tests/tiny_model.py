"""A tiny cased WordPiece tokenizer and a random 2-layer BERT, written offline for the tests.

    from tests.tiny_model import build_tiny_model
    build_tiny_model("/tmp/tiny-bert", labels=["O", "B-LOC", "I-LOC"])

The vocabulary is a fixed list, not trained: the WordPiece trainer is not deterministic, and the
tests assert exact sub-token ids. It holds the whole words of tests/fixtures/*.txt, except that
some fixture words are deliberately missing so they split into pieces (Washington -> Wash ##ing
##ton) and two are unknown altogether (Zwyxx, Qatar -> [UNK]).
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece
from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as in bert-base-cased

WORDS = """
" ( ) , . : 1 2 Berlin Coach English Europe European French Friday German Germany John London Maria
Monday Munich New Paris Peter Reuters Rovers Smith Sunday The Tuesday Union United We York a after
and arrived beat by closed company expects flew for in joined lost meet met next officials on
percent played reported rise rose route said sales scored start talks team ten that the to told
twice visited was weak well went who will with works year
""".split()

# Pieces for the fixture words that are not in WORDS. Greedy longest-match WordPiece gives:
#   Washington -> Wash ##ing ##ton      Blackburn -> Black ##burn     Schmidt -> Sch ##mid ##t
#   Brussels   -> Bru ##ssel ##s        Siemens   -> Sie ##mens       Microsoft -> Micro ##soft
#   Englishman -> English ##man         1996      -> 19 ##96
PIECES = """
Wash ##ing ##ton Black ##burn Sch ##mid ##t Bru ##ssel ##s Sie ##mens Micro ##soft ##man 19 ##96
""".split()

VOCAB = SPECIAL_TOKENS + sorted(set(WORDS + PIECES))


def build_tokenizer():
    """A cased BERT-style fast tokenizer over VOCAB (ids are positions in VOCAB)."""
    vocab = {token: i for i, token in enumerate(VOCAB)}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    # clean_text drops control and zero-width characters, so "\u200b" becomes zero sub-tokens.
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    backend.decoder = decoders.WordPiece(prefix="##")
    # do_lower_case=False must be stated: transformers 5 rebuilds a BertTokenizer's normalizer from
    # tokenizer_config.json on load, and its default (True) would lowercase this cased vocabulary.
    return BertTokenizerFast(
        tokenizer_object=backend, do_lower_case=False, strip_accents=False, model_max_length=512,
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def build_tiny_model(directory, labels=None, seed=0):
    """Write tokenizer files and a random BertForTokenClassification (safetensors) to `directory`."""
    directory = Path(directory)
    tokenizer = build_tokenizer()
    label_maps = {}
    if labels is not None:
        label_maps = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        **label_maps)
    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)  # transformers 5 always writes model.safetensors
    return directory


# --- one tiny model per encoder family --------------------------------------------------------------
# Each family gets its real config class (so its real model_type and layer layout), 2 layers of hidden
# size 32, and a tokenizer of its real kind trained in memory on the fixture words: WordPiece (the fixed
# vocabulary above) for BERT, ELECTRA and DistilBERT; byte-level BPE for RoBERTa and ModernBERT;
# SentencePiece Unigram for XLM-RoBERTa and DeBERTa-v3. The trained vocabularies are not asserted id by
# id: the tests compare two tokenizations of the same text with each other.

FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra", "distilbert", "modernbert")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def corpus_text():
    """The words of tests/fixtures/*.txt as running text, one sentence a line: the tokenizers' training text."""
    lines, words = [], []
    for path in sorted((Path(__file__).parent / "fixtures").glob("*.txt")):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("-DOCSTART-"):
                words.append(line.split()[0])
            elif words:
                lines.append(" ".join(words))
                words = []
    return lines + [" ".join(words)] if words else lines


def _train_bpe(special_tokens, vocab_size=400):
    """A byte-level BPE backend (RoBERTa's and ModernBERT's kind), specials first."""
    from tokenizers import trainers

    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus_text(), trainer)
    return backend


def _train_unigram(special_tokens, unk_token, vocab_size=200):
    """A SentencePiece Unigram vocabulary [(piece, score)] (XLM-RoBERTa's and DeBERTa-v3's kind)."""
    from tokenizers import trainers

    backend = Tokenizer(Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special_tokens, unk_token=unk_token,
                                      show_progress=False)
    backend.train_from_iterator(corpus_text(), trainer)
    return [tuple(entry) for entry in json.loads(backend.to_str())["model"]["vocab"]]


def _roberta_tokenizer():
    from transformers import RobertaTokenizerFast

    model = json.loads(_train_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]).to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizerFast(vocab=model["vocab"], merges=merges, model_max_length=512)


def _modernbert_tokenizer():
    """As answerdotai/ModernBERT-base's: a generic fast tokenizer, byte-level BPE without a prefix space,
    BERT-style [CLS] ... [SEP]."""
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    backend = _train_bpe(specials)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(t, backend.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=8192,
                                   model_input_names=["input_ids", "attention_mask"])


def _xlm_roberta_tokenizer():
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(vocab=_train_unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>"),
                                   model_max_length=512)


def _deberta_v2_tokenizer():
    from transformers import DebertaV2TokenizerFast

    vocab = _train_unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[UNK]")
    return DebertaV2TokenizerFast(vocab=vocab, unk_id=3, model_max_length=512)


def _wordpiece_tokenizer(cls):
    """build_tokenizer()'s WordPiece, as the family's own tokenizer class."""
    backend = build_tokenizer().backend_tokenizer
    return cls(tokenizer_object=backend, do_lower_case=False, strip_accents=False, model_max_length=512,
               unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")


def _family_parts(family):
    """(tokenizer, config class, config kwargs, model class) of a tiny `family` model."""
    import transformers as t

    if family == "bert":
        return build_tokenizer(), BertConfig, TINY, BertForTokenClassification
    if family == "roberta":
        tok = _roberta_tokenizer()
        return tok, t.RobertaConfig, {**TINY, "max_position_embeddings": 514, "type_vocab_size": 1}, \
            t.RobertaForTokenClassification
    if family == "xlm-roberta":
        tok = _xlm_roberta_tokenizer()
        return tok, t.XLMRobertaConfig, {**TINY, "max_position_embeddings": 514, "type_vocab_size": 1}, \
            t.XLMRobertaForTokenClassification
    if family == "deberta-v2":  # DeBERTa-v3's settings: relative positions only, no absolute ones
        tok = _deberta_v2_tokenizer()
        return tok, t.DebertaV2Config, {**TINY, "relative_attention": True, "position_biased_input": False,
                                        "pos_att_type": ["p2c", "c2p"], "position_buckets": 32,
                                        "norm_rel_ebd": "layer_norm", "share_att_key": True,
                                        "max_relative_positions": -1, "type_vocab_size": 0}, \
            t.DebertaV2ForTokenClassification
    if family == "electra":
        return _wordpiece_tokenizer(t.ElectraTokenizerFast), t.ElectraConfig, {**TINY, "embedding_size": 16}, \
            t.ElectraForTokenClassification
    if family == "distilbert":
        return _wordpiece_tokenizer(t.DistilBertTokenizerFast), t.DistilBertConfig, \
            {"dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2}, t.DistilBertForTokenClassification
    if family == "modernbert":
        tok = _modernbert_tokenizer()
        return tok, t.ModernBertConfig, {**TINY, "global_attn_every_n_layers": 2, "local_attention": 16,
                                         "cls_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id,
                                         "bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id}, \
            t.ModernBertForTokenClassification
    raise ValueError(f"no tiny model for family {family!r}; one of {', '.join(FAMILIES)}")


def build_tiny_family(directory, family, labels=None, seed=0):
    """Write a random `family` (a model_type) token-classification model and its tokenizer to `directory`.
    `labels` None: a base encoder without a head, as the hub's pretrained models are."""
    if family == "bert" and labels is not None:
        return build_tiny_model(directory, labels, seed)
    directory = Path(directory)
    tokenizer, config_class, shape, model_class = _family_parts(family)
    label_maps = {}
    if labels is not None:
        label_maps = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    config = config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape, **label_maps)
    torch.manual_seed(seed)
    model = model_class(config)
    tokenizer.save_pretrained(directory)
    # Without labels the encoder alone (architectures BertModel, ...), as a pretrained model on the hub
    (model if labels is not None else model.base_model).save_pretrained(directory)
    return directory
