"""Record, at run time, which params.yaml keys a stage script reads: the `sitecustomize` of the stage processes
`dvc repro` starts in tests/test_pipeline_e2e.py (the test copies this file under that name onto PYTHONPATH).

With NERPIPE_PARAM_READS=<dir> set and a script under stages/ running, load_params returns params whose
every field read after loading is recorded by its flat name (train.lora.r; a mapping such as data.sha256
is one key), and at exit <dir>/<script>.<pid>.json lists them. Reads made while loading (validation) do
not count: check_params reads everything to validate it, and declares the whole file as a dep instead.
"""

import atexit
import dataclasses
import json
import os
import sys
from pathlib import Path

_recording_classes = {}
_prefix_of = {}  # id(params section) -> its flat prefix ("train.lora."); kept beside, not on the object,
_kept = []  # so that vars() of a section (MLflow logs evaluate.* that way) shows its fields only


def _recording_class(cls, reads):
    """A subclass of dataclass `cls` whose instances record their field reads into `reads`."""
    if cls not in _recording_classes:
        names = {f.name for f in dataclasses.fields(cls)}

        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            prefix = _prefix_of.get(id(self))
            if prefix is not None and name == "__dict__":  # vars(section): every field
                reads.update(prefix + k for k, v in value.items() if k in names and not dataclasses.is_dataclass(v))
            elif prefix is not None and name in names and not dataclasses.is_dataclass(value):
                reads.add(prefix + name)
            return value

        _recording_classes[cls] = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__})
    return _recording_classes[cls]


def record(params, reads, prefix=""):
    """Make `params` (a params.Params, or a section of it) record each field read into the set `reads`."""
    for f in dataclasses.fields(params):
        value = object.__getattribute__(params, f.name)
        if dataclasses.is_dataclass(value):
            record(value, reads, f"{prefix}{f.name}.")
    params.__class__ = _recording_class(type(params), reads)
    _prefix_of[id(params)] = prefix
    _kept.append(params)
    return params


def install(out_dir):
    import nerpipe.core.params as params_module

    reads, load = set(), params_module.load_params

    def recording_load_params(*args, **kwargs):
        return record(load(*args, **kwargs), reads)

    params_module.load_params = recording_load_params  # before the stage script imports it
    script = Path(sys.argv[0]).stem

    def write():
        (out_dir / f"{script}.{os.getpid()}.json").write_text(json.dumps({"script": sys.argv[0],
                                                                           "reads": sorted(reads)}))

    atexit.register(write)


if os.environ.get("NERPIPE_PARAM_READS") and Path(sys.argv[0]).parent.name == "stages":
    install(Path(os.environ["NERPIPE_PARAM_READS"]))
