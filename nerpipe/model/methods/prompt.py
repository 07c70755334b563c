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
from nerpipe.model.families import family, position_limit


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


def apply(model, cfg, max_length):
    """cfg: params.TrainParams. The prompt takes positions: `max_length` + virtual tokens must fit the model."""
    virtual = cfg.prompt.virtual_tokens
    limit, note = position_limit(model.config)
    if limit and max_length + virtual > limit:
        raise UserError(f"train.prompt.virtual_tokens: {virtual} prompt tokens + prepare.max_length "
                        f"{max_length} exceed the model's {limit} positions ({note or family(model)}); "
                        "lower one of them")
    # The prompt is made of input embeddings: their width is not hidden_size where the family projects them
    # (ELECTRA's embedding_size). peft reads the shapes from config.to_dict(), which lacks the names
    # DistilBERT's config only maps (dim, n_heads, n_layers), so they are given here.
    config = PromptTuningConfig(task_type=TaskType.TOKEN_CLS, num_virtual_tokens=virtual,
                                token_dim=model.get_input_embeddings().embedding_dim,
                                num_attention_heads=model.config.num_attention_heads,
                                num_layers=model.config.num_hidden_layers)
    return PromptTuned(get_peft_model(model, config))


def save(model, directory):
    """The base model with its trained head, and peft's prompt files in adapter/."""
    from nerpipe.model.methods import ADAPTER_DIR

    base_copy(model).save_pretrained(directory, safe_serialization=True)
    save_adapter(model, directory / ADAPTER_DIR)


def load(model, directory, spec):
    from nerpipe.model.methods import ADAPTER_DIR

    return load_adapter(model, directory / ADAPTER_DIR, spec)


def base_copy(model):
    """The plain transformers model with its trained head (peft keeps the head in a ModulesToSaveWrapper)."""
    from nerpipe.model.methods import unwrap_copy

    return unwrap_copy(model.peft_model.get_base_model(), ModulesToSaveWrapper,
                       lambda wrapper: wrapper.modules_to_save[wrapper.active_adapter])


def save_adapter(model, directory):
    model.peft_model.save_pretrained(directory, safe_serialization=True)


def load_adapter(model, directory, spec):
    return PromptTuned(PeftModel.from_pretrained(model, directory))
