"""requirements.lock (`make lock`, pip-compile) against pyproject.toml: every dependency of the project and
of its extras is in the lock at a version its range allows, and torch is the pinned CPU build."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def locked(text):
    """{canonical name: version} of the `name==version` lines of a pip-compile lock."""
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def unsatisfied(pyproject, lock):
    """Each requirement of pyproject.toml (dependencies and every extra) the lock lacks or pins outside it."""
    project = tomllib.loads(pyproject)["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    versions, out = locked(lock), []
    for requirement in map(Requirement, requirements):
        version = versions.get(canonicalize_name(requirement.name))
        if version is None:
            out.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            out.append(f"{requirement}: locked at {version}")
    return out


def test_the_lock_satisfies_pyproject():
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert unsatisfied((ROOT / "pyproject.toml").read_text(encoding="utf-8"), lock) == [], "run `make lock`"
    assert locked(lock)["torch"] == "2.13.0+cpu"
    # --generate-hashes: `pip install --require-hashes` refuses a lock line without one
    assert all("--hash=sha256:" in entry for entry in re.split(r"\n(?=\S)", lock) if "==" in entry)


def test_a_range_the_lock_misses_is_named():
    pyproject = """[project]
dependencies = ["torch>=2.4,<2.14", "numpy>=2.5"]
[project.optional-dependencies]
docs = ["mkdocs==1.6.1"]
"""
    lock = "torch==2.13.0+cpu \\\n    --hash=sha256:00\nnumpy==2.3.5 \\\n    --hash=sha256:11\n"
    assert unsatisfied(pyproject, lock) == ["numpy>=2.5: locked at 2.3.5", "mkdocs==1.6.1: not in the lock"]
