"""Where MLflow runs go, and the lock every write to that store passes (docs/mlflow.md has the design).

MLFLOW_TRACKING_URI if set, checked before a stage does any work so that an unreachable server fails it
within seconds; else mlflow.db at the repository root, by absolute path, with artifacts in mlartifacts/
beside it. DVC sets DVC_ROOT to the original repository even for `dvc exp run --temp` and queued runs,
which execute in copies under .dvc/tmp/exps, so those land in the same store. Writes to that SQLite
store are serialised across processes with a file lock: SQLite's busy wait does not cover two stages
creating a new store's tables at the same moment (`dvc queue start -j 2`).
"""

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow

from nerpipe.core.errors import UserError
from nerpipe.track.server import check_reachable, configure_http, say, wait_for_server

STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"


def repository_root():
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri():
    """MLFLOW_TRACKING_URI if set; else the SQLite store at the repository root, as an absolute path."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repository_root() / STORE}"


def sqlite_file(uri):
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


@contextmanager
def store_lock(held=None):
    """Every write to the tracking store passes here. For a SQLite store: an exclusive lock on this
    machine's writers. For a server: it answers (waited for up to server_wait_s()) and has taken every
    metric `held` (a nerpipe.track.held.HeldMetrics of the training in progress, if any) while it was away."""
    db = sqlite_file(tracking_uri())
    if db is None:
        if held is not None:
            held.deliver()
        elif wait_for_server(tracking_uri()):
            say(f"MLflow tracking server {tracking_uri()} answers again")
        yield
        return
    name = f"nerpipe-mlflow-{hashlib.sha256(str(db).encode()).hexdigest()[:16]}.lock"
    with open(Path(tempfile.gettempdir()) / name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _open(uri):
    hint = (f"start the server, correct MLFLOW_TRACKING_URI, or unset it to record to "
            f"{repository_root() / STORE}")
    check_reachable(uri, hint)
    configure_http()
    mlflow.set_tracking_uri(uri)


def connect(experiment):
    """Point MLflow at the tracking store; return the id of `experiment`, created if it is new."""
    uri = tracking_uri()
    _open(uri)
    with store_lock():
        db = sqlite_file(uri)
        if db is not None:
            # A store of our own creates the tables (under the lock) and gives new experiments an
            # artifact location beside mlflow.db, not in the working directory (a --temp copy).
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = SqlAlchemyStore(uri, str(db.parent / ARTIFACTS))
            found = store.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else store.create_experiment(experiment)
            store.engine.dispose()
        else:
            client = mlflow.MlflowClient()
            found = client.get_experiment_by_name(experiment)
            try:
                experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            except mlflow.MlflowException as err:  # created meanwhile by a concurrent stage
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id
        if found and found.lifecycle_stage == "deleted":
            raise UserError(f"mlflow.experiment: {experiment!r} is deleted in {uri}; restore it "
                            f"(mlflow experiments restore --experiment-id {experiment_id}) or choose another name")
    return experiment_id


def existing_run(run_id, experiment_id=None, client=None):
    try:
        run = (client or mlflow.MlflowClient()).get_run(run_id)
    except mlflow.MlflowException:
        return None
    if run.info.lifecycle_stage == "deleted" or experiment_id not in (None, run.info.experiment_id):
        return None
    return run


def run_of_model(run_file):
    """The id of the run `run_file` (reports/train/run.json) names, once the tracking store answered and holds it."""
    info = json.loads(Path(run_file).read_text())
    uri = tracking_uri()
    _open(uri)
    db = sqlite_file(uri)
    with store_lock():
        found = (db is None or db.exists()) and existing_run(info["run_id"])  # a client would create a missing db
    if not found:
        raise UserError(f"{run_file}: MLflow run {info['run_id']} is not in the tracking store {uri} (it was "
                        f"recorded in {info['tracking_uri']}); point MLFLOW_TRACKING_URI there, or re-train "
                        "(dvc repro -f train) to record a new run")
    return info["run_id"]
