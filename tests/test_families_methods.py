"""Every train.method on every encoder family (tiny random models, tests/tiny_model.py): it applies, one
optimizer step changes the weights that train and no other, and the saved model loads back as it trained;
or it refuses with an error naming the family, the method and what to set instead. Also the structure
each method finds per family, the head kept or replaced, and the position limits."""

import re

import pytest
import torch

from nerpipe.core.errors import UserError
from nerpipe.core.methods import METHODS
from nerpipe.core.params import AdapterParams, LoraParams, PromptParams, TrainParams
from nerpipe.model.families import attention_inputs, layer_stack, position_limit, residual_projections
from nerpipe.model.loading import check_max_length, load_config, load_for_training, load_tokenizer, load_trained
from nerpipe.model.methods import prepare_for_training, save_trained
from nerpipe.train.loop import build_optimizer
from tests.tiny_model import FAMILIES, build_tiny_family

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
REFUSED = {("modernbert", "bitfit"): r"train.method bitfit: modernbert .* no bias terms .* set train.method=head"}


def cfg(method):
    return TrainParams(method=method, top_layers=1, lora=LoraParams(r=2, alpha=4, dropout=0.0),
                       adapter=AdapterParams(size=4), prompt=PromptParams(virtual_tokens=3))


def batch(tokenizer):
    encoded = tokenizer([["Peter", "visited", "Washington", "."], ["Maria", "met", "Smith"]],
                        is_split_into_words=True, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("method", list(METHODS))
def test_method_on_family_trains_only_its_weights(family_model_dir, method, tmp_path):
    family, directory = family_model_dir
    model = load_for_training(str(directory), LABELS, dropout=0.0, seed=0)
    if (family, method) in REFUSED:
        with pytest.raises(UserError, match=REFUSED[family, method]):
            prepare_for_training(model, cfg(method), max_length=24)
        return
    torch.manual_seed(0)
    model = prepare_for_training(model, cfg(method), max_length=24)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give it values so A gets a gradient too
            torch.nn.init.normal_(p, std=0.1)
    inputs = batch(load_tokenizer(str(directory)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    optimizer = build_optimizer(model, 1e-2, weight_decay=0.01)
    out = model(**inputs).logits
    labels = torch.randint(0, len(LABELS), out.shape[:2])
    torch.nn.functional.cross_entropy(out.flatten(0, 1), labels.flatten()).backward()
    optimizer.step()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert (not frozen) == (method == "full") and trained
    assert not changed & frozen
    # Every trained tensor moves but the adapters' down-projections: their up-projections start at zero.
    assert all(".down." in n for n in trained - changed), sorted(trained - changed)
    if METHODS[method].module == "freezing" and method != "full":
        return  # saved as full is, below
    expected = logits(model, inputs)
    save_trained(model, tmp_path)
    assert torch.allclose(logits(load_trained(tmp_path), inputs), expected, atol=1e-5)


def test_structure_found_per_family(family_model_dir):
    family, directory = family_model_dir
    model = load_for_training(str(directory), LABELS, dropout=0.0, seed=0)
    ends = [re.sub(r"^.*?\.\d+\.", "", name) for name in residual_projections(model)]  # after the layer index
    expected_outputs = {"distilbert": ["attention.out_lin", "ffn.lin2"], "modernbert": ["attn.Wo", "mlp.Wo"]}
    assert ends == expected_outputs.get(family, ["attention.output.dense", "output.dense"]) * 2
    inputs = {name.rpartition(".")[2] for name in attention_inputs(model)}
    expected_inputs = {"distilbert": {"q_lin", "k_lin", "v_lin"}, "modernbert": {"Wqkv"},
                       "deberta-v2": {"query_proj", "key_proj", "value_proj"}}
    assert inputs == expected_inputs.get(family, {"query", "key", "value"})
    assert len(layer_stack(model)) == 2


LORA_TARGETS = {"bert": {"query", "value"}, "roberta": {"query", "value"}, "xlm-roberta": {"query", "value"},
                "electra": {"query", "value"}, "deberta-v2": {"query_proj", "value_proj"},  # peft's defaults
                "distilbert": {"q_lin", "k_lin", "v_lin"}, "modernbert": {"Wqkv"}}  # by structure


def test_lora_auto_targets_per_family(family_model_dir):
    family, directory = family_model_dir
    model = prepare_for_training(load_for_training(str(directory), LABELS, 0.0, 0), cfg("lora"), 24)
    adapted = {name.partition(".lora_A")[0].rpartition(".")[2] for name, _ in model.named_parameters()
               if ".lora_A" in name}
    assert adapted == LORA_TARGETS[family]


# --- the head of the starting model ----------------------------------------------------------------

def test_head_for_other_labels_is_replaced_with_a_line(tmp_path, capsys):
    base = build_tiny_family(tmp_path / "roberta-conll", "roberta", labels=["O", "B-MISC", "I-MISC"])
    model = load_for_training(str(base), LABELS, 0.0, seed=3)
    assert model.config.id2label == dict(enumerate(LABELS)) and model.classifier.weight.shape == (5, 32)
    assert "its token-classification head for 3 other labels (O, B-MISC, I-MISC) was replaced by a fresh head " \
           "for the corpus's 5 labels" in capsys.readouterr().out
    again = load_for_training(str(base), LABELS, 0.0, seed=3)
    assert torch.equal(again.classifier.weight, model.classifier.weight)  # seeded
    # Same number of labels, other names: the old head would load without a size error, and is replaced too.
    same_size = build_tiny_family(tmp_path / "electra-5", "electra", labels=["O", "B-ORG", "I-ORG", "B-X", "I-X"])
    from safetensors.torch import load_file

    old = load_file(same_size / "model.safetensors")["classifier.weight"]
    fresh = load_for_training(str(same_size), LABELS, 0.0, seed=3)
    assert not torch.equal(fresh.classifier.weight, old)
    assert "replaced" in capsys.readouterr().out


def test_head_for_the_same_labels_is_kept(tmp_path, capsys):
    base = build_tiny_family(tmp_path / "deberta", "deberta-v2", labels=LABELS)
    from safetensors.torch import load_file

    saved = load_file(base / "model.safetensors")
    model = load_for_training(str(base), LABELS, 0.0, seed=3)
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert "replaced" not in capsys.readouterr().out


# --- position limits --------------------------------------------------------------------------------

LIMITS = {"bert": 512, "electra": 512, "distilbert": 512, "roberta": 512, "xlm-roberta": 512,
          "deberta-v2": None, "modernbert": 8192}


def test_position_limit_per_family(family_model_dir):
    family, directory = family_model_dir
    limit, _ = position_limit(load_config(str(directory)))
    assert limit == LIMITS[family]
    tokenizer = load_tokenizer(str(directory))
    bound = limit or tokenizer.model_max_length  # DeBERTa-v3: its tokenizer's 512
    check_max_length(bound, str(directory), tokenizer)
    with pytest.raises(UserError, match=rf"prepare.max_length: {bound + 1} exceeds .* set prepare.max_length <= "
                                        rf"{bound}"):
        check_max_length(bound + 1, str(directory), tokenizer)


def test_roberta_limit_names_the_offset_and_prompt_tokens_count(tmp_path):
    directory = build_tiny_family(tmp_path, "roberta")
    with pytest.raises(UserError, match=r"\(roberta: 514 position embeddings, counted from padding_idx \+ 1 = 2\)"):
        check_max_length(513, str(directory), load_tokenizer(str(directory)))
    model = load_for_training(str(directory), LABELS, 0.0, 0)
    with pytest.raises(UserError, match=r"3 prompt tokens \+ prepare.max_length 510 exceed the model's 512"):
        prepare_for_training(model, cfg("prompt"), max_length=510)
