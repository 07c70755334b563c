"""A team's storage with real servers: tools/team_server.py's S3 (SeaweedFS), PostgreSQL and MLflow
server, started once for the module and stopped at its end.

Two clones of one git origin each run an experiment that logs to the shared MLflow server and push it
(`dvc exp push`: git refs to the origin, outputs to the S3 remote). A fresh third clone pulls one of
them and has its data, model and metrics without training; `dvc artifacts get` fetches the model that
main declares. Then the MLflow server is stopped twice in the middle of a training and started again:
the training goes on, and the run ends FINISHED with every metric.
"""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient, MlflowException
from mlflow.entities import LoggedModelStatus

from nerpipe.core.set_params import set_params
from nerpipe.track.held import HELD_METRICS, PROBE_EVERY_S, HeldMetrics
from tests.pipeline_repo import PipelineRepo, tiny_overrides
from tools import team_server

EXPERIMENT = "conll2003-ner"
EXPS = {"alice": ("alice-lr1e-3", "0.001"), "bob": ("bob-lr3e-3", "0.003")}
TRAIN = ["python", "stages/train.py", "--data", "data/prepared", "--model-out", "data/model",
         "--checkpoints", "data/checkpoints", "--reports", "reports/train", "--timings", "reports/timings/train.json"]


@pytest.fixture(scope="module")
def team():
    """The three services in a directory that the postgres user can reach (pytest's own tmp is 0700)."""
    why = team_server.unavailable()
    if why:
        pytest.skip(f"the team's servers cannot run here: {why}")
    directory = Path(tempfile.mkdtemp(prefix="nerpipe-team-"))
    directory.chmod(0o755)
    try:
        state = team_server.start(directory / "server", port=0, s3_port=0)
        yield {"dir": directory / "server", **team_server.urls(state), "env": team_server.s3_env(state)}
    finally:
        if (directory / "server" / team_server.STATE).exists():
            team_server.stop(directory / "server")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def origin(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir, team):
    """A bare git repository holding the tiny pipeline, with the S3 bucket as its default DVC remote."""
    base = tmp_path_factory.mktemp("team")
    seed = PipelineRepo.create(base / "seed", tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))
    seed.run("dvc", "remote", "add", "-d", "storage", "s3://dvc/nerpipe")
    seed.run("dvc", "remote", "modify", "storage", "endpointurl", team["s3"])
    seed.commit("DVC remote on the team's S3")
    subprocess.run(["git", "clone", "-q", "--bare", str(seed.root), str(base / "origin.git")], check=True)
    return base / "origin.git"


def clone(origin, team, name):
    """A teammate's clone: keys for S3 in the environment (as `dvc remote modify --local` would hold them)."""
    root = origin.parent / name
    subprocess.run(["git", "clone", "-q", str(origin), str(root)], check=True)
    return PipelineRepo(root, env={**team["env"], "MLFLOW_TRACKING_URI": team["mlflow"]})


@pytest.fixture(scope="module")
def teammates(origin, team):
    """alice runs an experiment in her clone, pushes it and promotes it: main gets its dvc.lock, the S3
    remote its outputs, and the model a version tag. bob then clones main and runs another with
    `dvc exp run --pull`, which fetches what his experiment does not change instead of computing it.
    Both log to the team's MLflow server."""
    alice = clone(origin, team, "alice")
    exp, lr = EXPS["alice"]
    alice.run("dvc", "exp", "run", "-n", exp, "-S", f"lr={lr}")
    alice.run("dvc", "exp", "push", "origin", exp)
    alice.run("dvc", "exp", "apply", exp)
    alice.commit(f"promote {exp}")
    alice.run("dvc", "push")
    alice.run("git", "tag", "-a", "ner-model@v1.0.0", "-m", f"ner-model v1.0.0: {exp}")  # GTO's version tag
    alice.run("git", "push", "-q", "origin", "HEAD", "ner-model@v1.0.0")

    bob = clone(origin, team, "bob")
    exp, lr = EXPS["bob"]
    bob.ran = PipelineRepo.stages_run(bob.run("dvc", "exp", "run", "--pull", "-n", exp, "-S", f"lr={lr}"))
    bob.run("dvc", "exp", "push", "origin", exp)
    return {"alice": alice, "bob": bob}


