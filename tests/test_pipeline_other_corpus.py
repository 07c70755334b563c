"""The whole DAG with the real `dvc repro` on a corpus that is not CoNLL-2003: tests/fixtures/wnut_like/,
six lower-case entity types (two with a hyphen), two tab-separated columns, IOB2, no -DOCSTART-, other
file names (train.tsv, dev.tsv, test.tsv), and data.sha256 left empty for the local directory."""

import json

import pytest
from mlflow import MlflowClient

from tests.conftest import FIXTURE_DIR, sha256_file
from tests.pipeline_repo import PipelineRepo, tiny_overrides
from tests.tiny_model import build_tiny_model

CORPUS = FIXTURE_DIR / "wnut_like"
FILES = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}
TYPES = ["corporation", "creative-work", "group", "location", "person", "product"]
LABELS = ["O"] + [f"{prefix}-{t}" for t in TYPES for prefix in ("B", "I")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny-bert-wnut"), labels=LABELS)
    overrides = [*tiny_overrides(CORPUS, {split: "" for split in FILES}, model_dir),
                 *[f"data.local_files.{split}={name}" for split, name in FILES.items()]]
    repo = PipelineRepo.create(tmp_path_factory.mktemp("pipeline-wnut"), overrides)
    result = repo.repro()
    assert PipelineRepo.stages_run(result) == ["check_params", "download", "prepare", "score_untrained", "train",
                                               "evaluate", "report"], result.stdout
    return repo


def test_labels_come_from_the_data(repo):
    assert len(LABELS) == 13
    assert json.loads((repo.root / "data/prepared/labels.json").read_text()) == LABELS
    stats = json.loads((repo.root / "data/prepared/stats.json").read_text())
    assert [stats["splits"][split]["sentences"] for split in FILES] == [10, 5, 6]
    assert stats["splits"]["valid"]["label_counts"] == {
        "B-corporation": 2, "B-creative-work": 1, "B-group": 2, "B-location": 2, "B-person": 2, "B-product": 2,
        "I-creative-work": 1, "I-person": 1, "O": 22}


def test_download_records_the_sha256_it_found(repo):
    raw = repo.root / "data/raw"
    assert sorted(p.name for p in raw.iterdir()) == ["sources.json", "test.txt", "train.txt", "valid.txt"]
    expected = {split: {"file": str(CORPUS / name), "sha256": sha256_file(CORPUS / name)}
                for split, name in FILES.items()}
    assert json.loads((raw / "sources.json").read_text()) == expected
    for split, name in FILES.items():
        assert (raw / f"{split}.txt").read_bytes() == (CORPUS / name).read_bytes()
    assert json.loads((repo.root / "data/prepared/stats.json").read_text())["sources"] == expected
    # ... and the training run's MLflow tags carry them, though data.sha256 is empty in params.yaml.
    client = MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("conll2003-ner").experiment_id])
    assert {k: v for k, v in run.data.tags.items() if k.startswith("data.")} == {
        **{f"data.sha256.{split}": source["sha256"] for split, source in expected.items()},
        **{f"data.file.{split}": source["file"] for split, source in expected.items()}}


def test_metrics_have_every_type(repo):
    metrics = json.loads((repo.root / "reports/eval/metrics.json").read_text())
    for split in ("dev", "test"):
        for mode in ("conlleval", "strict"):
            assert sorted(metrics[split][mode]["per_type"]) == TYPES
            assert 0.0 <= metrics[split][mode]["f1"] <= 1.0
    # No -DOCSTART- in this corpus: the intervals resample its sentences, and metrics.json says so.
    assert metrics["test"]["bootstrap"]["unit"] == "sentence"
    predictions = (repo.root / "reports/eval/predictions_test.conll").read_text().split("\n")
    gold = (CORPUS / "test.tsv").read_text().split("\n")
    # word, gold tag (IOB2 as written), predicted tag; sentence breaks where the corpus has them.
    assert [line.split(" ")[:2] for line in predictions if line] == [line.split("\t") for line in gold if line]
    assert predictions.count("") == gold.count("") + 1
