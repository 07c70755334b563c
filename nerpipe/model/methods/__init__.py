"""Fine-tuning methods, chosen by `train.method`: which parameters train, and how the result is saved.

    full        every weight (the default)
    top_layers  the head and the top `train.top_layers` encoder layers
    head        the classification head only
    bitfit      every bias term and the head (Ben Zaken et al., 2022)
    lora        low-rank updates of the attention projections, by peft (Hu et al., 2021)
    adapter     bottleneck adapters after each attention and feed-forward output (Houlsby et al., 2019)
    prompt      soft prompt tokens before the input, by peft (Lester et al., 2021)

The head always trains. The model the methods return trains in the same loop as full fine-tuning.

What `save_trained` writes is a plain `save_pretrained` model either way, so evaluate, `nerpipe predict`,
`transformers.pipeline` and MLflow serving read it unchanged:
    config.json, model.safetensors   LoRA merged into the weights; for adapter and prompt, the base with
                                     its trained head (and LayerNorms for adapter)
    adapter/                         the small part that trained (peft's files for lora and prompt)
    nerpipe_model.json               "method": {"method": ..., "merged": true|false, ...}: where "merged" is
                                     false (adapter, prompt) `load_trained` puts the adapter back on the base
                                     (nerpipe/model/description.py; the train stage adds the rest)
"""

import copy
import dataclasses
import importlib
from pathlib import Path

from nerpipe.core.errors import UserError
from nerpipe.model.description import DESCRIPTION_FILE, read_method, write_method

ADAPTER_DIR = "adapter"
UNMERGEABLE = {"adapter": "bottleneck", "prompt": "prompt"}  # method -> its module here


def _module(name):
    """The module of a method, imported when used: peft takes over a second to import, which `nerpipe predict`
    on a fully fine-tuned model need not pay."""
    return importlib.import_module(f"nerpipe.model.methods.{name}")


def prepare_for_training(model, cfg, max_length):
    """The model to train with method `cfg.method` (cfg: params.TrainParams); `max_length`: prepare's."""
    method = cfg.method
    if method in ("full", "top_layers", "head", "bitfit"):
        _module("freezing").apply(model, method, cfg.top_layers)
        trained = model
    elif method == "lora":
        trained = _module("lora").wrap(model, cfg.lora)
    elif method == "adapter":
        trained = _module("bottleneck").wrap(model, cfg.adapter)
    else:
        trained = _module("prompt").wrap(model, cfg.prompt, max_length)
    trained.nerpipe_method = {"method": method, **_settings(cfg)}
    return trained


def _settings(cfg):
    if cfg.method == "top_layers":
        return {"top_layers": cfg.top_layers}
    if cfg.method in ("lora", "adapter", "prompt"):
        return dataclasses.asdict(getattr(cfg, cfg.method))
    return {}


def save_trained(model, directory):
    """Write `model` (from prepare_for_training) as the layout in the module docstring."""
    directory = Path(directory)
    spec = dict(getattr(model, "nerpipe_method", {"method": "full"}))
    method = spec["method"]
    if method == "lora":
        _module("lora").merged_copy(model).save_pretrained(directory, safe_serialization=True)
        model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)
    elif method in UNMERGEABLE:
        module = _module(UNMERGEABLE[method])
        module.base_copy(model).save_pretrained(directory, safe_serialization=True)
        module.save_adapter(model, directory / ADAPTER_DIR)
    else:
        model.save_pretrained(directory, safe_serialization=True)
    spec["merged"] = method not in UNMERGEABLE
    write_method(directory, spec)


def attach_saved_adapter(model, directory):
    """`model` loaded from `directory` as saved by save_trained, with its adapter put back where the
    method could not be merged; `model` itself otherwise (a plain model directory included)."""
    spec = read_method(directory)
    if spec is None or spec.get("merged", True):
        return model
    method = spec["method"]
    if method not in UNMERGEABLE:
        raise UserError(f"{Path(directory) / DESCRIPTION_FILE}: unknown unmerged method {method!r} (this nerpipe "
                        f"knows {', '.join(UNMERGEABLE)})")
    return _module(UNMERGEABLE[method]).load_adapter(model, Path(directory) / ADAPTER_DIR, spec)


def adapter_bytes(directory):
    """Size of the saved adapter/ (0 where the method writes none)."""
    adapter = Path(directory) / ADAPTER_DIR
    return sum(p.stat().st_size for p in adapter.rglob("*") if p.is_file()) if adapter.is_dir() else 0


def unwrap_copy(model, wrapper_types, unwrap):
    """A deep copy of `model` with every module of `wrapper_types` replaced by `unwrap(module)`."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, wrapper_types):
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name) if parent_name else plain, child, unwrap(module))
    return plain
