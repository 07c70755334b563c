"""`dvc exp run -S prepare.context=64` on the tiny pipeline: prepared data with context, a trained and
evaluated model, and the context recorded with the model for `nerpipe predict`."""

import json

from datasets import load_from_disk

from tests.pipeline_repo import PipelineRepo, tiny_overrides


def test_exp_run_with_context_64(tmp_path, fixture_dir, fixture_sha256, tiny_model_dir, tiny_tokenizer):
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
    # Every gold word of every split is scored: the predictions file holds them all, in order.
    predictions = (root / "reports/eval/predictions_test.conll").read_text().split()
    gold_words = [line.split()[0] for line in (fixture_dir / "test.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("-DOCSTART-")]
    assert predictions[0::3] == gold_words
    metrics = json.loads((root / "reports/eval/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["conlleval"]["f1"] <= 1.0
    # The model logged to MLflow records the context; nerpipe predict reads it from there.
    run_id = json.loads((root / "reports/train/run.json").read_text())["run_id"]
    settings = list((root / "mlartifacts").rglob("nerpipe_predict.json")) if (root / "mlartifacts").exists() else []
    settings += [p for p in (root / "mlruns").rglob("nerpipe_predict.json")] if (root / "mlruns").exists() else []
    assert settings, f"no nerpipe_predict.json logged for run {run_id}"
    assert json.loads(settings[0].read_text())["context"] == 64
