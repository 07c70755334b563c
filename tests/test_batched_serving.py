"""`nerpipe serve` (Ray Serve, nerpipe/predict/batched_service.py): the same entities as `nerpipe predict` whether a
text comes alone or with others, a 4xx naming the problem for a bad request, concurrent requests batched into
one model call, and SIGTERM finishing the requests in flight.

One server for the module (Ray's start-up is the slow part: docs/serving.md); the SIGTERM test stops it, last.
The model is test_served_model's keyword model (a token's label depends on that token alone), logged as the
train stage logs it.
"""

import json
import signal
import threading
import time

import mlflow
import pytest
import requests

from nerpipe.predict.server_process import raw_texts, serve_batched
from tests.served import nerpipe_predict
from tests.test_served_model import TEXTS, logged, predict_entities  # noqa: F401 (logged: the module's fixture)


@pytest.fixture(scope="module")
def server(logged, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp("nerpipe-serve") / "serve.log"
    # A long batch wait, so that requests sent together share a model call on a busy machine too.
    with serve_batched(f"runs:/{logged['run_id']}/model", log, "--batch-wait-ms", "200", "--cpus-per-replica", "1",
                       env=logged["env"]) as running:
        yield running


SENTENCE = "Peter Smith visited Washington and Siemens in Berlin ."
DOCUMENT = " ".join([SENTENCE] * 4000)  # long enough to be in the model when SIGTERM comes


@pytest.fixture(scope="module")
def sentences(fixture_dir):
    return raw_texts(fixture_dir / "test.txt")


@pytest.fixture(scope="module")
def expected(logged, sentences):  # noqa: F811
    """{text: entities} from the `nerpipe predict` command on the model directory."""
    texts = [*TEXTS, *sentences, SENTENCE, DOCUMENT, "John Smith flew to Paris ."]
    return dict(zip(texts, nerpipe_predict(logged["model_dir"], texts, env=logged["env"])))


def post(server, body, timeout=60):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}/invocations", data=data, timeout=timeout,
                         headers={"Content-Type": "application/json"})


def batches(server):
    """The replica's record: {requests in a model call: number of calls}."""
    return {int(k): v for k, v in requests.get(f"{server.url}/batches", timeout=10).json()["batches"].items()}


def test_same_entities_alone_together_from_nerpipe_predict_and_pyfunc(server, expected, logged, monkeypatch):
    want = [expected[text] for text in TEXTS]
    assert [[e["text"] for e in found] for found in want][:2] == [
        ["Reuters", "Maria", "U.S.", "Zürich", "東京", "New York"], ["😀", "John Smith", "Paris"]]
    together = post(server, {"inputs": TEXTS})
    assert together.status_code == 200 and together.json() == {"predictions": want}
    for text, entities in zip(TEXTS, want):
        assert post(server, {"inputs": [text]}).json() == {"predictions": [entities]}
    assert post(server, {"inputs": []}).json() == {"predictions": []}
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", logged["uri"])
    assert mlflow.pyfunc.load_model(f"runs:/{logged['run_id']}/model").predict(TEXTS) == want


def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_stays_up(server, expected):
    for body, status, says in [
        (b'{"inputs": ["John', 400, "not valid JSON"),
        (b'{"text": ["John"]}', 400, "with an 'inputs' key"),
        (b'["John"]', 400, "with an 'inputs' key"),
        (b'{"inputs": "John"}', 400, "'inputs' must be a list of strings, not str"),
        (b'{"inputs": ["John", null]}', 400, "item 1 is NoneType"),
        (b'{"inputs": [42]}', 400, "item 0 is int"),
    ]:
        response = post(server, body)
        assert (response.status_code, says in response.json()["message"]) == (status, True), response.text
    wrong_path = requests.post(f"{server.url}/predict", json={"inputs": ["John"]}, timeout=60)
    assert wrong_path.status_code == 404 and "POST /invocations" in wrong_path.json()["message"]
    assert server.process.poll() is None
    assert requests.get(f"{server.url}/ping", timeout=10).status_code == 200
    assert post(server, {"inputs": ["Siemens"]}).json() == {"predictions": [expected["Siemens"]]}


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(server, sentences, expected):
    """16 clients, 3 sentence requests each: every answer exact, and the replica's record shows model calls of
    more than one request, with every request counted once."""
    before = batches(server)
    clients, rounds = 16, 3
    answers, barrier = {}, threading.Barrier(clients)

    def client(k):
        with requests.Session() as session:
            barrier.wait()
            for r in range(rounds):
                text = sentences[(k * rounds + r) % len(sentences)]
                response = session.post(f"{server.url}/invocations", json={"inputs": [text]}, timeout=120)
                answers[k, r] = (text, response.status_code, response.json())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(answers) == clients * rounds
    for text, status, body in answers.values():
        assert (status, body) == (200, {"predictions": [expected[text]]})
    after = batches(server)
    calls = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    calls = {size: n for size, n in calls.items() if n}
    assert sum(size * n for size, n in calls.items()) == clients * rounds
    assert max(calls) > 1 and sum(calls.values()) < clients * rounds, calls


def test_sigterm_finishes_the_requests_in_flight_then_exits(server, expected):
    """Last in the module: it stops the server."""
    before = sum(batches(server).values())
    results, answered = [], []

    def client():
        response = post(server, {"inputs": [DOCUMENT, "John Smith flew to Paris ."]}, timeout=120)
        results.append((response.status_code, response.json()))
        answered.append(time.monotonic())

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sum(batches(server).values()) == before and time.monotonic() < deadline:
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
        requests.get(f"{server.url}/ping", timeout=5)
