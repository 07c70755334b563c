"""The load check of a served nerpipe model, which tests/test_served_model.py runs small against `mlflow
models serve`: a few concurrent clients send a fixed number of mixed requests (sentences, batches of 8, an
empty text, one word, a 5,000-word document, non-Latin scripts, and three kinds of bad request). Every good
request must come back 200 with exactly the entities `nerpipe predict` gives for the same texts (its code, run
here on each request's texts together, as the server runs them: in bf16 a text's scores depend a little on
the texts it shares a forward pass with); every bad one a 4xx whose message says what is wrong; and the server
must still answer afterwards. The summary also holds requests/s and latency percentiles, overall and per kind.

    summary = load_test(server.url, model_uri, raw_texts(conll_dir / "test.txt"), n=40, clients=3)
    assert summary["failures"] == [] and summary["server_up"]

Speed under load is measured by bench/batching_load.py. This module was bench/load.py until commit b421afc,
whose command-line version measured the rows in BENCHMARKS.md's "Inference" section.
"""

import argparse
import json
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import requests

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

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:  # list(): a client's exception is raised here
        list(pool.map(client, range(clients)))
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


class NerpipeTagger:
    """`nerpipe predict --model MODEL`'s code in process, the model loaded once: called with a list of texts,
    the entities the command prints for them given together (one --input file), bit for bit."""

    def __init__(self, model):
        from nerpipe.predict.command import add_arguments, batch_size, model_settings
        from nerpipe.predict.model_source import load_trained_model
        from nerpipe.predict.text import ready_to_tag

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(["--model", str(model)])
        self.model, self.tokenizer, description = load_trained_model(args.model)
        self.settings, self.batch_size = model_settings(args, description, args.model), batch_size(args)
        self.device, self.bf16 = ready_to_tag(self.model, self.tokenizer, args.model, self.settings["bf16"])

    def __call__(self, texts):
        from nerpipe.predict.output import entity_records
        from nerpipe.predict.text import predict_lines

        return [entity_records(p) for p in predict_lines(
            self.model, self.tokenizer, texts, self.settings["max_length"], self.settings["window_overlap"],
            self.batch_size, self.device, self.bf16, context=self.settings["context"])]


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
