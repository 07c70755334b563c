"""Probes of nerpipe's training step on real prepared data: where the time goes, and levers tried.

    # prepared data from `dvc repro prepare` (or any data/prepared), the offline MiniLM
    PYTHONPATH=. .venv/bin/python -m bench.step_probes profile --prepared data/prepared --model "$MODEL"
    PYTHONPATH=. .venv/bin/python -m bench.step_probes compile --prepared data/prepared --model "$MODEL"
    PYTHONPATH=. .venv/bin/python -m bench.step_probes order --prepared data/prepared --model "$MODEL"

profile  splits a step into forward+backward / clipping / AdamW / zero_grad, then prints the
         torch.profiler table of the top ops by self CPU time.
compile  torch.compile(model, dynamic=True): time of the first steps (compilation) and of steady steps.
order    the same batches in nerpipe's shuffled order vs sorted by length, alternating blocks: does
         shape locality (allocator reuse, oneDNN primitive cache) matter?
Each uses the epoch-0 batches of `length_grouped_batches` (batch size 32, seed 42), lr 5e-5, and bf16
autocast where the CPU has native bf16, as nerpipe's `train.bf16: auto` does (--fp32: never).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from nerpipe.data.batching import length_grouped_batches
from nerpipe.data.prepared import PreparedSplit, read_labels
from nerpipe.model.device import use_bf16
from nerpipe.model.loading import load_for_training, load_tokenizer
from nerpipe.train.loop import build_optimizer, train_step

CPU = torch.device("cpu")


class Setup:
    def __init__(self, prepared, model_dir, bf16):
        self.train = PreparedSplit(prepared, "train").examples
        self.lengths = self.train.input_ids.lengths()
        self.model = load_for_training(model_dir, read_labels(prepared), 0.1, 42).train()
        self.optimizer = build_optimizer(self.model, 5e-5, 0.0)
        self.pad_id = load_tokenizer(model_dir).pad_token_id
        self.batches = length_grouped_batches(self.lengths, 32, 42, 0)
        self.bf16 = bf16

    def step(self, batch, model=None):
        """One optimizer step; seconds of (forward+backward, clip, AdamW, zero_grad)."""
        t0 = time.perf_counter()
        train_step(self.model if model is None else model, [batch], self.train, self.lengths, self.pad_id, CPU,
                   self.bf16)
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        t2 = time.perf_counter()
        self.optimizer.step()
        t3 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3


def profile(s, warmup=30, steps=60, profiled=20):
    for b in s.batches[:warmup]:
        s.step(b)
    parts = np.array([s.step(b) for b in s.batches[warmup:warmup + steps]]).sum(0)
    print(f"{steps} steps: forward+backward {parts[0]:.2f} s, clip {parts[1]:.2f} s, AdamW {parts[2]:.2f} s, "
          f"zero_grad {parts[3]:.2f} s ({1000 * parts.sum() / steps:.0f} ms per step)")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for b in s.batches[warmup + steps:warmup + steps + profiled]:
            s.step(b)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def compiled(s, first=100, steady=60):
    model = torch.compile(s.model, dynamic=True)
    started = time.perf_counter()
    for i, b in enumerate(s.batches[:first]):
        seconds = sum(s.step(b, model))
        if i < 3:
            print(f"step {i}: {seconds:.2f} s", flush=True)
    print(f"first {first} steps: {time.perf_counter() - started:.1f} s")
    parts = sum(sum(s.step(b, model)) for b in s.batches[first:first + steady])
    print(f"next {steady} steps: {parts:.2f} s ({1000 * parts / steady:.0f} ms per step)")


def order(s, blocks=4, block=30):
    for b in s.batches[:15]:
        s.step(b)
    totals = {"shuffled": 0.0, "sorted": 0.0}
    for k in range(blocks):
        chunk = s.batches[15 + block * k:15 + block * (k + 1)]
        runs = {"shuffled": chunk, "sorted": sorted(chunk, key=lambda b: -s.lengths[b].max())}
        for name in (("shuffled", "sorted") if k % 2 == 0 else ("sorted", "shuffled")):
            totals[name] += sum(sum(s.step(b)) for b in runs[name])
    print({k: round(v, 2) for k, v in totals.items()}, f"seconds over {blocks * block} steps each")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["profile", "compile", "order"])
    parser.add_argument("--prepared", type=Path, required=True, help="a data/prepared directory")
    parser.add_argument("--model", required=True, help="the model directory the data was prepared for")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast (default: nerpipe's `auto`)")
    args = parser.parse_args(argv)
    setup = Setup(args.prepared, args.model, bf16=use_bf16("off" if args.fp32 else "auto", CPU))
    {"profile": profile, "compile": compiled, "order": order}[args.probe](setup)


if __name__ == "__main__":
    main()
