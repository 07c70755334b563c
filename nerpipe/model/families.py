"""What differs between encoder families (BERT, RoBERTa, XLM-RoBERTa, DeBERTa-v2/v3, ELECTRA, DistilBERT,
ModernBERT), found from the model's structure or its config rather than from one family's names:

    layer_stack            the list of transformer layers (encoder.layer, transformer.layer, layers)
    residual_projections   per layer, the attention-output and feed-forward-output linear layers
    attention_inputs       per layer, the linear layers that read the layer's input for attention
    position_limit         how many tokens the model's positions take
"""

from torch import nn

from nerpipe.core.errors import UserError

# RoBERTa-style embeddings count positions from padding_idx + 1, so max_position_embeddings (514) holds
# padding_idx + 1 (2) fewer tokens (512).
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "roberta-prelayernorm",
                    "luke", "mpnet", "longformer"}


def family(model_or_config):
    config = getattr(model_or_config, "config", model_or_config)
    return config.model_type


def position_limit(config):
    """(tokens, note): the most tokens one input may hold, or None where the positions set none; `note` says
    why where it is not simply max_position_embeddings (else None)."""
    positions = getattr(config, "max_position_embeddings", None)
    if config.model_type.startswith("deberta") and not getattr(config, "position_biased_input", True):
        # DeBERTa-v3: relative positions only, bucketed by distance, so no length runs out of positions;
        # its pretraining length is max_position_embeddings.
        return None, f"{config.model_type} uses relative positions only (pretrained on {positions} tokens)"
    if not positions:
        return None, f"{config.model_type} has no position limit in its config"
    if config.model_type in OFFSET_POSITIONS:
        offset = (config.pad_token_id or 0) + 1
        return positions - offset, (f"{config.model_type}: {positions} position embeddings, counted from "
                                    f"padding_idx + 1 = {offset}")
    return positions, None


def layer_stack(model):
    """The encoder's transformer layers: the nn.ModuleList of config.num_hidden_layers layers (BERT
    encoder.layer, DistilBERT transformer.layer, ModernBERT layers), else the longest one."""
    encoder = model.base_model
    stacks = [m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not stacks:
        raise UserError(f"train.method top_layers: {family(model)} ({type(encoder).__name__}) has no list of "
                        "layers to choose from; set train.method=lora, adapter or full")
    exact = [m for m in stacks if len(m) == getattr(model.config, "num_hidden_layers", -1)]
    return exact[0] if exact else max(stacks, key=len)


def _layer_linears(model):
    """[(layer index, [(name under base_model, nn.Linear), ...] in the order the layer defines them)]."""
    stack = layer_stack(model)
    names = {id(m): name for name, m in model.base_model.named_modules()}
    return [(i, [(names[id(m)], m) for m in layer.modules() if isinstance(m, nn.Linear)])
            for i, layer in enumerate(stack)]


def residual_projections(model):
    """Names (under base_model) of each layer's attention-output and feed-forward-output projections: the
    two linear layers whose outputs are added to the residual stream. Every family defines a layer's
    linears in the order attention inputs, attention output, feed-forward input, feed-forward output
    (BERT query key value dense, dense, dense; DistilBERT q_lin k_lin v_lin out_lin, lin1, lin2; ModernBERT
    Wqkv, Wo, Wi, Wo), so they are the last but two and the last."""
    hidden = model.config.hidden_size
    found = []
    for i, linears in _layer_linears(model):
        picked = [linears[-3], linears[-1]] if len(linears) >= 4 else []
        if not picked or any(m.out_features != hidden for _, m in picked):
            raise UserError(f"train.adapter.target_modules auto: cannot find the attention and feed-forward output "
                            f"projections of layer {i} of {family(model)} ({type(model).__name__}); name them, e.g. "
                            f"train.adapter.target_modules={','.join(n.rpartition('.')[2] for n, _ in linears[-3:])}")
        found += [name for name, _ in picked]
    return found


def attention_inputs(model):
    """Names (under base_model) of each layer's attention input projections: the linear layers defined
    before the attention output (query, key, value; DistilBERT q_lin, k_lin, v_lin; ModernBERT Wqkv)."""
    return [name for _, linears in _layer_linears(model) for name, _ in linears[:-3]]
