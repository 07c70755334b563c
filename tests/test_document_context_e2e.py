"""`dvc exp run -S prepare.context=64` on the tiny pipeline: prepared data with context, a trained and
evaluated model, and the context recorded with the model (nerpipe_model.json): a copy of data/model predicts
with it anywhere, as inside the repository."""

import json
import shutil

from datasets import load_from_disk

from nerpipe.cli import main
from nerpipe.data.conll import read_conll
from tests.pipeline_repo import PipelineRepo, tiny_overrides


def test_exp_run_with_context_64(tmp_path, fixture_dir, fixture_sha256, tiny_model_dir, tiny_tokenizer, monkeypatch,
                                 capsys):
    repo = PipelineRepo.create(tmp_path / "repo", tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))
    result = repo.run("dvc", "exp", "run", "-S", "prepare.context=64")
    assert PipelineRepo.stages_run(result) == ["check_params", "download", "prepare", "score_untrained", "train",
                                               "evaluate", "report"]
    root = repo.root
    stats = json.loads((root / "data/prepared/stats.json").read_text())["splits"]
    assert stats["train"]["documents"] == 2 and stats["train"]["sentences"] == 10
    sentences = load_from_disk(str(root / "data/prepared/train/sentences"))
    examples = load_from_disk(str(root / "data/prepared/train/examples"))
    # Sentence 1 ("Reuters reported ...") starts with the end of sentence 0 as context, never scored.
    first = examples[next(i for i, s in enumerate(examples["sentence_id"]) if s == 1)]
    tokens = tiny_tokenizer.convert_ids_to_tokens(first["input_ids"])
    start = first["word_index"].index(0)
    sentence_0 = tiny_tokenizer(sentences[0]["words"], is_split_into_words=True, add_special_tokens=False)
    assert tokens[0] == "[CLS]" and start > 1 and tokens[start] == "Reuters"
    assert first["input_ids"][1:start] == sentence_0["input_ids"][-(start - 1):]  # ... Monday .
    assert tokens[start - 2:start] == ["Monday", "."]
    assert first["labels"][:start] == [-100] * start and first["word_index"][:start] == [-1] * start
    # Every gold word of every split is scored: the predictions file holds them all, in order, in the
    # corpus' documents (its -DOCSTART- lines kept).
    predictions = (root / "reports/eval/predictions_test.conll").read_text().split()
    gold_words = [line.split()[0] for line in (fixture_dir / "test.txt").read_text().splitlines() if line.strip()]
    assert predictions[0::3] == gold_words
    metrics = json.loads((root / "reports/eval/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["conlleval"]["f1"] <= 1.0
    # data/model describes itself: the context it was trained with, its windows, labels and data.
    described = json.loads((root / "data/model/nerpipe_model.json").read_text())
    assert {k: described[k] for k in ("max_length", "window_overlap", "context", "bf16", "tag_scheme")} == {
        "max_length": 24, "window_overlap": 4, "context": 64, "bf16": "auto", "tag_scheme": "IOB2"}
    assert described["labels"] == json.loads((root / "data/prepared/labels.json").read_text())
    assert described["data_sha256"] == fixture_sha256 and described["method"] == {"method": "full", "merged": True}
    # The model logged to MLflow carries the same file, inside its save_pretrained copy.
    logged = [p for p in root.glob("mlartifacts/**/save_pretrained/nerpipe_model.json")]
    assert [p.read_bytes() for p in logged] == [(root / "data/model/nerpipe_model.json").read_bytes()]
    copied_model_predicts_as_in_the_repository(root, tmp_path, monkeypatch, capsys)


def copied_model_predicts_as_in_the_repository(root, tmp_path, monkeypatch, capsys):
    """data/model copied to an empty directory, used from a directory without params.yaml: the same entities
    as inside the repository, where params.yaml says prepare.context: 64 too; and context is applied."""
    texts = [" ".join(s.words) for s in read_conll(root / "data/raw/test.txt")]
    document = [" ".join(texts)]  # one text: its sentences tagged with their neighbours as context

    def predict(*args):
        assert main(["predict", "--format", "jsonl", *args, *document]) == 0
        return [json.loads(line)["entities"] for line in capsys.readouterr().out.splitlines()]

    monkeypatch.chdir(root)
    inside = predict("--model", "data/model")
    copy = shutil.copytree(root / "data/model", tmp_path / "elsewhere" / "model")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert predict("--model", str(copy)) == inside
    assert inside[0], "no entities: the comparison would prove nothing"
    assert predict("--model", str(copy), "--context", "0") != inside  # what predicting without context gives
