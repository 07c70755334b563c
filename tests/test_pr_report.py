"""`nerpipe pr-report` on a temporary git + DVC repository whose commits hold known metrics.

Commit 1 has the real dvc.yaml and params.yaml and no results (a project before its first run);
commit 2 is the "base" run; commit 3 the "PR" run, with lr changed. The metrics files are built by
the real scoring code from hand-made predictions, so every number in the table is known.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nerpipe.cli import main
from nerpipe.core.atomic import write_json
from nerpipe.core.set_params import set_params
from nerpipe.data.conll import format_predictions
from nerpipe.evaluate.scoring import score_split
from nerpipe.evaluate.splits import type_confusion

PROJECT = Path(__file__).resolve().parents[1]
GOLD = [["B-PER", "I-PER", "O"], ["B-LOC", "O"], ["B-ORG", "O"], ["B-MISC", "O"]]
ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}


def predict(*found_types):
    """GOLD with the entities of found_types predicted right and all others missed (tagged O)."""
    return [[tag if tag == "O" or tag[2:] in found_types else "O" for tag in sentence] for sentence in GOLD]


def write_run(root, dev_found, test_found, train_seconds, final_loss):
    """The files the train and evaluate stages write, for a model that finds the given entity types."""
    untrained = score_split(GOLD, predict())
    write_json(root / "reports/eval/metrics.json", {
        "dev": score_split(GOLD, predict(*dev_found)), "test": score_split(GOLD, predict(*test_found)),
        "before_finetuning": {split: {mode: untrained[mode] for mode in ("conlleval", "strict")}
                              for split in ("dev", "test")}})
    type_confusion(GOLD, predict(*test_found)).to_csv(root / "reports/eval/confusion_test.csv", index=False)
    for split, found in (("dev", dev_found), ("test", test_found)):
        (root / f"reports/eval/predictions_{split}.conll").write_text(
            format_predictions([[f"w{i}" for i in range(len(s))] for s in GOLD], GOLD, predict(*found)))
    write_json(root / "reports/train/metrics.json", {"steps": 6})
    write_json(root / "reports/timings/train.json", {"seconds": train_seconds + 5, "train_seconds": train_seconds})
    pd.DataFrame({"step": [3, 6], "epoch": [1.0, 2.0], "loss": [2.0, final_loss], "lr": [1e-3, 0.0]}).to_csv(
        root / "reports/train/history.csv", index=False)
    pd.DataFrame({"step": [3, 6], "epoch": [1.0, 2.0], "dev_f1": [0.1, 0.5]}).to_csv(
        root / "reports/train/dev_eval.csv", index=False)


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, env={**os.environ, **ENV}, check=True, capture_output=True)


@pytest.fixture(scope="module", autouse=True)
def no_dvc_analytics():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")
        yield


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pr-report")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, root / name)
    git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "pipeline, not run yet")
    (root / "reports/eval").mkdir(parents=True)
    (root / "reports/train").mkdir(parents=True)
    (root / "reports/timings").mkdir(parents=True)
    write_run(root, dev_found=("PER", "LOC"), test_found=("PER",), train_seconds=100.0, final_loss=1.5)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base run")
    set_params(root / "params.yaml", ["lr=3e-5"])
    write_run(root, dev_found=("PER", "LOC", "ORG"), test_found=("PER", "LOC", "ORG", "MISC"), train_seconds=90.5,
              final_loss=1.0)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "PR run")
    return root


def test_table_params_and_plots_of_two_commits(repo, tmp_path):
    main(["pr-report", "--repo", str(repo), "--base", "HEAD~1", "--head", "HEAD", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    # dev: base finds 2 of 4 entities (P 1, R .5, F1 66.67), PR 3 of 4 (F1 85.71); test: 1 of 4 vs all.
    # An unchanged type has the point interval [0, 0] and p = 1.
    # Every row but test F1 is exploratory: its p Holm-adjusted over those rows.
    for row in ["| dev F1 PER | 100.00 | 100.00 | +0.00 | [+0.00, +0.00] | Holm 1.000, not significant (exploratory) |",
                "| dev F1 MISC | 0.00 | 0.00 | +0.00 | [+0.00, +0.00] | Holm 1.000, not significant (exploratory) |",
                "| dev F1 before fine-tuning | 0.00 | 0.00 | +0.00 | – | – |",
                "| test F1 before fine-tuning | 0.00 | 0.00 | +0.00 | – | – |",
                "| train time (s) | 100.0 | 90.5 | -9.5 | – | – |",
                "| `lr` | `5e-05` | `3e-05` |"]:
        assert row in report.splitlines(), f"{row!r} not in:\n{report}"
    # The entity types are those of the data, sorted by name: the order of per_type in metrics.json and
    # of report.md's table, the same at both revisions.
    labels = [line.split(" | ")[0][2:] for line in report.splitlines() if line.startswith("| ")][1:14]
    assert labels == ["dev F1", "dev F1 LOC", "dev F1 MISC", "dev F1 ORG", "dev F1 PER", "test F1", "test F1 LOC",
                      "test F1 MISC", "test F1 ORG", "test F1 PER", "dev F1 before fine-tuning",
                      "test F1 before fine-tuning", "train time (s)"]
    assert report.startswith("## NER metrics: `HEAD` (PR) against `HEAD~1` (base)")
    # The summary line: test F1 40 -> 100, three of four sentences fixed. Only a resample that draws the
    # unchanged PER sentence four times ((1/4)^4 of them) shows no gain: p is about 0.004.
    assert report.splitlines()[2] == (
        "**Test F1 of `HEAD` is 60.00 points above `HEAD~1` (+60.00 [+14.29, +100.00] points, 95% interval; "
        "p = 0.002): significant at 0.05: a resampling of the test sentences rarely gives a difference this large "
        "by chance.**")
    assert "| test F1 | 40.00 | 100.00 | +60.00 | [+14.29, +100.00] | 0.002, significant (primary) |" in \
        report.splitlines()
    assert "Primary test, declared in advance: test F1" in report
    assert "paired bootstrap over the split's sentences (4 sentences in test)" in report
    for image in ("training-loss.png", "dev-f1-during-training.png", "test-confusion-by-entity-type.png"):
        assert f"]({image})" in report
        data = (tmp_path / image).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_working_tree_against_a_revision_prints_to_stdout(repo, capsys):
    write_run(repo, dev_found=("PER", "LOC", "ORG"), test_found=("PER", "LOC", "ORG", "MISC"), train_seconds=80.0,
              final_loss=1.0)
    try:
        main(["pr-report", "--repo", str(repo), "--base", "HEAD"])
    finally:
        git(repo, "checkout", "--", "reports")
    out = capsys.readouterr().out
    assert "| train time (s) | 90.5 | 80.0 | -10.5 | – | – |" in out.splitlines()
    assert "| dev F1 | 85.71 | 85.71 | +0.00 | [+0.00, +0.00] | Holm 1.000, not significant (exploratory) |" in \
        out.splitlines()
    assert ("**Test F1 of `working tree` is the same as `HEAD` (+0.00 [+0.00, +0.00] points, 95% interval; "
            "p = 1.000): not significant at 0.05") in out
    assert "`working tree` (PR)" in out and "No params changed." in out and "### Plots" not in out


def test_a_base_without_results_shows_dashes(repo, tmp_path):
    main(["pr-report", "--repo", str(repo), "--base", "HEAD~2", "--head", "HEAD~1", "--out", str(tmp_path)])
    report = (tmp_path / "report.md").read_text().splitlines()
    assert "| dev F1 | – | 66.67 | – | – | – |" in report
    assert ("No significance test: HEAD~2: could not read reports/eval/predictions_dev.conll "
            "(PathMissingError") in "\n".join(report)
    assert "| train time (s) | – | 100.0 | – | – | – |" in report
    assert "![Dev F1 during training](dev-f1-during-training.png)" in report  # drawn for the one revision


def test_no_results_at_either_revision_says_what_to_do(repo, capsys):
    main(["pr-report", "--repo", str(repo), "--base", "HEAD~2", "--head", "HEAD~2"])
    assert "Neither revision has reports/eval/metrics.json or reports/train/metrics.json: run the pipeline and " \
           "commit them" in capsys.readouterr().out


def test_unknown_revision_is_named(repo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pr-report", "--repo", str(repo), "--base", "no-such-branch"])
    assert exit_info.value.code == 2
    assert "unknown Git revision 'no-such-branch'" in capsys.readouterr().err
