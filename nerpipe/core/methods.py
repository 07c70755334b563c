"""The fine-tuning methods `train.method` names, in one table: where each one's code is, which block of
`train` holds its settings, and whether its result is merged into plain weights. params.py checks
`train.method` against it; nerpipe/model/methods/ applies, saves and loads through it.

Each module nerpipe/model/methods/<module>.py has
    apply(model, cfg, max_length)    the model to train (cfg: params.TrainParams; max_length: prepare's)
    save(model, directory)           write the trained model as save_pretrained does (+ adapter/)
    load(model, directory, spec)     put an unmerged adapter back on the saved base model
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    module: str
    """nerpipe/model/methods/<module>.py."""
    settings: str | None
    """The field of params.TrainParams holding the method's settings (recorded with the model), or None."""
    merged: bool
    """True: the saved model.safetensors is the trained model; False: load() puts the adapter back."""
    summary: str


METHODS = {
    "full": Method("freezing", None, True, "every weight (the default)"),
    "top_layers": Method("freezing", "top_layers", True, "the head and the top `train.top_layers` encoder layers"),
    "head": Method("freezing", None, True, "the classification head only"),
    "bitfit": Method("freezing", None, True, "every bias term and the head (Ben Zaken et al., 2022)"),
    "lora": Method("lora", "lora", True, "low-rank updates of the attention projections, by peft (Hu et al., 2021)"),
    "adapter": Method("bottleneck", "adapter", False,
                      "bottleneck adapters after each attention and feed-forward output (Houlsby et al., 2019)"),
    "prompt": Method("prompt", "prompt", False, "soft prompt tokens before the input, by peft (Lester et al., 2021)"),
}
