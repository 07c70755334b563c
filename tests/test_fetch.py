"""nerpipe.data.fetch from a local directory and from an HTTP server on 127.0.0.1: sha256 checks, file
names from params, sources.json, and all splits or none written."""

import functools
import http.server
import json
import shutil
import socket
import threading

import pytest

from nerpipe.core.errors import UserError
from nerpipe.core.params import DataParams
from nerpipe.data.fetch import fetch_corpus, read_sources, sha256_of
from tests.conftest import sha256_file

WRONG = "0" * 64
REMOTE = {"train": "eng.train", "valid": "eng.testa", "test": "eng.testb"}


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # urllib honours *_proxy variables; requests to 127.0.0.1 must not leave the machine.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def data_params(source, sha256, **files):
    return DataParams(source=str(source), sha256=dict(sha256), **files)


def earlier_download(out):
    """data/raw from an earlier good run: a failed run must leave it exactly as it was."""
    out.mkdir()
    (out / "train.txt").write_text("earlier\n")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_sha256_of_matches_hashlib(fixture_dir):
    assert sha256_of(fixture_dir / "train.txt") == sha256_file(fixture_dir / "train.txt")
    assert sha256_of(fixture_dir / "train.txt") != sha256_of(fixture_dir / "valid.txt")


def test_local_directory(fixture_dir, fixture_sha256, tmp_path):
    out = tmp_path / "raw"
    sources = fetch_corpus(data_params(fixture_dir, fixture_sha256), out)
    expected = {split: {"file": str(fixture_dir / f"{split}.txt"), "sha256": fixture_sha256[split]}
                for split in ("train", "valid", "test")}
    assert sources == expected
    assert read_sources(out) == expected == json.loads((out / "sources.json").read_text())
    for split in expected:
        assert (out / f"{split}.txt").read_bytes() == (fixture_dir / f"{split}.txt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporary left over
    assert sorted(p.name for p in out.iterdir()) == ["sources.json", "test.txt", "train.txt", "valid.txt"]


def test_other_file_names_and_empty_sha256_record_what_was_found(fixture_dir, fixture_sha256, tmp_path):
    source = tmp_path / "corpus"
    source.mkdir()
    for split, name in (("train", "a.tsv"), ("valid", "b.tsv"), ("test", "c.tsv")):
        shutil.copyfile(fixture_dir / f"{split}.txt", source / name)
    local = {"train": "a.tsv", "valid": "b.tsv", "test": "c.tsv"}
    sources = fetch_corpus(data_params(source, {"train": "", "valid": "", "test": fixture_sha256["test"]},
                                       local_files=local), tmp_path / "raw")
    assert sources == {split: {"file": str(source / local[split]), "sha256": fixture_sha256[split]}
                       for split in ("train", "valid", "test")}
    assert sha256_file(tmp_path / "raw" / "valid.txt") == fixture_sha256["valid"]


def test_wrong_sha256s_are_all_refused_and_nothing_written(fixture_dir, fixture_sha256, tmp_path):
    out = tmp_path / "raw"
    before = earlier_download(out)
    with pytest.raises(UserError) as err:
        fetch_corpus(data_params(fixture_dir, {**fixture_sha256, "train": WRONG, "test": WRONG}), out)
    assert str(err.value) == (
        f"{fixture_dir / 'train.txt'}: sha256 mismatch for split 'train'\n"
        f"  expected {WRONG} (data.sha256.train in params.yaml)\n"
        f"  found    {fixture_sha256['train']}\n"
        f"{fixture_dir / 'test.txt'}: sha256 mismatch for split 'test'\n"
        f"  expected {WRONG} (data.sha256.test in params.yaml)\n"
        f"  found    {fixture_sha256['test']}\n"
        f"Nothing was written to {out}. If you really mean to use other data, update data.sha256 (\"\" skips the "
        "check for a local directory).")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_missing_splits_are_all_named_before_anything_is_copied(fixture_dir, fixture_sha256, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copyfile(fixture_dir / "train.txt", source / "train.txt")
    out = tmp_path / "raw"
    before = earlier_download(out)
    with pytest.raises(UserError) as err:
        fetch_corpus(data_params(source, fixture_sha256), out)
    assert str(err.value) == (
        f"data.source {source}: 2 split(s) missing, nothing was copied:\n"
        "  valid: no eng.testa or valid.txt (data.remote_files.valid, data.local_files.valid)\n"
        "  test: no eng.testb or test.txt (data.remote_files.test, data.local_files.test)\n"
        "Point data.source at the directory holding the corpus, or set data.local_files to its file names")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "source"]


def test_remote_names_win_over_local_names(fixture_dir, fixture_sha256, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(fixture_dir, source, ignore=shutil.ignore_patterns("wnut_like"))
    shutil.copyfile(fixture_dir / "valid.txt", source / "eng.testa")
    (source / "valid.txt").write_text("not the file\n")
    sources = fetch_corpus(data_params(source, fixture_sha256), tmp_path / "raw")
    assert sources["valid"]["file"] == str(source / "eng.testa")
    assert sources["train"]["file"] == str(source / "train.txt")


def test_source_neither_url_nor_directory(tmp_path):
    with pytest.raises(UserError) as err:
        fetch_corpus(data_params(tmp_path / "missing", dict.fromkeys(REMOTE, WRONG)), tmp_path / "raw")
    assert str(err.value) == (f"data.source {str(tmp_path / 'missing')!r} is neither an http(s) URL nor an existing "
                              "directory; point it at the directory holding the corpus, e.g. /path/to/conll2003 "
                              "(CoNLL-2003 English is distributed by the shared task's organisers; the default "
                              "source URL is data.source in params.yaml)")
    assert not (tmp_path / "raw").exists()


def test_read_sources_without_a_download(tmp_path):
    with pytest.raises(UserError) as err:
        read_sources(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'sources.json'}: file not found; it is written by the download stage "
                              "with the split copies, so run `dvc repro download`")


@pytest.fixture
def http_source(fixture_dir, tmp_path):
    """http://127.0.0.1:<port> serving the fixtures as eng.train/eng.testa/eng.testb."""
    served = tmp_path / "served"
    served.mkdir()
    for split, remote in REMOTE.items():
        shutil.copyfile(fixture_dir / f"{split}.txt", served / remote)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()
    thread.join()


def test_http(http_source, fixture_dir, fixture_sha256, tmp_path):
    url, _ = http_source
    out = tmp_path / "raw"
    sources = fetch_corpus(data_params(url + "/", fixture_sha256), out)
    assert sources == {split: {"file": f"{url}/{remote}", "sha256": fixture_sha256[split]}
                       for split, remote in REMOTE.items()}
    for split in REMOTE:
        assert (out / f"{split}.txt").read_bytes() == (fixture_dir / f"{split}.txt").read_bytes()


def test_http_remote_file_names_from_params(http_source, fixture_sha256, tmp_path):
    url, served = http_source
    for split, remote in REMOTE.items():
        (served / remote).rename(served / f"{split}.conll")
    remote_files = {split: f"{split}.conll" for split in REMOTE}
    sources = fetch_corpus(data_params(url, fixture_sha256, remote_files=remote_files), tmp_path / "raw")
    assert sources["test"] == {"file": f"{url}/test.conll", "sha256": fixture_sha256["test"]}


def test_http_wrong_sha256(http_source, fixture_sha256, tmp_path):
    url, _ = http_source
    out = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        fetch_corpus(data_params(url, {**fixture_sha256, "test": WRONG}), out)
    assert str(err.value).startswith(f"{url}/eng.testb: sha256 mismatch for split 'test'\n")
    assert f"found    {fixture_sha256['test']}\nNothing was written to {out}." in str(err.value)
    assert not out.exists()


def test_http_404_after_a_good_split_writes_nothing(http_source, fixture_sha256, tmp_path):
    url, served = http_source
    (served / "eng.testa").unlink()
    out = tmp_path / "raw"
    before = earlier_download(out)
    with pytest.raises(UserError) as err:
        fetch_corpus(data_params(url, fixture_sha256), out)
    assert str(err.value) == (f"{url}/eng.testa: HTTP 404 File not found; check data.source and data.remote_files "
                              "in params.yaml")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # train.txt was fetched, but not kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "served"]


def test_unreachable_url_says_to_set_data_source(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError) as err:
        fetch_corpus(data_params(f"http://127.0.0.1:{port}", dict.fromkeys(REMOTE, WRONG)), tmp_path / "raw")
    message = str(err.value)
    assert message.startswith(f"cannot download http://127.0.0.1:{port}/eng.train (")
    assert "Connection refused" in message
    assert message.endswith("Without network access, set data.source to a local directory holding the three "
                            "files, e.g. `make repro DATA=/path/to/conll2003` or `dvc exp run -S "
                            "data.source=/path/to/conll2003` (CoNLL-2003 English is distributed by the shared "
                            "task's organisers; the default source URL is data.source in params.yaml)")
    assert "shared/" not in message
    assert not (tmp_path / "raw").exists()
