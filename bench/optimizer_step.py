"""Time one AdamW step over all MiniLM-L6 parameters (22.6 M, 11.7 M of them the word embeddings):
foreach (torch's default on CPU) vs fused (what nerpipe.train.loop.build_optimizer uses, and the HF
Trainer's default, `adamw_torch_fused`; torch has a fused CPU kernel since 2.4).

    PYTHONPATH=. .venv/bin/python -m bench.optimizer_step [--model DIR] [--threads 1 2] [--steps 8]

The step is memory-bound (param, grad, exp_avg, exp_avg_sq read and written) and costs the same
whatever the batch, so its share of a training step grows as padding shrinks and batches get shorter.
"""

import argparse
import json
import os
import time

import torch

from bench import inputs
from bench.flops import load_model


def time_optimizer(model, kind, steps=8, warmup=2):
    options = {"fused": True} if kind == "fused" else {"foreach": kind == "foreach"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, **options)
    for _ in range(warmup):
        optimizer.step()
    times, cpu0 = [], time.process_time()
    for _ in range(steps):
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    util = (time.process_time() - cpu0) / (sum(times) * torch.get_num_threads())
    times.sort()
    return {"optimizer": kind, "threads": torch.get_num_threads(), "step_ms": round(times[len(times) // 2] * 1e3, 1),
            "cpu_utilisation": round(util, 3), "loadavg": round(os.getloadavg()[0], 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"model directory (else ${inputs.MODEL_ENV}, else the offline MiniLM-L6)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", default=["foreach", "fused", "single-tensor"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    model = load_model(args.model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for kind in args.kinds:
            row = time_optimizer(model, kind, args.steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
