"""MLflow tracking (minimal core; see README "MLflow" for the design).

One training result is one MLflow run. The train stage creates it and writes its id to a small
stage output (run.json); evaluate and report resume that run, so a later `dvc repro` that re-runs
only evaluate or report logs onto the run of the model it used.
"""

import json
import os
from pathlib import Path

import mlflow

from nerpipe.atomic import write_json


def tracking_uri():
    """MLFLOW_TRACKING_URI if set; else the SQLite store at the repository root, as an absolute path.

    `dvc exp run --temp` and queued runs execute in copies under .dvc/tmp/exps; DVC sets DVC_ROOT to
    the original repository, so their runs land in the same store as everyone else's.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def start_run(experiment, params_flat, run_file, run_name=None):
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    run = mlflow.start_run(run_name=run_name or os.environ.get("DVC_EXP_NAME"))
    mlflow.log_params(params_flat)
    write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                          "tracking_uri": tracking_uri()})
    return run


def resume_run(run_file):
    info = json.loads(Path(run_file).read_text())
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.start_run(run_id=info["run_id"])


def log_metrics(metrics, step=None):
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_evaluation(metrics, seconds):
    """Final dev/test scores, flattened: dev.conlleval.f1, test.strict.per_type.PER.f1, ..."""
    flat = {}

    def walk(obj, prefix):
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (int, float)):
                flat[f"{prefix}{key}"] = value

    walk({k: v for k, v in metrics.items() if k in ("dev", "test", "before_finetuning")}, "")
    flat["stage_seconds.evaluate"] = seconds
    log_metrics(flat)


def log_report(report, figures):
    mlflow.log_artifact(str(report))
    mlflow.log_artifacts(str(figures), artifact_path="figures")
