"""nerpipe.core.atomic: durable writes (fsync of the file and of its directory), a directory swap that a
kill between its two renames cannot lose, and output directories with the usual permissions."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from nerpipe.core import atomic
from nerpipe.core.atomic import atomic_path, recover, write_text

PROJECT = Path(__file__).resolve().parents[1]

# A process that dies (os._exit: no finally, no atexit, as SIGKILL) at the second rename of a swap.
KILLED_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from nerpipe.core.atomic import atomic_path
real, calls = os.replace, []
def replace(src, dst):
    calls.append((str(src), str(dst)))
    if len(calls) == 2:
        os._exit(9)
    real(src, dst)
os.replace = replace
with atomic_path(Path(sys.argv[1]), is_dir=True) as tmp:
    (tmp / "weights").write_text("new weights")
    (tmp / "state").write_text("new state")
"""


def fill(directory, version):
    directory.mkdir()
    (directory / "weights").write_text(f"{version} weights")
    (directory / "state").write_text(f"{version} state")


def contents(directory):
    return {p.name: p.read_text() for p in directory.iterdir()}


def test_a_kill_between_the_two_renames_keeps_the_old_copy_whole(tmp_path):
    out = tmp_path / "model"
    fill(out, "old")
    result = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(out)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)}, timeout=60)
    assert result.returncode == 9
    assert not out.exists()  # the state the kill left: the old copy renamed away, the new one not yet in place
    assert contents(tmp_path / ".model.old") == {"weights": "old weights", "state": "old state"}
    recover(out)
    assert contents(out) == {"weights": "old weights", "state": "old state"}
    # The next write of the same path recovers first too (the old copy is back while it writes), then
    # replaces it, and leaves no temporaries: not the new copy the killed process had written either.
    os.replace(out, tmp_path / ".model.old")  # what the first of the two renames does
    with atomic_path(out, is_dir=True) as tmp:
        assert contents(out) == {"weights": "old weights", "state": "old state"}
        (tmp / "weights").write_text("newer weights")
    assert contents(out) == {"weights": "newer weights"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_error_between_the_two_renames_puts_the_old_copy_back(tmp_path, monkeypatch):
    out = tmp_path / "model"
    fill(out, "old")
    real, calls = os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing)
    try:
        with atomic_path(out, is_dir=True) as tmp:
            fill(tmp / "x", "new")
    except OSError:
        pass
    monkeypatch.setattr(atomic.os, "replace", real)
    assert contents(out) == {"weights": "old weights", "state": "old state"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync, real_open = os.fsync, os.open
    opened = {}

    def fake_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        opened[fd] = Path(path)
        return fd

    def fake_fsync(fd):
        synced.append(opened.get(fd))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "open", fake_open)
    monkeypatch.setattr(atomic.os, "fsync", fake_fsync)
    write_text(tmp_path / "out" / "metrics.json", "{}\n")
    assert synced[-1] == tmp_path / "out"  # the directory, after the rename
    assert synced[0].name == "metrics.json" and synced[0].parent != tmp_path / "out"  # the file, before it
    synced.clear()
    with atomic_path(tmp_path / "model", is_dir=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights").write_text("w")
    assert {"weights", "sub"} <= {p.name for p in synced} and synced[-1] == tmp_path


def test_output_directories_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model", is_dir=True) as tmp:
            (tmp / "config.json").write_text("{}")
        with atomic_path(tmp_path / "model", is_dir=True) as tmp:  # a replacement too
            (tmp / "config.json").write_text("{}")
        write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "model" / "config.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
