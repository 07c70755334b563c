"""Load test of `mlflow models serve` on nerpipe's logged model: a few concurrent clients send a fixed
number of mixed requests, then it stops. Every good request must come back 200 with exactly the entities
`nerpipe predict` gives for the same texts (its code, run here on each request's texts together, as the
server runs them: in bf16 a text's scores depend a little on the texts it shares a forward pass with);
every bad one a 4xx whose message says what is wrong; and the server must still answer afterwards.
Prints requests/s and latency percentiles, overall and per kind.

    PYTHONPATH=. MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python -m bench.load \\
        --model runs:/<run_id>/model --clients 4 --requests 400 --out bench/results/load.json

The server is started (and stopped) here unless --url names one already running; sentences are the CoNLL
test split as raw text (--data, as for bench/run_benchmark.py). Exit status 1 if any check failed.
"""

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import requests

from bench import inputs
from bench.serving import NerpipeTagger, raw_texts, serve_model

DOCUMENT_WORDS = 5000
NON_LATIN = [
    "Владимир Путин встретился с Ангелой Меркель в Москве.",
    "安倍晋三首相は東京でトヨタの幹部と会談した。",
    "محمد صلاح يلعب لنادي ليفربول في إنجلترا.",
    "Ο Αλέξης Τσίπρας συναντήθηκε με την Άνγκελα Μέρκελ στην Αθήνα.",
    "राहुल गांधी ने नई दिल्ली में भाषण दिया।",
    "김정은 위원장이 평양에서 문재인 대통령과 회담했다.",
    "François Hollande a rencontré Angela Merkel à Zürich, São Paulo et Kraków 😀.",
]
# One cycle of request kinds: mostly sentences, every edge case in each cycle.
CYCLE = (["sentence"] * 8 + ["batch"] * 3 + ["empty", "one_word", "document", "non_latin", "non_latin",
                                              "invalid_json", "wrong_field", "not_a_string", "sentence"])
BATCH = 8  # sentences in a "batch" request


class Request(NamedTuple):
    kind: str
    body: bytes
    texts: list
    """The texts of a good request; None for a bad one."""
    error_hint: str = ""
    """What a bad request's error message must contain."""


class Outcome(NamedTuple):
    status: int
    """The HTTP status; 0 when no answer came."""
    body: object
    seconds: float


