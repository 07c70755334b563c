"""Shared fixtures: the hand-written CoNLL files in tests/fixtures, a tiny random BERT built offline, and
one tiny random base encoder per family (`family_model_dir`: BERT, RoBERTa, XLM-R, DeBERTa-v3, ELECTRA,
DistilBERT, ModernBERT).

The tests run on the CPU, also on a machine with a GPU: they assert byte-identical resumes and exact
numbers, which CUDA does not promise. Before anything can initialise CUDA, this file hides every GPU
from the test process and from what it starts (`dvc repro`, benchmark workers inherit the variable).
Tests marked `cuda` are about the GPU path: they run only with NERPIPE_TEST_CUDA=1 (which leaves the
GPUs visible, and so deselects every other test) on a machine where CUDA is available, as
bench/gpu_check.sh runs them; otherwise they are deselected, and the summary says so and why.
"""

import os

CUDA_MODE = os.environ.get("NERPIPE_TEST_CUDA") == "1"
if not CUDA_MODE:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # must precede CUDA's initialisation; torch reads it then

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_model import FAMILIES, build_tiny_family, build_tiny_model  # noqa: E402

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


@pytest.fixture(scope="session", params=FAMILIES)
def family_model_dir(request, tmp_path_factory):
    """One tiny random base encoder (no head) per family, with a tokenizer of its kind, written once per run:
    (family, directory). Tests taking it run once per family."""
    family = request.param
    return family, build_tiny_family(tmp_path_factory.mktemp(f"tiny-{family}"), family)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, fixture_dir, tiny_tokenizer):
    """The fixtures as the prepare stage writes them under the tiny profile (max_length 24)."""
    from nerpipe.core.params import SPLITS, PrepareParams
    from nerpipe.data.prepare import prepare_corpus
    from nerpipe.data.prepared import read_labels

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_corpus({split: fixture_dir / f"{split}.txt" for split in SPLITS}, tiny_tokenizer,
                   PrepareParams(max_length=24, window_overlap=4), out)
    assert read_labels(out) == CONLL_LABELS
    return out


def pytest_collection_modifyitems(config, items):
    """Deselect the `cuda` tests unless they can run: pinned to the CPU (the default), or no GPU. With
    NERPIPE_TEST_CUDA=1 deselect the others instead: they assume the CPU they are otherwise pinned to."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if CUDA_MODE:
        others = [item for item in items if not item.get_closest_marker("cuda")]
        if others:
            config.hook.pytest_deselected(items=others)
            items[:] = cuda_tests
    if not cuda_tests:
        return
    import torch

    if CUDA_MODE and torch.cuda.is_available():
        return
    if CUDA_MODE:
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise pytest.UsageError("NERPIPE_TEST_CUDA=1 asks for the `cuda` tests, but torch sees no CUDA GPU "
                                f"(torch {torch.__version__}, {build}; "
                                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    config._nerpipe_cuda_deselected = len(cuda_tests)
    config.hook.pytest_deselected(items=cuda_tests)
    items[:] = [item for item in items if not item.get_closest_marker("cuda")]


def pytest_terminal_summary(terminalreporter, config):
    deselected = getattr(config, "_nerpipe_cuda_deselected", 0)
    if deselected:
        terminalreporter.write_line(
            f"{deselected} `cuda` test(s) deselected: the tests are pinned to the CPU "
            "(CUDA_VISIBLE_DEVICES=''); they run with NERPIPE_TEST_CUDA=1 on a machine with a CUDA GPU "
            "(bench/gpu_check.sh does)", yellow=True)
