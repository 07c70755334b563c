"""Fine-tuning methods, chosen by `train.method`: which parameters train, and how the result is saved.
The methods, their modules here and whether they merge are one table, nerpipe/core/methods.py.

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
from nerpipe.core.methods import METHODS
from nerpipe.model.description import DESCRIPTION_FILE, read_method, write_method

ADAPTER_DIR = "adapter"


def _module(method):
    """The module of a method, imported when used: peft takes over a second to import, which `nerpipe predict`
    on a fully fine-tuned model need not pay."""
    return importlib.import_module(f"nerpipe.model.methods.{METHODS[method].module}")


def prepare_for_training(model, cfg, max_length):
    """The model to train with method `cfg.method` (cfg: params.TrainParams); `max_length`: prepare's."""
    trained = _module(cfg.method).apply(model, cfg, max_length)
    trained.nerpipe_method = {"method": cfg.method, **_settings(cfg)}
    return trained


def _settings(cfg):
    """The method's settings, recorded with the saved model."""
    name = METHODS[cfg.method].settings
    if name is None:
        return {}
    value = getattr(cfg, name)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else {name: value}


def save_trained(model, directory):
    """Write `model` (from prepare_for_training) as the layout in the module docstring."""
    directory = Path(directory)
    spec = dict(getattr(model, "nerpipe_method", {"method": "full"}))
    _module(spec["method"]).save(model, directory)
    spec["merged"] = METHODS[spec["method"]].merged
    write_method(directory, spec)


def attach_saved_adapter(model, directory):
    """`model` loaded from `directory` as saved by save_trained, with its adapter put back where the
    method could not be merged; `model` itself otherwise (a plain model directory included)."""
    spec = read_method(directory)
    if spec is None or spec.get("merged", True):
        return model
    method = spec["method"]
    unmerged = [name for name, m in METHODS.items() if not m.merged]
    if method not in unmerged:
        raise UserError(f"{Path(directory) / DESCRIPTION_FILE}: unknown unmerged method {method!r} (this nerpipe "
                        f"knows {', '.join(unmerged)})")
    return _module(method).load(model, Path(directory), spec)


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
