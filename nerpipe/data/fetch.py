"""Fetch a corpus's three splits from a URL or a local directory, verify their sha256, and record where
each came from: all splits or none.

    <out>/<split>.txt     a byte-for-byte copy of each split (train, valid, test)
    <out>/sources.json    {split: {"file": the user's file or URL, "sha256": what the copy hashes to}}
"""

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from nerpipe.core.atomic import atomic_path, write_json
from nerpipe.core.errors import UserError
from nerpipe.core.params import SPLITS

SOURCES_FILE = "sources.json"
# The development machines' shared copy is not a path a user has; the placeholders are.
WHERE_TO_GET = ("CoNLL-2003 English is distributed by the shared task's organisers; the default source URL "
                "is data.source in params.yaml")
OFFLINE_HINT = ("set data.source to a local directory holding the three files, e.g. "
                "`make repro DATA=/path/to/conll2003` or `dvc exp run -S data.source=/path/to/conll2003` "
                f"({WHERE_TO_GET})")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url, dest, timeout=30):
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise UserError(f"{url}: HTTP {err.code} {err.reason}; check data.source and data.remote_files in "
                        "params.yaml") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot download {url} ({reason}). Without network access, {OFFLINE_HINT}") from None
    try:
        with response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError) as err:  # the connection broke mid-transfer
        raise UserError(f"download of {url} failed part-way ({getattr(err, 'reason', err)}); run again") from None


def locate_splits(data):
    """{split: URL or local Path} for every split; a local directory missing any of them fails naming all."""
    if data.is_remote():
        return {split: f"{data.source.rstrip('/')}/{data.remote_files[split]}" for split in SPLITS}
    source = Path(data.source)
    if not source.is_dir():
        raise UserError(f"data.source {data.source!r} is neither an http(s) URL nor an existing directory; point it "
                        f"at the directory holding the corpus, e.g. /path/to/conll2003 ({WHERE_TO_GET})")
    found, missing = {}, []
    for split in SPLITS:
        names = dict.fromkeys((data.remote_files[split], data.local_files[split]))  # in order, once each
        found[split] = next((source / name for name in names if (source / name).is_file()), None)
        if found[split] is None:
            missing.append(f"{split}: no {' or '.join(names)} (data.remote_files.{split}, data.local_files.{split})")
    if missing:
        raise UserError(f"data.source {source}: {len(missing)} split(s) missing, nothing was copied:\n  "
                        + "\n  ".join(missing) + "\nPoint data.source at the directory holding the corpus, or set "
                        "data.local_files to its file names")
    return found


def fetch_corpus(data, out_dir):
    """Copy or download every split to <out_dir>/<split>.txt, verify each sha256 against data.sha256
    ("" records without checking, for a local directory) and write sources.json; returns its content.

    out_dir is replaced in one rename only when every split is there and matches, so any failure
    leaves an earlier download exactly as it was.
    """
    origins = locate_splits(data)
    with atomic_path(out_dir, is_dir=True) as tmp:
        found = {}
        for split, origin in origins.items():
            if data.is_remote():
                _download(origin, tmp / f"{split}.txt")
            else:
                shutil.copyfile(origin, tmp / f"{split}.txt")
            found[split] = sha256_of(tmp / f"{split}.txt")
        check_sha256(data, found, origins, out_dir)
        sources = {split: {"file": str(origins[split]), "sha256": found[split]} for split in SPLITS}
        write_json(tmp / SOURCES_FILE, sources)
    return sources


def check_sha256(data, found, origins, out_dir):
    """Refuse, naming every split, where a found sha256 ({split: hex}) is not data.sha256's ("" is not checked);
    `origins` ({split: what it came from}) names each in the message."""
    mismatches = [f"{origins[split]}: sha256 mismatch for split {split!r}\n  expected {data.sha256[split]} "
                  f"(data.sha256.{split} in params.yaml)\n  found    {found[split]}"
                  for split in SPLITS if data.sha256[split] not in ("", found[split])]
    if mismatches:
        raise UserError("\n".join(mismatches) + f"\nNothing was written to {out_dir}. If you really mean to use "
                        "other data, update data.sha256 (\"\" skips the check for a local directory).")


def read_sources(raw_dir):
    """The sources.json that fetch_corpus wrote beside the split copies in `raw_dir`."""
    path = Path(raw_dir) / SOURCES_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; it is written by the download stage with the split copies, so "
                        "run `dvc repro download`") from None
