"""nerpipe's training step, one way against another, on the same real batches in alternating blocks.

    PYTHONPATH=. .venv/bin/python -m bench.step_speed --variants dynamic static --out bench/results/static.json
    PYTHONPATH=. .venv/bin/python -m bench.step_speed --device cuda --variants waiting pipelined static graphs

Variants (each its own copy of the model and its own fused AdamW, all on the same batches):
  waiting    the step before issue 24: each batch collated in this process when needed, copied from
             unpinned memory, the loss read back (`.item()`) and the device synchronized after every step
  pipelined  fit's step (nerpipe.train.loop): steps collated ahead by step_loader (on CUDA a worker
             process, pinned memory, asynchronous copies), nothing read back
  static     pipelined, every batch padded to one of --widths (train.static_widths)
  graphs     static, the model under torch.compile(mode="reduce-overhead"): CUDA graphs replayed per
             width on a GPU (on a CPU there are no CUDA graphs; it is then inductor's code)
  regional   pipelined, with torch.compile of each encoder layer's dropout + residual + LayerNorm only
             (below; on a CPU dropout's random numbers are drawn inside inductor's kernel)
  layers     pipelined, each encoder layer under torch.compile(dynamic=True) (attention's dropout too)

Every variant first runs --warmup steps (for the compiled ones, their compilation: `first_pass_seconds`
counts it), then --blocks blocks of --block-steps steps each, the variants' order reversed every other
block, so that a drift of the machine's speed does not favour one. Batches are epoch 0's of
length_grouped_batches (--batch-size, seed 42), full batches only, lr 5e-5, dropout 0.1, bf16 autocast
where nerpipe's `train.bf16: auto` turns it on. The device is synchronized around each block (not each
step, except in `waiting`). Data: the first --train-sentences of CoNLL-2003 (bench/inputs.py finds it).
Writes --out (JSON) and prints one row per variant: median seconds per step, sentences/s, padded tokens/s,
padding, first-pass seconds.
"""

import argparse
import json
import statistics
import time
import types
from pathlib import Path

import torch

from bench import inputs
from nerpipe.data.batching import collate, length_grouped_batches, padded_width
from nerpipe.data.prepared import WindowedExamples
from nerpipe.model.device import pad_multiple, set_tf32, use_bf16
from nerpipe.model.loading import load_for_training, load_tokenizer
from nerpipe.train.loop import build_optimizer, collate_step, run_step, step_loader, synchronize

# --- regional compilation (measured on the CPU, not kept: BENCHMARKS.md "Levers tried") -------------------
# Where dropout, the residual add and LayerNorm meet (each layer's attention output and feed-forward
# output), or whole encoder layers. Eager PyTorch draws dropout's mask with `aten::bernoulli_` (slow on
# CPU, pytorch#138199); inductor draws the random numbers inside its fused kernel. Dynamic shapes: one
# compilation serves every batch width.

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


VARIANTS = ("waiting", "pipelined", "static", "graphs", "regional", "layers")
WIDTHS = (32, 64, 128)


class Variant:
    """One way of stepping: its own model and optimizer, and the steps it will be fed."""

    def __init__(self, name, model_dir, labels, train, pad_id, device, bf16, widths, graphs_backend="inductor"):
        self.name, self.train, self.pad_id, self.device, self.bf16 = name, train, pad_id, device, bf16
        self.lengths = train.input_ids.lengths()
        self.model = load_for_training(model_dir, labels, 0.1, 42).to(device).train()
        self.optimizer = build_optimizer(self.model, 5e-5, 0.0)
        self.widths = tuple(widths) if name in ("static", "graphs") else ()
        self.limit = getattr(self.model.config, "max_position_embeddings", None)
        self.forward = self.model
        if name == "graphs":
            on_gpu = device.type == "cuda"
            self.forward = torch.compile(self.model, mode="reduce-overhead" if on_gpu else None, dynamic=False,
                                         backend=graphs_backend)
        elif name == "regional":
            compile_residual_blocks(self.model)
        elif name == "layers":
            compile_layers(self.model)

    def feed(self, groups):
        """The steps of `groups`, from now on: pipelined ones through fit's loader (collated ahead on CUDA)."""
        if self.name == "waiting":
            self.steps = iter(groups)
        else:
            def collate_one(group):
                return collate_step(group, self.train, self.lengths, self.pad_id, pad_multiple(self.device),
                                    self.limit, widths=self.widths)
            self.steps = iter(step_loader(groups, collate_one, self.device))

    def step(self):
        if self.name == "waiting":
            group = next(self.steps)
            step = collate_step(group, self.train, self.lengths, self.pad_id, pad_multiple(self.device), self.limit)
            step.micro = [({k: v.to(self.device) for k, v in batch.items()}, w) for batch, w in step.micro]
        else:
            step = next(self.steps)
        if self.name == "graphs":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        loss = run_step(self.forward, step, self.device, self.bf16)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.name == "waiting":
            loss.item()
            synchronize(self.device)

    def padded(self, groups):
        multiple = pad_multiple(self.device)
        return sum(padded_width(int(self.lengths[b].max()), multiple, self.limit, self.widths) * len(b)
                   for group in groups for b in group)


