"""Sustained matmul throughput on this CPU, fp32 and bf16, and which kernel does the work; on a GPU,
its bf16/fp32/TF32 rates (measure_cuda, cuda_summary: the reference of `run_benchmark --device cuda`).

    PYTHONPATH=. .venv/bin/python -m bench.matmul                      # summary: 2048/4096, fp32 (+ bf16)
    PYTHONPATH=. .venv/bin/python -m bench.matmul --sweep              # ops, layouts, shapes, threads
    PYTHONPATH=. .venv/bin/python -m bench.matmul --kernels            # oneDNN kernel per dtype / ISA cap

GFLOP/s = 2*m*k*n / seconds per call; the median call over >= `min_seconds` of calls after warmup
is reported (the best call too). The machine is shared, so every measurement also records the
process's CPU utilisation (CPU seconds / (wall seconds * threads)): well below 1.0 means another
process took cores and the number is low.

bf16 is measured only where the CPU runs it natively (avx512_bf16 or AMX, the rule of nerpipe's
`train.bf16: auto`): emulated, a 2048^3 bf16 matmul runs at about 1 GFLOP/s, some 17 s a call.
`--kernels` is the exception: it probes on purpose which kernel each dtype gets, emulated ones included.

bf16 findings are in bench/NOTES_bf16.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from nerpipe.model.device import use_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OPS = ("mm", "matmul", "linear", "addmm")
LAYOUTS = ("nn", "tn", "nt")  # which operand is a transposed (non-contiguous) view


def _operands(m, k, n, dtype, op, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, m, generator=g).to(dtype).t() if layout == "tn" else torch.randn(m, k, generator=g).to(dtype)
    if op == "linear":  # F.linear(a, w) = a @ w.T with w stored (n, k), as nn.Linear stores it
        w = torch.randn(k, n, generator=g).to(dtype).t() if layout == "nt" else torch.randn(n, k, generator=g).to(dtype)
        bias = None
        return lambda: F.linear(a, w, bias)
    b = torch.randn(n, k, generator=g).to(dtype).t() if layout == "nt" else torch.randn(k, n, generator=g).to(dtype)
    if op == "mm":
        return lambda: torch.mm(a, b)
    if op == "matmul":
        return lambda: torch.matmul(a, b)
    if op == "addmm":
        bias = torch.randn(n, generator=g).to(dtype)
        return lambda: torch.addmm(bias, a, b)
    raise ValueError(op)


def measure(m, k=None, n=None, dtype="fp32", op="mm", layout="nn", threads=None, warmup=2, min_seconds=1.0,
            min_calls=3):
    """Time one matmul shape; returns a dict with median/best GFLOP/s and the first (cold) call's time."""
    k = m if k is None else k
    n = m if n is None else n
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        fn = _operands(m, k, n, DTYPES[dtype], op, layout)
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
    return {"m": m, "k": k, "n": n, "dtype": dtype, "op": op, "layout": layout, "threads": used,
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


# Shapes the MiniLM-L6 training step runs (hidden 384, FFN 1536) for a batch of 32 x ~40 sub-tokens,
# plus large squares and odd sizes.
SWEEP_SHAPES = [(2048, 2048, 2048), (2000, 2000, 2000), (1001, 999, 1003),
                (1280, 384, 384), (1280, 384, 1536), (1280, 1536, 384), (384, 1280, 1536), (128, 384, 384),
                (1280, 384, 9), (9, 1280, 384), (1280, 9, 384),  # the classifier head and its gradients
                (1, 4096, 4096), (4096, 4096, 1), (16, 4096, 4096)]  # skinny: matrix-vector-like


def sweep(threads_list=(1, 2), min_seconds=0.5):
    rows = []
    for threads in threads_list:
        for m, k, n in SWEEP_SHAPES:
            for dtype in native_dtypes():
                rows.append(measure(m, k, n, dtype=dtype, threads=threads, min_seconds=min_seconds))
    m = 2048
    for op in OPS:
        for layout in LAYOUTS:
            for dtype in native_dtypes():
                rows.append(measure(m, dtype=dtype, op=op, layout=layout, min_seconds=min_seconds))
    return rows


_KERNEL_PROBE = """
import time, torch, torch.nn.functional as F
n = {n}
a = torch.randn(n, n).to(torch.{dtype}); b = torch.randn(n, n).to(torch.{dtype})
{call}; {call}
t = time.perf_counter(); r = 3
for _ in range(r): {call}
print('GFLOPS', {batch} * 2 * n ** 3 * r / (time.perf_counter() - t) / 1e9)
"""


def kernel_probe(dtype="bf16", n=1024, call="torch.mm(a, b)", env=None, mkldnn=True, prelude="", batch=1):
    """Run one matmul in a fresh process with ONEDNN_VERBOSE=1: the oneDNN kernel (None: not oneDNN,
    i.e. MKL sgemm or ATen's own loops) and the GFLOP/s it gave (`batch` n^3 products per call). `env`
    adds variables such as ONEDNN_MAX_CPU_ISA; `mkldnn=False` runs with torch.backends.mkldnn disabled."""
    code = _KERNEL_PROBE.format(n=n, dtype=DTYPES[dtype].__repr__().split(".")[1], call=call, batch=batch)
    if not mkldnn:
        prelude += "\ntorch.backends.mkldnn.enabled = False"
    code = code.replace("n = ", prelude + "\nn = ", 1)
    full_env = {**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "0", **(env or {})}
    out = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=600)
    kernels = sorted({line.split(",")[6] for line in out.stdout.splitlines()
                      if line.startswith("onednn_verbose") and ",exec," in line and ",matmul," in line})
    isa = next((line.split(",", 4)[-1] for line in out.stdout.splitlines() if ",info,cpu,isa:" in line), None)
    gflops = next((float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("GFLOPS")), None)
    return {"dtype": dtype, "n": n, "call": call, "env": env or {}, "mkldnn_enabled": mkldnn, "prelude": prelude,
            "onednn_isa": isa, "kernels": kernels or None, "gflops": round(gflops, 1) if gflops else None,
            "error": out.stderr.strip().splitlines()[-1] if out.returncode else None}


