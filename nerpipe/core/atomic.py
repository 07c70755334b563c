"""Write outputs under a temporary name and rename, so an interrupted stage never leaves half a file."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, is_dir=False):
    """Yield a temporary sibling path; on success it replaces `path` in one rename.

    With is_dir=True the yielded path is an existing, empty directory to fill.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp if is_dir else tmp / path.name
    aside = None
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            # Rename the old directory away rather than delete it in place: a kill during a slow
            # rmtree would leave half of it (say, state.pt without its weights) under the real name.
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            os.replace(path, aside / path.name)
        os.replace(target, path)
    finally:
        for leftover in (tmp, aside):
            if leftover:
                shutil.rmtree(leftover, ignore_errors=True)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
