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

A tracking server that goes away once a run has started (a shared server restarts) does not stop
training. Each HTTP call gives up after a few seconds (HTTP_SETTINGS, not MLflow's minutes of retries);
the training's metrics are then held, with one warning, and sent as soon as the server answers again
(HeldMetrics). Every other write to the store first waits for the server, up to server_wait_s(), so
the end of a training waits for a server that is restarting rather than losing the training; one that
stays away longer fails the stage with a message naming the run it leaves incomplete.
"""

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import RestException
from tqdm import tqdm

from nerpipe.core.atomic import write_json
from nerpipe.core.errors import Interrupted, UserError
from nerpipe.core.params import TRAIN_SECTIONS, flatten, read_yaml
from nerpipe.evaluate.metrics import flatten_metrics

STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
REACH_TIMEOUT_S = 5
# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) keep one call retrying a refused
# connection for about four minutes. Here a call only rides out a blip (retries after 0 and 2 s, plus up
# to 0.5 s of jitter each); a server that is away for longer is waited for by nerpipe (below), with a
# message, where a run can afford to wait. A request that gets no answer fails after 60 s: long enough
# for the server to store a model upload of a few hundred MB in S3 before it answers.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
# During training a metric is sent once, without retries and with a short timeout: a failure costs the
# loop at most that long, once; after that the server is probed every PROBE_EVERY_S.
TRAINING_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_EVERY_S = 10
SERVER_WAIT_S = 600  # NERPIPE_MLFLOW_SERVER_WAIT_S overrides
HELD_METRICS = "unsent-metrics.json"  # in the checkpoint directory, while some are held
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
    """Every write to the tracking store passes here. For a SQLite store: an exclusive lock on this
    machine's writers. For a server: it answers (waited for up to server_wait_s()) and has taken every
    metric held while it was away."""
    db = _sqlite_file(tracking_uri())
    if db is None:
        if _held is not None:
            _held.deliver()
        elif _wait_for_server(tracking_uri()):
            _say(f"MLflow tracking server {tracking_uri()} answers again")
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


def _answers(uri):
    import requests

    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def server_wait_s():
    return int(os.environ.get("NERPIPE_MLFLOW_SERVER_WAIT_S", SERVER_WAIT_S))


def _wait_for_server(uri, left_undone=None):
    """Return once the server at `uri` answers: True if it had to wait. After server_wait_s() raise
    UserError, saying what is `left_undone`. Nothing for a store that is not a server."""
    if not uri.startswith(("http://", "https://")) or _answers(uri):
        return False
    seconds = server_wait_s()
    _say(f"MLflow tracking server {uri} does not answer; waiting up to {seconds} s for it to come back "
         "(NERPIPE_MLFLOW_SERVER_WAIT_S sets how long)")
    deadline = time.monotonic() + seconds
    while not _answers(uri):
        if time.monotonic() > deadline:
            raise UserError(f"MLflow tracking server {uri} has not answered for {seconds} s; "
                            f"{left_undone or 'the stage stops here: run it again once the server is back'}")
        time.sleep(2)
    return True


def _say(message):
    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def _configure_http():
    """HTTP_SETTINGS, where the environment does not set them already."""
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)


@contextmanager
def _environment(values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _server_is_away(err):
    """True for a failure of the connection or of the server (5xx, or no MLflow answer at all), which
    waiting can cure; False for a request the server refused (4xx), which it cannot."""
    return not (isinstance(err, RestException) and err.get_http_status_code() < 500)


def connect(experiment):
    """Point MLflow at the tracking store; return the id of `experiment`, created if it is new."""
    uri = tracking_uri()
    _check_reachable(uri)
    _configure_http()
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


def _existing_run(run_id, experiment_id=None, client=None):
    try:
        run = (client or mlflow.MlflowClient()).get_run(run_id)
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
    global _held
    resumed = checkpoints.saved_run_id()
    held_file = Path(checkpoints.directory) / HELD_METRICS
    with _store_lock():
        HeldMetrics.send_saved(held_file)  # a training stopped while the server was away
        if resumed and not _existing_run(resumed, experiment_id):
            resumed = None
        run = mlflow.start_run(run_id=resumed, experiment_id=None if resumed else experiment_id,
                               run_name=os.environ.get("DVC_EXP_NAME"))
        _log_params(flatten(params, TRAIN_SECTIONS))
        mlflow.set_tags(_provenance_tags(params, device, Path(prepared) / "stats.json"))
    checkpoints.run_id = run.info.run_id
    print(f"MLflow run {run.info.run_id} ({'resumed with the checkpoint' if resumed else 'new'}) in {tracking_uri()}")
    if _sqlite_file(tracking_uri()) is None:
        _held = HeldMetrics(tracking_uri(), run.info.run_id, held_file)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        held, _held = _held, None
        # Only a finished training waits for the server: one that stopped or failed resumes from its
        # checkpoint, and the run with it, on the next `dvc repro`.
        if held is None or held.deliverable(waiting=status == "FINISHED"):
            with _store_lock():
                mlflow.end_run(status)
        else:
            with _environment(TRAINING_HTTP_SETTINGS), suppress(mlflow.MlflowException):
                mlflow.end_run(status)  # one try, so that MLflow's exit hook does not end it FINISHED
            if not held.gave_up:
                sent_later = f", which first sends the {len(held.metrics)} metrics held in {held_file}"
                _say(f"MLflow run {run.info.run_id} stays RUNNING in {tracking_uri()}: the server does not answer. "
                     f"The checkpoint resumes it on the next `dvc repro`{sent_later if held.metrics else ''}")


class HeldMetrics:
    """The training's metrics on their way to a tracking server: sent at once while it answers; held,
    after one warning, while it does not, and sent when it answers again. Until then they are also kept
    in the checkpoint directory (HELD_METRICS), so that a training stopped meanwhile (Ctrl-C, kill)
    sends them when it resumes."""

    def __init__(self, uri, run_id, path):
        self.uri, self.run_id, self.path = uri, run_id, Path(path)
        self.client = mlflow.MlflowClient(uri)
        self.metrics = []  # mlflow Metric, in the order they were logged
        self.away_since_step = None  # the step of the first metric held, while the server is away
        self.next_probe = 0.0
        self.gave_up = False

    def log(self, values, step):
        """Send `values` at `step`, with any held before; hold them all if the server does not take them."""
        timestamp = int(time.time() * 1000)
        self.metrics += [Metric(key, value, timestamp, step) for key, value in values.items()]
        if self.away_since_step is not None and (time.monotonic() < self.next_probe or not _answers(self.uri)):
            self.next_probe = time.monotonic() + PROBE_EVERY_S
            self._save()
            return
        try:
            with _environment(TRAINING_HTTP_SETTINGS):
                self._send()
        except mlflow.MlflowException as err:
            if not _server_is_away(err):
                raise
            self.next_probe = time.monotonic() + PROBE_EVERY_S
            self._save()
            if self.away_since_step is None:
                self.away_since_step = step
                _say(f"warning: MLflow tracking server {self.uri} stopped answering at step {step} "
                     f"({_reason(err)}); training goes on, and its metrics are held and sent when the "
                     "server answers again")

    def deliver(self):
        """Wait up to server_wait_s() for the server to answer and take every held metric; UserError after."""
        if self.gave_up:
            raise UserError(f"MLflow tracking server {self.uri} did not come back")
        deadline = time.monotonic() + server_wait_s()
        while True:
            try:
                waited = _wait_for_server(self.uri, self._incomplete())
                if waited and self.away_since_step is None:  # away since the last metric: nothing held
                    _say(f"MLflow tracking server {self.uri} answers again")
                self._send()
                return
            except mlflow.MlflowException as err:
                if not _server_is_away(err):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(f"MLflow tracking server {self.uri} did not take metrics for "
                                    f"{server_wait_s()} s ({_reason(err)}); {self._incomplete()}") from None
                time.sleep(2)
            except UserError:
                self.gave_up = True
                raise

    def deliverable(self, waiting):
        """Whether the run can be ended: held metrics sent (waiting for the server if `waiting`)."""
        if self.gave_up or not (waiting or _answers(self.uri)):
            return False
        try:
            self.deliver()
        except UserError as err:
            _say(f"error: {err}")
            return False
        return True

    def _send(self):
        while self.metrics:
            batch = self.metrics[:1000]  # MLflow's most per request; each batch is dropped once taken
            self.client.log_batch(self.run_id, metrics=batch)
            del self.metrics[:len(batch)]
        if self.away_since_step is not None:
            _say(f"MLflow tracking server {self.uri} answers again: sent the metrics held since step "
                 f"{self.away_since_step}")
            self.away_since_step = None
        self.path.unlink(missing_ok=True)

    def _save(self):
        write_json(self.path, {"tracking_uri": self.uri, "run_id": self.run_id,
                               "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self.metrics]})

    def _incomplete(self):
        held = (f"{len(self.metrics)} metrics held since step {self.away_since_step} are not sent, nor is "
                "anything after them" if self.metrics else "what comes after training is not logged")
        return (f"run {self.run_id} there is incomplete ({held}) and stays RUNNING. Start the server and run "
                "`dvc repro` again (it trains again: the training had finished and its checkpoint is gone), "
                "or delete the run")

    @staticmethod
    def send_saved(path):
        """Send the metrics a stopped training held (see the class) to their run, if this is their store."""
        path = Path(path)
        if not path.exists():
            return
        saved = json.loads(path.read_text())
        metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in saved["metrics"]]
        client = mlflow.MlflowClient(saved["tracking_uri"])
        if saved["tracking_uri"] != tracking_uri():
            _say(f"warning: {len(metrics)} metrics held for MLflow run {saved['run_id']} in {saved['tracking_uri']} "
                 f"are not sent: MLFLOW_TRACKING_URI is {tracking_uri()} now ({path} is removed)")
        elif not _existing_run(saved["run_id"], client=client):
            _say(f"warning: {len(metrics)} metrics held for MLflow run {saved['run_id']} are not sent: the run is "
                 f"no longer in {tracking_uri()} ({path} is removed)")
        else:
            for start in range(0, len(metrics), 1000):
                client.log_batch(saved["run_id"], metrics=metrics[start:start + 1000])
            _say(f"sent the {len(metrics)} metrics that MLflow run {saved['run_id']} held while its server was away")
        path.unlink()


_held = None  # the HeldMetrics of the training run in progress, on a tracking server


def _reason(err):
    """'[Errno 111] Connection refused', 'Read timed out' or the error's first line: what went wrong."""
    text = str(err)
    found = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection aborted|Connection reset", text)
    return found.group(0) if found else text.splitlines()[0][:200]


def step_logger(steps_per_epoch):
    """RunContext.log_metrics for train.loop.fit: each metric at its optimizer step, plus the fractional epoch, so
    the UI draws loss, learning rate and dev F1 over steps or epochs."""
    epoch_logged_at = set()

    def log(metrics, step):
        values = {k: float(v) for k, v in metrics.items()}
        if step not in epoch_logged_at:
            epoch_logged_at.add(step)
            values["epoch"] = step / steps_per_epoch
        if _held is not None:  # a tracking server: never stops training when it is away
            _held.log(values, step)
            return
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
    _configure_http()
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
