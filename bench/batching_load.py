"""Load benchmark of the real traffic pattern: one CoNLL-2003 test sentence per request, as raw text, from 1, 4, 16
and 64 concurrent clients, against today's `mlflow models serve` (one request at a time) and `nerpipe serve` (Ray
Serve, concurrent requests batched into one model call), both started here, one after the other, in this one run.
Then the mixed pattern: 10% of the requests are 50-sentence documents. Loopback only; each row is bounded by
--requests and --seconds, whichever comes first.

    PYTHONPATH=. MLFLOW_TRACKING_URI=sqlite:////tmp/store/mlflow.db .venv/bin/python -m bench.batching_load \\
        --model runs:/<run_id>/model --out bench/results/batching_load.json

Prints a Markdown table: requests/s, sentences/s, p50/p95/p99 latency, failed requests, and for `nerpipe serve`
the requests per model call the replica recorded (GET /batches). Also how often the two servers' entities for
the same sentence differ (bf16 rounds a text's scores a little differently in different batch shapes).
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
from nerpipe.predict.server_process import raw_texts, serve_batched, serve_model

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


def batch_record(url):
    try:
        return {int(k): v for k, v in requests.get(f"{url}/batches", timeout=10).json()["batches"].items()}
    except (requests.RequestException, ValueError, KeyError):
        return None  # mlflow models serve keeps none


def summarize(server, pattern, clients, records, wall, before, after):
    ok = [r for r in records if r[2] == 200]
    ms = np.array([r[0] for r in ok]) * 1000
    row = {"server": server, "pattern": pattern, "clients": clients, "requests": len(records), "seconds": wall,
           "failed": len(records) - len(ok), "requests_per_s": len(ok) / wall,
           "sentences_per_s": sum(r[1] for r in ok) / wall, "load_average": os.getloadavg()[0]}
    for q in (50, 95, 99):
        row[f"p{q}_ms"] = float(np.percentile(ms, q)) if len(ms) else None
    if after is not None:
        calls = {size: after.get(size, 0) - before.get(size, 0) for size in after}
        calls = {size: n for size, n in sorted(calls.items()) if n}
        row["batches"] = calls
        row["requests_per_call"] = sum(s * n for s, n in calls.items()) / max(sum(calls.values()), 1)
        row["largest_call"] = max(calls) if calls else 0
    return row


def measure(server_name, url, sentences, args, answers):
    rows = []
    run_row(url, sentences, 4, 40, 60)  # warm-up: first calls pay for lazy initialisation
    patterns = [("sentence", c, False) for c in args.clients] + [("mixed", c, True) for c in args.mixed_clients]
    for pattern, clients, mixed in patterns:
        before = batch_record(url)
        records, wall = run_row(url, sentences, clients, args.requests, args.seconds, mixed, offset=len(rows) * 997)
        row = summarize(server_name, pattern, clients, records, wall, before, batch_record(url))
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        for _, n, status, texts, answer in records:
            if status == 200 and n == 1:
                answers.setdefault(texts[0], {})[server_name] = answer["predictions"][0]
    return rows


def compare_answers(answers):
    """For sentences both servers answered: how many differ in their entities (text, type, offsets), and the
    largest score difference among the ones that agree."""
    both = {text: a for text, a in answers.items() if len(a) == 2}
    differ, score_diff = [], 0.0
    for text, a in both.items():
        x, y = a.values()
        if [(e["text"], e["type"], e["start"], e["end"]) for e in x] != [(e["text"], e["type"], e["start"], e["end"])
                                                                       for e in y]:
            differ.append({"text": text, **a})
        else:
            score_diff = max([score_diff] + [abs(e["score"] - f["score"]) for e, f in zip(x, y)])
    return {"sentences_compared": len(both), "entities_differ": len(differ), "max_score_difference": score_diff,
            "differing": differ[:10]}


def markdown(rows):
    lines = ["| server | pattern | clients | requests | requests/s | sentences/s | p50 ms | p95 ms | p99 ms | failed "
             "| requests per model call (mean, max) | load avg |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        calls = f"{r['requests_per_call']:.1f}, {r['largest_call']}" if "batches" in r else "1 (one at a time)"
        lines.append(f"| {r['server']} | {r['pattern']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} "
                     f"| {r['sentences_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
                     f"| {r['failed']} | {calls} | {r['load_average']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MLflow model URI (runs:/<run_id>/model) or local MLflow model")
    parser.add_argument("--data", help="CoNLL-2003 directory (test.txt is used; default: bench/inputs.py)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--mixed-clients", type=int, nargs="*", default=[16])
    parser.add_argument("--requests", type=int, default=3000, help="requests per row, at most")
    parser.add_argument("--seconds", type=float, default=20, help="seconds per row, at most")
    parser.add_argument("--serve-flags", default="", help="more `nerpipe serve` flags, e.g. '--replicas 2'")
    parser.add_argument("--out", type=Path, help="write rows and answer comparison here as JSON")
    args = parser.parse_args(argv)
    sentences = raw_texts(inputs.data_dir(args.data) / "test.txt")
    log_dir = args.out.parent if args.out else Path(".")
    log_dir.mkdir(parents=True, exist_ok=True)
    rows, answers = [], {}
    started_load = os.getloadavg()
    with serve_model(args.model, log_dir / "mlflow_serve.log") as server:
        rows += measure("mlflow models serve", server.url, sentences, args, answers)
    started = time.perf_counter()
    with serve_batched(args.model, log_dir / "nerpipe_serve.log", *args.serve_flags.split()) as server:
        ready = time.perf_counter() - started
        rows += measure("nerpipe serve", server.url, sentences, args, answers)
    result = {"rows": rows, "nerpipe_serve_ready_s": ready, "answers": compare_answers(answers),
              "load_average_at_start": started_load, "load_average_at_end": os.getloadavg()}
    print(markdown(rows))
    print(f"\nnerpipe serve ready after {ready:.1f} s; load average at start {started_load}, at end "
          f"{result['load_average_at_end']}; same sentence from both servers: {result['answers']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
