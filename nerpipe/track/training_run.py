"""The life of a training's MLflow run: one training result is one MLflow run (docs/mlflow.md).

The train stage creates the run and writes its id to reports/train/run.json, a small DVC output;
evaluate and report depend on that file and resume the run, so a later `dvc repro` that re-runs only
them logs onto the run of the model they used, and a configuration restored from DVC's run-cache
names the run that made it. Each checkpoint carries the run id too, so a training that is interrupted
and resumed stays one run.
"""

import os
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow

from nerpipe.core.atomic import write_json
from nerpipe.core.errors import Interrupted
from nerpipe.core.params import TRAIN_SECTIONS, flatten
from nerpipe.track.held import HELD_METRICS, HeldMetrics
from nerpipe.track.provenance import provenance_tags
from nerpipe.track.results import log_params
from nerpipe.track.server import TRAINING_HTTP_SETTINGS, environment, say
from nerpipe.track.store import existing_run, sqlite_file, store_lock, tracking_uri


class TrainingRun:
    """The MLflow run a training logs to, and (on a tracking server) the metrics held while it is away.
    Every write for it passes lock(), which first delivers what is held."""

    def __init__(self, run, held=None):
        self.run = run
        self.held = held  # HeldMetrics on a tracking server, else None
        self.complete = False  # set when the run ended FINISHED with everything delivered

    @property
    def run_id(self):
        return self.run.info.run_id

    def lock(self):
        return store_lock(self.held)

    def step_logger(self, steps_per_epoch):
        """RunContext.log_metrics for train.loop.fit: each metric at its optimizer step, plus the fractional
        epoch, so the UI draws loss, learning rate and dev F1 over steps or epochs."""
        epoch_logged_at = set()

        def log(metrics, step):
            values = {k: float(v) for k, v in metrics.items()}
            if step not in epoch_logged_at:
                epoch_logged_at.add(step)
                values["epoch"] = step / steps_per_epoch
            if self.held is not None:  # a tracking server: never stops training when it is away
                self.held.log(values, step)
                return
            with self.lock():
                mlflow.log_metrics(values, step=step)

        return log

    def write_run_file(self, path):
        """reports/train/run.json: the one DVC output that names a run (evaluate and report resume it)."""
        write_json(path, {"run_id": self.run_id, "experiment_id": self.run.info.experiment_id,
                          "tracking_uri": tracking_uri()})


@contextmanager
def training_run(experiment_id, params, checkpoints, device, prepared):
    """The TrainingRun a training logs to, active inside the block: the run saved with the checkpoint that
    will resume, else a new one named after the DVC experiment. It ends FINISHED, KILLED (stopped;
    the checkpoint resumes it) or FAILED."""
    resumed = checkpoints.saved_run_id()
    held_file = Path(checkpoints.directory) / HELD_METRICS
    with store_lock():
        HeldMetrics.send_saved(held_file)  # a training stopped while the server was away
        if resumed and not existing_run(resumed, experiment_id):
            resumed = None
        run = mlflow.start_run(run_id=resumed, experiment_id=None if resumed else experiment_id,
                               run_name=os.environ.get("DVC_EXP_NAME"))
        log_params(flatten(params, TRAIN_SECTIONS))
        mlflow.set_tags(provenance_tags(device, Path(prepared) / "stats.json"))
    checkpoints.run_id = run.info.run_id
    print(f"MLflow run {run.info.run_id} ({'resumed with the checkpoint' if resumed else 'new'}) in {tracking_uri()}")
    held = None if sqlite_file(tracking_uri()) else HeldMetrics(tracking_uri(), run.info.run_id, held_file)
    recording = TrainingRun(run, held)
    status = "FAILED"
    try:
        yield recording
        status = "FINISHED"
    except (Interrupted, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        recording.complete = _end(recording, status, held_file)


def _end(recording, status, held_file):
    """End the run as `status`; True if it ended FINISHED with every metric delivered. Only a finished
    training waits for the server: one that stopped or failed resumes from its checkpoint, and the run
    with it, on the next `dvc repro`."""
    held = recording.held
    if held is None or held.deliverable(waiting=status == "FINISHED"):
        with store_lock():
            mlflow.end_run(status)
        return status == "FINISHED"
    with environment(TRAINING_HTTP_SETTINGS), suppress(mlflow.MlflowException):
        mlflow.end_run(status)  # one try, so that MLflow's exit hook does not end it FINISHED
    if not held.gave_up:
        sent_later = f", which first sends the {len(held.metrics)} metrics held in {held_file}"
        say(f"MLflow run {recording.run_id} stays RUNNING in {tracking_uri()}: the server does not answer. "
            f"The checkpoint resumes it on the next `dvc repro`{sent_later if held.metrics else ''}")
    return False
