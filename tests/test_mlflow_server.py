"""MLflow through a real tracking server: `mlflow server` on 127.0.0.1 with a SQLite backend, the tiny
pipeline run by DVC with MLFLOW_TRACKING_URI pointing at it, everything read back with the client."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import requests
import torch
from mlflow import MlflowClient

from nerpipe.core.params import flatten, load_params, read_yaml
from nerpipe.model.description import USAGE_KEYS
from tests.pipeline_repo import PipelineRepo, tiny_overrides
from tests.server_process import free_port, stop, wait_for

BIN = Path(sys.executable).parent
TRAIN = ["python", "stages/train.py", "--data", "data/prepared", "--model-out", "data/model",
         "--checkpoints", "data/checkpoints", "--reports", "reports/train", "--timings", "reports/timings/train.json"]
SENTENCE = "Peter Smith visited London on Monday ."


def start(command, log, **kwargs):
    """A process in its own group, so that stopping it also stops the uvicorn it starts."""
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlflow-server")
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: one process less
    with open(directory / "server.log", "w") as log:
        process = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{directory / 'server.db'}",
                         "--artifacts-destination", str(directory / "artifacts"), "--host", "127.0.0.1",
                         "--port", uri.rsplit(":", 1)[1], "--workers", "1"], log, cwd=directory, env=env)
        try:
            assert wait_for(f"{uri}/health", process, 180), (directory / "server.log").read_text()[-3000:]
            yield uri
        finally:
            stop(process)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir, server):
    return PipelineRepo.create(tmp_path_factory.mktemp("pipeline"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir),
                               env={"MLFLOW_TRACKING_URI": server})


def train_outputs(root):
    return sorted(str(p.relative_to(root)) for d in ("data/model", "reports/train") for p in (root / d).rglob("*"))


def test_unreachable_server_fails_train_before_it_loads_the_model(repo):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused
    result = PipelineRepo(repo.root, env={"MLFLOW_TRACKING_URI": dead}).repro(check=False)
    assert result.returncode != 0
    assert PipelineRepo.stages_run(result) == ["check_params", "download", "prepare", "score_untrained", "train"]
    assert f"MLflow tracking server {dead} (MLFLOW_TRACKING_URI) cannot be reached" in result.stderr
    assert "parameters train" not in result.stdout  # printed once the model is loaded
    assert train_outputs(repo.root) == []

    # A server that accepts the connection and never answers costs the 5 s timeout, not MLflow's
    # minutes of retries. (Most of the rest is importing torch, transformers and mlflow.)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = PipelineRepo(repo.root, env={"MLFLOW_TRACKING_URI": uri}).run(*TRAIN, check=False)
        seconds = time.monotonic() - started
    assert result.returncode == 2
    assert f"tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached: no answer within 5 s" in result.stderr
    assert seconds < 60, f"the train stage took {seconds:.0f} s to fail"
    assert train_outputs(repo.root) == []


def lock_entry_md5(root, stage):
    entry = read_yaml(root / "dvc.lock")["stages"][stage]
    return hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_two_lr_runs_hold_params_metric_histories_artifacts_and_tags(repo, server, fixture_sha256):
    repo.run("dvc", "exp", "run", "-n", "lr-1e-3", "-S", "lr=0.001")
    repo.run("dvc", "exp", "run", "-n", "lr-2e-3", "-S", "lr=0.002", "-S", "mlflow.register_model=tiny-ner")
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("conll2003-ner")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["lr-1e-3", "lr-2e-3"]
    head = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    for name, lr in (("lr-1e-3", 0.001), ("lr-2e-3", 0.002)):
        run = runs[name]
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert set(params) == set(flatten(load_params(repo.root / "params.yaml")))  # every param, nothing else
        assert float(params["lr"]) == lr
        assert (params["train.weight_decay"], params["train.epochs"], params["evaluate.batch_size"]) == (
            "0.01", "2", "8")
        assert params["data.sha256.test"] == fixture_sha256["test"]
        # 6 optimizer steps, linear decay from lr without warmup: loss, lr and dev F1 at each epoch's end.
        history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                   for key in ("train_loss", "learning_rate", "dev_f1", "epoch")}
        assert [s for s, _ in history["train_loss"]] == [3, 6]
        assert history["learning_rate"] == [(3, pytest.approx(lr / 2)), (6, 0.0)]
        assert history["epoch"] == [(3, 1.0), (6, 2.0)]
        assert [s for s, _ in history["dev_f1"]] == [3, 6] and all(0 <= v <= 1 for _, v in history["dev_f1"])
        metrics = run.data.metrics
        assert metrics["train.steps"] == 6
        for key in ("dev.conlleval.f1", "test.strict.f1", "test.conlleval.PER.recall", "dev.strict.LOC.precision",
                    "before_finetuning.test.conlleval.f1", "stage_seconds.prepare", "stage_seconds.score_untrained",
                    "stage_seconds.train", "stage_seconds.evaluate"):
            assert key in metrics, key
        files = artifact_paths(client, run.info.run_id)
        assert set(files) >= {"report.md", "figures/learning_curve.png", "figures/confusion_test.png",
                              "eval/predictions_test.conll", "eval/predictions_dev.conll", "eval/metrics.json",
                              "labels.json", "train/metrics.json", "dvc.lock"}
        logged_eval = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/metrics.json")).read_text())
        assert metrics["test.conlleval.f1"] == logged_eval["test"]["conlleval"]["f1"]
        tags = run.data.tags
        assert (tags["dvc.exp_name"], tags["dvc.exp_baseline_rev"], tags["git.commit"]) == (name, head, head)
        assert tags["git.dirty"] == "false"  # only params.yaml and pipeline outputs differ from HEAD
        assert tags["data.sha256.train"] == fixture_sha256["train"]
        assert tags["device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
        assert tags["version.dvc"] == version("dvc") and tags["version.transformers"] == version("transformers")
        assert "dvc.stage.train.md5" in tags and "dvc.out.data/model.md5" in tags
    # The workspace holds the second experiment: its metrics and dvc.lock are what its run holds.
    second = runs["lr-2e-3"]
    workspace_eval = json.loads((repo.root / "reports/eval/metrics.json").read_text())
    assert second.data.metrics["test.strict.f1"] == workspace_eval["test"]["strict"]["f1"]
    assert second.data.tags["dvc.stage.train.md5"] == lock_entry_md5(repo.root, "train")
    assert json.loads((repo.root / "reports/train/run.json").read_text())["run_id"] == second.info.run_id
    # mlflow.register_model registered its model; the first, without it, registered nothing.
    assert [(v.version, v.run_id) for v in client.search_model_versions("name='tiny-ner'")] == [
        ("1", second.info.run_id)]

    # Re-running report alone logs onto the run of the model it reports on: no third run.
    result = repo.repro("-s", "-f", "report")
    assert PipelineRepo.stages_run(result) == ["report"]
    after = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(after) == ["lr-1e-3", "lr-2e-3"]
    assert after["lr-2e-3"].info.end_time > second.info.end_time
    assert after["lr-1e-3"].info.end_time == runs["lr-1e-3"].info.end_time


def test_logged_model_serves_http_predictions(repo, tmp_path, monkeypatch):
    """The train stage logs a model that `mlflow models serve` runs: runs:/<id>/model answers each text with
    the entities `nerpipe predict` finds with data/model, and carries the pipeline's window settings.
    (tests/test_served_model.py checks the model itself, on a model whose entities are known.)"""
    from tests.server_process import serve_model
    from tests.served import nerpipe_predict

    if not (repo.root / "reports/train/run.json").exists():
        repo.repro()
    run_id = json.loads((repo.root / "reports/train/run.json").read_text())["run_id"]
    # As the environment, not download_artifacts(tracking_uri=...): MLflow 3.17 resolves a run's logged model
    # with the global tracking URI, and finds no model in the default store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", repo.env["MLFLOW_TRACKING_URI"])
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", repo.env["MLFLOW_TRACKING_URI"])
    described = mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/model/artifacts/save_pretrained/nerpipe_model.json", dst_path=str(tmp_path))
    assert {k: v for k, v in json.loads(Path(described).read_text()).items() if k in USAGE_KEYS} == {
        "max_length": 24, "window_overlap": 4, "context": 0, "bf16": "auto"}
    texts = [SENTENCE, "Reuters: Maria met the U.S. team in Zürich."]
    # the model's own settings (max_length 24), read from data/model with no params.yaml around
    expected = nerpipe_predict(repo.root / "data/model", texts)
    with serve_model(f"runs:/{run_id}/model", tmp_path / "serve.log", env=repo.env) as served:
        response = requests.post(f"{served.url}/invocations", json={"inputs": texts}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}
    assert all(set(e) == {"text", "type", "start", "end", "score"} for found in expected for e in found)


def test_a_server_gone_between_the_two_requests_of_the_check_is_a_user_error(monkeypatch):
    """check_reachable asks /health, then a signed-in request; a server that goes away in between is named
    with the reason, as for the first request, not a requests traceback."""
    from nerpipe.core.errors import UserError
    from nerpipe.track.server import check_reachable

    healthy = requests.Response()
    healthy.status_code = 200
    answers = iter([healthy])

    def get(url, **kwargs):
        try:
            return next(answers)
        except StopIteration:
            raise requests.ConnectionError("HTTPConnectionPool: [Errno 111] Connection refused") from None

    monkeypatch.setattr(requests, "get", get)
    with pytest.raises(UserError) as err:
        check_reachable("http://127.0.0.1:9", "start the server")
    assert str(err.value) == ("MLflow tracking server http://127.0.0.1:9 (MLFLOW_TRACKING_URI) cannot be reached: "
                              "[Errno 111] Connection refused; start the server")
