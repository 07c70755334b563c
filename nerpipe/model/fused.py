"""Regional torch.compile of a BERT-family encoder for training on a CPU: the places where dropout,
the residual add and LayerNorm meet (each layer's attention output and feed-forward output), or whole
encoder layers. Eager PyTorch draws dropout's mask with `aten::bernoulli_` (slow on CPU, pytorch#138199)
and writes it out; inductor draws the random numbers inside the fused kernel. Compiled once per module
kind with dynamic shapes, so every batch width reuses the same code."""

import types

import torch


def _dropout_add_norm(hidden, residual, weight, bias, eps, p, training):
    hidden = torch.nn.functional.dropout(hidden, p, training)
    return torch.nn.functional.layer_norm(hidden + residual, (hidden.shape[-1],), weight, bias, eps)


_compiled_dropout_add_norm = torch.compile(_dropout_add_norm, dynamic=True)


def _residual_forward(self, hidden_states, input_tensor):
    # (batch, seq_len, hidden): the matmul stays eager (oneDNN), the rest is one compiled kernel
    return _compiled_dropout_add_norm(self.dense(hidden_states), input_tensor, self.LayerNorm.weight,
                                      self.LayerNorm.bias, self.LayerNorm.eps, self.dropout.p, self.training)


def residual_blocks(model):
    """The modules computing LayerNorm(dropout(dense(x)) + residual): BertSelfOutput and BertOutput, and
    their copies in RoBERTa, XLM-R, ELECTRA."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "dense", None), torch.nn.Linear)
            and isinstance(getattr(m, "dropout", None), torch.nn.Dropout)
            and isinstance(getattr(m, "LayerNorm", None), torch.nn.LayerNorm)
            and "input_tensor" in m.forward.__code__.co_varnames]


def compile_residual_blocks(model):
    """Route every residual block's dropout + add + LayerNorm through one compiled function; how many."""
    blocks = residual_blocks(model)
    for m in blocks:
        m.forward = types.MethodType(_residual_forward, m)
    return len(blocks)


def compile_layers(model):
    """torch.compile each encoder layer (dynamic shapes): attention's dropout is compiled too; how many."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and m
              and type(m[0]).__name__.endswith("Layer")]
    for layer_list in layers:
        for layer in layer_list:
            layer.compile(dynamic=True)
    return sum(len(x) for x in layers)
