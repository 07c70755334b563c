"""MLflow's default store, mlflow.db at the repository root: `dvc exp run --temp` and two queued
experiments running at once land there, and an interrupted training that resumes stays one run."""

import re
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from nerpipe.core.set_params import set_params
from tests.pipeline_repo import PipelineRepo, tiny_overrides

TRAIN = ["python", "stages/train.py", "--data", "data/prepared", "--model-out", "data/model",
         "--checkpoints", "data/checkpoints", "--reports", "reports/train", "--timings", "reports/timings/train.json"]
FINAL_METRICS = {"train.steps", "dev.conlleval.f1", "test.strict.ORG.f1", "before_finetuning.dev.strict.f1",
                 "stage_seconds.train", "stage_seconds.evaluate"}
ARTIFACTS = {"report.md", "dvc.lock", "labels.json", "eval", "figures", "train"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    # PipelineRepo drops MLFLOW_TRACKING_URI: the stages use the default store.
    return PipelineRepo.create(tmp_path_factory.mktemp("pipeline"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))


def store(repo):
    return MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")


def runs_by_name(repo):
    client = store(repo)
    experiment = client.get_experiment_by_name("conll2003-ner")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def assert_complete(repo, run):
    assert run.info.status == "FINISHED"
    assert FINAL_METRICS <= set(run.data.metrics)
    assert {a.path for a in store(repo).list_artifacts(run.info.run_id)} == ARTIFACTS
    assert run.info.artifact_uri.startswith(str(repo.root / "mlartifacts"))


def test_two_queued_experiments_at_once_are_both_recorded(repo):
    # First in this module, so the store is new: both train stages create its tables and the
    # experiment at the same moment. (Deleting the store here instead would leave this process's
    # MLflow client reading the deleted file.)
    for name, lr in (("queued-a", "0.003"), ("queued-b", "0.004")):
        repo.run("dvc", "exp", "run", "--queue", "-n", name, "-S", f"lr={lr}")
    repo.run("dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = repo.run("dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert [line.split()[-1] for line in status.splitlines() if "queued-" in line] == ["Success", "Success"], status
    runs = runs_by_name(repo)
    assert sorted(runs) == ["queued-a", "queued-b"]
    for name, lr in (("queued-a", "0.003"), ("queued-b", "0.004")):
        assert_complete(repo, runs[name])
        assert runs[name].data.params["lr"] == lr
        assert "database is locked" not in repo.run("dvc", "queue", "logs", name).stdout
    a, b = runs["queued-a"].info, runs["queued-b"].info
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two experiments did not overlap"


def test_temp_run_lands_in_the_root_store(repo):
    repo.run("dvc", "exp", "run", "--temp", "-n", "temp-run", "-S", "lr=0.002")
    run = runs_by_name(repo)["temp-run"]
    assert_complete(repo, run)  # evaluate and report, in the same copy, resumed the run train created
    assert run.data.params["lr"] == "0.002"
    # Nothing was written beside the copy under .dvc/tmp/exps (gone now) or anywhere else.
    assert list(repo.root.rglob("mlflow.db*")) == [repo.root / "mlflow.db"]
    assert list(repo.root.rglob("mlruns")) == []
    assert list(repo.root.rglob("mlartifacts")) == [repo.root / "mlartifacts"]


def test_interrupted_training_resumes_its_run(repo, tmp_path):
    """Ctrl-C writes a checkpoint and marks the run KILLED; the next train resumes both."""
    repo.repro("prepare")
    # 12 windows, one per step: 240 steps, with dev F1 and an MLflow write only every 10 or 12 steps.
    set_params(repo.root / "params.yaml", ["train.epochs=20", "train.batch_size=1", "train.patience=0",
                                           "train.checkpoint_every=0"])
    # No MLflow client before the stage has set up the store (its "MLflow run <id>" line): a client
    # creates a missing store at once, and must not do so while the stage does.
    known_ids = {r.info.run_id for r in runs_by_name(repo).values()} if (repo.root / "mlflow.db").exists() else set()
    log_file = tmp_path / "train.log"
    with open(log_file, "w") as log:
        process = subprocess.Popen(TRAIN, cwd=repo.root, env={**repo.env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                   stderr=subprocess.STDOUT)
        run_id, deadline = None, time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            started = re.search(r"MLflow run (\w+) \(new\)", log_file.read_text())
            if started and store(repo).get_metric_history(started.group(1), "train_loss"):
                run_id = started.group(1)
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.2)
        assert process.wait(timeout=120) == 130, log_file.read_text()[-3000:]
    client = store(repo)
    assert client.get_run(run_id).info.status == "KILLED"
    stopped_at = client.get_metric_history(run_id, "train_loss")[-1].step
    assert stopped_at < 240

    result = repo.run(*TRAIN)
    assert "resuming from the checkpoint" in result.stdout + result.stderr
    assert {r.info.run_id for r in runs_by_name(repo).values()} == known_ids | {run_id}  # no new run
    assert client.get_run(run_id).info.status == "FINISHED"
    # Loss is logged every 10 steps and at each epoch's end: every point once, none lost.
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == [s for s in range(1, 241) if s % 10 == 0 or s % 12 == 0]
    assert (repo.root / "reports/train/run.json").read_text().count(run_id) == 1
