"""Probe (issue 24, lever 1): is a cheaper dropout worth building on a CPU? nerpipe's bf16 training step of
MiniLM with its nn.Dropout modules (the embedding's and two per layer; attention's dropout runs inside
scaled_dot_product_attention and is left alone) against the same modules replaced by a dropout whose mask
comes from one int16 randint and a comparison (keep probability 1 - p to 1/65,536) instead of bernoulli_.
Both models start from the same weights and train on the same 10 batches of 32 random ids (widths 16-48, as
CoNLL's length-grouped batches), in alternating blocks.

    PYTHONPATH=. .venv/bin/python -m bench.dropout_probe [--model DIR] [--blocks 6]
"""

import argparse
import time

import torch
from torch import nn
from transformers import AutoModelForTokenClassification

from bench import inputs

WIDTHS = (16, 20, 24, 28, 32, 40, 48, 20, 24, 28)


class MaskDropout(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536) - 32768  # keep where r >= threshold

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        r = torch.randint(-32768, 32768, x.shape, dtype=torch.int16, device=x.device)
        return x * (r >= self.threshold).to(x.dtype).mul_(1.0 / (1.0 - self.p))


def build(model_dir, mask_dropout):
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=9)
    if mask_dropout:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Dropout):
                    setattr(module, name, MaskDropout(child.p))
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)


def step(model, optimizer, ids, labels):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args(argv)
    model_dir = inputs.model_dir(args.model)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(1000, 20000, (32, w), generator=g), torch.randint(0, 9, (32, w), generator=g))
               for w in WIDTHS]
    variants = {"nn.Dropout": build(model_dir, False), "mask dropout": build(model_dir, True)}
    for model, optimizer in variants.values():
        for ids, labels in batches[:3]:
            step(model, optimizer, ids, labels)
    seconds = {name: [] for name in variants}
    for block in range(args.blocks):
        for name in (list(variants) if block % 2 == 0 else list(variants)[::-1]):
            started = time.perf_counter()
            for ids, labels in batches:
                step(*variants[name], ids, labels)
            seconds[name].append(time.perf_counter() - started)
    for name, values in seconds.items():
        print(f"{name}: blocks {[round(v, 2) for v in values]} s, median {sorted(values)[len(values) // 2]:.3f} s")
    ratios = [a / b for a, b in zip(seconds["nn.Dropout"], seconds["mask dropout"])]
    print(f"nn.Dropout / mask dropout per block: {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
