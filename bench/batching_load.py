"""Load benchmark of the real traffic pattern: one CoNLL-2003 test sentence per request, as raw text, from 1, 4, 16
and 64 concurrent clients, against `mlflow models serve` (one request at a time), `nerpipe serve --engine ray`
(Ray Serve) and `nerpipe serve` (mosec, the default), each batching concurrent requests into one model call, all
started here, one after the other, in this one run. Then the mixed pattern: every 10th request is a 50-sentence
document. Loopback only; each row is bounded by --requests and --seconds, whichever comes first. Before the
servers, the in-process ceiling: `mlflow.pyfunc.load_model(...).predict` on 1, 4, 16 and 64 sentences per call,
with 1 and 2 torch threads; and `nerpipe serve --threads 1` after the default.

    PYTHONPATH=. MLFLOW_TRACKING_URI=sqlite:////tmp/store/mlflow.db .venv/bin/python -m bench.batching_load \\
        --model runs:/<run_id>/model --out bench/results/batching_load.json

Prints Markdown tables: requests/s, sentences/s, p50/p95/p99 latency, failed requests, and for `nerpipe serve`
the requests per model call (mosec: its batch-size histogram, GET /metrics; Ray: the replica's GET /batches).
Also how often the servers' entities for the same sentence differ (bf16 rounds a text's scores a little
differently in different batch shapes).
"""

import argparse
import itertools
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from bench import inputs
from tests.server_process import model_calls, raw_texts, serve_batched, serve_model

DOCUMENT_SENTENCES = 50
DOCUMENT_EVERY = 10  # every 10th request of the mixed pattern is a document


def request_texts(sentences, i, mixed):
    """The texts of request i: one sentence, or in the mixed pattern every DOCUMENT_EVERY-th a document of
    DOCUMENT_SENTENCES consecutive sentences as one text. (texts, sentences in it)."""
    if mixed and i % DOCUMENT_EVERY == DOCUMENT_EVERY - 1:
        start = (i * DOCUMENT_SENTENCES) % (len(sentences) - DOCUMENT_SENTENCES)
        return [" ".join(sentences[start:start + DOCUMENT_SENTENCES])], DOCUMENT_SENTENCES
    return [sentences[i % len(sentences)]], 1


def run_row(url, sentences, clients, max_requests, seconds, mixed=False, offset=0):
    """`clients` threads send requests (each waits for its answer before the next) until `max_requests` were sent
    or `seconds` passed. [(latency s, sentences, status, texts, answer)], wall seconds."""
    counter, lock, records = itertools.count(), threading.Lock(), []
    deadline = time.monotonic() + seconds

    def client(_):
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter)
                if i >= max_requests:
                    return
                texts, n = request_texts(sentences, offset + i, mixed)
                started = time.perf_counter()
                try:
                    response = session.post(f"{url}/invocations", json={"inputs": texts}, timeout=120)
                    status, answer = response.status_code, response.json() if response.ok else None
                except requests.RequestException:
                    status, answer = 0, None
                records.append((time.perf_counter() - started, n, status, texts, answer))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:  # list(): a client's exception is raised here
        list(pool.map(client, range(clients)))
    return records, time.perf_counter() - started


def batch_record(url, server):
    """(model calls, requests in them) so far, or None for `mlflow models serve`, which keeps no record."""
    return None if server.startswith("mlflow") else model_calls(url, "ray" if "ray" in server else "mosec")


def summarize(server, pattern, clients, records, wall, before, after):
    ok = [r for r in records if r[2] == 200]
    ms = np.array([r[0] for r in ok]) * 1000
    row = {"server": server, "pattern": pattern, "clients": clients, "requests": len(records), "seconds": wall,
           "failed": len(records) - len(ok), "requests_per_s": len(ok) / wall,
           "sentences_per_s": sum(r[1] for r in ok) / wall, "load_average": os.getloadavg()[0]}
    for q in (50, 95, 99):
        row[f"p{q}_ms"] = float(np.percentile(ms, q)) if len(ms) else None
    if after is not None:
        row["model_calls"], row["requests_in_calls"] = after[0] - before[0], after[1] - before[1]
        row["requests_per_call"] = row["requests_in_calls"] / max(row["model_calls"], 1)
    return row


def measure(server_name, url, sentences, args, answers):
    rows = []
    run_row(url, sentences, 4, 40, 60)  # warm-up: first calls pay for lazy initialisation
    patterns = [("sentence", c, False) for c in args.clients] + [("mixed", c, True) for c in args.mixed_clients]
    for pattern, clients, mixed in patterns:
        before = batch_record(url, server_name)
        records, wall = run_row(url, sentences, clients, args.requests, args.seconds, mixed, offset=len(rows) * 997)
        row = summarize(server_name, pattern, clients, records, wall, before, batch_record(url, server_name))
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        for _, n, status, texts, answer in records:
            if status == 200 and n == 1:
                answers.setdefault(texts[0], {})[server_name] = answer["predictions"][0]
    return rows


