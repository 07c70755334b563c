"""DVC's code deps are true: each stage in dvc.yaml depends on exactly the nerpipe files its script
imports, directly or through other nerpipe modules at any depth, found statically from the source.
A listed file the stage cannot import fails, and so does an imported file that is not listed (issue 34:
a docstring edit in nerpipe/evaluate/bootstrap.py must not re-run training).

Function-level imports count too (they run when the function does), and so does every package
__init__.py on the way to a module (Python runs it first).
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "nerpipe"
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def module_file(name):
    """nerpipe.a.b -> nerpipe/a/b.py or nerpipe/a/b/__init__.py; None when it is not a nerpipe module."""
    path = PROJECT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_imports(path):
    """The first part of every absolute module name `path` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    return {name.split(".")[0] for name in names}


def imported_modules(path):
    """Every nerpipe module `path` imports, at any depth of its code, as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = path.relative_to(PROJECT).with_suffix("").parts[:-node.level]
                base = ".".join(package + ((node.module,) if node.module else ()))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Call) and dynamic_package(node):
            found.update(package_modules(dynamic_package(node)))
    return {name for name in found if name.split(".")[0] == "nerpipe" and module_file(name)}


def dynamic_package(call):
    """"nerpipe.model.methods" for `importlib.import_module(f"nerpipe.model.methods.{name}")`: a module
    chosen at run time (by train.method) may be any module of that package, so all of them count."""
    func, args = call.func, call.args
    named = isinstance(func, ast.Attribute) and func.attr == "import_module" or (
        isinstance(func, ast.Name) and func.id == "import_module")
    if not (named and args and isinstance(args[0], ast.JoinedStr) and args[0].values):
        return None
    prefix = args[0].values[0]
    if isinstance(prefix, ast.Constant) and str(prefix.value).startswith("nerpipe.") and prefix.value.endswith("."):
        return prefix.value.rstrip(".")
    return None


def package_modules(package):
    directory = PROJECT.joinpath(*package.split("."))
    return {f"{package}.{p.stem}" for p in directory.glob("*.py") if p.stem != "__init__"}


def import_closure(script):
    """The nerpipe files that running `script` may execute: modules and every package __init__ on the way."""
    seen, todo = set(), [Path(script)]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                file = module_file(".".join(parts[:i]))
                if file and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def stage_script(cmd):
    return PROJECT / re.search(r"python (stages/\w+\.py)", cmd).group(1)


def covered(file, deps):
    rel = file.relative_to(PROJECT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def code_deps(stage):
    return {d for d in STAGES[stage]["deps"] if d.startswith("nerpipe")}


def closure_deps(stage):
    """The nerpipe files the stage's script can import, as dvc.yaml spells them."""
    return {str(f.relative_to(PROJECT)) for f in import_closure(stage_script(STAGES[stage]["cmd"]))}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_file_is_a_dep_and_nothing_else_is(stage):
    script = stage_script(STAGES[stage]["cmd"])
    assert str(script.relative_to(PROJECT)) in STAGES[stage]["deps"], f"{stage}: its script is not a dep"
    listed, imported = code_deps(stage), closure_deps(stage)
    assert not imported - listed, f"{stage} imports files that are not in its deps: {sorted(imported - listed)}"
    # Nothing more either: a file it cannot import (or a whole directory) would re-run it on changes it cannot see.
    assert not listed - imported, f"{stage} lists deps its script cannot import: {sorted(listed - imported)}"


def test_closure_follows_indirect_and_function_level_imports():
    closure = {str(f.relative_to(PROJECT)) for f in import_closure(PROJECT / "stages/train.py")}
    # stages/train.py -> nerpipe.train.run -> nerpipe.train.loop -> nerpipe.evaluate.inference -> nerpipe.data.batching
    assert "nerpipe/evaluate/inference.py" in closure and "nerpipe/data/batching.py" in closure
    assert "nerpipe/__init__.py" in closure and "nerpipe/track/trained_model.py" in closure
    report = {str(f.relative_to(PROJECT)) for f in import_closure(PROJECT / "stages/report.py")}
    assert "nerpipe/track/store.py" in report and not any(f.startswith("nerpipe/model/") for f in report)
    prepare = {str(f.relative_to(PROJECT)) for f in import_closure(PROJECT / "stages/prepare.py")}
    assert not any(f.startswith(("nerpipe/train/", "nerpipe/track/", "nerpipe/predict/")) for f in prepare)


def test_a_module_imported_by_a_name_chosen_at_run_time_brings_its_whole_package(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import importlib\n\ndef load(method):\n"
                      "    return importlib.import_module(f\"nerpipe.model.methods.{method}\")\n")
    closure = {str(f.relative_to(PROJECT)) for f in import_closure(script)}
    assert {"nerpipe/model/methods/lora.py", "nerpipe/model/methods/bottleneck.py",
            "nerpipe/model/methods/prompt.py"} <= closure
    assert "nerpipe/model/methods/lora.py" in closure_deps("train")  # train.method=lora runs it


def test_imports_inside_functions_and_of_submodules_count(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("from nerpipe import data\n\ndef f():\n    from nerpipe.model.device import pick_device\n"
                      "    import nerpipe.no_such_module\n")
    assert imported_modules(script) == {"nerpipe", "nerpipe.data", "nerpipe.model.device"}
    closure = {str(f.relative_to(PROJECT)) for f in import_closure(script)}
    assert {"nerpipe/__init__.py", "nerpipe/data/__init__.py", "nerpipe/model/__init__.py",
            "nerpipe/model/device.py"} == closure


def test_a_change_to_raw_text_prediction_or_tracking_code_does_not_rerun_prepare():
    for stage in ("download", "prepare"):
        assert not {"nerpipe/predict", "nerpipe/track", "nerpipe/train", "nerpipe/report"} & code_deps(stage)


def test_only_training_imports_the_training_loop():
    loop = PACKAGE / "train" / "loop.py"
    importers = sorted(str(p.relative_to(PROJECT)) for p in [*PACKAGE.rglob("*.py"), *PROJECT.glob("stages/*.py")]
                       if p != loop and loop in {module_file(m) for m in imported_modules(p)})
    assert importers == ["nerpipe/train/checkpoints.py", "nerpipe/train/outputs.py", "nerpipe/train/run.py",
                         "nerpipe/train/trajectory.py"]


def test_the_library_never_imports_stages_or_bench():
    for path in PACKAGE.rglob("*.py"):
        assert not top_level_imports(path) & {"stages", "bench", "tests"}, path


def test_only_the_harness_tests_import_bench():
    """bench/ holds benchmarks; what the tests need of it lives beside them or in the library (issue 24)."""
    importers = [p.name for p in sorted(PROJECT.glob("tests/*.py")) if "bench" in top_level_imports(p)]
    assert importers == ["test_bench.py"]


def test_a_change_to_the_download_code_does_not_rerun_the_model_stages():
    fetch = PACKAGE / "data" / "fetch.py"
    assert [stage for stage in STAGES if covered(fetch, STAGES[stage]["deps"])] == ["download", "prepare"]


def test_every_third_party_module_imported_is_a_declared_dependency():
    """deptry (configured in pyproject.toml) on the package and the stage scripts: an import of a module that
    only some other dependency happens to pull in (sklearn through seqeval, requests through mlflow) fails."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "deptry", "nerpipe", "stages"], cwd=PROJECT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No dependency issues found" in result.stdout + result.stderr
