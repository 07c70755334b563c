"""The training's metrics on their way to a tracking server that may be away (docs/mlflow.md).

A tracking server that goes away once a run has started (a shared server restarts) does not stop
training: the metrics are held, with one warning, and sent as soon as the server answers again. Every
other write to the store first waits for the server (nerpipe.track.store.store_lock), so the end of a
training waits for a server that is restarting rather than losing the training.
"""

import json
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric

from nerpipe.core.atomic import write_json
from nerpipe.core.errors import UserError
from nerpipe.track.server import (
    TRAINING_HTTP_SETTINGS,
    answers,
    environment,
    reason,
    say,
    server_is_away,
    server_wait_s,
    wait_for_server,
)
from nerpipe.track.store import existing_run, tracking_uri

PROBE_EVERY_S = 10
HELD_METRICS = "unsent-metrics.json"  # in the checkpoint directory, while some are held


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
        if self.away_since_step is not None and (time.monotonic() < self.next_probe or not answers(self.uri)):
            self.next_probe = time.monotonic() + PROBE_EVERY_S
            self._save()
            return
        try:
            with environment(TRAINING_HTTP_SETTINGS):
                self._send()
        except mlflow.MlflowException as err:
            if not server_is_away(err):
                raise
            self.next_probe = time.monotonic() + PROBE_EVERY_S
            self._save()
            if self.away_since_step is None:
                self.away_since_step = step
                say(f"warning: MLflow tracking server {self.uri} stopped answering at step {step} "
                    f"({reason(err)}); training goes on, and its metrics are held and sent when the "
                    "server answers again")

    def deliver(self):
        """Wait up to server_wait_s() for the server to answer and take every held metric; UserError after."""
        if self.gave_up:
            raise UserError(f"MLflow tracking server {self.uri} did not come back")
        deadline = time.monotonic() + server_wait_s()
        while True:
            try:
                waited = wait_for_server(self.uri, self._incomplete())
                if waited and self.away_since_step is None:  # away since the last metric: nothing held
                    say(f"MLflow tracking server {self.uri} answers again")
                self._send()
                return
            except mlflow.MlflowException as err:
                if not server_is_away(err):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(f"MLflow tracking server {self.uri} did not take metrics for "
                                    f"{server_wait_s()} s ({reason(err)}); {self._incomplete()}") from None
                time.sleep(2)
            except UserError:
                self.gave_up = True
                raise

    def deliverable(self, waiting):
        """Whether the run can be ended: held metrics sent (waiting for the server if `waiting`)."""
        if self.gave_up or not (waiting or answers(self.uri)):
            return False
        try:
            self.deliver()
        except UserError as err:
            say(f"error: {err}")
            return False
        return True

    def _send(self):
        while self.metrics:
            batch = self.metrics[:1000]  # MLflow's most per request; each batch is dropped once taken
            self.client.log_batch(self.run_id, metrics=batch)
            del self.metrics[:len(batch)]
        if self.away_since_step is not None:
            say(f"MLflow tracking server {self.uri} answers again: sent the metrics held since step "
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
                "`dvc repro` again (the last checkpoint is kept: it resumes this run and logs the rest "
                "without training again), or delete the run")

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
            say(f"warning: {len(metrics)} metrics held for MLflow run {saved['run_id']} in {saved['tracking_uri']} "
                f"are not sent: MLFLOW_TRACKING_URI is {tracking_uri()} now ({path} is removed)")
        elif not existing_run(saved["run_id"], client=client):
            say(f"warning: {len(metrics)} metrics held for MLflow run {saved['run_id']} are not sent: the run is "
                f"no longer in {tracking_uri()} ({path} is removed)")
        else:
            for start in range(0, len(metrics), 1000):
                client.log_batch(saved["run_id"], metrics=metrics[start:start + 1000])
            say(f"sent the {len(metrics)} metrics that MLflow run {saved['run_id']} held while its server was away")
        path.unlink()
