"""`nerpipe serve` (mosec by default, nerpipe/predict/mosec_service.py; Ray Serve with --engine ray): the same
entities as `nerpipe predict` whether a text comes alone or with others, a 4xx naming the problem for a bad
request that never fails the good requests around it, concurrent requests batched into one model call, compact
JSON, loopback only, readiness only once a model is loaded, and SIGTERM finishing the requests in flight.

One server per engine (starting Ray is the slow part: docs/serving.md); the SIGTERM test stops it, last.
The model is test_served_model's keyword model (a token's label depends on that token alone), logged as the
train stage logs it.
"""

import json
import re
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import requests
import torch

from tests.served import nerpipe_predict
from tests.server_process import model_calls, raw_texts, serve_batched
from tests.test_served_model import TEXTS, logged  # noqa: F401 (logged: the module's fixture)

ENGINES = ["mosec", "ray"]


@pytest.fixture(scope="module", params=ENGINES)
def server(request, logged, tmp_path_factory):  # noqa: F811
    engine = request.param
    log = tmp_path_factory.mktemp(f"nerpipe-serve-{engine}") / "serve.log"
    # A long batch wait, so that requests sent together share a model call on a busy machine too.
    with serve_batched(f"runs:/{logged['run_id']}/model", log, "--batch-wait-ms", "200", "--threads", "1",
                       engine=engine, env=logged["env"]) as running:
        # What the server had written when its readiness probe first answered 200
        yield SimpleNamespace(url=running.url, process=running.process, engine=engine, log_at_ready=log.read_text())


SENTENCE = "Peter Smith visited Washington and Siemens in Berlin ."
DOCUMENT = " ".join([SENTENCE] * 4000)  # long enough to be in the model when SIGTERM comes


@pytest.fixture(scope="module")
def sentences(fixture_dir):
    return raw_texts(fixture_dir / "test.txt")


@pytest.fixture(scope="module")
def expected(logged, sentences):  # noqa: F811
    """{text: entities} from the `nerpipe predict` command on the model directory."""
    texts = [*TEXTS, *sentences, SENTENCE, DOCUMENT, "John Smith flew to Paris .", " ".join(sentences[:50])]
    return dict(zip(texts, nerpipe_predict(logged["model_dir"], texts, env=logged["env"])))


def post(server, body, timeout=60, session=requests):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session.post(f"{server.url}/invocations", data=data, timeout=timeout,
                        headers={"Content-Type": "application/json"})


def error_message(response):
    """A 4xx's message: Ray's JSON {"message": ...}, mosec's plain text."""
    return response.json()["message"] if response.headers.get("content-type", "").startswith("application/json") \
        else response.text


def test_same_entities_alone_together_from_nerpipe_predict_and_pyfunc(server, expected, logged, monkeypatch):
    want = [expected[text] for text in TEXTS]
    assert [[e["text"] for e in found] for found in want][:2] == [
        ["Reuters", "Maria", "U.S.", "Zürich", "東京", "New York"], ["😀", "John Smith", "Paris"]]
    together = post(server, {"inputs": TEXTS})
    assert together.status_code == 200 and together.json() == {"predictions": want}
    # Compact JSON, as it is (no indentation, no spaces between items, no \u escapes)
    assert together.text == json.dumps({"predictions": want}, separators=(",", ":"), ensure_ascii=False)
    for text, entities in zip(TEXTS, want):
        assert post(server, {"inputs": [text]}).json() == {"predictions": [entities]}
    assert post(server, {"inputs": []}).json() == {"predictions": []}
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", logged["uri"])
    assert mlflow.pyfunc.load_model(f"runs:/{logged['run_id']}/model").predict(TEXTS) == want


BAD = [
    (b'{"inputs": ["John', "not valid JSON"),
    (b'{"text": ["John"]}', "with an 'inputs' key"),
    (b'["John"]', "with an 'inputs' key"),
    (b'{"inputs": "John"}', "'inputs' must be a list of strings, not str"),
    (b'{"inputs": ["John", null]}', "item 1 is NoneType"),
    (b'{"inputs": [42]}', "item 0 is int"),
]


