"""What evaluate and report add to the MLflow run of the model they used (named by reports/train/run.json)."""

import hashlib
import json
from pathlib import Path

import mlflow

from nerpipe.core.params import read_yaml
from nerpipe.evaluate.metrics import flatten_metrics
from nerpipe.track.store import store_lock

EVALUATE_ARTIFACTS = ("metrics.json", "predictions_dev.conll", "predictions_test.conll", "confusion_test.csv")


def log_evaluation(run_id, evaluate_params, metrics, timings, out):
    """evaluate.* params, every named value of metrics.json (nerpipe.evaluate.metrics: test.strict.PER.f1,
    before_finetuning.dev.conlleval.f1, ...), the stage's wall time (`timings`, its timings file), and
    the evaluate outputs."""
    values = {**flatten_metrics(metrics), "stage_seconds.evaluate": float(timings["seconds"])}
    with store_lock(), mlflow.start_run(run_id=run_id):
        log_params({f"evaluate.{k}": v for k, v in evaluate_params.__dict__.items()})
        mlflow.log_metrics(values)
        for name in EVALUATE_ARTIFACTS:
            mlflow.log_artifact(str(out / name), artifact_path="eval")


def log_report(run_id, report, figures, stage_seconds, lock_file=Path("dvc.lock")):
    """report.md, the PNG figures, the stages' wall times ({stage: seconds}, as stage_seconds.<stage>),
    and dvc.lock with a tag per stage (md5 of its lock entry) and per output (its md5). The report
    stage's own lock entry is written by DVC after it ends, so it is not tagged."""
    lock = read_yaml(lock_file).get("stages", {}) if lock_file.exists() else {}  # none before DVC's first stage
    tags = {}
    for stage, entry in lock.items():
        if stage != "report":
            tags[f"dvc.stage.{stage}.md5"] = hashlib.md5(json.dumps(entry, sort_keys=True).encode()).hexdigest()
            tags |= {f"dvc.out.{out['path']}.md5": out["md5"] for out in entry.get("outs", []) if "md5" in out}
    with store_lock(), mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"stage_seconds.{stage}": float(s) for stage, s in stage_seconds.items()})
        mlflow.log_artifact(str(report))
        mlflow.log_artifacts(str(figures), artifact_path="figures")
        if lock_file.exists():
            mlflow.log_artifact(str(lock_file))
        mlflow.set_tags(tags)


def log_params(values):
    """Log params on the active run. MLflow never changes a param, so one that is already there with
    another value (evaluate re-run with a new evaluate.batch_size) is kept as tag changed_param.<key>."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in values.items() if k not in logged})
    mlflow.set_tags({f"changed_param.{k}": str(v) for k, v in values.items() if k in logged and logged[k] != str(v)})