def md5s(directory):
    return {str(p.relative_to(directory)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def logged_model(client, run):
    """The model the train stage logged from `run`, finished uploading."""
    [model] = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert model.status == LoggedModelStatus.READY, model.status
    return model


def s3_keys(team, bucket, prefix=""):
    env = team["env"]
    s3 = boto3.client("s3", endpoint_url=team["s3"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_two_clones_log_whole_runs_to_the_shared_server(teammates, team):
    client = MlflowClient(team["mlflow"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    # What the compare view shows: both runs, side by side, lr the param that differs.
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], order_by=["params.lr"])}
    assert sorted(runs) == sorted(exp for exp, _ in EXPS.values())
    for name, (exp, lr) in EXPS.items():
        run, workspace = runs[exp], teammates[name].root
        assert run.info.status == "FINISHED"
        assert (run.data.params["lr"], run.data.tags["dvc.exp_name"]) == (lr, exp)
        evaluation = json.loads((workspace / "reports/eval/metrics.json").read_text())
        assert run.data.metrics["test.conlleval.f1"] == evaluation["test"]["conlleval"]["f1"]
        assert run.data.metrics["dev.strict.f1"] == evaluation["dev"]["strict"]["f1"]
        history = read_csv(workspace / "reports/train/history.csv")
        logged = client.get_metric_history(run.info.run_id, "train_loss")
        assert [(m.step, round(m.value, 6)) for m in logged] == [(int(r["step"]), float(r["loss"])) for r in history]
        # Artifacts went through the server's proxy into S3, and so did the model (an MLflow 3 logged
        # model: its files are its own, under models/<model_id>/, not the run's).
        files = artifact_paths(client, run.info.run_id)
        assert {"report.md", "dvc.lock", "eval/metrics.json", "train/history.csv", "figures/confusion_test.png"} <= set(
            files)
        stored = {k.split(f"/{run.info.run_id}/artifacts/", 1)[1]
                  for k in s3_keys(team, "mlflow", f"{experiment.experiment_id}/{run.info.run_id}/")}
        assert set(files) <= stored
        model = logged_model(client, run)
        model_files = s3_keys(team, "mlflow", f"{experiment.experiment_id}/models/{model.model_id}/artifacts/")
        assert any(k.endswith("/MLmodel") for k in model_files)
        assert any(k.endswith(".safetensors") for k in model_files)
        downloaded = Path(client.download_artifacts(run.info.run_id, "eval/metrics.json"))
        assert json.loads(downloaded.read_text()) == evaluation
    # The runs are in PostgreSQL, not in a file of either clone.
    assert not any((clone.root / "mlflow.db").exists() for clone in teammates.values())


def test_fresh_clone_runs_only_what_its_experiment_changes(teammates):
    # bob's clone had nothing computed: --pull fetched data/raw, data/prepared and the untrained scores.
    assert teammates["bob"].ran == ["check_params", "train", "evaluate", "report"]


def test_fresh_clone_pulls_an_experiment_and_trains_nothing(teammates, origin, team):
    carol = clone(origin, team, "carol")
    listed = carol.run("dvc", "exp", "list", "origin", "--all-commits", "--name-only").stdout.split()
    assert sorted(listed) == sorted(exp for exp, _ in EXPS.values())
    exp, _ = EXPS["bob"]
    carol.run("dvc", "exp", "pull", "origin", exp)
    carol.run("dvc", "exp", "apply", exp)
    bob = teammates["bob"].root
    for path in ("data/prepared", "data/model", "reports/figures"):
        assert md5s(carol.root / path) == md5s(bob / path), path
    for path in ("reports/eval/metrics.json", "reports/train/metrics.json", "reports/eval/predictions_test.conll",
                 "reports/report.md", "dvc.lock"):
        assert (carol.root / path).read_bytes() == (bob / path).read_bytes(), path
    # Nothing is missing: the checkpoints are no DVC output, so the pulled experiment is up to date.
    assert carol.run("dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    result = carol.repro()
    assert PipelineRepo.stages_run(result) == []
    assert "Data and pipelines are up to date" in result.stdout


def test_artifacts_get_fetches_the_model_of_a_version_tag(teammates, origin, tmp_path):
    """The model by its name in dvc.yaml's `artifacts:` and the version alice tagged, without a clone."""
    alice = teammates["alice"]
    result = subprocess.run(["dvc", "artifacts", "get", str(origin), "ner-model", "-o", str(tmp_path / "model")],
                            cwd=tmp_path, env=alice.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert md5s(tmp_path / "model") == md5s(alice.root / "data/model")
    assert "model.safetensors" in md5s(tmp_path / "model")


class Output:
    """A process's output lines, read as they come, so a test can wait for one."""

    def __init__(self, process):
        self.lines, self._changed = [], threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text, seconds=120):
        with self._changed:
            assert self._changed.wait_for(lambda: any(text in line for line in self.lines), seconds), (
                f"no line with {text!r}:\n" + "\n".join(self.lines[-40:]))
            return next(line for line in self.lines if text in line)

    def count(self, text):
        return sum(text in line for line in self.lines)


def test_training_goes_on_while_the_server_restarts_and_loses_no_metric(teammates, team):
    """The server stops while the training is paused (SIGSTOP) mid-run. The first outage ends while it
    trains (the held metrics go at the next log); the second lasts past its end, and the end of the
    stage waits for the server. Every metric arrives, once, and the run ends FINISHED."""
    bob = teammates["bob"]  # his workspace holds his experiment's data/prepared
    # Batch 1: 11 optimizer steps per epoch, the loss logged every 10 steps and at each epoch's end.
    set_params(bob.root / "params.yaml", ["train.batch_size=1", "train.epochs=30", "train.patience=0"])
    env = {**bob.env, "PYTHONUNBUFFERED": "1", "NERPIPE_MLFLOW_SERVER_WAIT_S": "300"}
    process = subprocess.Popen(TRAIN, cwd=bob.root, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    output = Output(process)
    try:
        run_id = output.wait_for("MLflow run ").split()[2]
        process.send_signal(signal.SIGSTOP)
        team_server.stop(team["dir"], ["mlflow"])
        process.send_signal(signal.SIGCONT)
        output.wait_for("stopped answering at step")
        process.send_signal(signal.SIGSTOP)
        team_server.start(team["dir"])
        time.sleep(PROBE_EVERY_S)  # the next log after this probes the server, finds it, and sends
        process.send_signal(signal.SIGCONT)
        output.wait_for("answers again: sent the metrics held since step")
        process.send_signal(signal.SIGSTOP)
        team_server.stop(team["dir"], ["mlflow"])
        process.send_signal(signal.SIGCONT)
        output.wait_for("waiting up to 300 s for it to come back")  # training is over; the stage waits
        team_server.start(team["dir"])
        assert process.wait(timeout=300) == 0, "\n".join(output.lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print("\n".join(output.lines))  # shown when the test fails
    lines = "\n".join(output.lines)
    assert output.count("warning: MLflow tracking server") == 2, lines  # one per outage
    assert output.count("answers again: sent the metrics held since step") == 2, lines
    assert lines.index("answers again") < lines.index("waiting up to 300 s"), lines  # the first, during training

    client = MlflowClient(team["mlflow"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = read_csv(bob.root / "reports/train/history.csv")
    dev = read_csv(bob.root / "reports/train/dev_eval.csv")
    assert len(dev) == 30 and len(history) > 30
    logged = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
              for key in ("train_loss", "learning_rate", "dev_f1", "epoch")}
    assert [(s, round(v, 6)) for s, v in logged["train_loss"]] == [(int(r["step"]), float(r["loss"])) for r in history]
    assert [(s, v) for s, v in logged["learning_rate"]] == [(int(r["step"]), float(r["lr"])) for r in history]
    assert [(s, v) for s, v in logged["dev_f1"]] == [(int(r["step"]), float(r["dev_f1"])) for r in dev]
    assert [s for s, _ in logged["epoch"]] == sorted({int(r["step"]) for r in history + dev})
    assert run.data.metrics["train.steps"] == json.loads((bob.root / "reports/train/metrics.json").read_text())["steps"]
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(logged_model(client, run).model_id)}
    assert not (bob.root / "data/checkpoints" / HELD_METRICS).exists()


def test_metrics_held_by_a_stopped_training_are_sent_when_it_resumes(team, tmp_path, monkeypatch):
    """Ctrl-C while the server is away: the run is not waited for, and what it held is in the checkpoint
    directory; the resumed training sends it first (HeldMetrics.send_saved, from training_run)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team["mlflow"])
    client = MlflowClient(team["mlflow"])
    run = client.create_run(client.create_experiment("held-metrics"))
    run_id, saved = run.info.run_id, tmp_path / HELD_METRICS
    held = HeldMetrics(team["mlflow"], run_id, saved)
    held.log({"train_loss": 1.5}, 10)  # sent at once
    assert not saved.exists()
    team_server.stop(team["dir"], ["mlflow"])
    try:
        held.log({"train_loss": 0.5, "epoch": 2.0}, 20)
        held.log({"dev_f1": 0.25}, 20)
        assert [m[:2] + m[3:] for m in json.loads(saved.read_text())["metrics"]] == [
            ["train_loss", 0.5, 20], ["epoch", 2.0, 20], ["dev_f1", 0.25, 20]]
        assert not held.deliverable(waiting=False)  # stopped on request: no waiting for the server
    finally:
        team_server.start(team["dir"])
    HeldMetrics.send_saved(saved)
    assert not saved.exists()
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in ("train_loss", "epoch", "dev_f1")}
    assert history == {"train_loss": [(10, 1.5), (20, 0.5)], "epoch": [(20, 2.0)], "dev_f1": [(20, 0.25)]}
    # A request the server refuses (an unknown run) fails at once: no amount of waiting would cure it.
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        HeldMetrics(team["mlflow"], "0" * 32, tmp_path / "other.json").log({"train_loss": 1.0}, 1)
