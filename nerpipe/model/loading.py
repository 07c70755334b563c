"""Load tokenizers and token-classification models safely: safetensors only, never remote code."""

import os
from pathlib import Path

import transformers
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

from nerpipe.core.errors import UserError

SAFE = {"trust_remote_code": False}


def _explain(name, err):
    hint = ("it is neither a local directory nor a model id the Hugging Face hub answered for "
            "(offline? set model.name to a local model directory, e.g. `make repro MODEL=/path/to/model`)")
    if os.path.isdir(name):
        hint = "the directory exists but holds no loadable model (config.json, safetensors weights, tokenizer)"
    if "custom code" in str(err):
        hint = ("it needs its own Python code to load (auto_map in config.json), and nerpipe never runs a "
                "model's code (trust_remote_code=False); use a model type transformers supports natively")
    return UserError(f"model.name {name!r}: {hint}.\n  cause: {type(err).__name__}: {str(err).splitlines()[0]}")


def load_config(name):
    try:
        config = AutoConfig.from_pretrained(name, **SAFE)
    except (OSError, ValueError) as err:
        raise _explain(name, err) from None
    if type(config) not in AutoModelForTokenClassification._model_mapping:
        raise UserError(f"model.name {name!r}: model type {config.model_type!r} has no token-classification "
                        "head in transformers; use a BERT-family encoder (bert, roberta, deberta, ...)")
    _check_safetensors(name)
    return config


def _check_safetensors(name):
    """A local directory must hold safetensors weights: pickled ones (pytorch_model.bin) can run code
    when loaded, so they never are. Checked with the config, before any data work; a hub id is
    checked when its weights load (use_safetensors=True)."""
    if not os.path.isdir(name) or any(Path(name).glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in Path(name).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    found = f"it holds {', '.join(pickled)} but" if pickled else "it"
    raise UserError(f"model.name {name!r}: {found} has no *.safetensors weights, and only safetensors are "
                    "loaded (pickled weights can run code); convert the model, e.g. load it and "
                    "save_pretrained(dir, safe_serialization=True) where you trust it")


def check_max_length(max_length, model_name, tokenizer):
    """prepare.max_length must fit the model's positions (families.position_limit: RoBERTa's 514 position
    embeddings take 512 tokens; DeBERTa-v3's relative positions set no limit) and the tokenizer's
    model_max_length where it knows one (tokenizers that do not say 1e30)."""
    from nerpipe.model.families import position_limit

    config = load_config(model_name)
    limit, note = position_limit(config)
    if tokenizer.model_max_length < 1_000_000 and (limit is None or tokenizer.model_max_length < limit):
        limit, note = tokenizer.model_max_length, "its tokenizer's model_max_length"
    if limit and max_length > limit:
        raise UserError(f"prepare.max_length: {max_length} exceeds what model {model_name!r} supports ({limit} "
                        f"positions); set prepare.max_length <= {limit}" + (f" ({note})" if note else ""))


def load_tokenizer(name):
    load_config(name)  # fail on a wrong model before any data work, with the name in the message
    return fit_for_words(_auto_tokenizer(name), name)


def _auto_tokenizer(name, **kwargs):
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs, **SAFE)
    except (OSError, ValueError) as err:
        raise _explain(name, err) from None
    if not tokenizer.is_fast:
        raise UserError(f"model.name {name!r}: needs a fast (Rust) tokenizer for word alignment")
    return tokenizer


# Words of running text, to check that a tokenizer gives each word alone the sub-tokens it has in a text.
PROBE_WORDS = ["Angela", "Merkel", "visited", "Paris", ",", "said", "Reuters", "."]


def fit_for_words(tokenizer, name):
    """`tokenizer`, or the tokenizer of `name` reloaded so that words tokenized one by one (as prepare and
    predict do) get the sub-tokens they have in running text.

    Byte-level BPE (RoBERTa, GPT-2-style, ModernBERT) marks a word start by the space before it: without
    `add_prefix_space` a word given alone reads as the start of a text, "Merkel" as Mer|kel instead of
    ĠMerkel, and transformers 5 says nothing. WordPiece (BERT) and SentencePiece with `▁` prepended to
    every word (XLM-RoBERTa, DeBERTa-v3) already agree and come back unchanged.
    """
    if _words_as_in_text(tokenizer):
        return tokenizer
    # Tokenizer classes that build their pre-tokenizer from the argument (RobertaTokenizer) take it here,
    # and save_pretrained records it; a generic fast tokenizer (ModernBERT's) keeps its tokenizer.json,
    # so its pre-tokenizer is set as well, and tokenizer.json records that.
    tokenizer = _auto_tokenizer(name, add_prefix_space=True)
    _prefix_every_word(tokenizer.backend_tokenizer.pre_tokenizer)
    if not _words_as_in_text(tokenizer):
        raise UserError(f"model.name {name!r}: its tokenizer ({type(tokenizer).__name__}) gives a word alone other "
                        "sub-tokens than the same word in running text, also with add_prefix_space=True, so "
                        "word labels would not align; use a model whose tokenizer is WordPiece, byte-level BPE "
                        "or SentencePiece")
    return tokenizer


