"""Hugging Face datasets as data.source (nerpipe/data/hf_dataset.py): a parquet directory written by
tools/conll_to_parquet.py gives prepared data byte-identical to its CoNLL files; a save_to_disk directory
with string or bare integer tags; every bad input refused with nothing written; and the Hub path run as
a user runs it, `python stages/download.py` with HF_ENDPOINT pointed at a server on 127.0.0.1 that
answers the Hub's routes huggingface_hub calls for a dataset at a revision (info, tree, resolve).
"""

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from nerpipe.core.errors import UserError
from nerpipe.core.params import DataParams, DatasetParams, parse_params
from nerpipe.data.conll import read_conll
from nerpipe.data.hf_dataset import fetch_dataset, is_dataset_source
from nerpipe.data.prepare import prepare_corpus, read_corpus
from nerpipe.track.provenance import provenance_tags
from nerpipe.core.params import PrepareParams
from tests.pipeline_repo import PROJECT

sys.path.insert(0, str(PROJECT / "tools"))
import conll_to_parquet  # noqa: E402  (tools/ is no package)

SPLITS = ("train", "valid", "test")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "someone/tiny-ner"


def dataset_params(source, **dataset):
    return DataParams(source=str(source), sha256=dict.fromkeys(SPLITS, ""), dataset=DatasetParams(**dataset))


def earlier_download(out):
    out.mkdir()
    (out / "train.txt").write_text("earlier\n")
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, fixture_dir):
    """The CoNLL fixtures as tools/conll_to_parquet.py converts them (ClassLabel tags, document ids)."""
    out = tmp_path_factory.mktemp("parquet") / "corpus"
    conll_to_parquet.convert(fixture_dir, out, conll_to_parquet.DEFAULT_FILES)
    return out


def test_converter_writes_classlabel_tags_and_documents(parquet_dir, fixture_dir):
    splits = DatasetDict.from_parquet({s: str(parquet_dir / "data" / f"{s}-00000-of-00001.parquet")
                                       for s in ("train", "validation", "test")})
    feature = splits["train"].features["ner_tags"].feature
    assert isinstance(feature, ClassLabel)
    assert feature.names == ["O", "B-LOC", "I-LOC", "I-MISC", "I-ORG", "I-PER"]  # IOB1 as written
    first = read_conll(fixture_dir / "valid.txt")[0]
    row = splits["validation"][0]
    assert row["tokens"] == first.words == ["John", "Smith", "flew", "to", "Berlin", "on", "Monday", "."]
    assert [feature.names[t] for t in row["ner_tags"]] == first.tags
    assert sorted(set(splits["validation"]["document_id"])) == [0, 1]


def test_parquet_dir_prepares_byte_identical_to_its_conll_files(parquet_dir, fixture_dir, tiny_tokenizer, tmp_path):
    raw = tmp_path / "raw"
    sources = fetch_dataset(dataset_params(parquet_dir, documents="document_id"), raw)
    assert sources["valid"]["directory"] == str(parquet_dir) and sources["valid"]["split"] == "validation"
    parquet_file = parquet_dir / "data" / "validation-00000-of-00001.parquet"
    assert sources["valid"]["files"] == {
        "data/validation-00000-of-00001.parquet": hashlib.sha256(parquet_file.read_bytes()).hexdigest()}
    assert sources["test"]["sha256"] == hashlib.sha256((raw / "test.txt").read_bytes()).hexdigest()
    assert json.loads((raw / "sources.json").read_text()) == sources
    cfg = PrepareParams(max_length=16, window_overlap=4, context=8)
    prepared = {}
    for name, files in (("conll", {s: fixture_dir / f"{s}.txt" for s in SPLITS}),
                        ("parquet", {s: raw / f"{s}.txt" for s in SPLITS})):
        prepare_corpus(files, tiny_tokenizer, cfg, tmp_path / name)
        prepared[name] = {str(p.relative_to(tmp_path / name)): p.read_bytes()
                          for p in sorted((tmp_path / name).rglob("*")) if p.is_file()}
    assert len(prepared["conll"]) > 10 and prepared["conll"] == prepared["parquet"]


