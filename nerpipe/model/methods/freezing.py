"""The methods that only choose which existing weights train: full, top_layers, head, bitfit."""

from nerpipe.core.errors import UserError
from nerpipe.model.families import family, layer_stack


def apply(model, cfg, max_length):
    """Set requires_grad for `cfg.method`; the head (every parameter outside model.base_model) always trains."""
    method = cfg.method
    if method == "full":
        return model
    encoder = model.base_model
    for name, p in encoder.named_parameters():
        p.requires_grad = method == "bitfit" and name.endswith("bias")
    if method == "bitfit" and not any(p.requires_grad for p in encoder.parameters()):
        raise UserError(f"train.method bitfit: {family(model)} ({type(model).__name__}) has no bias terms in its "
                        "encoder (ModernBERT is built without them), so bitfit would train the head only; set "
                        "train.method=head for that, or lora or adapter")
    if method == "top_layers":
        layers = layer_stack(model)
        if cfg.top_layers > len(layers):
            raise UserError(f"train.top_layers: {cfg.top_layers} exceeds the model's {len(layers)} layers")
        for layer in list(layers)[len(layers) - cfg.top_layers:]:
            for p in layer.parameters():
                p.requires_grad = True
    return model


def save(model, directory):
    model.save_pretrained(directory, safe_serialization=True)


def load(model, directory, spec):
    return model