def compare_answers(answers, servers):
    """For sentences every server answered: how many differ in their entities (text, type, offsets) between
    any two, and the largest score difference among the ones that agree."""
    every = {text: a for text, a in answers.items() if len(a) == len(servers)}
    differ, score_diff = [], 0.0
    for text, a in every.items():
        first, *others = a.values()
        spans = [(e["text"], e["type"], e["start"], e["end"]) for e in first]
        if any([(e["text"], e["type"], e["start"], e["end"]) for e in y] != spans for y in others):
            differ.append({"text": text, **a})
        else:
            score_diff = max([score_diff] + [abs(e["score"] - f["score"]) for y in others for e, f in zip(first, y)])
    return {"sentences_compared": len(every), "entities_differ": len(differ), "max_score_difference": score_diff,
            "differing": differ[:10]}


def in_process_rows(model_uri, sentences, sizes, threads_options, seconds):
    """The ceiling without HTTP: the pyfunc model's predict on `size` sentences per call, for `seconds` (at
    least 3 calls), with each number of torch threads. Sentences are taken in turn from the test set."""
    import mlflow.pyfunc
    import torch

    model = mlflow.pyfunc.load_model(model_uri)
    model.predict(sentences[:64])  # warm-up: first-call costs (oneDNN kernels, lazy imports)
    rows, default_threads = [], torch.get_num_threads()
    for threads in threads_options:
        torch.set_num_threads(threads)
        for size in sizes:
            calls, start, started = 0, 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - started < seconds:
                model.predict([sentences[(start + i) % len(sentences)] for i in range(size)])
                calls, start = calls + 1, start + size
            wall = time.perf_counter() - started
            rows.append({"threads": threads, "sentences_per_call": size, "calls": calls,
                         "sentences_per_s": calls * size / wall, "ms_per_call": wall / calls * 1000,
                         "load_average": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    torch.set_num_threads(default_threads)
    return rows


def markdown(rows):
    lines = ["| server | pattern | clients | requests | requests/s | sentences/s | p50 ms | p95 ms | p99 ms | failed "
             "| requests per model call | load avg |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        calls = f"{r['requests_per_call']:.1f}" if "model_calls" in r else "1 (one at a time)"
        lines.append(f"| {r['server']} | {r['pattern']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} "
                     f"| {r['sentences_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
                     f"| {r['failed']} | {calls} | {r['load_average']:.1f} |")
    return "\n".join(lines)


def markdown_in_process(rows):
    sizes = sorted({r["sentences_per_call"] for r in rows})
    lines = ["| torch threads | " + " | ".join(f"{n} per call" for n in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for threads in sorted({r["threads"] for r in rows}):
        rate = {r["sentences_per_call"]: r["sentences_per_s"] for r in rows if r["threads"] == threads}
        lines.append(f"| {threads} | " + " | ".join(f"{rate[n]:.0f}" for n in sizes) + " |")
    return "sentences/s in process:\n" + "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MLflow model URI (runs:/<run_id>/model) or local MLflow model")
    parser.add_argument("--data", help="CoNLL-2003 directory (test.txt is used; default: bench/inputs.py)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--mixed-clients", type=int, nargs="*", default=[16])
    parser.add_argument("--requests", type=int, default=3000, help="requests per row, at most")
    parser.add_argument("--seconds", type=float, default=20, help="seconds per row, at most")
    parser.add_argument("--serve-flags", default="", help="more `nerpipe serve` flags, e.g. '--replicas 2'")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS), metavar="SERVER",
                        help=f"which servers to measure, in this order (default: all: {', '.join(SERVERS)})")
    parser.add_argument("--in-process-seconds", type=float, default=4,
                        help="seconds per in-process row (0: skip them)")
    parser.add_argument("--out", type=Path, help="write rows and answer comparison here as JSON")
    args = parser.parse_args(argv)
    sentences = raw_texts(inputs.data_dir(args.data) / "test.txt")
    log_dir = args.out.parent if args.out else Path(".")
    log_dir.mkdir(parents=True, exist_ok=True)
    rows, answers, ready = [], {}, {}
    started_load = os.getloadavg()
    in_process = in_process_rows(args.model, sentences, (1, 4, 16, 64), (1, 2), args.in_process_seconds) \
        if args.in_process_seconds else []
    for name in args.servers:
        started = time.perf_counter()
        with SERVERS[name](args.model, log_dir / f"{name.replace(' ', '_')}.log", args.serve_flags.split()) as server:
            ready[name] = time.perf_counter() - started
            rows += measure(name, server.url, sentences, args, answers)
    result = {"in_process": in_process, "rows": rows, "ready_s": ready,
              "answers": compare_answers(answers, args.servers), "load_average_at_start": started_load,
              "load_average_at_end": os.getloadavg()}
    if in_process:
        print(markdown_in_process(in_process) + "\n")
    print(markdown(rows))
    print(f"\nready after (s): {ready}; load average at start {started_load}, at end "
          f"{result['load_average_at_end']}; same sentence from every server: {result['answers']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


SERVERS = {
    "mlflow models serve": lambda model, log, flags: serve_model(model, log),
    "nerpipe serve --engine ray": lambda model, log, flags: serve_batched(model, log, *flags, engine="ray"),
    "nerpipe serve": lambda model, log, flags: serve_batched(model, log, *flags),
    # The threads choice, measured: one replica on both cores (the default here) against one torch thread.
    "nerpipe serve --threads 1": lambda model, log, flags: serve_batched(model, log, *flags, "--threads", "1"),
}


if __name__ == "__main__":
    sys.exit(main())