def kernels(n=1024):
    probes = [kernel_probe("fp32", n), kernel_probe("bf16", n),
              kernel_probe("bf16", n, call="F.linear(a, b)"),
              kernel_probe("bf16", n, call="torch.matmul(a.unsqueeze(0).expand(4, n, n), b)", batch=4),
              kernel_probe("bf16", n, call="torch.bmm(a.unsqueeze(0), b.unsqueeze(0))"),
              kernel_probe("bf16", n, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
              kernel_probe("bf16", 512, env={"ONEDNN_MAX_CPU_ISA": "AVX2"}),
              kernel_probe("bf16", 512, mkldnn=False),
              kernel_probe("fp32", n, prelude="torch.backends.mkldnn.matmul.fp32_precision = 'bf16'"),
              kernel_probe("fp32", n, call="torch.mm(a, b)", prelude="torch.set_float32_matmul_precision('medium')")]
    return probes


def bf32_probe(n=2048, min_seconds=1.0):
    """fp32 tensors with oneDNN allowed to compute in bf16 (torch.backends.mkldnn.matmul.fp32_precision)."""
    out = {}
    try:
        old = torch.backends.mkldnn.matmul.fp32_precision
    except AttributeError:
        return {"error": "torch.backends.mkldnn.matmul.fp32_precision not available"}
    for precision in ("ieee", "bf16"):
        torch.backends.mkldnn.matmul.fp32_precision = precision
        out[precision] = measure(n, dtype="fp32", min_seconds=min_seconds)
    torch.backends.mkldnn.matmul.fp32_precision = old
    return out


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
    parser.add_argument("--sweep", action="store_true", help="shapes x threads, ops x layouts")
    parser.add_argument("--kernels", action="store_true", help="oneDNN kernel per dtype/op/ISA cap (subprocesses)")
    parser.add_argument("--bf32", action="store_true", help="fp32 matmul with oneDNN bf16 fpmath")
    parser.add_argument("--out", help="write everything as JSON here")
    args = parser.parse_args(argv)
    result = {"environment": environment()}
    print(json.dumps(result["environment"]))
    result["summary"] = summary(args.sizes, args.threads, args.min_seconds)
    _print(result["summary"])
    if args.sweep:
        result["sweep"] = sweep(min_seconds=min(args.min_seconds, 0.5))
        _print(result["sweep"])
    if args.kernels:
        result["kernels"] = kernels()
        _print(result["kernels"])
    if args.bf32:
        result["bf32"] = bf32_probe()
        print(json.dumps(result["bf32"]))
    result["loadavg_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
