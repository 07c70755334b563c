"""Fetch the CoNLL-2003 splits from a URL or a local directory and verify their sha256."""

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from nerpipe.core.atomic import atomic_path
from nerpipe.core.errors import UserError

# File names at the original source, and the names the same files often carry in local copies.
REMOTE_NAMES = {"train": "eng.train", "valid": "eng.testa", "test": "eng.testb"}
LOCAL_NAMES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}
OFFLINE_HINT = ("set data.source to a local directory holding the three files, e.g. "
                "`make repro DATA=../shared/data/conll2003` or `dvc exp run -S data.source=/path/to/conll2003`")


def is_url(source):
    return source.startswith(("http://", "https://"))


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
        raise UserError(f"{url}: HTTP {err.code} {err.reason}; check data.source in params.yaml") from None
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


def _local_file(source, split):
    for name in (REMOTE_NAMES[split], LOCAL_NAMES[split]):
        if (Path(source) / name).is_file():
            return Path(source) / name
    raise UserError(f"data.source {source}: no {REMOTE_NAMES[split]} or {LOCAL_NAMES[split]} there; "
                    f"point data.source at the directory holding the CoNLL-2003 files")


def fetch_split(source, split, dest, expected_sha256):
    """Copy or download one split to `dest`; refuse it (and keep any earlier good copy) on a mismatch."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if is_url(source):
            origin = f"{source.rstrip('/')}/{REMOTE_NAMES[split]}"
            _download(origin, tmp)
        else:
            if not Path(source).is_dir():
                raise UserError(f"data.source {source!r} is neither an http(s) URL nor an existing directory")
            origin = _local_file(source, split)
            shutil.copyfile(origin, tmp)
        found = sha256_of(tmp)
        if found != expected_sha256:
            raise UserError(f"{origin}: sha256 mismatch for split {split!r}\n  expected {expected_sha256} "
                            f"(data.sha256.{split} in params.yaml)\n  found    {found}\n"
                            "The file was refused. If you really mean to use other data, update data.sha256.")
    return origin