def test_save_to_disk_with_string_tags_other_names_and_bioes(tmp_path, capsys):
    features = Features({"words": List(Value("string")), "labels": List(Value("string"))})
    rows = {"train": [(["Ann", "Lee", "ran"], ["B-person", "E-person", "O"]), ([], [])],
            "dev": [(["in", "Paris"], ["O", "S-place"])],
            "test": [(["Bob"], ["S-person"])]}
    DatasetDict({split: Dataset.from_dict({"words": [r[0] for r in data], "labels": [r[1] for r in data]},
                                          features=features) for split, data in rows.items()}
                ).save_to_disk(str(tmp_path / "saved"))
    assert is_dataset_source(str(tmp_path / "saved")) and not is_dataset_source(str(tmp_path))
    sources = fetch_dataset(dataset_params(tmp_path / "saved", words="words", tags="labels",
                                           splits={"train": "train", "valid": "dev", "test": "test"}), tmp_path / "raw")
    assert (tmp_path / "raw" / "train.txt").read_text() == "Ann B-person\nLee E-person\nran O\n\n"  # the empty row: none
    assert set(sources["valid"]["files"]) == {"dev/data-00000-of-00001.arrow", "dev/dataset_info.json",
                                              "dev/state.json"}
    sentences, labels = read_corpus({s: tmp_path / "raw" / f"{s}.txt" for s in SPLITS})
    assert sentences["train"][0].tags == ["B-person", "I-person", "O"] and sentences["valid"][0].tags == ["O", "B-place"]
    assert labels == ["O", "B-person", "I-person", "B-place", "I-place"]
    assert ("warning: entity type 'place' occurs in valid (" + str(tmp_path / "raw" / "valid.txt") + ":2) but not in "
            "the training data") in capsys.readouterr().err


def test_words_with_white_space_and_a_dataset_without_splits_are_refused(tmp_path):
    words = Dataset.from_dict({"tokens": [["New York", "is"]], "ner_tags": [["B-LOC", "O"]]})
    DatasetDict({s: words for s in ("train", "validation", "test")}).save_to_disk(str(tmp_path / "spaced"))
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(tmp_path / "spaced"), tmp_path / "raw")
    assert str(err.value) == (f"{tmp_path / 'spaced'} split 'train', row 0: word 'New York' is empty or holds white "
                              "space; a CoNLL line cannot carry it")
    words.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(tmp_path / "one"), tmp_path / "raw")
    assert "a save_to_disk directory of one Dataset, without splits; save a DatasetDict" in str(err.value)
    assert not (tmp_path / "raw").exists()


def integer_tag_dataset(directory, tags, feature=Value("int64")):
    features = Features({"tokens": List(Value("string")), "ner_tags": List(feature)})
    DatasetDict({split: Dataset.from_dict({"tokens": [["Rome", "is"]], "ner_tags": [tags]}, features=features)
                 for split in ("train", "validation", "test")}).save_to_disk(str(directory))
    return directory


def test_integer_tags_need_tag_names(tmp_path):
    source = integer_tag_dataset(tmp_path / "ints", [1, 0])
    out = tmp_path / "raw"
    before = earlier_download(out)
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(source), out)
    assert str(err.value) == (f"{source} split 'train': column 'ner_tags' holds integer tags without names (no "
                              "ClassLabel feature); set data.dataset.tag_names to the tag of each id in order, e.g. "
                              "[O, B-PER, I-PER, ...]")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fetch_dataset(dataset_params(source, tag_names=["O", "B-LOC"]), out)
    assert (out / "test.txt").read_text() == "Rome B-LOC\nis O\n\n"


