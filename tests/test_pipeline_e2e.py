"""The whole DAG with the real `dvc repro` on the fixtures and the tiny model."""

import json

import pytest

from tests.pipeline_repo import PipelineRepo, tiny_overrides


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("pipeline"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))
    result = repo.repro()
    assert PipelineRepo.stages_run(result) == ["check_params", "download", "prepare", "score_untrained", "train",
                                               "evaluate", "report"], result.stdout
    return repo


def test_outputs_hold_real_values(repo, fixture_dir, fixture_sha256):
    root = repo.root
    labels = json.loads((root / "data/prepared/labels.json").read_text())
    assert labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    stats = json.loads((root / "data/prepared/stats.json").read_text())
    assert stats["sources"] == {split: {"file": str(fixture_dir / f"{split}.txt"), "sha256": digest}
                                for split, digest in fixture_sha256.items()}
    assert stats["splits"]["train"]["sentences"] == 10
    assert stats["splits"]["train"]["sentences_windowed"] >= 1  # the 37-word sentence at max_length 24
    metrics = json.loads((root / "reports/eval/metrics.json").read_text())
    for split in ("dev", "test"):
        for mode in ("conlleval", "strict"):
            assert 0.0 <= metrics[split][mode]["f1"] <= 1.0
        assert set(metrics[split]["conlleval"]["per_type"]) <= {"PER", "LOC", "ORG", "MISC"}
        assert "f1" in metrics["before_finetuning"][split]["conlleval"]
    # Every gold word of the test split is in the predictions file, in order.
    predictions = (root / "reports/eval/predictions_test.conll").read_text().split()
    gold_words = [line.split()[0] for line in (fixture_dir / "test.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("-DOCSTART-")]
    assert predictions[0::3] == gold_words
    history = (root / "reports/train/history.csv").read_text().splitlines()
    assert history[0] == "step,epoch,loss,lr"
    train = json.loads((root / "reports/train/metrics.json").read_text())
    assert train["steps"] == train["planned_steps"] == 6  # 10 windows+1 / batch 4 -> 3 steps x 2 epochs
    for split in ("dev", "test"):  # every F1 after fine-tuning has its bootstrap interval
        for mode in ("conlleval", "strict"):
            for s in (metrics[split][mode], *metrics[split][mode]["per_type"].values()):
                assert 0.0 <= s["f1_ci_low"] <= s["f1"] <= s["f1_ci_high"] <= 1.0
    report = (root / "reports/report.md").read_text()
    test_f1 = metrics["test"]["conlleval"]
    assert (f"| test | **all** | {100 * test_f1['precision']:.2f} | {100 * test_f1['recall']:.2f} | "
            f"**{100 * test_f1['f1']:.2f}** [{100 * test_f1['f1_ci_low']:.1f}, {100 * test_f1['f1_ci_high']:.1f}] |"
            ) in report
    assert "figures/learning_curve.png" in report
    assert (root / "reports/figures/confusion_test.png").stat().st_size > 1000
    assert (root / "data/model/model.safetensors").exists()


def test_nothing_changed_reruns_nothing(repo):
    assert PipelineRepo.stages_run(repo.repro()) == []


def test_lr_change_reruns_only_train_evaluate_report(repo):
    repo.commit("after first run")
    result = repo.run("dvc", "exp", "run", "-S", "lr=3e-5")
    assert PipelineRepo.stages_run(result) == ["check_params", "train", "evaluate", "report"]
    run = json.loads((repo.root / "reports/train/metrics.json").read_text())
    assert run["steps"] == 6
    # YAML 1.2: what `-S lr=3e-5` wrote is read back as the float, not the string "3e-05".
    from nerpipe.core.params import load_params
    assert load_params(repo.root / "params.yaml").lr == pytest.approx(3e-5)


def test_max_length_change_reruns_prepare_onward(repo):
    result = repo.run("dvc", "exp", "run", "-S", "prepare.max_length=32")
    assert PipelineRepo.stages_run(result) == ["check_params", "prepare", "score_untrained", "train", "evaluate",
                                               "report"]


def test_typo_fails_naming_the_key(repo):
    # DVC 3.67 (Hydra) itself refuses to override a key that does not exist ...
    result = repo.run("dvc", "exp", "run", "-S", "lrr=3e-5", check=False)
    assert result.returncode != 0 and "Could not override 'lrr'" in result.stderr
    # ... but `+key=` appends one, and a hand edit adds one too: check_params names the nearest valid keys.
    result = repo.run("dvc", "exp", "run", "-S", "+lrr=3e-5", check=False)
    assert result.returncode != 0
    assert "lrr: unknown key; did you mean lr?" in result.stderr + result.stdout
    assert PipelineRepo.stages_run(result) == ["check_params"]
    repo.run("git", "checkout", "params.yaml")
    result = repo.run("dvc", "exp", "run", "-S", "+train.epoch=2", check=False)
    assert result.returncode != 0
    assert "train.epoch: unknown key; did you mean train.epochs?" in result.stderr + result.stdout


def test_compare_reads_experiments_from_the_dvc_cache(repo, capsys):
    """`nerpipe compare` between two experiments of the tests above (lr 3e-5, max_length 32): their
    predictions come from the DVC cache by experiment name; `--seeds` lists this commit's experiments."""
    from nerpipe.cli import main

    names = repo.run("dvc", "exp", "ls", "--name-only").stdout.split()
    assert len(names) == 2, names  # lr=3e-5 and prepare.max_length=32
    main(["compare", "--repo", str(repo.root), names[0], names[1], "--json", "--resamples", "200"])
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"dev", "test"}
    for split, per_type in results.items():
        for entity_type, r in per_type.items():
            assert r["delta"] == pytest.approx(r["b"] - r["a"], abs=2e-6) and 0 < r["p_value"] <= 1, entity_type
    main(["compare", "--repo", str(repo.root), "--seeds", "--json"])
    groups = json.loads(capsys.readouterr().out)
    assert sorted(run["rev"] for group in groups for run in group["runs"]) == sorted(names)
    assert all(run["seed"] == 42 for group in groups for run in group["runs"])
