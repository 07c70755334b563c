"""The pipeline's steps on every encoder family (tiny random models of each kind, tests/tiny_model.py), in
process: prepare, a few training steps crashed mid-epoch and resumed (ending exactly as the uninterrupted
run), evaluate, `nerpipe predict` with character offsets, and the MLflow pyfunc model's class.

One run per family, shared by the tests through the `family_run` fixture; `dvc exp run` with a RoBERTa
directory is in tests/test_families_e2e.py."""

import json
import shutil
import types

import pytest
import torch
from safetensors.torch import load_file
from seqeval.metrics.sequence_labeling import get_entities

from nerpipe.cli import main
from nerpipe.core.params import SPLITS, PrepareParams, TrainParams
from nerpipe.data.prepare import prepare_corpus
from nerpipe.data.prepared import PreparedSplit, read_labels
from nerpipe.evaluate.splits import evaluate_splits
from nerpipe.model.description import describe_trained
from nerpipe.model.loading import load_for_training, load_tokenizer, load_trained
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.loop import DevSet, RunContext, dev_scorer, fit
from tests.conftest import FIXTURE_DIR
from tests.test_resume import Crash, without_timing

# 12 training windows, batch 4: 3 optimizer steps per epoch, 6 in all; a checkpoint every 2 steps.
CFG = TrainParams(epochs=2, batch_size=4, warmup_ratio=0.0, patience=0, checkpoint_every=2, seed=42, bf16="off",
                  dropout=0.0)
LR = 1e-3
MAX_LENGTH, OVERLAP = 24, 4


def train(model_dir, prepared, checkpoint_dir, pad_id, log_metrics=lambda metrics, step: None):
    model = load_for_training(str(model_dir), read_labels(prepared), CFG.dropout, CFG.seed)
    train_split, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    checkpoints = Checkpoints(checkpoint_dir, "tiny")
    device = torch.device("cpu")
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train_split.examples, RunContext(CFG, LR, pad_id, device, False, checkpoints,
                                                        dev_scorer(devset, pad_id, device, False), log_metrics,
                                                        log_every=1))
    return state, model, checkpoints


@pytest.fixture(scope="session")
def family_run(family_model_dir, tmp_path_factory):
    """Per family: prepared data, an uninterrupted run and a crashed-then-resumed one, and the model
    directory the train stage would write (best checkpoint + tokenizer)."""
    family, base = family_model_dir
    root = tmp_path_factory.mktemp(f"run-{family}")
    tokenizer = load_tokenizer(str(base))
    prepared = root / "prepared"
    prepare_corpus({split: FIXTURE_DIR / f"{split}.txt" for split in SPLITS}, tokenizer,
                   PrepareParams(max_length=MAX_LENGTH, window_overlap=OVERLAP), prepared)
    reference = train(base, prepared, root / "reference", tokenizer.pad_token_id)

    def crash_at_step_5(metrics, step):  # after the checkpoint at step 4
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(base, prepared, root / "resumed", tokenizer.pad_token_id, log_metrics=crash_at_step_5)
    crashed_at = torch.load(root / "resumed/last/state.pt", weights_only=True)["state"]
    resumed = train(base, prepared, root / "resumed", tokenizer.pad_token_id)
    model_dir = shutil.copytree(resumed[2].best_dir, root / "model")
    tokenizer.save_pretrained(model_dir)  # as the train stage does (nerpipe.train.outputs.export_model)
    describe_trained(model_dir, prepared, PrepareParams(max_length=MAX_LENGTH, window_overlap=OVERLAP), "off")
    return types.SimpleNamespace(family=family, prepared=prepared, tokenizer=tokenizer, reference=reference,
                                 resumed=resumed, crashed_at=crashed_at, model_dir=model_dir)


def test_crash_then_resume_ends_like_the_uninterrupted_run(family_run):
    (ref_state, ref_model, ref_checkpoints), (state, model, checkpoints) = family_run.reference, family_run.resumed
    assert family_run.crashed_at["step"] == 4 and state.step > 4
    assert without_timing(state) == without_timing(ref_state)
    reference = ref_model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in model.state_dict().items())
    a, b = load_file(checkpoints.best_dir / "model.safetensors"), load_file(ref_checkpoints.best_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_evaluate_scores_every_word(family_run):
    model = load_trained(family_run.model_dir)
    results = evaluate_splits(model, family_run.prepared, family_run.tokenizer.pad_token_id, 8, torch.device("cpu"))
    for name, result in results.items():
        assert [len(tags) for tags in result["pred"]] == [len(w) for w in result["data"].words], name
        assert 0.0 <= result["scores"]["conlleval"]["f1"] <= 1.0


def predicted(capsys, model_dir, texts, fmt):
    assert main(["predict", "--format", fmt, "--model", str(model_dir), "--max-length", str(MAX_LENGTH),
                 "--window-overlap", str(OVERLAP), "--bf16", "off", *texts]) == 0
    return capsys.readouterr().out


def test_predict_gives_evaluate_tags_and_entities_at_their_offsets(family_run, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    test = PreparedSplit(family_run.prepared, "test")
    texts = [" ".join(words) for words in test.words]
    evaluated = evaluate_splits(load_trained(family_run.model_dir), family_run.prepared,
                                family_run.tokenizer.pad_token_id, 8, torch.device("cpu"))["test"]["pred"]
    conll = predicted(capsys, family_run.model_dir, texts, "conll").strip().split("\n\n")
    tags = [[line.split(" ")[1] for line in block.splitlines()] for block in conll]
    assert tags == [list(t) for t in evaluated]  # raw text and prepared data: same windows, same tags
    records = [json.loads(line) for line in predicted(capsys, family_run.model_dir, texts, "jsonl").splitlines()]
    found = 0
    for text, words, record, word_tags in zip(texts, test.words, records, tags):
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        expected = [(kind, starts[first], starts[last] + len(words[last])) for kind, first, last in get_entities(word_tags)]
        assert [(e["type"], e["start"], e["end"]) for e in record["entities"]] == expected
        assert all(text[e["start"]:e["end"]] == e["text"] for e in record["entities"])
        found += len(expected)
    assert found  # the barely trained head tags entities somewhere: the offsets above were checked


def test_mlflow_pyfunc_model_answers_what_predict_does(family_run, capsys, tmp_path, monkeypatch):
    from nerpipe.predict.pyfunc_model import EntityTagger

    monkeypatch.chdir(tmp_path)
    tagger = EntityTagger()  # its settings come from the model's nerpipe_model.json
    tagger.load_context(types.SimpleNamespace(artifacts={"save_pretrained": str(family_run.model_dir)}))
    texts = ["John Smith flew to Berlin on Monday .", "Maria arrived in Paris (Germany) on Friday."]
    expected = [json.loads(line)["entities"] for line in predicted(capsys, family_run.model_dir, texts, "jsonl").splitlines()]
    assert tagger.predict(texts) == expected