@pytest.mark.parametrize("feature, tags, tag_names, message", [
    (Value("float32"), [1.0, 0.0], [], "column 'ner_tags' is List(Value('float32')); expected a list of tags per "
                                       "sentence, as ClassLabel ids or strings (data.dataset.tags names the column)"),
    (Value("string"), ["B-LOC", "Z"], [], "row 0: unknown NER tag 'Z' in column 'ner_tags'"),
    (ClassLabel(names=["O", "LOC"]), [1, 0], [], "'LOC' in the ClassLabel names of column 'ner_tags' not a tag"),
    (Value("int64"), [2, 0], ["O", "B-LOC"], "row 0: tag ids [2, 0] outside the 2 names of column 'ner_tags'"),
    (Value("string"), ["O"], [], "row 0: words ['Rome', 'is'], tags ['O']; column 'tokens' must hold a list of the "
                                 "sentence's words and 'ner_tags' one tag for each"),
])
def test_tags_neither_names_nor_strings_are_refused(tmp_path, feature, tags, tag_names, message):
    source = integer_tag_dataset(tmp_path / "bad", tags, feature)
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(source, tag_names=tag_names), tmp_path / "raw")
    assert message in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_missing_splits_and_columns_are_all_named(parquet_dir, tmp_path):
    out = tmp_path / "raw"
    before = earlier_download(out)
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(parquet_dir, splits={"train": "train", "valid": "dev", "test": "test"},
                                     tags="labels", documents="doc"), out)
    assert str(err.value) == (
        f"data.source {parquet_dir}: 5 problem(s), nothing was written:\n"
        "  split 'train' has no column 'labels' (data.dataset.tags); its columns: tokens, ner_tags, document_id\n"
        "  split 'train' has no column 'doc' (data.dataset.documents); its columns: tokens, ner_tags, document_id\n"
        "  no split 'dev' (data.dataset.splits.valid); its splits: train, validation, test\n"
        "  split 'test' has no column 'labels' (data.dataset.tags); its columns: tokens, ner_tags, document_id\n"
        "  split 'test' has no column 'doc' (data.dataset.documents); its columns: tokens, ner_tags, document_id")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_hub_source_needs_a_commit_sha_unless_opted_in():
    def problems(source, **dataset):
        try:
            parse_params({"data": {"source": source, "sha256": dict.fromkeys(SPLITS, ""), "dataset": dataset}})
        except UserError as err:
            return str(err).splitlines()[1:]
        return []

    assert problems(f"hf://datasets/{REPO}@{COMMIT}") == []
    assert problems(f"hf://datasets/{REPO}@main") == [
        f"  - data.source 'hf://datasets/{REPO}@main': 'main' is not a commit sha but a branch or tag, whose data can "
        f"change under the same params; pin the 40-character commit sha (https://huggingface.co/datasets/{REPO}/"
        "commits/main), or set data.dataset.allow_moving_revision: true to accept that"]
    assert problems(f"hf://datasets/{REPO}@main", allow_moving_revision=True) == []
    assert problems(f"hf://datasets/{REPO}") == [
        f"  - data.source 'hf://datasets/{REPO}': no revision; pin the dataset's commit, hf://datasets/{REPO}@<commit "
        f"sha> (the commits: https://huggingface.co/datasets/{REPO}/commits/main)"]
    assert problems("hf://models/bert@x", splits={"train": "a", "valid": "a", "test": "b"}) == [
        "  - data.dataset.splits: train and valid name the same split 'a'; each needs one of its own",
        "  - data.source 'hf://models/bert@x': a Hugging Face dataset is hf://datasets/<owner>/<name>@<commit sha>"]


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The Hub's routes for one dataset repository `root` at one commit: what huggingface_hub's
    HfApi.dataset_info, list_repo_tree and hf_hub_download request (branch `main` resolves to it too)."""

    def __init__(self, *args, root, **kwargs):
        self.root = root
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        parts = urllib.parse.urlsplit(self.path).path.split("/")
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        if parts[1:3] == ["api", "datasets"]:  # /api/datasets/<owner>/<name>/{revision,tree}/<revision>
            repo, kind, revision = "/".join(parts[3:5]), parts[5], urllib.parse.unquote(parts[6])
            if repo != REPO:
                return self.send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
            if revision not in (COMMIT, "main"):
                return self.send(404, b"{}", {"X-Error-Code": "RevisionNotFound"}, body)
            if kind == "revision":
                info = {"id": REPO, "sha": COMMIT,
                        "siblings": [{"rfilename": str(p.relative_to(self.root))} for p in files]}
            else:
                info = [{"type": "file", "path": str(p.relative_to(self.root)), "size": p.stat().st_size,
                         "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files]
            return self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if parts[1:5] == ["datasets", *REPO.split("/"), "resolve"] and parts[5] == COMMIT:
            path = self.root.joinpath(*map(urllib.parse.unquote, parts[6:]))
            if path.is_file():
                data = path.read_bytes()
                return self.send(200, data, {"X-Repo-Commit": COMMIT,
                                             "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, body)
        self.send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

    def send(self, status, data, headers, body):
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def hub(parquet_dir):
    """HF_ENDPOINT of a FakeHub serving the converted fixtures (with a dataset card) as REPO."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FakeHub, root=parquet_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_download(tmp_path, endpoint, source):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"data": {"source": source, "sha256": dict.fromkeys(SPLITS, ""),
                                           "dataset": {"documents": "document_id"}}}))
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, str(PROJECT / "stages" / "download.py"), "--out", str(tmp_path / "raw"),
                           "--params", str(params)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_hub_dataset_at_a_revision_through_huggingface_hub(hub, parquet_dir, tmp_path):
    done = run_download(tmp_path, hub, f"hf://datasets/{REPO}@{COMMIT}")
    assert done.returncode == 0, done.stderr
    sources = json.loads((tmp_path / "raw" / "sources.json").read_text())
    parquet_file = parquet_dir / "data" / "train-00000-of-00001.parquet"
    assert sources["train"] == {
        "repository": REPO, "revision": COMMIT, "split": "train",
        "files": {"data/train-00000-of-00001.parquet": hashlib.sha256(parquet_file.read_bytes()).hexdigest()},
        "sha256": hashlib.sha256((tmp_path / "raw" / "train.txt").read_bytes()).hexdigest()}
    local = fetch_dataset(dataset_params(parquet_dir, documents="document_id"), tmp_path / "local")
    for split in SPLITS:  # the same files, whether from the Hub or from the directory
        assert (tmp_path / "raw" / f"{split}.txt").read_bytes() == (tmp_path / "local" / f"{split}.txt").read_bytes()
        assert sources[split]["files"] == local[split]["files"]


