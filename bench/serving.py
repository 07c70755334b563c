"""What bench/inference.py and bench/load.py share: `mlflow models serve` as a child process, the CoNLL
test sentences as raw text, and `nerpipe predict` as the reference answer (as a command, or its code
in process).

    with serve_model("runs:/<run_id>/model", Path("serve.log")) as server:
        requests.post(f"{server.url}/invocations", json={"inputs": ["John Smith flew to Paris."]})
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import requests

from nerpipe.data.conll import read_conll

BIN = Path(sys.executable).parent  # the venv: mlflow, uvicorn and nerpipe


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(NamedTuple):
    url: str
    process: subprocess.Popen


@contextmanager
def serve_model(model_uri, log_path, env=None, start_timeout=180):
    """`mlflow models serve` of `model_uri` on a free port of 127.0.0.1; yields a Server once /ping answers,
    and stops it (and the uvicorn it starts: the whole process group) afterwards."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {**(env or os.environ), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # it runs uvicorn from PATH
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
             "-p", url.rsplit(":", 1)[1]], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if not wait_for(f"{url}/ping", process, start_timeout):
                raise RuntimeError(f"mlflow models serve did not answer:\n{Path(log_path).read_text()[-3000:]}")
            yield Server(url, process)
        finally:
            stop(process)


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


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def raw_texts(conll_file):
    """Each sentence of a CoNLL file as raw text: its words joined by single spaces."""
    return [" ".join(sentence.words) for sentence in read_conll(conll_file)]


def nerpipe_predict(model, texts, *flags, env=None):
    """The entities `nerpipe predict --format jsonl` gives for each text (one text per line of a file)."""
    assert not any("\n" in text or "\r" in text for text in texts), "one text per line"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
        out = subprocess.run([str(BIN / "nerpipe"), "predict", "--model", str(model), "--input", str(path),
                              "--format", "jsonl", *flags], capture_output=True, text=True, env=env, cwd=tmp)
    if out.returncode != 0:
        raise RuntimeError(f"nerpipe predict exited {out.returncode}:\n{out.stderr[-3000:]}")
    return [json.loads(line)["entities"] for line in out.stdout.splitlines()]


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
