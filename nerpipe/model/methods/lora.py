"""LoRA by peft: trainable low-rank updates B·A beside frozen linear weights, merged into them when saved."""

import copy

from peft import LoraConfig, TaskType, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from nerpipe.core.errors import UserError
from nerpipe.model.families import attention_inputs, family


def target_modules(setting, model):
    """'auto': peft's default modules for the model type (query and value for BERT-family models); where
    peft has none (DistilBERT, ModernBERT) every attention input projection, found by the layers' structure
    (q_lin, k_lin, v_lin; Wqkv). Else a comma-separated list of module names, each matching any module
    whose name ends with it."""
    if setting != "auto":
        return [name.strip() for name in setting.split(",") if name.strip()]
    if family(model) in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return None  # peft picks its default
    return sorted({name.rpartition(".")[2] for name in attention_inputs(model)})


def apply(model, cfg, max_length):
    """cfg: params.TrainParams. peft freezes the encoder and trains the head (modules_to_save) with LoRA."""
    settings = cfg.lora
    config = LoraConfig(task_type=TaskType.TOKEN_CLS, r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=target_modules(settings.target_modules, model))
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"train.lora.target_modules: {settings.target_modules!r} on {family(model)}: "
                        f"{str(err).splitlines()[0]}; name the linear layers to adapt, e.g. "
                        "train.lora.target_modules=query,value") from None


def save(model, directory):
    """The LoRA update merged into the weights, and peft's adapter files beside them."""
    from nerpipe.model.methods import ADAPTER_DIR

    merged_copy(model).save_pretrained(directory, safe_serialization=True)
    model.save_pretrained(directory / ADAPTER_DIR, safe_serialization=True)


def load(model, directory, spec):
    return model  # merged: the saved weights are the trained model


def merged_copy(model):
    """A plain transformers model with the LoRA updates merged into its weights; `model` is left as it is."""
    return copy.deepcopy(model).merge_and_unload()
