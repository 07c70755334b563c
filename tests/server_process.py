"""A model server as a child process on 127.0.0.1, for the load benchmarks (bench/) and the tests: `mlflow
models serve` (one request at a time) or `nerpipe serve` (mosec by default, or Ray Serve; both batching).

    with serve_model("runs:/<run_id>/model", Path("serve.log")) as server:
        requests.post(f"{server.url}/invocations", json={"inputs": ["John Smith flew to Paris."]})
"""

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import requests

from nerpipe.data.conll import read_conll
from tools.team_server import free_port  # noqa: F401 (the one copy; the tests import it from here)

BIN = Path(sys.executable).parent  # the venv: mlflow, uvicorn and nerpipe


def raw_texts(conll_file):
    """Each sentence of a CoNLL file as raw text, its words joined by single spaces: what the load benchmarks and
    the serving tests send."""
    return [" ".join(sentence.words) for sentence in read_conll(conll_file)]


class Server(NamedTuple):
    url: str
    process: subprocess.Popen


def serve_model(model_uri, log_path, env=None, start_timeout=180):
    """`mlflow models serve` of `model_uri`: a context manager yielding a Server once /ping answers."""
    return _serve(lambda port: [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                "-h", "127.0.0.1", "-p", str(port)], "mlflow models serve", log_path, env, start_timeout,
                  signal_group=True)


def serve_batched(model_uri, log_path, *flags, engine="mosec", env=None, start_timeout=300):
    """`nerpipe serve --engine engine` of `model_uri` (with `flags`, e.g. "--replicas", "2"): a context manager
    yielding a Server once its readiness probe answers 200 (mosec: GET /, once a replica has loaded the model;
    ray: GET /ping, once one has)."""
    return _serve(lambda port: [str(BIN / "nerpipe"), "serve", "--engine", engine, "--model", model_uri,
                                "--port", str(port), *flags],
                  f"nerpipe serve --engine {engine}", log_path, env, start_timeout,
                  ready_path="/ping" if engine == "ray" else "/")


@contextmanager
def _serve(command, name, log_path, env, start_timeout, signal_group=False, ready_path="/ping"):
    """Run command(port) on a free port of 127.0.0.1, yield a Server once `ready_path` answers 200, and stop it
    afterwards (stop: SIGTERM to the process, or to its whole group with `signal_group`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**(env or os.environ), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # mlflow runs uvicorn from PATH
    with open(log_path, "w") as log:
        process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if not wait_for(url + ready_path, process, start_timeout):
                raise RuntimeError(f"{name} did not answer:\n{Path(log_path).read_text()[-3000:]}")
            yield Server(url, process)
        finally:
            stop(process, signal_group)


def wait_for(url, process, seconds):
    """True once `url` answers 200; False if `process` exits first or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def stop(process, signal_group=True, timeout=60):
    """SIGTERM to the process (`mlflow models serve` needs it sent to its whole group: uvicorn runs apart; `nerpipe
    serve` to itself alone: it drains mosec's or Ray's processes); then SIGKILL to what is left of the group."""
    if process.poll() is None:
        if signal_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def model_calls(url, engine="mosec"):
    """(model calls, requests in them) that `nerpipe serve --engine engine` at `url` has made so far: mosec's
    batch-size histogram (GET /metrics, nerpipe_batch_size), or the Ray replica's record (GET /batches; with
    several replicas, the one that answers)."""
    if engine == "ray":
        batches = requests.get(f"{url}/batches", timeout=10).json()["batches"]
        return sum(batches.values()), sum(int(size) * n for size, n in batches.items())
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    count = re.search(r"^nerpipe_batch_size_count\{.*\} (\d+)", metrics, re.M)
    total = re.search(r"^nerpipe_batch_size_sum\{.*\} ([\d.]+)", metrics, re.M)
    return (int(count.group(1)), round(float(total.group(1)))) if count else (0, 0)
