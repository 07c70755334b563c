"""A new user's run with a RoBERTa-family model: `dvc exp run -S model.name=<tiny RoBERTa directory>
-S train.method=lora` runs the whole DAG on the fixtures, data/prepared holds running-text sub-tokens,
and `nerpipe predict` answers entities at their character offsets."""

import json

import pytest
from datasets import load_from_disk

from nerpipe.cli import main
from nerpipe.model.loading import load_tokenizer
from tests.pipeline_repo import PipelineRepo, tiny_overrides
from tests.tiny_model import build_tiny_family


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return build_tiny_family(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


def test_exp_run_with_a_roberta_model_and_lora(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir,
                                               roberta_dir, capsys, monkeypatch):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("roberta-pipeline"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))
    result = repo.run("dvc", "exp", "run", "-S", f"model.name={roberta_dir}", "-S", "train.method=lora")
    assert PipelineRepo.stages_run(result) == ["check_params", "download", "prepare", "score_untrained", "train",
                                               "evaluate", "report"], result.stdout
    root = repo.root
    # data/prepared: each sentence's ids between <s> and </s> are its running text's sub-tokens.
    tokenizer = load_tokenizer(str(roberta_dir))
    sentences = load_from_disk(str(root / "data/prepared/test/sentences"))
    examples = load_from_disk(str(root / "data/prepared/test/examples"))
    windows = examples["sentence_id"]
    whole = 0
    for e in examples:
        words = sentences[e["sentence_id"]]["words"]
        ids, in_text = e["input_ids"], tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        assert (ids[0], ids[-1]) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
        inner = ids[1:-1]  # a window: a run of the sentence's running-text sub-tokens
        assert any(in_text[i:i + len(inner)] == inner for i in range(len(in_text) - len(inner) + 1))
        if windows.count(e["sentence_id"]) == 1:
            whole += 1
            assert inner == in_text
            assert tokenizer.decode(ids, skip_special_tokens=True) == " " + " ".join(words)
    assert whole >= 5 and len(examples) > len(sentences)  # sentences in one window, and windowed ones
    assert json.loads((root / "data/model/nerpipe_model.json").read_text())["method"]["method"] == "lora"
    assert json.loads((root / "data/model/config.json").read_text())["model_type"] == "roberta"
    lora = json.loads((root / "data/model/adapter/adapter_config.json").read_text())
    assert sorted(lora["target_modules"]) == ["query", "value"]  # peft's default for roberta
    metrics = json.loads((root / "reports/eval/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["conlleval"]["f1"] <= 1.0
    # nerpipe predict, from the repository (its params.yaml gives the windows), on the trained model.
    monkeypatch.chdir(root)
    texts = ["John Smith flew to Berlin on Monday .", "Maria Blackburn works for Reuters in London ."]
    capsys.readouterr()
    assert main(["predict", "--format", "jsonl", "--model", "data/model", *texts]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == texts
    entities = [e for r in records for e in r["entities"]]
    assert entities, records  # the barely trained head still tags some words
    for record in records:
        for e in record["entities"]:
            assert record["text"][e["start"]:e["end"]] == e["text"]
            assert e["start"] == 0 or record["text"][e["start"] - 1] == " "  # entities start at a word
