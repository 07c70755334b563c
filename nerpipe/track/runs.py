"""MLflow tracking: one training result is one MLflow run (README "MLflow" has the design).

The train stage creates the run and writes its id to reports/train/run.json, a small DVC output;
evaluate and report depend on that file and resume the run, so a later `dvc repro` that re-runs only
them logs onto the run of the model they used. Each checkpoint carries the run id too, so a training
that is interrupted and resumed stays one run.

Where runs go: MLFLOW_TRACKING_URI if set, checked before a stage does any work so that an
unreachable server fails it within seconds; else mlflow.db at the repository root, by absolute path,
with artifacts in mlartifacts/ beside it. DVC sets DVC_ROOT to the original repository even for
`dvc exp run --temp` and queued runs, which execute in copies under .dvc/tmp/exps, so those land in
the same store. Writes to that SQLite store are serialised across processes with a file lock:
SQLite's busy wait does not cover two stages creating a new store's tables at the same moment
(`dvc queue start -j 2`).
"""

import fcntl
import hashlib
import json
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import mlflow

from nerpipe.core.atomic import write_json
from nerpipe.core.errors import Interrupted, UserError
from nerpipe.core.params import flatten, read_yaml
from nerpipe.evaluate.metrics import flatten_metrics

STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
REACH_TIMEOUT_S = 5
EVALUATE_ARTIFACTS = ("metrics.json", "predictions_dev.conll", "predictions_test.conll", "confusion_test.csv")


def repository_root():
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri():
    """MLFLOW_TRACKING_URI if set; else the SQLite store at the repository root, as an absolute path."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repository_root() / STORE}"


def _sqlite_file(uri):
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock():
    """Hold an exclusive lock on this machine's writers to a SQLite store; nothing for a server."""
    db = _sqlite_file(tracking_uri())
    if db is None:
        yield
        return
    name = f"nerpipe-mlflow-{hashlib.sha256(str(db).encode()).hexdigest()[:16]}.lock"
    with open(Path(tempfile.gettempdir()) / name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _check_reachable(uri):
    """A UserError within seconds if `uri` is a tracking server that does not answer (MLflow's own
    client would retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    hint = (f"start the server, correct MLFLOW_TRACKING_URI, or unset it to record to "
            f"{repository_root() / STORE}")
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as err:
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(err))
        reason = (f"no answer within {REACH_TIMEOUT_S} s" if isinstance(err, requests.Timeout)
                  else errno.group(0) if errno else type(err).__name__)
        raise UserError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached: {reason}; "
                        f"{hint}") from None
    if response.status_code >= 500 or response.status_code in (401, 403):
        raise UserError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) answered HTTP "
                        f"{response.status_code} {response.reason}; {hint}")


def connect(experiment):
    """Point MLflow at the tracking store; return the id of `experiment`, created if it is new."""
    uri = tracking_uri()
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    with _store_lock():
        db = _sqlite_file(uri)
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


def _existing_run(run_id, experiment_id=None):
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except mlflow.MlflowException:
        return None
    if run.info.lifecycle_stage == "deleted" or experiment_id not in (None, run.info.experiment_id):
        return None
    return run


@contextmanager
def training_run(experiment_id, params, checkpoints, device, prepared):
    """The run a training logs to, active inside the block: the run saved with the checkpoint that
    will resume, else a new one named after the DVC experiment. It ends FINISHED, KILLED (stopped;
    the checkpoint resumes it) or FAILED."""
    resumed = checkpoints.saved_run_id()
    with _store_lock():
        if resumed and not _existing_run(resumed, experiment_id):
            resumed = None
        run = mlflow.start_run(run_id=resumed, experiment_id=None if resumed else experiment_id,
                               run_name=os.environ.get("DVC_EXP_NAME"))
        _log_params({k: v for k, v in flatten(params).items() if not k.startswith("evaluate.")})
        mlflow.set_tags(_provenance_tags(params, device, Path(prepared) / "stats.json"))
    checkpoints.run_id = run.info.run_id
    print(f"MLflow run {run.info.run_id} ({'resumed with the checkpoint' if resumed else 'new'}) in {tracking_uri()}")
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        with _store_lock():
            mlflow.end_run(status)


def step_logger(steps_per_epoch):
    """RunContext.log_metrics for train.loop.fit: each metric at its optimizer step, plus the fractional epoch, so
    the UI draws loss, learning rate and dev F1 over steps or epochs."""
    epoch_logged_at = set()

    def log(metrics, step):
        values = {k: float(v) for k, v in metrics.items()}
        if step not in epoch_logged_at:
            epoch_logged_at.add(step)
            values["epoch"] = step / steps_per_epoch
        with _store_lock():
            mlflow.log_metrics(values, step=step)

    return log


def write_run_file(path, run):
    write_json(path, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                      "tracking_uri": tracking_uri()})


def run_of_model(run_file):
    """The id of the run `run_file` names, once the tracking store answered and holds it."""
    info = json.loads(Path(run_file).read_text())
    uri = tracking_uri()
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    db = _sqlite_file(uri)
    with _store_lock():
        found = (db is None or db.exists()) and _existing_run(info["run_id"])  # a client would create a missing db
    if not found:
        raise UserError(f"{run_file}: MLflow run {info['run_id']} is not in the tracking store {uri} (it was "
                        f"recorded in {info['tracking_uri']}); point MLFLOW_TRACKING_URI there, or re-train "
                        "(dvc repro -f train) to record a new run")
    return info["run_id"]


def log_evaluation(run_id, evaluate_params, metrics, seconds, out):
    """evaluate.* params, every named value of metrics.json (nerpipe.evaluate.metrics: test.strict.PER.f1,
    before_finetuning.dev.conlleval.f1, ...), the stage's wall time, and the evaluate outputs."""
    values = {**flatten_metrics(metrics), "stage_seconds.evaluate": float(seconds)}
    with _store_lock(), mlflow.start_run(run_id=run_id):
        _log_params({f"evaluate.{k}": v for k, v in evaluate_params.__dict__.items()})
        mlflow.log_metrics(values)
        for name in EVALUATE_ARTIFACTS:
            mlflow.log_artifact(str(out / name), artifact_path="eval")


def log_report(run_id, report, figures, lock_file=Path("dvc.lock")):
    """report.md, the PNG figures, and dvc.lock with a tag per stage (md5 of its lock entry) and per
    output (its md5). The report stage's own lock entry is written by DVC after it ends, so it is
    not tagged."""
    lock = read_yaml(lock_file).get("stages", {}) if lock_file.exists() else {}  # none before DVC's first stage
    tags = {}
    for stage, entry in lock.items():
        if stage != "report":
            tags[f"dvc.stage.{stage}.md5"] = hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest()
            tags |= {f"dvc.out.{out['path']}.md5": out["md5"] for out in entry.get("outs", []) if "md5" in out}
    with _store_lock(), mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(report))
        mlflow.log_artifacts(str(figures), artifact_path="figures")
        if lock_file.exists():
            mlflow.log_artifact(str(lock_file))
        mlflow.set_tags(tags)