def build_requests(sentences, n, seed=0):
    """`n` requests: the kinds of CYCLE in a seeded random order, sentences taken in turn."""
    rng = random.Random(seed)
    kinds = [CYCLE[i % len(CYCLE)] for i in range(n)]
    rng.shuffle(kinds)
    words = " ".join(sentences).split()
    document = " ".join((words * (DOCUMENT_WORDS // max(len(words), 1) + 1))[:DOCUMENT_WORDS])
    counter, out = 0, []

    def take(k):
        nonlocal counter
        chosen = [sentences[(counter + i) % len(sentences)] for i in range(k)]
        counter += k
        return chosen

    for i, kind in enumerate(kinds):
        texts = {"sentence": lambda: take(1), "batch": lambda: take(BATCH), "empty": lambda: [""],
                 "one_word": lambda: ["Germany"], "document": lambda: [document],
                 "non_latin": lambda: [NON_LATIN[i % len(NON_LATIN)]]}.get(kind)
        if texts:
            chosen = texts()
            out.append(Request(kind, json.dumps({"inputs": chosen}).encode(), chosen))
        elif kind == "invalid_json":
            out.append(Request(kind, b'{"inputs": ["Peter Blackburn visited', None, "valid JSON"))
        elif kind == "wrong_field":
            out.append(Request(kind, json.dumps({"text": take(1)}).encode(), None, "'inputs'"))
        else:  # not_a_string
            out.append(Request(kind, json.dumps({"inputs": [42]}).encode(), None, "Expected type str"))
    return out


def run_load(url, reqs, clients, timeout=300):
    """Send `reqs` from `clients` threads (client k sends requests k, k+clients, ...); (outcomes, seconds)."""
    outcomes = [None] * len(reqs)

    def client(k):
        with requests.Session() as session:
            for i in range(k, len(reqs), clients):
                started = time.perf_counter()
                try:
                    response = session.post(f"{url}/invocations", data=reqs[i].body, timeout=timeout,
                                            headers={"Content-Type": "application/json"})
                    status, text = response.status_code, response.text
                except requests.RequestException as err:
                    status, text = 0, f"{type(err).__name__}: {err}"
                seconds = time.perf_counter() - started
                try:
                    body = json.loads(text)
                except ValueError:
                    body = text
                outcomes[i] = Outcome(status, body, seconds)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.perf_counter() - started


def check(reqs, outcomes, expected):
    """Failures, as one line each: a good request not answered exactly `expected[body]`, or a bad one
    without a 4xx whose message holds its error_hint."""
    failures = []
    for i, (req, out) in enumerate(zip(reqs, outcomes)):
        if req.texts is not None:
            want = {"predictions": expected[req.body]}
            if out.status != 200 or out.body != want:
                failures.append(f"request {i} ({req.kind}): got {out.status} {str(out.body)[:300]}")
        else:
            message = out.body.get("message", "") if isinstance(out.body, dict) else ""
            if not 400 <= out.status < 500 or req.error_hint not in message:
                failures.append(f"request {i} ({req.kind}): expected a 4xx saying {req.error_hint!r}, got "
                                f"{out.status} {str(out.body)[:300]}")
    return failures


def summarize(reqs, outcomes, seconds, clients):
    latencies = np.array([o.seconds for o in outcomes])
    by_kind = {}
    for kind in dict.fromkeys(CYCLE):
        ms = [o.seconds * 1000 for r, o in zip(reqs, outcomes) if r.kind == kind]
        if ms:
            by_kind[kind] = {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                             "p99_ms": float(np.percentile(ms, 99)), "max_ms": max(ms)}
    return {"clients": clients, "requests": len(reqs), "seconds": seconds, "requests_per_s": len(reqs) / seconds,
            "texts_per_s": sum(len(r.texts or ()) for r in reqs) / seconds,
            "p50_ms": float(np.percentile(latencies, 50) * 1000), "p99_ms": float(np.percentile(latencies, 99) * 1000),
            "statuses": dict(Counter(str(o.status) for o in outcomes)), "by_kind": by_kind}


def expected_answers(model, reqs):
    """{request body: what nerpipe predict gives for its texts, given together as the server gets them}."""
    tagger = NerpipeTagger(model)
    return {r.body: tagger(r.texts) for r in reqs if r.texts is not None}


def load_test(url, model, sentences, n, clients, seed=0, process=None):
    """The whole test against the server at `url`: the summary, with "failures" and "server_up" filled in."""
    reqs = build_requests(sentences, n, seed)
    expected = expected_answers(model, reqs)
    outcomes, seconds = run_load(url, reqs, clients)
    summary = summarize(reqs, outcomes, seconds, clients)
    summary["failures"] = check(reqs, outcomes, expected)
    try:
        answers = requests.get(f"{url}/ping", timeout=10).status_code == 200
    except requests.RequestException:
        answers = False
    summary["server_up"] = answers and (process is None or process.poll() is None)
    return summary


def markdown(summary):
    lines = [f"{summary['requests']} requests from {summary['clients']} clients in {summary['seconds']:.1f} s: "
             f"**{summary['requests_per_s']:.1f} requests/s** ({summary['texts_per_s']:.1f} texts/s), "
             f"p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms; statuses {summary['statuses']}; "
             f"{len(summary['failures'])} failed checks; server up afterwards: {summary['server_up']}", "",
             "| kind | requests | p50 (ms) | p99 (ms) | max (ms) |", "|---|---:|---:|---:|---:|"]
    for kind, row in summary["by_kind"].items():
        lines.append(f"| {kind} | {row['requests']} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} "
                     f"| {row['max_ms']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MLflow model URI or local MLflow model directory")
    parser.add_argument("--data", help="CoNLL-2003 directory (test.txt is used; default: bench/inputs.py)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="a server already running (default: start one on 127.0.0.1)")
    parser.add_argument("--out", type=Path, help="write the summary here as JSON")
    args = parser.parse_args(argv)
    sentences = raw_texts(inputs.data_dir(args.data) / "test.txt")
    if args.url:
        summary = load_test(args.url, args.model, sentences, args.requests, args.clients, args.seed)
    else:
        log = (args.out.with_suffix(".serve.log") if args.out else Path("serve.log"))
        log.parent.mkdir(parents=True, exist_ok=True)
        with serve_model(args.model, log) as server:
            summary = load_test(server.url, args.model, sentences, args.requests, args.clients, args.seed,
                                server.process)
    print(markdown(summary))
    for failure in summary["failures"][:20]:
        print("FAILED", failure)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if not summary["failures"] and summary["server_up"] else 1


if __name__ == "__main__":
    sys.exit(main())
