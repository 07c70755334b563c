"""A team's storage with real servers: tools/team_server.py's S3 (SeaweedFS), PostgreSQL and MLflow
server, started once for the module and stopped at its end.

Two clones of one git origin each run an experiment that logs to the shared MLflow server and push it
(`dvc exp push`: git refs to the origin, outputs to the S3 remote). A fresh third clone pulls one of
them and has its data, model and metrics without training; `dvc artifacts get` fetches the model that
main declares. Then the MLflow server is stopped twice in the middle of a training and started again:
the training goes on, and the run ends FINISHED with every metric.

The servers let in only the team: alice and bob are EDIT users of MLflow with the DVC remote's S3 key,
carol a READ user with the read-only key; what each may not do is refused, and no secret shows on a
command line or in a log.
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

import botocore.exceptions
import pytest
import requests
from mlflow import MlflowClient, MlflowException
from mlflow.entities import LoggedModelStatus

from nerpipe.core.errors import UserError
from nerpipe.core.set_params import set_params
from nerpipe.track.held import HELD_METRICS, PROBE_EVERY_S, HeldMetrics
from nerpipe.track.store import connect
from tests.pipeline_repo import PipelineRepo, tiny_overrides
from tools import team_server

EXPERIMENT = "conll2003-ner"
EXPS = {"alice": ("alice-lr1e-3", "0.001"), "bob": ("bob-lr3e-3", "0.003")}
TRAIN = ["python", "stages/train.py", "--data", "data/prepared", "--model-out", "data/model",
         "--checkpoints", "data/checkpoints", "--reports", "reports/train", "--timings", "reports/timings/train.json"]


# The teammates, as `make tracking-user` adds them; "tester" is this process's own MLflow user.
USERS = {"alice": "EDIT", "bob": "EDIT", "carol": "READ", "tester": "EDIT"}
S3_KEY = {"alice": "dvc", "bob": "dvc", "carol": "reader"}  # carol only pulls


@pytest.fixture(scope="module")
def team():
    """The three services in a directory that the postgres user can reach (pytest's own tmp is 0700),
    with the USERS added; this process talks to MLflow as "tester"."""
    why = team_server.unavailable()
    if why:
        pytest.skip(f"the team's servers cannot run here: {why}")
    directory = Path(tempfile.mkdtemp(prefix="nerpipe-team-"))
    directory.chmod(0o755)
    try:
        with pytest.MonkeyPatch.context() as env:
            state = team_server.start(directory / "server", port=0, s3_port=0)
            for name, permission in USERS.items():
                state = team_server.add_user(directory / "server", name, permission)
            for name, value in team_server.mlflow_env(state, "tester").items():
                env.setenv(name, value)
            yield {"dir": directory / "server", "state": state, **team_server.urls(state)}
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
    """A teammate's clone: their S3 key in the environment (as `dvc remote modify --local` would hold
    it), and their MLflow user."""
    root = origin.parent / name
    subprocess.run(["git", "clone", "-q", str(origin), str(root)], check=True)
    state = team["state"]
    return PipelineRepo(root, env={**team_server.s3_env(state, S3_KEY[name]), **team_server.mlflow_env(state, name)})


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
    s3 = team_server.s3_client(team["state"], bucket)  # each bucket's own key
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_mlflow_answers_401_without_the_right_password(team):
    api = f"{team['mlflow']}/api/2.0/mlflow/experiments/search"
    admin = team["state"]["mlflow_admin"]
    assert requests.get(api, params={"max_results": 1}, timeout=10).status_code == 401
    for wrong in ("password1234", "", admin["password"][:-1]):  # MLflow's old default among them
        assert requests.get(api, params={"max_results": 1}, auth=(admin["username"], wrong), timeout=10).status_code == 401
    assert requests.get(api, params={"max_results": 1}, auth=(admin["username"], admin["password"]),
                        timeout=10).status_code == 200
    assert requests.get(f"{team['mlflow']}/health", timeout=10).status_code == 200  # probes need no password



def test_a_stage_without_the_right_password_says_what_to_set(team, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(UserError, match="refused user 'tester' .HTTP 401.: set MLFLOW_TRACKING_USERNAME and MLFLOW_T"):
        connect("never-created")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    with pytest.raises(UserError, match="refused a request without a user .HTTP 401."):
        connect("never-created")


def test_a_read_user_sees_runs_but_cannot_create_one(team):
    experiment_id = MlflowClient().create_experiment("read-only-check")  # by "tester", an EDIT user
    run_id = MlflowClient().create_run(experiment_id).info.run_id
    reader = team_server.mlflow_env(team["state"], "carol")
    with pytest.MonkeyPatch.context() as env:
        for name, value in reader.items():
            env.setenv(name, value)
        client = MlflowClient()
        assert [r.info.run_id for r in client.search_runs([experiment_id])] == [run_id]
        with pytest.raises(MlflowException, match="403"):
            client.create_run(experiment_id)
        with pytest.raises(MlflowException, match="403"):
            client.log_metric(run_id, "loss", 1.0)
    assert [r.info.run_id for r in MlflowClient().search_runs([experiment_id])] == [run_id]


def s3_refused(call):
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        call()
    return refused.value.response["Error"]["Code"]


def test_each_s3_key_reaches_only_its_own_bucket(team):
    state = team["state"]
    dvc, mlflow_key, reader = (team_server.s3_client(state, name) for name in ("dvc", "mlflow", "reader"))
    dvc.put_object(Bucket="dvc", Key="check/dvc", Body=b"dvc")
    mlflow_key.put_object(Bucket="mlflow", Key="check/mlflow", Body=b"mlflow")
    # The DVC key cannot overwrite a logged model's files, nor read them; MLflow's key cannot touch DVC's.
    assert s3_refused(lambda: dvc.put_object(Bucket="mlflow", Key="check/mlflow", Body=b"evil")) == "AccessDenied"
    assert s3_refused(lambda: dvc.get_object(Bucket="mlflow", Key="check/mlflow")) == "AccessDenied"
    assert s3_refused(lambda: mlflow_key.put_object(Bucket="dvc", Key="check/dvc", Body=b"evil")) == "AccessDenied"
    # The read-only key reads the DVC remote and writes nothing.
    assert reader.get_object(Bucket="dvc", Key="check/dvc")["Body"].read() == b"dvc"
    assert s3_refused(lambda: reader.put_object(Bucket="dvc", Key="check/dvc", Body=b"evil")) == "AccessDenied"
    assert s3_refused(lambda: reader.delete_object(Bucket="dvc", Key="check/dvc")) == "AccessDenied"
    assert s3_refused(lambda: reader.put_object(Bucket="mlflow", Key="check/x", Body=b"evil")) == "AccessDenied"
    assert dvc.get_object(Bucket="dvc", Key="check/dvc")["Body"].read() == b"dvc"
    assert mlflow_key.get_object(Bucket="mlflow", Key="check/mlflow")["Body"].read() == b"mlflow"


def test_the_state_file_is_private_from_its_first_byte(tmp_path, monkeypatch):
    """Created 0600 by os.open even under a umask that lets everyone read; never chmodded."""
    monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod after the file was written"))
    old = os.umask(0)
    try:
        team_server.settings(tmp_path, port=0, s3_port=0)
    finally:
        os.umask(old)
    assert (tmp_path / team_server.STATE).stat().st_mode & 0o777 == 0o600
    state = json.loads((tmp_path / team_server.STATE).read_text())
    assert sorted(state["s3"]) == ["dvc", "mlflow", "reader"]
    assert len({keys["secret_key"] for keys in state["s3"].values()}) == 3


def test_generated_secrets_paste_into_commands():
    """A secret that began with "-" would be read as an option by `dvc remote modify ... secret_access_key`
    (token_urlsafe gives one in about 1 of 64 draws)."""
    drawn = [team_server._secret() for _ in range(2000)]
    assert len(set(drawn)) == 2000 and all(len(s) == 48 and set(s) <= set("0123456789abcdef") for s in drawn)


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
        # Training is over; the stage waits. (The rest of the training: minutes on a busy machine.)
        output.wait_for("waiting up to 300 s for it to come back", seconds=600)
        team_server.start(team["dir"])
        assert process.wait(timeout=300) == 0, "\n".join(output.lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        team_server.start(team["dir"])  # if the test failed with the server stopped: the next tests need it
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
    # A request the server refuses fails at once: no amount of waiting would cure it. (An unknown run:
    # MLflow's auth app answers 403, telling no one which runs exist.)
    with pytest.raises(MlflowException, match="403 != 200. Response body: 'Permission denied'"):
        HeldMetrics(team["mlflow"], "0" * 32, tmp_path / "other.json").log({"train_loss": 1.0}, 1)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")  # so does a wrong password
    with pytest.raises(MlflowException, match="401 != 200"):
        HeldMetrics(team["mlflow"], run_id, tmp_path / "other.json").log({"train_loss": 1.0}, 30)


def test_no_secret_on_a_command_line_or_in_a_log(teammates, team):
    """After the whole pipeline, two clones and server restarts, while the servers run."""
    state, directory = team["state"], team["dir"]
    secrets = {"postgres": state["postgres_password"], "postgres superuser": state["postgres_superuser_password"],
               "mlflow admin": state["mlflow_admin"]["password"], "flask": state["flask_secret_key"],
               **{f"s3 {k}": v["secret_key"] for k, v in state["s3"].items()},
               **{f"seaweedfs {k}": v for k, v in state["weed_jwt"].items()},
               **{f"user {k}": v["password"] for k, v in state["users"].items()}}
    pids = [json.loads((directory / team_server.STATE).read_text())["pids"][n]["pid"] for n in ("s3", "mlflow")]
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:  # a process that ended meanwhile
            continue
        found += [(str(cmdline), name) for name, secret in secrets.items() if secret in text]
    private = {directory / team_server.STATE, directory / "s3-identities.json"}  # 0600: where they belong
    logs = [f for f in directory.rglob("*") if f.is_file() and f not in private]
    assert {directory / "logs/mlflow.log", directory / "logs/s3.log", directory / "postgres/postgres.log"} <= set(logs)
    for log in logs:
        text = log.read_bytes().decode(errors="replace")
        found += [(str(log), name) for name, secret in secrets.items() if secret in text]
    assert found == []
    assert all((f.stat().st_mode & 0o777) == 0o600 for f in private | {directory / "mlflow-auth.ini"})