def test_concurrent_requests_share_model_calls_and_bad_ones_fail_alone(server, sentences, expected):
    """16 clients, 3 requests each, sent together: sentences, a 50-sentence document, and the bad requests. Every
    good answer exact, every bad request its own 400 naming the problem, and the model calls held more than one
    request, each good request counted once."""
    calls_before, requests_before = model_calls(server.url, server.engine)
    clients, rounds = 16, 3
    bodies = {}
    for k in range(clients):
        for r in range(rounds):
            i = k * rounds + r
            bodies[k, r] = BAD[i // 7][0] if i % 7 == 3 and i // 7 < len(BAD) else \
                {"inputs": [" ".join(sentences[:50]) if i == 20 else sentences[i % len(sentences)]]}
    answers, barrier = {}, threading.Barrier(clients)

    def client(k):
        with requests.Session() as session:
            barrier.wait()
            for r in range(rounds):
                answers[k, r] = post(server, bodies[k, r], timeout=120, session=session)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(answers) == clients * rounds
    bad = dict(BAD)
    for key, body in bodies.items():
        response = answers[key]
        if isinstance(body, bytes):
            assert response.status_code == 400 and bad[body] in error_message(response), response.text
        else:
            assert (response.status_code, response.json()) == (200, {"predictions": [expected[body["inputs"][0]]]})
    good = sum(not isinstance(body, bytes) for body in bodies.values())
    assert good == clients * rounds - len(BAD)
    calls_after, requests_after = model_calls(server.url, server.engine)
    calls, served = calls_after - calls_before, requests_after - requests_before
    assert served == good and calls < good, (calls, served)


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_stays_up(server, expected):
    for body, says in BAD:
        response = post(server, body)
        assert (response.status_code, says in error_message(response)) == (400, True), response.text
    wrong_path = requests.post(f"{server.url}/predict", json={"inputs": ["John"]}, timeout=60)
    assert wrong_path.status_code == 404
    assert server.process.poll() is None
    assert post(server, {"inputs": ["Siemens"]}).json() == {"predictions": [expected["Siemens"]]}


def listening_addresses(port):
    """The local addresses of the TCP sockets listening on `port` (Linux: /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def test_listens_on_loopback_only_and_was_ready_only_once_a_model_was_loaded(server):
    port = int(server.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1, little-endian hex; no 0.0.0.0, no ::
    if server.engine == "mosec":
        # The replica had loaded the model (seconds here) before GET / first answered 200
        log = server.log_at_ready
        assert re.search(r"replica pid \d+ \(1 torch thread\(s\)\) loaded runs:/\w+/model in", log), log[-2000:]


def test_sigterm_finishes_the_requests_in_flight_then_exits(server, expected):
    """Last in the module: it stops the server. Three 40,000-word documents, far over mosec's default 3 s timeout
    on this machine, are answered whole."""
    before, _ = model_calls(server.url, server.engine)
    results, answered = [], []

    def client():
        response = post(server, {"inputs": [DOCUMENT, "John Smith flew to Paris ."]}, timeout=120)
        results.append((response.status_code, response.json()))
        answered.append(time.monotonic())

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while model_calls(server.url, server.engine)[0] == before and time.monotonic() < deadline:
        time.sleep(0.01)  # until the model call with these requests has started
    server.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    for thread in threads:
        thread.join(timeout=120)
    assert server.process.wait(timeout=120) == 0
    want = {"predictions": [expected[DOCUMENT], expected["John Smith flew to Paris ."]]}
    assert len(want["predictions"][0]) == 4 * 4000  # Peter Smith, Washington, Siemens, Berlin in each sentence
    assert results == [(200, want)] * 3, f"{time.monotonic() - sent:.1f} s after SIGTERM"
    assert max(answered) > sent  # they were still in flight when SIGTERM came
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/", timeout=5)


@pytest.mark.parametrize("lengths, batch_size, budget, multiple, batches", [
    ([5, 30, 12, 30, 7, 12], 64, 64, 1, [[1, 3], [2, 5, 4, 0]]),  # 2 x 30 <= 64; then 4 x 12 = 48 (5 x 12 > 64)
    ([5, 30, 12, 30, 7, 12], 3, 64, 1, [[1, 3], [2, 5, 4], [0]]),  # at most batch_size rows
    ([100, 3, 3], 64, 64, 1, [[0], [1, 2]]),                      # wider than the budget: a pass of its own
    ([9, 9, 9, 9], 64, 32, 8, [[0, 1], [2, 3]]),                  # 9 pads to 16 (CUDA's multiple of 8): 2 x 16
    ([5, 30, 12], 2, None, 1, [[1, 2], [0]]),                      # no budget: rows only, as before
])
def test_sorted_batches_keep_rows_times_padded_width_within_the_token_budget(lengths, batch_size, budget, multiple,
                                                                             batches):
    from nerpipe.data.batching import padded_width, sorted_batches

    got = [list(b) for b in sorted_batches(np.array(lengths), batch_size, budget, multiple)]
    assert got == batches
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    for b in got:
        width = padded_width(max(lengths[i] for i in b), multiple)
        assert len(b) == 1 or budget is None or len(b) * width <= budget


def test_prediction_runs_forward_passes_within_the_token_budget_with_the_same_entities(logged, sentences,  # noqa: F811
                                                                                      monkeypatch):
    """predict_lines (what `nerpipe predict`, the pyfunc model and the servers run): every forward pass of the
    keyword model holds at most TOKEN_BUDGET padded tokens, or one row, and the entities are those of passes
    by rows only (in fp32 the same bit for bit)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from nerpipe.data import batching
    from nerpipe.predict.output import entity_records
    from nerpipe.predict.text import predict_lines

    model = AutoModelForTokenClassification.from_pretrained(logged["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(logged["model_dir"])
    texts = [*sentences, " ".join(sentences[:50]), *TEXTS]
    shapes = []
    model.register_forward_pre_hook(lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)

    def tag(budget):
        monkeypatch.setattr(batching.sorted_batches, "__defaults__", (budget, 1))  # what predict_word_labels gets
        shapes.clear()
        entities = [entity_records(p) for p in predict_lines(model, tokenizer, texts, 32, 8, 64, torch.device("cpu"))]
        return entities, list(shapes)

    by_budget, budget_shapes = tag(128)
    assert all(rows * width <= 128 or rows == 1 for rows, width in budget_shapes), budget_shapes
    assert max(rows for rows, _ in budget_shapes) > 1  # short windows still share a pass
    by_rows, row_shapes = tag(None)
    assert by_rows == by_budget and any(rows * width > 128 for rows, width in row_shapes)
    assert sum(rows for rows, _ in row_shapes) == sum(rows for rows, _ in budget_shapes)  # every window, once
