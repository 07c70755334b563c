"""Prompt tuning by peft (Lester et al., 2021): `virtual_tokens` trainable embeddings put before every
input; the encoder stays frozen, the head trains. The prompt positions' logits are dropped, so the
model answers one logit row per input sub-token like any other.

Why not P-tuning v2 / prefix tuning (a prompt in every layer): peft implements it through the model's
`past_key_values`, and transformers 5's BertForTokenClassification takes none (peft raises "Model does
not support past key values which are required for prefix tuning"). Soft prompts at the input work with
every encoder. A prompt cannot be merged into the weights, so evaluate and predict put it back on load.
"""

from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import nn

from nerpipe.core.errors import UserError


class PromptTuned(nn.Module):
    """A peft prompt-tuning model whose logits cover the input sub-tokens only."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model
        self.virtual_tokens = peft_model.peft_config[peft_model.active_adapter].num_virtual_tokens

    @property
    def config(self):
        return self.peft_model.get_base_model().config

    def forward(self, input_ids, attention_mask, **kwargs):
        out = self.peft_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        out.logits = out.logits[:, self.virtual_tokens:]  # (batch, virtual + seq_len, labels) -> (batch, seq_len, labels)
        return out


def wrap(model, cfg, max_length):
    """cfg: params.PromptParams. The prompt takes positions: `max_length` + virtual tokens must fit the model."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_length + cfg.virtual_tokens > limit:
        raise UserError(f"train.prompt.virtual_tokens: {cfg.virtual_tokens} prompt tokens + prepare.max_length "
                        f"{max_length} exceed the model's {limit} positions; lower one of them")
    return PromptTuned(get_peft_model(model, PromptTuningConfig(task_type=TaskType.TOKEN_CLS,
                                                                num_virtual_tokens=cfg.virtual_tokens)))


def base_copy(model):
    """The plain transformers model with its trained head (peft keeps the head in a ModulesToSaveWrapper)."""
    from nerpipe.model.methods import unwrap_copy

    return unwrap_copy(model.peft_model.get_base_model(), ModulesToSaveWrapper,
                       lambda wrapper: wrapper.modules_to_save[wrapper.active_adapter])


def save_adapter(model, directory):
    model.peft_model.save_pretrained(directory, safe_serialization=True)


def load_adapter(model, directory, spec):
    return PromptTuned(PeftModel.from_pretrained(model, directory))
