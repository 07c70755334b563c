"""The whole DAG with the real `dvc repro` on the fixtures and the tiny model."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from nerpipe.core.params import read_yaml
from tests.pipeline_repo import PROJECT, PipelineRepo, tiny_overrides


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("pipeline"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))
    # Each stage process records which params keys it reads (tests/param_reads.py, as its sitecustomize).
    hook, reads = tmp_path_factory.mktemp("param-reads-hook"), tmp_path_factory.mktemp("param-reads")
    shutil.copy(Path(__file__).parent / "param_reads.py", hook / "sitecustomize.py")
    plain = dict(repo.env)
    repo.env = {**plain, "PYTHONPATH": f"{hook}{os.pathsep}{repo.root}", "NERPIPE_PARAM_READS": str(reads)}
    result = repo.repro()
    repo.env = plain
    assert PipelineRepo.stages_run(result) == ["check_params", "download", "prepare", "score_untrained", "train",
                                               "evaluate", "report"], result.stdout
    repo.param_reads = {}
    for record in reads.glob("*.json"):
        record = json.loads(record.read_text())
        repo.param_reads.setdefault(record["script"], set()).update(record["reads"])
    return repo


def run_id(repo):
    return json.loads((repo.root / "reports/train/run.json").read_text())["run_id"]


def out_digests(repo):
    """{output path: md5} of every output in dvc.lock."""
    lock = read_yaml(repo.root / "dvc.lock")["stages"]
    return {out["path"]: out["md5"] for entry in lock.values() for out in entry.get("outs", [])}


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
    # Every gold word of the test split is in the predictions file, in order, in the corpus' documents
    # (two -DOCSTART- lines in the fixture), which the bootstrap resampled.
    predictions = (root / "reports/eval/predictions_test.conll").read_text()
    assert [line.split()[0] for line in predictions.splitlines() if line.strip()] == [
        line.split()[0] for line in (fixture_dir / "test.txt").read_text().splitlines() if line.strip()]
    assert predictions.count("-DOCSTART- O O\n") == 2
    assert metrics["test"]["bootstrap"] == {"unit": "document", "units": 2}
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
    assert "a bootstrap over the split's 2 dev documents, 2 test documents" in report
    timings = json.loads((root / "reports/timings/train.json").read_text())  # the wall times, apart
    assert timings["train_seconds"] > 0 and "| stage | seconds |" not in report and "sentences/s" not in report
    assert "Wall times, speed and peak memory of each stage are in reports/timings/<stage>.json" in report
    written = {p.name for p in (root / "reports/timings").iterdir()}
    assert written == {"prepare.json", "score_untrained.json", "train.json", "evaluate.json"}
    assert "seconds" not in json.loads((root / "data/prepared/stats.json").read_text())
    assert (root / "reports/figures/confusion_test.png").stat().st_size > 1000
    assert (root / "data/model/model.safetensors").exists()


def covers(key, declared):
    """`key` is `declared` or under it (train.lora.r under train)."""
    return key == declared or key.startswith(declared + ".")


def test_each_stage_reads_exactly_the_params_it_declares(repo):
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        [script] = re.findall(r"stages/\w+\.py", stage["cmd"])
        reads = repo.param_reads[script]  # every stage ran, and recorded
        declared = stage.get("params", [])
        undeclared = sorted(k for k in reads if not any(covers(k, d) for d in declared))
        unread = sorted(d for d in declared if not any(covers(k, d) for k in reads))
        assert (undeclared, unread) == ([], []), f"stage {name}: read but not in its dvc.yaml params: {undeclared}; " \
                                                 f"declared but never read: {unread}"
    # bf16 comes from the model; the bootstrap settings make the intervals
    assert repo.param_reads["stages/evaluate.py"] == {"evaluate.batch_size", "evaluate.bootstrap_samples",
                                                      "evaluate.bootstrap_seed"}
    assert {"prepare.max_length", "prepare.context", "lr"} <= repo.param_reads["stages/train.py"]


def test_nothing_changed_reruns_nothing(repo):
    assert PipelineRepo.stages_run(repo.repro()) == []


def test_lr_change_reruns_only_train_evaluate_report(repo):
    repo.commit("after first run")
    repo.first_run_id = run_id(repo)
    result = repo.run("dvc", "exp", "run", "-S", "lr=3e-5")
    assert PipelineRepo.stages_run(result) == ["check_params", "train", "evaluate", "report"]
    run = json.loads((repo.root / "reports/train/metrics.json").read_text())
    assert run["steps"] == 6
    # YAML 1.2: what `-S lr=3e-5` wrote is read back as the float, not the string "3e-05".
    from nerpipe.core.params import load_params
    assert load_params(repo.root / "params.yaml").lr == pytest.approx(3e-5)


def test_a_configuration_already_run_is_restored_from_the_run_cache(repo):
    """No persist output, so DVC run-caches train, evaluate and report: going back to a configuration
    trains nothing, and run.json names the MLflow run that made the restored model."""
    other_run_id = run_id(repo)  # lr=3e-5, from the test above
    assert other_run_id != repo.first_run_id
    repo.run("git", "checkout", "params.yaml", "dvc.lock")  # back to the committed lr=0.001
    result = repo.repro()
    assert PipelineRepo.stages_run(result) == [], result.stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in result.stdout
    assert run_id(repo) == repo.first_run_id
    assert "up to date" in repo.run("dvc", "status").stdout
    result = repo.run("dvc", "exp", "run", "-S", "lr=3e-5")
    assert PipelineRepo.stages_run(result) == ["check_params"], result.stdout
    assert run_id(repo) == other_run_id


def test_a_comment_in_the_download_code_reruns_download_and_prepare_only(repo):
    """Byte-stable outputs: the same data, re-downloaded and re-prepared, stops the cascade at prepare."""
    with open(repo.root / "nerpipe/data/fetch.py", "a") as source:
        source.write("# a comment\n")
    try:
        result = repo.repro()
    finally:
        repo.run("git", "checkout", "nerpipe/data/fetch.py")
    assert PipelineRepo.stages_run(result) == ["download", "prepare"], result.stdout


def test_each_stage_forced_again_writes_the_same_bytes(repo):
    """Every output, report.md and the figures included, byte for byte (CPU), but the two that dvc.yaml
    declares as varying: run.json (it names the MLflow run of the new training) and the timings files
    (wall times). prepare's are checked by the test above: DVC skipped what follows it."""
    before = out_digests(repo)
    stages = ["download", "score_untrained", "train", "evaluate", "report"]
    assert PipelineRepo.stages_run(repo.repro("--force", "--single-item", *stages)) == stages
    after = out_digests(repo)
    varying = {"reports/train/run.json"} | {p for p in before if p.startswith("reports/timings/")}
    assert {"data/raw", "data/prepared", "reports/untrained/metrics.json", "data/model", "reports/train/metrics.json",
            "reports/train/history.csv", "reports/eval/metrics.json", "reports/eval/predictions_test.conll",
            "reports/report.md", "reports/figures"} <= set(before)
    assert {p: d for p, d in after.items() if p not in varying} == {p: d for p, d in before.items() if p not in varying}
    assert after["reports/train/run.json"] != before["reports/train/run.json"]  # a new training is a new run
    assert after["reports/timings/train.json"] != before["reports/timings/train.json"]


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
    # lr=3e-5 twice (the second restored from the run-cache) and prepare.max_length=32
    assert len(names) == 3, names
    shown = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    params = {exp["name"]: exp["data"]["params"]["params.yaml"]["data"] for rev in shown
              for exp in (rev.get("experiments") or []) for exp in [exp["revs"][0]]}
    a, b = (next(n for n in names if params[n]["lr"] == 3e-5),
            next(n for n in names if params[n]["prepare"]["max_length"] == 32))
    main(["compare", "--repo", str(repo.root), a, b, "--json", "--resamples", "200"])
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"dev", "test"}
    for split, per_type in results.items():
        for entity_type, r in per_type.items():
            assert r["delta"] == pytest.approx(r["b"] - r["a"], abs=2e-6) and 0 < r["p_value"] <= 1, entity_type
    main(["compare", "--repo", str(repo.root), "--seeds", "--json"])
    groups = json.loads(capsys.readouterr().out)
    assert sorted(run["rev"] for group in groups for run in group["runs"]) == sorted(names)
    assert all(run["seed"] == 42 for group in groups for run in group["runs"])
