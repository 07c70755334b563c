"""DVC's code deps are true: each stage in dvc.yaml depends on exactly the nerpipe subpackages its
script imports, directly or through other nerpipe modules, found statically from the source; in
BY_FILE subpackages, on exactly the files it imports.

Function-level imports count too (they run when the function does). A file outside every
subpackage (nerpipe/__init__.py) is a file dep of its own.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "nerpipe"
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
# Listed file by file: download and prepare use other parts of nerpipe/data than the model stages, and
# a change to the download code must not re-run training (prepare's output is the same bytes).
BY_FILE = ("nerpipe/data",)


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
    return {name for name in found if name.split(".")[0] == "nerpipe" and module_file(name)}


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


def needed_deps(files):
    """nerpipe/<subpackage> for a file inside one (but in BY_FILE), else the file itself."""
    out = set()
    for file in files:
        rel = file.relative_to(PROJECT)
        by_file = len(rel.parts) <= 2 or str(Path(*rel.parts[:2])) in BY_FILE
        out.add(str(rel) if by_file else str(Path(*rel.parts[:2])))
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_file_is_a_dep_and_nothing_else_is(stage):
    script = stage_script(STAGES[stage]["cmd"])
    assert str(script.relative_to(PROJECT)) in STAGES[stage]["deps"], f"{stage}: its script is not a dep"
    closure = import_closure(script)
    missing = sorted(str(f.relative_to(PROJECT)) for f in closure if not covered(f, STAGES[stage]["deps"]))
    assert not missing, f"{stage} imports files that are not in its deps: {missing}"
    # Nothing more either: an extra subpackage would re-run the stage on changes it cannot see.
    assert code_deps(stage) == needed_deps(closure), stage


def test_closure_follows_indirect_and_function_level_imports():
    closure = {str(f.relative_to(PROJECT)) for f in import_closure(PROJECT / "stages/train.py")}
    # stages/train.py -> nerpipe.train.run -> nerpipe.train.loop -> nerpipe.evaluate.inference -> nerpipe.data.batching
    assert "nerpipe/evaluate/inference.py" in closure and "nerpipe/data/batching.py" in closure
    assert "nerpipe/__init__.py" in closure and "nerpipe/track/trained_model.py" in closure
    report = {str(f.relative_to(PROJECT)) for f in import_closure(PROJECT / "stages/report.py")}
    assert "nerpipe/track/store.py" in report and not any(f.startswith("nerpipe/model/") for f in report)
    prepare = {str(f.relative_to(PROJECT)) for f in import_closure(PROJECT / "stages/prepare.py")}
    assert not any(f.startswith(("nerpipe/train/", "nerpipe/track/", "nerpipe/predict/")) for f in prepare)


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
    assert importers == ["nerpipe/train/checkpoints.py", "nerpipe/train/outputs.py", "nerpipe/train/run.py"]


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
