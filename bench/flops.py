"""Model FLOPs per trained sub-token, counted by torch.utils.flop_counter.FlopCounterMode.

    PYTHONPATH=. .venv/bin/python -m bench.flops [--model DIR] [--seq-len 40] [--batch-size 8]

FlopCounterMode counts matmul-like ops (mm/addmm/bmm/baddbmm, scaled-dot-product attention) in the
forward and the backward; elementwise ops (GELU, LayerNorm, softmax, dropout, AdamW) are not
counted, they are memory-bound and cheap in FLOPs. The analytic cross-check is 6 * (non-embedding
matmul parameters) per token for the dense layers, plus 3 * 4 * seq_len * hidden per layer for
attention scores and the weighted sum (forward 1x, backward 2x).

With the FLOPs per token and the matmul GFLOP/s of bench/matmul.py, a training run's
"model FLOP/s utilisation" is  subtokens_per_second * flops_per_token / peak_flops.
Note it is per *processed* token: padding costs the same FLOPs as a real token, so per real
sub-token a padded batch costs flops_per_token / (1 - padding_fraction).
"""

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import inputs


def _batch(model, batch_size, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    input_ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=g)
    labels = torch.randint(0, model.config.num_labels, (batch_size, seq_len), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def count_train_flops(model, batch):
    """FLOPs of one forward + backward over `batch`: {'forward', 'backward', 'total', 'by_op'}."""
    model.train()
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as forward_counter:
        loss = model(**batch).loss
    forward = forward_counter.get_total_flops()
    with FlopCounterMode(display=False) as backward_counter:
        loss.backward()
    backward = backward_counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    by_op = {}
    for counter in (forward_counter, backward_counter):
        for op, flops in counter.get_flop_counts().get("Global", {}).items():
            by_op[str(op)] = by_op.get(str(op), 0) + int(flops)
    return {"forward": int(forward), "backward": int(backward), "total": int(forward + backward), "by_op": by_op}


def analytic_flops_per_token(config, seq_len):
    """6 * dense matmul params (+ classifier) + attention, per token of a full (unpadded) batch."""
    h, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = layers * (4 * h * h + 2 * h * ff) + h * config.num_labels
    attention = layers * 4 * seq_len * h  # QK^T and attn@V, forward, per token
    return 6 * dense + 3 * attention


def train_flops_per_token(model, seq_len, batch_size=8):
    """Forward+backward FLOPs per sub-token for a batch of `batch_size` rows of `seq_len` (no padding).

    Returns a dict; 'flops_per_token' is the headline number (MiniLM-L6, seq_len 40: ~64.8 MFLOP).
    """
    counted = count_train_flops(model, _batch(model, batch_size, seq_len))
    tokens = batch_size * seq_len
    return {"seq_len": seq_len, "batch_size": batch_size, "tokens": tokens,
            "flops_per_token": counted["total"] / tokens,
            "forward_flops_per_token": counted["forward"] / tokens,
            "backward_flops_per_token": counted["backward"] / tokens,
            "analytic_flops_per_token": analytic_flops_per_token(model.config, seq_len),
            "by_op_per_token": {op: round(f / tokens) for op, f in sorted(counted["by_op"].items())},
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}


def load_model(model_dir=None, num_labels=9):
    """The model with a fresh head of `num_labels`; `model_dir` None: bench.inputs.model_dir's default."""
    from transformers import AutoModelForTokenClassification
    return AutoModelForTokenClassification.from_pretrained(inputs.model_dir(model_dir), num_labels=num_labels,
                                                           use_safetensors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"model directory (else ${inputs.MODEL_ENV}, else the offline MiniLM-L6)")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[16, 40, 128])
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    model = load_model(args.model)
    for seq_len in args.seq_len:
        r = train_flops_per_token(model, seq_len, args.batch_size)
        print(json.dumps({**{k: v for k, v in r.items() if k != "by_op_per_token"},
                          "mflops_per_token": round(r["flops_per_token"] / 1e6, 2),
                          "analytic_mflops_per_token": round(r["analytic_flops_per_token"] / 1e6, 2)}))
        print("  by op:", json.dumps(r["by_op_per_token"]))


if __name__ == "__main__":
    main()
