"""The methods that only choose which existing weights train: full, top_layers, head, bitfit."""

from torch import nn

from nerpipe.core.errors import UserError


def apply(model, method, top_layers):
    """Set requires_grad for `method`; the head (every parameter outside model.base_model) always trains."""
    if method == "full":
        return
    encoder = model.base_model
    for name, p in encoder.named_parameters():
        p.requires_grad = method == "bitfit" and name.endswith("bias")
    if method == "top_layers":
        layers = layer_stack(encoder)
        if top_layers > len(layers):
            raise UserError(f"train.top_layers: {top_layers} exceeds the model's {len(layers)} layers")
        for layer in list(layers)[len(layers) - top_layers:]:
            for p in layer.parameters():
                p.requires_grad = True


def layer_stack(encoder):
    """The encoder's transformer layers: its longest nn.ModuleList (encoder.layer in BERT, transformer.layer
    in DistilBERT), found by structure so no model family's attribute path is assumed."""
    stacks = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise UserError(f"train.method top_layers: {type(encoder).__name__} has no list of layers to choose from")
    return max(stacks, key=len)
