"""Sustained matmul throughput on this CPU, fp32 and bf16, and which kernel does the work; on a GPU,
its bf16/fp32/TF32 rates (measure_cuda, cuda_summary: the reference of `run_benchmark --device cuda`).

    PYTHONPATH=. .venv/bin/python -m bench.matmul                      # summary: 2048/4096, fp32 (+ bf16)

GFLOP/s = 2*m*k*n / seconds per call; the median call over >= `min_seconds` of calls after warmup
is reported (the best call too). The machine is shared, so every measurement also records the
process's CPU utilisation (CPU seconds / (wall seconds * threads)): well below 1.0 means another
process took cores and the number is low.

bf16 is measured only where the CPU runs it natively (avx512_bf16 or AMX, the rule of nerpipe's
`train.bf16: auto`): emulated, a 2048^3 bf16 matmul runs at about 1 GFLOP/s, some 17 s a call.

The probes behind BENCHMARKS.md's "bf16 on this CPU" (`--sweep` over ops, layouts, shapes and threads,
`--kernels`: the oneDNN kernel each dtype gets, `--bf32`) are at commit b421afc
(`git show b421afc:bench/matmul.py`); this file keeps the reference rates the benchmarks use.
"""

import argparse
import json
import os
import time

import torch

from nerpipe.model.device import use_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _operands(m, k, n, dtype, seed=0):
    """torch.mm of two seeded random contiguous matrices, (m, k) @ (k, n), as a call."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    return lambda: torch.mm(a, b)


def measure(m, k=None, n=None, dtype="fp32", threads=None, warmup=2, min_seconds=1.0, min_calls=3):
    """Time one torch.mm shape; returns a dict with median/best GFLOP/s and the first (cold) call's time."""
    k = m if k is None else k
    n = m if n is None else n
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        fn = _operands(m, k, n, DTYPES[dtype])
        started = time.perf_counter()
        fn()
        first = time.perf_counter() - started
        for _ in range(warmup):
            fn()
        times, cpu0, wall0 = [], time.process_time(), time.perf_counter()
        while sum(times) < min_seconds or len(times) < min_calls:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    times.sort()
    flop = 2.0 * m * k * n
    return {"m": m, "k": k, "n": n, "dtype": dtype, "op": "mm", "layout": "nn", "threads": used,
            "gflops_median": round(flop / times[len(times) // 2] / 1e9, 1),
            "gflops_best": round(flop / times[0] / 1e9, 1),
            "first_call_ms": round(first * 1e3, 2), "calls": len(times),
            "cpu_utilisation": round(cpu / (wall * used), 3)}


def native_dtypes():
    """fp32, and bf16 where this CPU has native bf16 dot products."""
    return [d for d in DTYPES if d != "bf16" or use_bf16("auto", torch.device("cpu"))]


def summary(sizes=(2048, 4096), threads=None, min_seconds=2.0):
    """The headline numbers: large square torch.mm in each native dtype."""
    rows = []
    for size in sizes:
        for dtype in native_dtypes():
            rows.append(measure(size, dtype=dtype, threads=threads, min_seconds=min_seconds))
    return rows


def measure_cuda(m, dtype="bf16", tf32=False, min_seconds=1.0, calls_per_sample=10):
    """Sustained m^3 torch.mm on the current GPU: CUDA events around `calls_per_sample` back-to-back calls
    (a single large GEMM is a few milliseconds), after a warmup; median and best GFLOP/s over samples
    filling `min_seconds`. `tf32` applies to fp32 only; the flag is put back afterwards."""
    device = torch.device("cuda")
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(m, m, device=device, generator=generator).to(DTYPES[dtype])
        b = torch.randn(m, m, device=device, generator=generator).to(DTYPES[dtype])
        for _ in range(3):
            torch.mm(a, b)
        torch.cuda.synchronize(device)
        times = []
        while sum(times) < min_seconds or len(times) < 5:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls_per_sample):
                torch.mm(a, b)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls_per_sample)  # elapsed_time is in ms
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    times.sort()
    flop = 2.0 * m ** 3
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(device), "m": m, "k": m, "n": m, "dtype": dtype,
            "tf32": tf32, "op": "mm", "layout": "nn", "gflops_median": round(flop / times[len(times) // 2] / 1e9, 1),
            "gflops_best": round(flop / times[0] / 1e9, 1), "calls": len(times) * calls_per_sample}


def cuda_summary(size=8192, min_seconds=1.0):
    """The GPU's reference rates: bf16 (what a bf16 training step is compared with), strict fp32, fp32 with TF32."""
    return [measure_cuda(size, "bf16", min_seconds=min_seconds), measure_cuda(size, "fp32", min_seconds=min_seconds),
            measure_cuda(size, "fp32", tf32=True, min_seconds=min_seconds)]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return {}
    interesting = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_bf16",
                   "amx_tile", "amx_int8", "avx_vnni")
    return {f: f in flags for f in interesting}


def environment():
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_available": torch.backends.mkldnn.is_available(),
            "mkldnn_enabled": torch.backends.mkldnn.enabled, "cpu_flags": cpu_flags(),
            "loadavg": os.getloadavg()}


def _print(rows):
    for r in rows:
        print(json.dumps(r))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--out", help="write everything as JSON here")
    args = parser.parse_args(argv)
    result = {"environment": environment()}
    print(json.dumps(result["environment"]))
    result["summary"] = summary(args.sizes, args.threads, args.min_seconds)
    _print(result["summary"])
    result["loadavg_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