def _log_params(values):
    """Log params on the active run. MLflow never changes a param, so one that is already there with
    another value (evaluate re-run with a new evaluate.batch_size) is kept as tag changed_param.<key>."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in values.items() if k not in logged})
    mlflow.set_tags({f"changed_param.{k}": str(v) for k, v in values.items() if k in logged and logged[k] != str(v)})


def _provenance_tags(params, device, stats_file):
    """What produced the run: git commit and dirtiness, DVC experiment, data files and checksums, device,
    versions. The data tags are what download found (data.sha256 may be "" for a local directory), as
    prepare copied them into `stats_file` (the prepared data's stats.json)."""
    import torch

    sources = json.loads(Path(stats_file).read_text())["sources"]
    tags = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            **{f"version.{p}": version(p) for p in ("torch", "transformers", "dvc", "mlflow")},
            **{f"data.sha256.{split}": source["sha256"] for split, source in sources.items()},
            **{f"data.file.{split}": source["file"] for split, source in sources.items() if "file" in source}}
    for variable, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    # An experiment runs on its baseline commit (in a --temp or queued copy, HEAD is a DVC stash commit).
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git("rev-parse", "HEAD")
    if commit:
        dirty = _changed_sources(commit)
        tags |= {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}
        if dirty:
            more = f" and {len(dirty) - 20} more" if len(dirty) > 20 else ""
            tags["git.dirty_files"] = ", ".join(dirty[:20]) + more
    return tags


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _changed_sources(commit):
    """Files that differ from `commit` (or are new and not ignored), except params.yaml (logged as
    params), .gitignore files, dvc.lock and the outputs dvc.yaml declares (all written by DVC runs)."""
    changed = (_git("diff", "--name-only", commit) or "").splitlines()
    changed += (_git("ls-files", "--others", "--exclude-standard") or "").splitlines()
    produced = {"params.yaml", "dvc.lock"}
    for stage in (read_yaml("dvc.yaml") or {}).get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            produced |= {next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])}
    return sorted(p for p in set(changed) if Path(p).name != ".gitignore"
                  and not any(p == o or p.startswith(o.rstrip("/") + "/") for o in produced))