def test_hub_revision_that_does_not_exist(hub, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub)  # in this process; as HF_ENDPOINT does at import
    before = earlier_download(tmp_path / "raw")
    missing = "f" * 40
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(f"hf://datasets/{REPO}@{missing}"), tmp_path / "raw")
    assert str(err.value) == (f"data.source hf://datasets/{REPO}@{missing}: no revision '{missing}' in the dataset "
                              f"repository {REPO}; pick a commit from https://huggingface.co/datasets/{REPO}/commits/main")
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(f"hf://datasets/someone/else@{missing}"), tmp_path / "raw")
    assert str(err.value) == (f"data.source hf://datasets/someone/else@{missing}: no dataset repository 'someone/else' "
                              f"on {hub} (or it is private: `hf auth login`)")


def test_a_dataset_with_configurations_needs_data_dataset_config(tmp_path, monkeypatch):
    """Two configurations declared in the dataset card, as on the Hub (WikiANN: one per language)."""
    source = tmp_path / "multi"
    card = ["---", "configs:"]
    for config, word in (("en", "London"), ("de", "Berlin")):
        card += [f"- config_name: {config}", "  data_files:"]
        for split in ("train", "validation", "test"):
            (source / config).mkdir(parents=True, exist_ok=True)
            Dataset.from_dict({"tokens": [[word, "."]], "ner_tags": [["B-LOC", "O"]]}).to_parquet(
                str(source / config / f"{split}.parquet"))
            card += [f"  - split: {split}", f"    path: {config}/{split}.parquet"]
    (source / "README.md").write_text("\n".join(card + ["---", ""]))
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(source), tmp_path / "raw")
    assert "(data.dataset.config names the configuration)" in str(err.value) and "'de'" in str(err.value)
    monkeypatch.chdir(tmp_path)  # data.source relative to the working directory, as dvc.yaml's paths are
    sources = fetch_dataset(dataset_params("multi", config="de"), tmp_path / "raw")
    assert (tmp_path / "raw" / "valid.txt").read_text() == "Berlin B-LOC\n. O\n\n"
    assert list(sources["valid"]["files"]) == ["de/validation.parquet"]


def test_hub_without_network_says_what_to_do(monkeypatch, tmp_path):
    import socket

    import huggingface_hub

    with socket.socket() as closed:  # a port nothing listens on: the connection is refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(f"hf://datasets/{REPO}@{COMMIT}"), tmp_path / "raw")
    assert str(err.value).startswith(f"data.source hf://datasets/{REPO}@{COMMIT}: cannot download it (")
    assert str(err.value).endswith("without network access, save the dataset where there is (`datasets.load_dataset"
                                   "(...).save_to_disk(dir)`, docs/corpora.md) and set data.source to that directory")
    assert not (tmp_path / "raw").exists()


def test_a_loading_script_is_refused(tmp_path):
    (tmp_path / "scripted").mkdir()
    (tmp_path / "scripted" / "scripted.py").write_text("import datasets\n")
    (tmp_path / "scripted" / "train.parquet").write_bytes(b"")  # what makes it a dataset source at all
    with pytest.raises(UserError) as err:
        fetch_dataset(dataset_params(tmp_path / "scripted"), tmp_path / "raw")
    assert str(err.value) == (f"data.source {tmp_path / 'scripted'}: Dataset scripts are no longer supported, but "
                              "found scripted.py; use a copy of the dataset as data files (parquet, or save_to_disk "
                              "where the script still runs)")


def test_a_hub_sources_repository_and_revision_are_training_tags(tmp_path):
    hub = {"repository": "someone/ner", "revision": "a" * 40, "split": "validation",
           "files": {"data/validation.parquet": "b" * 64}, "sha256": "c" * 64}
    (tmp_path / "stats.json").write_text(json.dumps({"sources": {"valid": hub}}))
    tags = provenance_tags(torch.device("cpu"), tmp_path / "stats.json")
    assert {k: v for k, v in tags.items() if k.startswith("data.")} == {
        "data.repository.valid": "someone/ner", "data.revision.valid": "a" * 40,
        "data.split.valid": "validation", "data.sha256.valid": "c" * 64}
