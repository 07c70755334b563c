"""A tiny cased WordPiece tokenizer and a random 2-layer BERT, written offline for the tests.

    from tests.tiny_model import build_tiny_model
    build_tiny_model("/tmp/tiny-bert", labels=["O", "B-LOC", "I-LOC"])

The vocabulary is a fixed list, not trained: the WordPiece trainer is not deterministic, and the
tests assert exact sub-token ids. It holds the whole words of tests/fixtures/*.txt, except that
some fixture words are deliberately missing so they split into pieces (Washington -> Wash ##ing
##ton) and two are unknown altogether (Zwyxx, Qatar -> [UNK]).
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
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
