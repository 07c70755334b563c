"""What the train stage logs to its MLflow run at the end: final training numbers, its reports, and
the best model as an MLflow model. Apart from nerpipe.track.runs so that the stages that only resume a
run (evaluate, report) do not import the model code.
"""

import json
from pathlib import Path

import mlflow

from nerpipe.track.runs import _store_lock


def log_training(metrics, seconds, data, reports, model, example, register_as=""):
    """Final training numbers, stage wall times, labels.json and the train reports, and the best model
    as an MLflow transformers model (registered as `register_as` if not empty)."""
    with _store_lock():
        mlflow.log_metrics({**{f"train.{k}": float(v) for k, v in metrics.items()},
                            "stage_seconds.prepare": json.loads((data / "stats.json").read_text())["seconds"],
                            "stage_seconds.train": seconds})
        mlflow.log_artifact(str(data / "labels.json"))
        for name in ("metrics.json", "history.csv", "dev_eval.csv"):
            mlflow.log_artifact(str(reports / name), artifact_path="train")
        _log_model(model, example, register_as)


def _log_model(model_dir, example, register_as):
    """A token-classification pipeline with a string-in, string-out signature: its pyfunc answers each
    sentence with the predicted label of every sub-token, comma-joined ("B-PER,I-PER,O,B-LOC")."""
    import mlflow.transformers
    import torch
    import transformers
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    from nerpipe.model.loading import load_tokenizer, load_trained

    # An absolute path: MLflow looks a relative one such as data/model up on the Hugging Face hub, as a
    # repository id, for its model card and licence (a minute of retries when offline).
    model_dir = Path(model_dir).resolve()
    pipeline = transformers.pipeline("token-classification", model=load_trained(model_dir),
                                     tokenizer=load_tokenizer(str(model_dir)))
    # Explicit requirements: inferring them would import torchvision, which the flavor's default
    # list names for every torch model and which this project does not need.
    requirements = [f"transformers=={transformers.__version__}",
                    f"torch=={torch.__version__.split('+')[0]}"]
    # ignore_labels=[] keeps O sub-tokens: by default the pipeline drops them, and MLflow's pyfunc then
    # fails (IndexError) on a sentence without entities. A signature param with a default rather than
    # model_config, which log_model would also log as run params.
    signature = ModelSignature(Schema([ColSpec(DataType.string)]), Schema([ColSpec(DataType.string)]),
                               params=ParamSchema([ParamSpec("ignore_labels", DataType.string, [], shape=(-1,))]))
    mlflow.transformers.log_model(
        pipeline, name="model", task="token-classification", input_example=[example], signature=signature,
        pip_requirements=requirements, registered_model_name=register_as or None)
