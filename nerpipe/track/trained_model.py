"""What the train stage logs to its MLflow run at the end: final training numbers, its reports, and
the best model as an MLflow model. Apart from the other nerpipe.track modules so that the stages that
only resume a run (evaluate, report) do not import the model code.
"""

import modulefinder
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pyfunc

import nerpipe
from nerpipe.model.description import usage_settings
from nerpipe.model.methods import ADAPTER_DIR


def log_training(recording, metrics, timings, data, reports, model, params):
    """On `recording` (a nerpipe.track.training_run.TrainingRun): the final training numbers (metrics.json
    and the timings file, as train.<name>; the stage's wall time as stage_seconds.train), labels.json and
    the train reports, and the best model as an MLflow Python-function model (registered as
    mlflow.register_model if that is not empty)."""
    with recording.lock():
        mlflow.log_metrics({**{f"train.{k}": float(v) for k, v in {**metrics, **timings}.items() if k != "seconds"},
                            "stage_seconds.train": float(timings["seconds"])})
        mlflow.log_artifact(str(data / "labels.json"))
        for name in ("metrics.json", "history.csv", "dev_eval.csv"):
            mlflow.log_artifact(str(reports / name), artifact_path="train")
        if (model / ADAPTER_DIR).is_dir():  # the small part that trained (train.method lora, adapter, prompt)
            mlflow.log_artifacts(str(model / ADAPTER_DIR), artifact_path=ADAPTER_DIR)
        _log_model(model, params.mlflow.register_model)


# What nerpipe/predict/pyfunc_model.py imports where the model is served (nerpipe itself is in the model's code/).
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pyarrow", "datasets", "pydantic",
                "seqeval", "regex", "tqdm", "ruamel.yaml", "mlflow", "peft")


def _log_model(model_dir, register_as=""):
    """`model_dir` (a save_pretrained directory) as runs:/<run_id>/model: a Python-function model whose
    predict runs nerpipe predict's code (nerpipe/predict/pyfunc_model.py, which describes the layout).

    Nothing is loaded here, so logging costs a copy of the files and stays on the CPU. Hence no input
    example: MLflow would load the model and run the example through it, on the GPU where there is one.
    The transformers flavor is not logged beside it: the save_pretrained directory inside serves
    transformers users, and a second copy of the weights would double the artifact (430 MB for
    bert-base-cased) for nothing more.
    """
    # Files of the package, by path: importing nerpipe.predict here would make the train stage depend on
    # it, and re-run for every change to the prediction code.
    package = Path(nerpipe.__file__).parent
    usage_settings(model_dir)  # the served model reads its windows, context and precision from the copy
    with tempfile.TemporaryDirectory(prefix="nerpipe-log-model-") as tmp:
        # MLflow names each artifact after its source: artifacts/save_pretrained/ and code/nerpipe/.
        saved = shutil.copytree(model_dir, Path(tmp) / "save_pretrained")
        code = Path(tmp) / "code" / package.name
        for file in prediction_code(package):
            (code / file.relative_to(package)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, code / file.relative_to(package))
        mlflow.pyfunc.log_model(
            name="model", python_model=str(package / "predict" / "pyfunc_model.py"), code_paths=[str(code)],
            artifacts={"save_pretrained": str(saved)},
            pip_requirements=[_pinned(name) for name in REQUIREMENTS], registered_model_name=register_as or None)


def prediction_code(package):
    """The files of `package` (nerpipe's directory) that the logged model runs: predict/pyfunc_model.py and
    every package module it imports, at any depth (the standard library's modulefinder, which reads the
    code without running it), and every fine-tuning method module, which nerpipe.model.methods imports by
    name (the model's method) at run time. Not the training, tracking, report or bench-only code."""
    with tempfile.TemporaryDirectory(prefix="nerpipe-imports-") as tmp:
        # A path with the package alone: modulefinder then never reads torch's or transformers' code.
        (Path(tmp) / package.name).symlink_to(package.resolve(), target_is_directory=True)
        finder = modulefinder.ModuleFinder(path=[tmp])
        finder.run_script(str(package / "predict" / "pyfunc_model.py"))
        names = [name.split(".")[1:] for name in finder.modules if name.split(".")[0] == package.name]
    files = {package / "predict" / "pyfunc_model.py", *(package / "model" / "methods").glob("*.py")}
    for parts in names:  # module a.b is a/b.py, or a/b/__init__.py for a package
        file = package.joinpath(*parts).with_suffix(".py") if parts else package / "__init__.py"
        files.add(file if file.is_file() else package.joinpath(*parts, "__init__.py"))
    return sorted(files)


def _pinned(name):
    return f"{name}=={version(name).split('+')[0]}"  # 2.13.0+cpu -> 2.13.0: the local tag names no index
