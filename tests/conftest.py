"""Shared fixtures: the hand-written CoNLL files in tests/fixtures and a tiny random BERT built offline."""

import hashlib
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

FIXTURE_DIR = Path(__file__).parent / "fixtures"
CONLL_LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def fixture_dir():
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_sha256(fixture_dir):
    """{'train': sha256 of train.txt, 'valid': ..., 'test': ...}: what data.sha256 would hold."""
    return {split: sha256_file(fixture_dir / f"{split}.txt") for split in ("train", "valid", "test")}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A BertForTokenClassification with the 9 CoNLL labels and its tokenizer, written once per run."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), labels=CONLL_LABELS)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
