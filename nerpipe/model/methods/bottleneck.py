"""Bottleneck adapters (Houlsby et al., 2019): a small down-project, GELU, up-project, added to the output of
each attention projection and each feed-forward output, before the residual sum and LayerNorm. The
encoder's weights stay frozen; the adapters, the LayerNorms and the head train.

Written here, in a few lines: peft has no bottleneck adapter, and AdapterHub's `adapters` library
requires transformers 4.x (1.3.0 pins transformers ~= 4.57). An adapter cannot be merged into the
linear layer it follows (the GELU between), so evaluate and predict put it back on load.
"""

import json

from safetensors.torch import load_file, save_file
from torch import nn

from nerpipe.core.errors import UserError
from nerpipe.model.families import residual_projections

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


class BottleneckAdapter(nn.Module):
    """`linear`'s output h becomes h + up(gelu(down(h))). `up` starts at zero, so training starts from
    the pretrained model exactly."""

    def __init__(self, linear, size):
        super().__init__()
        self.linear = linear
        self.down = nn.Linear(linear.out_features, size)
        self.up = nn.Linear(size, linear.out_features)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        h = self.linear(x)
        return h + self.up(nn.functional.gelu(self.down(h)))


def _matches(name, targets):
    return any(name == t or name.endswith("." + t) for t in targets)


def insert(model, size, target_modules):
    """Put an adapter after every nn.Linear whose name ends with one of `target_modules` (comma-separated),
    or, for 'auto', after each layer's attention output and feed-forward output (families.py)."""
    if target_modules == "auto":
        found = residual_projections(model)
    else:
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
        found = [name for name, m in model.base_model.named_modules()
                 if isinstance(m, nn.Linear) and _matches(name, targets)]
    if not found:
        linears = sorted({name.rpartition(".")[2] if name.count(".") < 2 else ".".join(name.split(".")[-2:])
                          for name, m in model.base_model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"train.adapter.target_modules: {target_modules!r} matches no linear layer of "
                        f"{type(model).__name__}; its linear layers end with: {', '.join(linears[:12])}")
    for name in found:
        parent, _, child = name.rpartition(".")
        owner = model.base_model.get_submodule(parent) if parent else model.base_model
        setattr(owner, child, BottleneckAdapter(getattr(owner, child), size))
    return found


def apply(model, cfg, max_length):
    """cfg: params.TrainParams. Trains the adapters, every LayerNorm (as Houlsby et al. did) and the head."""
    for p in model.base_model.parameters():
        p.requires_grad = False
    insert(model, cfg.adapter.size, cfg.adapter.target_modules)
    for module in model.base_model.modules():
        if isinstance(module, (BottleneckAdapter, nn.LayerNorm)):
            for name, p in module.named_parameters():
                p.requires_grad = not name.startswith("linear.")
    return model


def base_copy(model):
    from nerpipe.model.methods import unwrap_copy

    return unwrap_copy(model, BottleneckAdapter, lambda adapter: adapter.linear)


def save(model, directory):
    """The base model with its trained head and LayerNorms, and adapter/ with what trained."""
    from nerpipe.model.methods import ADAPTER_DIR

    base_copy(model).save_pretrained(directory, safe_serialization=True)
    save_adapter(model, directory / ADAPTER_DIR)


def load(model, directory, spec):
    from nerpipe.model.methods import ADAPTER_DIR

    return load_adapter(model, directory / ADAPTER_DIR, spec)


def save_adapter(model, directory):
    """Every parameter that trained (adapters, LayerNorms, head), with the settings to rebuild the adapters."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
              directory / WEIGHTS)
    spec = model.nerpipe_method
    (directory / CONFIG).write_text(json.dumps({"size": spec["size"], "target_modules": spec["target_modules"],
                                                "base_model": model.config.name_or_path}, indent=2) + "\n")


def load_adapter(model, directory, spec):
    insert(model, spec["size"], spec["target_modules"])
    weights = load_file(directory / WEIGHTS)
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    missing = [n for n, _ in model.named_parameters() if ".down." in n or ".up." in n if n not in weights]
    if unexpected or missing:
        raise UserError(f"{directory / WEIGHTS}: does not fit the model (unexpected {unexpected[:3]}, missing "
                        f"{missing[:3]}); re-run the train stage")
    return model