def measure(variants, groups, warmup, blocks, block_steps, device):
    """{variant: {...}}: first-pass seconds over `warmup` steps, then seconds of each block."""
    blocks_of = [groups[warmup + k * block_steps:warmup + (k + 1) * block_steps] for k in range(blocks)]
    out = {}
    for v in variants:
        v.feed(groups[:warmup + blocks * block_steps])
        synchronize(device)
        started = time.perf_counter()
        for _ in range(warmup):
            v.step()
        synchronize(device)
        out[v.name] = {"first_pass_seconds": round(time.perf_counter() - started, 3), "block_seconds": []}
        print(f"{v.name}: first {warmup} steps {out[v.name]['first_pass_seconds']} s", flush=True)
    for k in range(blocks):
        for v in (variants if k % 2 == 0 else variants[::-1]):
            synchronize(device)
            started = time.perf_counter()
            for _ in range(block_steps):
                v.step()
            synchronize(device)
            out[v.name]["block_seconds"].append(round(time.perf_counter() - started, 4))
    measured = [g for block in blocks_of for g in block]
    sentences = sum(len(b) for g in measured for b in g)
    tokens = sum(int(variants[0].lengths[b].sum()) for g in measured for b in g)
    for v in variants:
        row = out[v.name]
        per_step = statistics.median(row["block_seconds"]) / block_steps
        total = sum(row["block_seconds"])
        padded = v.padded(measured)
        row.update({"ms_per_step": round(1000 * per_step, 2), "sentences_per_second": round(sentences / total, 1),
                    "padded_tokens_per_second": round(padded / total), "padding_fraction": round(1 - tokens / padded, 4),
                    "distinct_widths": len({padded_width(int(v.lengths[b].max()), pad_multiple(device), v.limit,
                                                         v.widths) for g in measured for b in g})})
    return out


def run(model_dir, data_dir, variants, device="cpu", train_sentences=3000, batch_size=32, warmup=20, blocks=4,
        block_steps=20, widths=WIDTHS, bf16="auto", graphs_backend="inductor"):
    from bench.data import load_data

    device = torch.device(device)
    tokenizer = load_tokenizer(model_dir)
    data = load_data(tokenizer, data_dir, train_sentences, eval_sentences=1, splits=("train", "valid", "test"))
    train = WindowedExamples(data.splits["train"].examples)
    lengths = train.input_ids.lengths()
    full = [b for b in length_grouped_batches(lengths, batch_size, 42, 0) if len(b) == batch_size]
    groups = [[b] for b in full]
    needed = warmup + blocks * block_steps
    if len(groups) < needed:
        raise SystemExit(f"{len(groups)} full batches of {batch_size} in {train_sentences} sentences; {needed} "
                         "needed: more --train-sentences or fewer steps")
    on = use_bf16(bf16, device)
    set_tf32(device, on)
    built = [Variant(name, model_dir, data.labels, train, tokenizer.pad_token_id, device, on, widths, graphs_backend)
             for name in variants]
    result = measure(built, groups, warmup, blocks, block_steps, device)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "bf16": on,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "batch_size": batch_size,
            "warmup": warmup, "blocks": blocks, "block_steps": block_steps, "widths": list(widths),
            "train_sentences": train_sentences, "variants": result}


def table(report):
    head = ("variant", "ms/step", "sent/s", "padded tok/s", "pad %", "widths", "first pass s", "blocks s")
    rows = [(name, r["ms_per_step"], r["sentences_per_second"], r["padded_tokens_per_second"],
             round(100 * r["padding_fraction"], 1), r["distinct_widths"], r["first_pass_seconds"],
             " ".join(str(s) for s in r["block_seconds"])) for name, r in report["variants"].items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--model")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["waiting", "pipelined"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--train-sentences", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block-steps", type=int, default=20)
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--graphs-backend", default="inductor",
                        help="torch.compile backend of `graphs` (eager: only the plumbing, for a CPU smoke run)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(inputs.model_dir(args.model), str(inputs.data_dir(args.data)), args.variants, args.device,
                 args.train_sentences, args.batch_size, args.warmup, args.blocks, args.block_steps, args.widths,
                 args.bf16, args.graphs_backend)
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
