"""Load a trained token-classification model and its tokenizer from a directory or an MLflow model URI.

Accepted sources:
  - a directory `save_pretrained` wrote (data/model: config.json, model.safetensors, tokenizer files)
  - an MLflow model, as a URI (runs:/<run_id>/model, models:/<name>/<version>, models:/<name>@<alias>, or
    any artifact URI MLflow resolves) or as a local directory holding its MLmodel file:
      - the Python-function model the train stage logs (nerpipe/predict/pyfunc_model.py): the weights,
        config, tokenizer and nerpipe_model.json in <model>/artifacts/save_pretrained/ (the path taken
        from the MLmodel file);
      - the transformers flavor (what the train stage logged before): the weights in <model>/model/ and
        the tokenizer in <model>/components/tokenizer/ (names taken from the MLmodel file).

The model's description (nerpipe_model.json, nerpipe/model/description.py) comes with it: how to use it.
"""

import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from transformers import AutoTokenizer

from nerpipe.core.errors import UserError
from nerpipe.core.params import read_yaml
from nerpipe.model.description import read_description
from nerpipe.model.loading import SAFE, fit_for_words, load_config, load_trained

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # runs:/..., models:/..., s3://..., file:///...


class TrainedModel(NamedTuple):
    model: object
    tokenizer: object
    description: dict
    """nerpipe_model.json of the model (labels, windows, context, bf16, method, ...); None for a model that has none."""


def load_trained_model(source):
    """TrainedModel from a model directory or an MLflow model URI; a UserError otherwise."""
    source = str(source)
    if Path(source).is_dir():
        return _load_local(Path(source), source)
    if not URI.match(source):
        raise UserError(f"model {source!r}: no such directory; give a trained model directory (data/model "
                        "after `dvc repro train`) or an MLflow model URI such as runs:/<run_id>/model")
    with tempfile.TemporaryDirectory(prefix="nerpipe-model-") as tmp:
        # Everything is loaded into memory before the download is deleted.
        return _load_local(_download(source, tmp), source)


def _download(uri, destination):
    import mlflow

    from nerpipe.track.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=destination))
    except Exception as err:  # MlflowException, OSError, ...: all mean "not found / not reachable"
        raise UserError(f"model {uri!r}: MLflow could not download it from tracking store {tracking_uri()} "
                        f"(set MLFLOW_TRACKING_URI to the right store).\n  cause: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}") from None


def _load_local(directory, source):
    model_dir, tokenizer_dir = _locate(directory, source)
    load_config(str(model_dir))  # names the model and explains a missing or unusable config
    description = read_description(model_dir)
    model = load_trained(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), **SAFE)
    except (OSError, ValueError) as err:
        raise UserError(f"model {source!r}: no loadable tokenizer in {tokenizer_dir}.\n  cause: "
                        f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    if not tokenizer.is_fast:
        raise UserError(f"model {source!r}: needs a fast (Rust) tokenizer for word alignment")
    return TrainedModel(model, fit_for_words(tokenizer, str(tokenizer_dir)), description)


def _locate(directory, source):
    """(model directory, tokenizer directory) inside a save_pretrained or MLflow model directory."""
    if (directory / "config.json").is_file():
        return directory, directory
    if not (directory / "MLmodel").is_file():
        raise UserError(f"model {source!r}: {directory} holds neither config.json (a save_pretrained "
                        "directory) nor MLmodel (an MLflow model)")
    flavors = read_yaml(directory / "MLmodel").get("flavors") or {}
    artifacts = (flavors.get("python_function") or {}).get("artifacts") or {}
    if "save_pretrained" in artifacts:  # nerpipe's own Python-function model
        model_dir = directory / artifacts["save_pretrained"]["path"]
        return model_dir, model_dir
    flavor = flavors.get("transformers")
    if flavor is None:
        raise UserError(f"model {source!r}: the MLflow model holds neither a save_pretrained artifact (what the "
                        "train stage logs) nor a transformers flavor")
    if "model_binary" not in flavor:
        raise UserError(f"model {source!r}: the MLflow model holds no weights (logged with "
                        "save_pretrained=False, a Hugging Face hub reference); log it with save_pretrained=True")
    model_dir = directory / flavor["model_binary"]
    tokenizer_dir = directory / "components" / "tokenizer"
    return model_dir, tokenizer_dir if tokenizer_dir.is_dir() else model_dir
