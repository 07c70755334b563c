"""train.method on the tiny BERT: exact trainable-parameter counts, frozen weights that stay frozen through
an optimizer step, LoRA merged == unmerged, and save_trained -> load_trained giving the model that trained."""

import pytest
import torch
from transformers import AutoModelForTokenClassification

from nerpipe.core.errors import UserError
from nerpipe.core.params import AdapterParams, LoraParams, PromptParams, TrainParams, parse_params
from nerpipe.model.description import read_method
from nerpipe.model.loading import count_parameters, load_for_training, load_trained
from nerpipe.model.methods import adapter_bytes, prepare_for_training, save_trained
from nerpipe.train.loop import build_optimizer

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # 9

# The tiny BERT (tests/tiny_model.py): hidden 32, 2 layers, feed-forward 64, 512 positions, 2 token types.
#   one layer: q, k, v, attention output 4 * (32*32 + 32) = 4224, two LayerNorms 2 * 64, intermediate
#              32*64 + 64 = 2112, output 64*32 + 32 = 2080                                -> 8544
#   head: 32*9 + 9 = 297
#   biases: embeddings' LayerNorm 32; per layer q, k, v, o 4*32, LayerNorm 32, intermediate 64, output 32,
#           LayerNorm 32 = 288                                                           -> 32 + 2*288 = 608
HEAD, LAYER, BIASES = 297, 8544, 608
EXPECTED_TRAINABLE = {
    "full": None,  # every parameter: the total
    "head": HEAD,
    "top_layers": HEAD + LAYER,  # top_layers: 1
    "bitfit": HEAD + BIASES,  # 905
    # r 4 on query and value (peft's default for BERT) in 2 layers: A 4*32 + B 32*4 = 256 each
    "lora": HEAD + 2 * 2 * 256,  # 1321
    # size 8 after attention.output.dense and output.dense in 2 layers: down 32*8 + 8, up 8*32 + 32 = 552
    # each; every LayerNorm: embeddings' 64 + 2 per layer * 64 * 2 layers = 320
    "adapter": HEAD + 4 * 552 + 320,  # 2825
    "prompt": HEAD + 5 * 32,  # 5 virtual tokens of 32: 457
}
EXTRA_WEIGHTS = {"lora": 1024, "adapter": 4 * 552, "prompt": 5 * 32}  # parameters the method adds


def cfg(method):
    return TrainParams(method=method, top_layers=1, lora=LoraParams(r=4, alpha=8, dropout=0.0),
                       adapter=AdapterParams(size=8), prompt=PromptParams(virtual_tokens=5))


def build(tiny_model_dir, method):
    plain = load_for_training(str(tiny_model_dir), LABELS, dropout=0.0, seed=0)
    return prepare_for_training(plain, cfg(method), max_length=24)


def batch():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(**batch()).logits


def one_step(model, lr=1e-2):
    model.train()
    optimizer = build_optimizer(model, lr, weight_decay=0.01)
    labels = torch.tensor([[-100, 1, 2, 0, 7, -100], [-100, 5, 6, -100, -100, -100]])
    out = model(**batch()).logits
    torch.nn.functional.cross_entropy(out.flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
    optimizer.step()


@pytest.mark.parametrize("method", list(EXPECTED_TRAINABLE))
def test_trainable_parameter_counts(tiny_model_dir, method):
    base_total = count_parameters(load_for_training(str(tiny_model_dir), LABELS, 0.0, 0))[1]
    trainable, total = count_parameters(build(tiny_model_dir, method))
    assert total == base_total + EXTRA_WEIGHTS.get(method, 0)
    assert trainable == (EXPECTED_TRAINABLE[method] or base_total)


@pytest.mark.parametrize("method", ["head", "top_layers", "bitfit", "lora", "adapter", "prompt"])
def test_frozen_weights_do_not_change_in_a_step_and_trained_ones_do(tiny_model_dir, method):
    torch.manual_seed(0)
    model = build(tiny_model_dir, method)
    if method == "lora":  # B starts at zero; give it values so A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and trained
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & set(frozen)
    # Every trained tensor moves but the adapters' down-projections: their up-projections start at zero,
    # so the first step's gradient reaching `down` is zero.
    still = set(trained) - changed
    assert all(".down." in n for n in still), sorted(still)


def test_lora_merged_output_equals_unmerged(tiny_model_dir):
    torch.manual_seed(0)
    model = build(tiny_model_dir, "lora")
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.2)
    unmerged = logits(model)
    from nerpipe.model.methods.lora import merged_copy

    merged = merged_copy(model)
    assert type(merged).__name__ == "BertForTokenClassification"
    assert torch.allclose(logits(merged), unmerged, atol=1e-5)
    assert not torch.allclose(logits(load_for_training(str(tiny_model_dir), LABELS, 0.0, 0)), unmerged, atol=1e-3)


@pytest.mark.parametrize("method", ["full", "bitfit", "lora", "adapter", "prompt"])
def test_saved_model_loads_as_it_trained(tiny_model_dir, tmp_path, method):
    torch.manual_seed(0)
    model = build(tiny_model_dir, method)
    for _ in range(3):
        one_step(model)
    expected = logits(model)
    save_trained(model, tmp_path)
    spec = read_method(tmp_path)
    assert spec["method"] == method and spec["merged"] == (method not in ("adapter", "prompt"))
    assert torch.allclose(logits(load_trained(tmp_path)), expected, atol=1e-5)
    # The directory is a plain save_pretrained model too: for merged methods it is the trained model.
    plain = logits(AutoModelForTokenClassification.from_pretrained(tmp_path))
    assert torch.allclose(plain, expected, atol=1e-5) == (method in ("full", "bitfit", "lora"))
    assert (adapter_bytes(tmp_path) > 0) == (method in ("lora", "adapter", "prompt"))


def test_adapter_is_small_and_holds_what_trained(tiny_model_dir, tmp_path):
    model = build(tiny_model_dir, "lora")
    save_trained(model, tmp_path)
    assert (tmp_path / "adapter/adapter_config.json").is_file()
    assert adapter_bytes(tmp_path) < (tmp_path / "model.safetensors").stat().st_size / 4


def test_bad_method_settings_are_named(tiny_model_dir):
    with pytest.raises(UserError, match="train.method: must be one of full, top_layers, .*, got 'qlora'"):
        parse_params({"train": {"method": "qlora"}, "data": {"source": "/nowhere"}})
    with pytest.raises(UserError, match=r"train.trainable: unknown key; replaced by train.method"):
        parse_params({"train": {"trainable": "top-2"}, "data": {"source": "/nowhere"}})
    plain = load_for_training(str(tiny_model_dir), LABELS, 0.0, 0)
    with pytest.raises(UserError, match="train.lora.target_modules: 'qkv_proj'"):
        prepare_for_training(plain, TrainParams(method="lora", lora=LoraParams(target_modules="qkv_proj")), 24)
    with pytest.raises(UserError, match="train.adapter.target_modules: 'ffn.lin2' matches no linear layer"):
        prepare_for_training(plain, TrainParams(method="adapter", adapter=AdapterParams(target_modules="ffn.lin2")), 24)
    with pytest.raises(UserError, match="train.top_layers: 3 exceeds the model's 2 layers"):
        prepare_for_training(plain, TrainParams(method="top_layers", top_layers=3), 24)
    with pytest.raises(UserError, match="20 prompt tokens \\+ prepare.max_length 500 exceed the model's 512"):
        prepare_for_training(plain, TrainParams(method="prompt"), 500)