def _words_as_in_text(tokenizer):
    from nerpipe.data.alignment import running_text_subtokens, word_subtokens

    return word_subtokens(tokenizer, [PROBE_WORDS])[0] == running_text_subtokens(tokenizer, PROBE_WORDS)


def _prefix_every_word(pre_tokenizer):
    """Make a byte-level or Metaspace pre-tokenizer (or a Sequence holding one) mark every word's start."""
    from tokenizers import pre_tokenizers

    if isinstance(pre_tokenizer, pre_tokenizers.Sequence):
        for i in range(len(pre_tokenizer)):
            _prefix_every_word(pre_tokenizer[i])
    elif isinstance(pre_tokenizer, pre_tokenizers.ByteLevel):
        pre_tokenizer.add_prefix_space = True
    elif isinstance(pre_tokenizer, pre_tokenizers.Metaspace):
        pre_tokenizer.prepend_scheme = "always"


# Each family names its dropouts its own way (BERT hidden_dropout_prob, DistilBERT dropout, ModernBERT
# mlp_dropout, ...): train.dropout sets every one of these that the model's config has.
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                "attention_dropout", "embedding_dropout", "mlp_dropout")


def load_for_training(name, labels, dropout, seed):
    """Pretrained encoder with a head of len(labels) outputs: a fresh head, seeded so it is reproducible,
    unless the model already has a token-classification head for exactly these labels (continued
    fine-tuning). A head for other labels is replaced, and a line says so."""
    config = load_config(name)
    transformers.set_seed(seed)
    id2label = dict(enumerate(labels))
    old_labels = trained_head_labels(config)
    replace = old_labels is not None and old_labels != list(labels)
    settings = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
                **{key: dropout for key in DROPOUT_KEYS if hasattr(config, key)}}
    try:
        if replace:  # the new labels go in through the config: as keyword arguments transformers warns of a clash
            config.update(settings)
            model = AutoModelForTokenClassification.from_pretrained(
                name, config=config, ignore_mismatched_sizes=True, use_safetensors=True, **SAFE)
        else:
            model = AutoModelForTokenClassification.from_pretrained(
                name, num_labels=len(labels), **settings, use_safetensors=True, **SAFE)
    except (OSError, ValueError) as err:
        raise _explain(name, err) from None
    if replace:
        transformers.set_seed(seed)
        fresh_head(model)
        print(f"model.name {name!r}: its token-classification head for {len(old_labels)} other labels "
              f"({', '.join(old_labels[:6])}{', ...' if len(old_labels) > 6 else ''}) was replaced by a fresh head "
              f"for the corpus's {len(labels)} labels")
    return model


def trained_head_labels(config):
    """The label list of the token-classification head the checkpoint holds, or None where it holds none
    (a pretrained encoder: BertModel, *ForMaskedLM)."""
    if not any(a.endswith("ForTokenClassification") for a in config.architectures or []):
        return None
    return [config.id2label[i] for i in sorted(config.id2label)]


def fresh_head(model):
    """Initialise every module outside the encoder (the head: BERT's classifier, ModernBERT's head and
    classifier) as the model's class initialises a new one."""
    import torch

    with torch.no_grad():
        for module in model.children():
            if module is model.base_model:
                continue
            for tensor in module.parameters():
                tensor._is_hf_initialized = False  # transformers' init functions skip tensors loaded from the checkpoint
            for sub in module.modules():
                model._init_weights(sub)


def load_trained(directory):
    """The model the train stage saved; an adapter that could not be merged (train.method adapter or
    prompt) is put back on it (nerpipe/model/methods)."""
    from nerpipe.model.methods import attach_saved_adapter

    try:
        model = AutoModelForTokenClassification.from_pretrained(directory, use_safetensors=True, **SAFE)
    except (OSError, ValueError) as err:
        raise _explain(str(directory), err) from None
    return attach_saved_adapter(model, directory)


def count_parameters(model):
    """(trainable, total) parameters of the model that is trained and saved. peft keeps an untrained copy
    of the head beside the trained one (`original_module` of modules_to_save); it is not counted."""
    params = [p for name, p in model.named_parameters() if ".original_module." not in name]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
