"""LoRA by peft: trainable low-rank updates B·A beside frozen linear weights, merged into them when saved."""

import copy

from peft import LoraConfig, TaskType, get_peft_model

from nerpipe.core.errors import UserError


def target_modules(setting):
    """'auto': peft's default modules for the model type (query and value for BERT-family models);
    else a comma-separated list of module names, each matching any module whose name ends with it."""
    return None if setting == "auto" else [name.strip() for name in setting.split(",") if name.strip()]


def wrap(model, cfg):
    """cfg: params.LoraParams. peft freezes the encoder and trains the head (modules_to_save) with LoRA."""
    config = LoraConfig(task_type=TaskType.TOKEN_CLS, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=target_modules(cfg.target_modules))
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"train.lora.target_modules: {cfg.target_modules!r}: {str(err).splitlines()[0]}; name the "
                        "linear layers to adapt, e.g. train.lora.target_modules=query,value") from None


def merged_copy(model):
    """A plain transformers model with the LoRA updates merged into its weights; `model` is left as it is."""
    return copy.deepcopy(model).merge_and_unload()
