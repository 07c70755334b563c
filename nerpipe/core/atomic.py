"""Write outputs under a temporary name and rename, so an interrupted stage never leaves half a file.

Durable too: before the rename, every file written is fsynced, and after it the directory holding the
new name, so a power cut after a stage ends does not undo its outputs (a rename alone can reach the
disk before the data it names).

A directory that exists is replaced in two renames: the old one to `.<name>.old`, the new one to
`<name>`. A kill between them leaves the old copy, complete, under `.<name>.old`; `recover(path)` (run by
every atomic_path of that path, and by the checkpoint resume) renames it back.
"""

import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, is_dir=False):
    """Yield a temporary sibling path; on success it replaces `path` in one rename (two for a directory
    that exists, see the module docstring).

    With is_dir=True the yielded path is an existing, empty directory to fill; it gets the usual
    permissions (0777 less the umask), not the 0700 of a private temporary directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    _remove_leftovers(path)
    tmp = _new_dir(path.parent, f".{path.name}.")
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        _fsync_tree(target)
        if path.is_dir() and not path.is_symlink():
            _swap_dir(path, target)
        else:
            os.replace(target, path)
            _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        recover(path)  # an error between the two renames of a swap: the old copy goes back


def _aside(path):
    return path.parent / f".{path.name}.old"


def _swap_dir(path, new):
    """Replace directory `path` by directory `new`. Rather than delete the old one in place (a kill during
    a slow rmtree would leave half of it, say state.pt without its weights, under the real name), it is
    renamed away first and deleted once the new one is in place."""
    aside = _aside(path)
    os.replace(path, aside)
    _fsync_dir(path.parent)
    os.replace(new, path)
    _fsync_dir(path.parent)
    _remove(aside)


def recover(path):
    """Finish what a swap of `path` killed half-way left: the old copy back under `path` if the new one
    never got there, else the old copy deleted."""
    path, aside = Path(path), _aside(Path(path))
    if not aside.is_dir():
        return
    if path.exists():
        _remove(aside)
    else:
        os.replace(aside, path)
        _fsync_dir(path.parent)


def _remove_leftovers(path):
    """Temporaries of earlier writes of `path` that were killed (each may hold a whole model)."""
    leftover = re.compile(rf"\.{re.escape(path.name)}\.(old\.deleting\.)?[0-9a-f]{{8}}")
    for sibling in path.parent.iterdir():
        if leftover.fullmatch(sibling.name):
            shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)


def _remove(directory):
    """Delete a directory; renamed to a unique name first, so a kill mid-delete never leaves part of it
    under a name recover() would take for a complete copy."""
    doomed = directory.parent / f"{directory.name}.deleting.{secrets.token_hex(4)}"
    os.replace(directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _new_dir(parent, prefix):
    """A new, empty directory `parent/prefix<random>` with mode 0777 less the umask (mkdtemp's is 0700)."""
    while True:
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            candidate.mkdir(mode=0o777)
            return candidate
        except FileExistsError:
            continue


def _fsync_tree(path):
    """fsync a file, or every file and directory under a directory."""
    path = Path(path)
    if not path.is_dir():
        _fsync(path, os.O_RDONLY)
        return
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                _fsync(file, os.O_RDONLY)
        _fsync_dir(root)


def _fsync_dir(directory):
    _fsync(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path, flags):
    try:
        fd = os.open(path, flags)
    except OSError:  # a directory cannot be opened on Windows: nothing to sync there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
