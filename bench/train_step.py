"""Time one training step (forward + backward + AdamW) of the real model on a fixed batch.

    PYTHONPATH=. .venv/bin/python -m bench.train_step [--model DIR] [--threads 1 2] [--modes fp32 autocast] [--steps 8]

Modes: fp32; autocast (torch.autocast("cpu", bfloat16) around the forward, fp32 weights: what
nerpipe's `train.bf16: on` does); bf16-weights (the whole model cast to bfloat16, for reference only:
pure-bf16 AdamW updates lose precision). A batch is `batch_size` rows of `seq_len` sub-tokens, no
padding, so tokens/s here is the compute ceiling a trainer can reach at that shape. The bf16 modes are
in the default list only where the CPU runs bf16 natively (nerpipe's `train.bf16: auto` rule).
"""

import argparse
import json
import os
import time
from contextlib import nullcontext

import torch

from bench import inputs
from bench.flops import _batch, load_model, train_flops_per_token
from nerpipe.model.device import use_bf16


def time_steps(model, batch, mode, steps=8, warmup=2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else nullcontext()
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(warmup + steps):
        started = time.perf_counter()
        with ctx:
            loss = model(**batch).loss
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    util = (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * torch.get_num_threads())
    times.sort()
    return times[len(times) // 2], util


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"model directory (else ${inputs.MODEL_ENV}, else the offline MiniLM-L6)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    native = use_bf16("auto", torch.device("cpu"))
    parser.add_argument("--modes", nargs="+", choices=["fp32", "autocast", "bf16-weights"],
                        default=["fp32", "autocast", "bf16-weights"] if native else ["fp32"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    model_dir = inputs.model_dir(args.model)
    base = load_model(model_dir)
    flops = train_flops_per_token(base, args.seq_len)["flops_per_token"]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for mode in args.modes:
            model = load_model(model_dir)
            model.load_state_dict(base.state_dict())
            if mode == "bf16-weights":
                model = model.to(torch.bfloat16)
            model.train()
            batch = _batch(model, args.batch_size, args.seq_len)
            seconds, util = time_steps(model, batch, mode, args.steps)
            tokens = args.batch_size * args.seq_len
            row = {"threads": threads, "mode": mode, "batch": [args.batch_size, args.seq_len],
                   "step_ms": round(seconds * 1e3, 1), "tokens_per_s": round(tokens / seconds),
                   "gflops": round(tokens * flops / seconds / 1e9, 1), "cpu_utilisation": round(util, 3),
                   "loadavg": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
