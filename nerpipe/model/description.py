"""nerpipe_model.json: what a trained model directory says about itself, so that it is used as it was trained
wherever it is copied, with no params.yaml around.

    {"bf16": "auto",                                  train.bf16, the setting ('auto' is resolved where it runs)
     "context": 0, "max_length": 128, "window_overlap": 32,   prepare.*: the windows the model was trained on
     "data_sha256": {"test": "...", "train": "...", "valid": "..."},   the data it was trained on (download's)
     "labels": ["O", "B-LOC", "I-LOC", ...], "tag_scheme": "IOB2",     its outputs, in label-id order
     "method": {"method": "lora", "merged": true, "r": 8, ...},       how it was fine-tuned (model/methods)
     "nerpipe_version": "0.1.0"}

One writer and one reader, here. During training, `save_trained` writes the method alone (into the
checkpoint's best/, so that `load_trained` can put an unmerged adapter back); the train stage completes
the file when it exports data/model. evaluate, `nerpipe predict` and the MLflow model read it; predict's
flags override it. Keys sorted, no paths, times or run ids: the same training writes the same bytes.
"""

import json
from pathlib import Path

import nerpipe
from nerpipe.core.errors import UserError

DESCRIPTION_FILE = "nerpipe_model.json"
LEGACY_METHOD_FILE = "nerpipe_method.json"  # what nerpipe wrote before the model described itself
TAG_SCHEME = "IOB2"  # prepare converts every corpus to it
USAGE_KEYS = ("max_length", "window_overlap", "context", "bf16")
RETRAIN = "re-run the train stage (`dvc repro -f train`) to write it"


def write_method(directory, method):
    """The description as far as training knows it: how the model was fine-tuned (a checkpoint's best/)."""
    _write(directory, {"method": method})


def describe_trained(directory, prepared, prepare, bf16):
    """Complete the description of an exported model `directory` (save_trained wrote its method): labels and
    data sha256 from the prepared data directory, windows and context from `prepare` (params.PrepareParams,
    the settings that shaped it), `bf16` the train.bf16 setting."""
    prepared = Path(prepared)
    labels = json.loads((prepared / "labels.json").read_text())
    sources = json.loads((prepared / "stats.json").read_text()).get("sources") or {}
    write_description(directory, labels=labels, max_length=prepare.max_length,
                      window_overlap=prepare.window_overlap, context=prepare.context, bf16=bf16,
                      method=read_method(directory),
                      data_sha256={split: source["sha256"] for split, source in sources.items()} or None)


def write_description(directory, *, labels, max_length, window_overlap, context, bf16, method, data_sha256):
    _write(directory, {"nerpipe_version": nerpipe.__version__, "labels": list(labels), "tag_scheme": TAG_SCHEME,
                       "max_length": max_length, "window_overlap": window_overlap, "context": context,
                       "bf16": bf16, "method": method, "data_sha256": data_sha256})


def _write(directory, description):
    (Path(directory) / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def read_description(directory):
    """The description of a model directory; None where it holds none (a model not trained by nerpipe).
    A directory of an older nerpipe (nerpipe_method.json only) is refused with what to do."""
    path = Path(directory) / DESCRIPTION_FILE
    if not path.is_file():
        if (Path(directory) / LEGACY_METHOD_FILE).is_file():
            raise UserError(f"{directory}: written by an older nerpipe ({LEGACY_METHOD_FILE}, no {DESCRIPTION_FILE}), "
                            f"so its window, context and precision settings are unknown; {RETRAIN}")
        return None
    try:
        description = json.loads(path.read_text())
        description["method"]["method"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a nerpipe model description ({type(err).__name__}: {err}); {RETRAIN}, or "
                        "delete it if the directory holds a model nerpipe did not train") from None
    return description


def read_method(directory):
    """{"method": ..., "merged": ..., settings}: how the model in `directory` was fine-tuned; None if unknown."""
    description = read_description(directory)
    return description["method"] if description else None


def usage_settings(directory):
    """{max_length, window_overlap, context, bf16} of a trained model directory: evaluate's and the MLflow
    model's, which have no flags to give them otherwise."""
    description = read_description(directory)
    missing = [k for k in USAGE_KEYS if k not in (description or {})]
    if missing:
        raise UserError(f"{directory}: {no_settings(description)}; {RETRAIN}")
    return {k: description[k] for k in USAGE_KEYS}


def no_settings(description):
    """Why a model directory cannot say how to use it."""
    if description is None:
        return f"no {DESCRIPTION_FILE}, so its window, context and precision settings are unknown"
    if not any(key in description for key in USAGE_KEYS):
        return (f"its {DESCRIPTION_FILE} holds only the method (a training checkpoint's best/, not an exported "
                "model), so its window, context and precision settings are unknown")
    return f"its {DESCRIPTION_FILE} lacks {', '.join(k for k in USAGE_KEYS if k not in description)}"
