"""A model server as a child process on 127.0.0.1, for the load benchmarks (bench/) and the tests: today's
`mlflow models serve` (one request at a time) or `nerpipe serve` (Ray Serve, batching).

    with serve_model("runs:/<run_id>/model", Path("serve.log")) as server:
        requests.post(f"{server.url}/invocations", json={"inputs": ["John Smith flew to Paris."]})
"""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import requests

from nerpipe.data.conll import read_conll

BIN = Path(sys.executable).parent  # the venv: mlflow, uvicorn and nerpipe


def raw_texts(conll_file):
    """Each sentence of a CoNLL file as raw text, its words joined by single spaces: what the load benchmarks and
    the serving tests send."""
    return [" ".join(sentence.words) for sentence in read_conll(conll_file)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(NamedTuple):
    url: str
    process: subprocess.Popen


def serve_model(model_uri, log_path, env=None, start_timeout=180):
    """`mlflow models serve` of `model_uri`: a context manager yielding a Server once /ping answers."""
    return _serve(lambda port: [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                "-h", "127.0.0.1", "-p", str(port)], "mlflow models serve", log_path, env, start_timeout,
                  signal_group=True)


def serve_batched(model_uri, log_path, *flags, env=None, start_timeout=300):
    """`nerpipe serve` of `model_uri` (with `flags`, e.g. "--replicas", "2"): a context manager yielding a Server
    once /ping answers, which is once every replica has loaded the model."""
    return _serve(lambda port: [str(BIN / "nerpipe"), "serve", "--model", model_uri, "--port", str(port), *flags],
                  "nerpipe serve", log_path, env, start_timeout)


@contextmanager
def _serve(command, name, log_path, env, start_timeout, signal_group=False):
    """Run command(port) on a free port of 127.0.0.1, yield a Server once /ping answers, and stop it afterwards
    (stop: SIGTERM to the process, or to its whole group with `signal_group`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**(env or os.environ), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # mlflow runs uvicorn from PATH
    with open(log_path, "w") as log:
        process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if not wait_for(f"{url}/ping", process, start_timeout):
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
    serve` to itself alone: it drains Ray's processes); then SIGKILL to what is left of the group."""
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
