"""The locks (`make lock`, uv) against pyproject.toml and the Makefile, and tools/lock_check.py (`make
lock-check`) on a fake index: it names the pin and the platform that cannot install, and passes a lock
that installs everywhere. The check against the real index is `make lock-check` (online)."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools import lock_check

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ["requirements.lock", "requirements-torch.lock"]


def locked(*texts):
    """{canonical name: [versions]} of the pins of hashed requirements files (a universal lock may pin a
    package twice, under different markers)."""
    out = {}
    for text in texts:
        for pin in lock_check.parse_lock(text):
            out.setdefault(canonicalize_name(pin.requirement.name), []).append(str(pin.version))
    return out


def unsatisfied(pyproject, *locks):
    """Each requirement of pyproject.toml (dependencies and every extra) the locks lack or pin outside it."""
    project = tomllib.loads(pyproject)["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    versions, out = locked(*locks), []
    for requirement in map(Requirement, requirements):
        pinned = versions.get(canonicalize_name(requirement.name))
        if pinned is None:
            out.append(f"{requirement}: not in the lock")
        out += [f"{requirement}: locked at {v}" for v in pinned or []
                if not requirement.specifier.contains(v, prereleases=True)]
    return out


def test_the_locks_satisfy_pyproject_and_name_no_machine():
    texts = [(ROOT / name).read_text(encoding="utf-8") for name in LOCKS]
    assert unsatisfied((ROOT / "pyproject.toml").read_text(encoding="utf-8"), *texts) == [], "run `make lock`"
    main, torch = (locked(text) for text in texts)
    # torch and its CUDA libraries only in the torch lock: the CPU build installs beside the main lock
    assert "torch" not in main and not [name for name in main if name.startswith(("nvidia-", "cuda-"))]
    assert main.keys().isdisjoint(torch.keys()) and torch["torch"] == ["2.13.0"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "TORCH_LOCK := requirements-torch.lock" in makefile and '"torch==$(TORCH_VERSION)+cpu"' in makefile
    for name, text in zip(LOCKS, texts):  # no index, wheel directory or path of the machine that wrote it
        assert not re.search(r"--(extra-)?index-url|--find-links|file:|/opt/|/home/|/work/", text), name


def test_a_range_the_lock_misses_is_named():
    pyproject = """[project]
dependencies = ["torch>=2.4,<2.14", "numpy>=2.5"]
[project.optional-dependencies]
docs = ["mkdocs==1.6.1"]
"""
    lock = (f"torch==2.13.0 \\\n    --hash=sha256:{'0' * 64}\n"
            f"numpy==2.3.5 ; python_full_version < '3.12' \\\n    --hash=sha256:{'1' * 64}\n"
            f"numpy==2.5.1 ; python_full_version >= '3.12' \\\n    --hash=sha256:{'2' * 64}\n    # via nerpipe\n")
    assert unsatisfied(pyproject, lock) == ["numpy>=2.5: locked at 2.3.5", "mkdocs==1.6.1: not in the lock"]


SHA = {letter: letter * 64 for letter in "abcdef"}
# A fake index (what PyPI's JSON pages hold, reduced): tinyext has Linux x86-64 and macOS wheels, no
# aarch64 one; purelib a universal wheel; onlysdist no wheel at all (pip builds it); newpy needs 3.12.
INDEX = {
    "tinyext": [{"filename": f"tinyext-1.0-cp{v}-cp{v}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                 "hashes": {"sha256": SHA["a"]}} for v in (311, 312, 313, 314)]
               + [{"filename": "tinyext-1.0-cp311-abi3-macosx_11_0_arm64.whl", "hashes": {"sha256": SHA["b"]}},
                  {"filename": "tinyext-1.0.tar.gz", "hashes": {"sha256": SHA["c"]}},
                  {"filename": "tinyext-0.9-cp311-abi3-manylinux_2_17_aarch64.whl", "hashes": {"sha256": SHA["f"]}}],
    "purelib": [{"filename": "purelib-2.0-py3-none-any.whl", "hashes": {"sha256": SHA["d"]}}],
    "onlysdist": [{"filename": "onlysdist-1.2.2.tar.gz", "hashes": {"sha256": SHA["e"]}}],
    "newpy": [{"filename": "newpy-3.0-py3-none-any.whl", "hashes": {"sha256": SHA["d"]},
               "requires-python": ">=3.12"}],
}


def pin(line, *hashes):
    return line + "".join(f" \\\n    --hash=sha256:{h}" for h in hashes) + "\n"


def test_the_check_names_the_pin_and_platform_that_cannot_install():
    lock = (pin("tinyext==1.0", SHA["a"], SHA["b"], SHA["c"]) + pin("purelib==2.0", SHA["d"])
            + pin("onlysdist==1.2.2", SHA["e"]) + pin("newpy==3.0 ; python_full_version >= '3.12'", SHA["d"]))
    found = lock_check.problems(lock_check.parse_lock(lock), INDEX)
    # the sdist is no way out for a release that has wheels: pip would compile it there
    assert found == [f"tinyext==1.0 on linux-aarch64, Python 3.{minor}: the index has no file for it"
                     for minor in (11, 12, 13, 14)]


def test_the_check_names_a_hash_the_lock_lacks_and_passes_a_lock_that_installs_everywhere():
    without_mac_hash = pin("tinyext==1.0 ; platform_machine != 'aarch64'", SHA["a"], SHA["c"])
    assert lock_check.problems(lock_check.parse_lock(without_mac_hash), INDEX) == [
        f"tinyext==1.0 on macos-arm64, Python 3.{minor}: no sha256 of its 1 file(s) is in the lock"
        for minor in (11, 12, 13, 14)]
    # the marker keeps tinyext off aarch64; newpy's wheel needs 3.12, and is pinned for 3.12 on only
    fine = (pin("tinyext==1.0 ; platform_machine != 'aarch64'", SHA["a"], SHA["b"]) + pin("purelib==2.0", SHA["d"])
            + pin("onlysdist==1.2.2", SHA["e"]) + pin("newpy==3.0 ; python_full_version >= '3.12'", SHA["d"]))
    assert lock_check.problems(lock_check.parse_lock(fine), INDEX) == []
    assert lock_check.problems(lock_check.parse_lock(pin("newpy==3.0", SHA["d"])), INDEX) == [
        f"newpy==3.0 on {platform}, Python 3.11: the index has no file for it"
        for platform in ("linux-x86_64", "linux-aarch64", "macos-arm64")]


def test_a_lock_line_without_hashes_is_refused():
    with pytest.raises(ValueError, match=r"^requirements.lock: line 3 \('purelib>=2.0'\) is not `name==version` "
                                         r"with sha256 hashes: regenerate it with `make lock`$"):
        lock_check.parse_lock(pin("tinyext==1.0", SHA["a"]) + "purelib>=2.0\n", "requirements.lock")
