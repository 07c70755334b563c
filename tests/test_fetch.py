"""nerpipe.data.fetch from a local directory and from an HTTP server on 127.0.0.1, with sha256 checks."""

import functools
import http.server
import shutil
import socket
import threading

import pytest

from nerpipe.core.errors import UserError
from nerpipe.data.fetch import fetch_split, sha256_of
from tests.conftest import sha256_file

WRONG = "0" * 64


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # urllib honours *_proxy variables; requests to 127.0.0.1 must not leave the machine.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_sha256_of_matches_hashlib(fixture_dir):
    assert sha256_of(fixture_dir / "train.txt") == sha256_file(fixture_dir / "train.txt")
    assert sha256_of(fixture_dir / "train.txt") != sha256_of(fixture_dir / "valid.txt")


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_local_directory(fixture_dir, fixture_sha256, tmp_path, split):
    dest = tmp_path / "raw" / f"{split}.txt"
    origin = fetch_split(str(fixture_dir), split, dest, fixture_sha256[split])
    assert origin == fixture_dir / f"{split}.txt"
    assert dest.read_bytes() == (fixture_dir / f"{split}.txt").read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == [f"{split}.txt"]  # no temporary left over


def test_wrong_sha256_is_refused_and_no_file_written(fixture_dir, fixture_sha256, tmp_path):
    dest = tmp_path / "raw" / "train.txt"
    with pytest.raises(UserError) as err:
        fetch_split(str(fixture_dir), "train", dest, WRONG)
    message = str(err.value)
    assert f"expected {WRONG} (data.sha256.train in params.yaml)" in message
    assert f"found    {fixture_sha256['train']}" in message
    assert str(fixture_dir / "train.txt") in message
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_wrong_sha256_keeps_an_earlier_good_copy(fixture_dir, fixture_sha256, tmp_path):
    dest = tmp_path / "train.txt"
    fetch_split(str(fixture_dir), "train", dest, fixture_sha256["train"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.txt").write_text("Paris NNP I-NP I-LOC\n")
    with pytest.raises(UserError, match="sha256 mismatch for split 'train'"):
        fetch_split(str(other), "train", dest, fixture_sha256["train"])
    assert sha256_file(dest) == fixture_sha256["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "train.txt"]


def test_original_names_win_over_local_names(fixture_dir, fixture_sha256, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copyfile(fixture_dir / "valid.txt", source / "eng.testa")
    (source / "valid.txt").write_text("not the file\n")
    origin = fetch_split(str(source), "valid", tmp_path / "valid.txt", fixture_sha256["valid"])
    assert origin == source / "eng.testa"


def test_local_directory_without_the_split(tmp_path):
    with pytest.raises(UserError) as err:
        fetch_split(str(tmp_path), "test", tmp_path / "out" / "test.txt", WRONG)
    assert str(err.value).startswith(f"data.source {tmp_path}: no eng.testb or test.txt there")


def test_source_neither_url_nor_directory(tmp_path):
    with pytest.raises(UserError, match="is neither an http\\(s\\) URL nor an existing directory"):
        fetch_split(str(tmp_path / "missing"), "train", tmp_path / "train.txt", WRONG)
    assert not (tmp_path / "train.txt").exists()


@pytest.fixture
def http_source(fixture_dir, tmp_path):
    """http://127.0.0.1:<port> serving the fixtures as eng.train/eng.testa/eng.testb."""
    served = tmp_path / "served"
    served.mkdir()
    for split, remote in (("train", "eng.train"), ("valid", "eng.testa"), ("test", "eng.testb")):
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


@pytest.mark.parametrize("split, remote", [("train", "eng.train"), ("valid", "eng.testa"), ("test", "eng.testb")])
def test_http(http_source, fixture_dir, fixture_sha256, tmp_path, split, remote):
    url, _ = http_source
    dest = tmp_path / "raw" / f"{split}.txt"
    assert fetch_split(url + "/", split, dest, fixture_sha256[split]) == f"{url}/{remote}"
    assert dest.read_bytes() == (fixture_dir / f"{split}.txt").read_bytes()


def test_http_wrong_sha256(http_source, fixture_sha256, tmp_path):
    url, _ = http_source
    dest = tmp_path / "raw" / "test.txt"
    with pytest.raises(UserError) as err:
        fetch_split(url, "test", dest, WRONG)
    assert f"{url}/eng.testb: sha256 mismatch for split 'test'" in str(err.value)
    assert f"found    {fixture_sha256['test']}" in str(err.value)
    assert not dest.exists()


def test_http_404_names_url_and_data_source(http_source, tmp_path):
    url, served = http_source
    (served / "eng.testa").unlink()
    with pytest.raises(UserError) as err:
        fetch_split(url, "valid", tmp_path / "valid.txt", WRONG)
    assert str(err.value) == f"{url}/eng.testa: HTTP 404 File not found; check data.source in params.yaml"
    assert not (tmp_path / "valid.txt").exists()


def test_unreachable_url_says_to_set_data_source(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError) as err:
        fetch_split(f"http://127.0.0.1:{port}", "train", tmp_path / "train.txt", WRONG)
    message = str(err.value)
    assert message.startswith(f"cannot download http://127.0.0.1:{port}/eng.train (")
    assert "Connection refused" in message
    assert "set data.source to a local directory" in message
    assert not (tmp_path / "train.txt").exists()
