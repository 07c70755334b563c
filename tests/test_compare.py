"""`nerpipe compare` on prediction files that differ on known sentences, MLflow runs, and seed groups
of git revisions whose params and metrics are written by the test."""

import json
import os
import subprocess
import sys

import pytest

from nerpipe.cli import main
from nerpipe.core.atomic import write_json
from nerpipe.data.conll import format_predictions
from nerpipe.evaluate.scoring import score_split

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}

# 300 sentences, a person or a location each; the baseline misses the entity of every third one.
GOLD = [["O", "B-PER", "I-PER", "O"] if i % 2 else ["B-LOC", "O", "O"] for i in range(300)]
WORDS = [[f"w{i}.{j}" for j in range(len(s))] for i, s in enumerate(GOLD)]
MISSED = [i for i in range(300) if i % 3 == 0]
BASE = [["O"] * len(s) if i in MISSED else list(s) for i, s in enumerate(GOLD)]


def fixed(how_many):
    """BASE with the first `how_many` missed entities found."""
    return [list(GOLD[i]) if i in MISSED[:how_many] else list(s) for i, s in enumerate(BASE)]


def write_predictions(directory, pred, gold=GOLD, words=WORDS, docs=False):
    """Both splits' prediction files; docs: in documents of 10 sentences, with -DOCSTART- lines."""
    directory.mkdir(parents=True, exist_ok=True)
    doc_ids = [i // 10 for i in range(len(gold))] if docs else None
    for split in ("dev", "test"):
        (directory / f"predictions_{split}.conll").write_text(format_predictions(words, gold, pred, doc_ids))
    return directory


def compare_json(capsys, *args):
    main(["compare", *map(str, args), "--json"])
    return json.loads(capsys.readouterr().out)


def test_b_fixing_many_errors_is_significant(tmp_path, capsys):
    a, b = write_predictions(tmp_path / "a", BASE), write_predictions(tmp_path / "b", fixed(60))
    result = compare_json(capsys, a, b)
    overall = result["test"]["all"]
    # A finds 200 of 300 entities (F1 0.8), B 260 (F1 2*260/560).
    assert overall["a"] == pytest.approx(0.8) and overall["delta"] == pytest.approx(520 / 560 - 0.8, abs=1e-6)
    assert overall["ci_low"] > 0 and overall["p_value"] < 0.01
    assert set(result["test"]) == {"all", "LOC", "PER"}

    def without_holm(rows):
        return {t: {k: v for k, v in r.items() if k != "p_holm"} for t, r in rows.items()}

    assert without_holm(result["dev"]) == without_holm(result["test"])  # the same files, the same draws
    main(["compare", str(b), str(a)])  # reversed: the same p, a negative difference
    markdown = capsys.readouterr().out
    assert f"| test | **all** | {100 * 520 / 560:.2f} | 80.00 | -12.86 [" in markdown
    assert markdown.rstrip().endswith("significant at 0.05: a resampling of the test sentences rarely gives a "
                                      "difference this large by chance.")
    assert f"Test F1 of {a} is 12.86 points below {b}" in markdown


def test_the_documents_of_the_files_are_resampled_and_only_test_f1_is_primary(tmp_path, capsys):
    a, b = write_predictions(tmp_path / "a", BASE, docs=True), write_predictions(tmp_path / "b", fixed(60), docs=True)
    result = compare_json(capsys, a, b)
    assert {(r["unit"], r["units"]) for split in result.values() for r in split.values()} == {("document", 30)}
    assert result["test"]["all"]["p_holm"] == result["test"]["all"]["p_value"]  # the primary test, uncorrected
    others = [r for split, rows in result.items() for t, r in rows.items() if (split, t) != ("test", "all")]
    assert len(others) == 5 and all(r["p_holm"] >= r["p_value"] for r in others)
    main(["compare", str(a), str(b)])
    markdown = capsys.readouterr().out
    assert "(dev: 30 documents, test: 30 documents; 1000 resamples, seed 0)" in markdown
    assert "| test | **all** | 80.00 | " in markdown and " | – | yes (primary) |" in markdown
    assert "a resampling of the test documents rarely gives a difference this large by chance." in markdown


def test_no_entities_give_a_defined_answer_in_compare_and_pr_report(tmp_path, capsys):
    from nerpipe.report.pr_report import metrics_table, paired_tests

    nothing = [["O"] * len(s) for s in GOLD]
    a = write_predictions(tmp_path / "a", nothing, gold=nothing)
    b = write_predictions(tmp_path / "b", nothing, gold=nothing)
    overall = compare_json(capsys, a, b)["test"]["all"]
    assert {k: overall[k] for k in ("a", "b", "delta", "ci_low", "ci_high", "p_value")} == {
        "a": 0.0, "b": 0.0, "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    paired, summary = paired_tests(tmp_path, str(a), str(b), 200, 0)
    assert summary == (f"**Test F1 of `{b}` is the same as `{a}` (+0.00 [+0.00, +0.00] points, 95% interval; "
                       "p = 1.000): not significant at 0.05: within what resampling the test sentences gives, so "
                       "not evidence of a real change.**")
    diff = {"reports/eval/metrics.json": {"test.conlleval.f1": {"old": 0.0, "new": 0.0}}}
    assert "| test F1 | 0.00 | 0.00 | +0.00 | [+0.00, +0.00] | 1.000, not significant (primary) |" in \
        metrics_table(diff, paired).splitlines()


def test_one_flipped_sentence_is_not_significant(tmp_path, capsys):
    a, b = write_predictions(tmp_path / "a", BASE), write_predictions(tmp_path / "b", fixed(1))
    overall = compare_json(capsys, a, b)["test"]["all"]
    assert overall["delta"] == pytest.approx(2 * 201 / 501 - 0.8, abs=1e-6) and overall["delta"] > 0
    assert overall["ci_low"] <= 0 <= overall["ci_high"] and overall["p_value"] > 0.3
    main(["compare", str(a), str(b)])
    assert "not significant at 0.05: within what resampling the test sentences gives" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (lambda words, gold: (words[:-1], gold[:-1]),
     "reports/eval/predictions_dev.conll: a has 300 sentences, b 299; only predictions of the same split"),
    (lambda words, gold: ([["other"] + w[1:] if i == 4 else w for i, w in enumerate(words)], gold),
     "sentence 5 has other words in b than in a ('w4.0 w4.1 w4.2' vs 'other w4.1 w4.2')"),
    (lambda words, gold: (words, [["O"] * len(g) if i == 1 else g for i, g in enumerate(gold)]),
     "sentence 2 has other gold tags in b than in a"),
])
def test_predictions_of_different_sentences_are_refused(tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    words, gold = change(WORDS, GOLD)
    write_predictions(tmp_path / "a", BASE)
    write_predictions(tmp_path / "b", [list(s) for s in gold], gold=gold, words=words)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "a", "b"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_too_few_resamples_and_one_run_are_refused(tmp_path, capsys):
    for args, message in ((["a", "b", "--resamples", "1"],
                           "--resamples: 1 bootstrap resamples: at least 100 are needed"),
                          (["a"], "nerpipe compare takes two runs A and B (got 1); or --seeds")):
        with pytest.raises(SystemExit):
            main(["compare", *args])
        assert message in capsys.readouterr().err


def test_mlflow_runs_by_their_logged_predictions(tmp_path, capsys, monkeypatch):
    import mlflow

    # A file store: what is read is the artifact, and a new SQLite store costs 20 s of migrations.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    run_ids = []
    for name, pred in (("a", BASE), ("b", fixed(60))):
        directory = write_predictions(tmp_path / name, pred)
        with mlflow.start_run() as run:  # as the evaluate stage logs them: eval/predictions_{split}.conll
            mlflow.log_artifacts(str(directory), artifact_path="eval")
        run_ids.append(run.info.run_id)
    result = compare_json(capsys, f"runs:/{run_ids[0]}", run_ids[1])
    assert result["test"]["all"]["delta"] == pytest.approx(520 / 560 - 0.8, abs=1e-6)
    with pytest.raises(SystemExit):
        main(["compare", run_ids[0], "0" * 32])
    assert f"MLflow run {'0' * 32}: could not download eval/predictions_dev.conll" in capsys.readouterr().err


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, env={**os.environ, **ENV}, check=True, capture_output=True)


def test_seed_groups_give_mean_std_and_each_seed(tmp_path, capsys, monkeypatch):
    """Four commits: context 0 and 64, seeds 1 and 2 each; their test F1 is set by what they find."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    for context, seed, found in ((0, 1, 30), (0, 2, 60), (64, 1, 90), (64, 2, 100)):
        (root / "params.yaml").write_text(f"lr: 5.0e-05\nprepare:\n  context: {context}\ntrain:\n  seed: {seed}\n")
        scores = score_split(GOLD, fixed(found))
        write_json(root / "reports/eval/metrics.json", {"dev": scores, "test": scores})
        git(root, "add", "-A")
        git(root, "commit", "-qm", f"context {context} seed {seed}")
        git(root, "tag", f"c{context}-s{seed}")
    main(["compare", "--repo", str(root), "--seeds", "c0-s1", "c0-s2", "c64-s1", "c64-s2"])
    markdown = capsys.readouterr().out.splitlines()
    f1 = {found: 100 * 2 * (200 + found) / (500 + found) for found in (30, 60, 90, 100)}
    assert "### `prepare.context=0`: 2 seed(s): 1 (`c0-s1`), 2 (`c0-s2`)" in markdown
    assert "| metric | mean ± std | seed 1 | seed 2 |" in markdown
    std = abs(f1[30] - f1[60]) / 2 ** 0.5
    assert f"| test F1 | {(f1[30] + f1[60]) / 2:.2f} ± {std:.2f} | {f1[30]:.2f} | {f1[60]:.2f} |" in markdown
    assert f"| test F1 | {(f1[90] + f1[100]) / 2:.2f} ± {abs(f1[90] - f1[100]) / 2 ** 0.5:.2f} | {f1[90]:.2f} | " \
           f"{f1[100]:.2f} |" in markdown
    main(["compare", "--repo", str(root), "--seeds", "c0-s1", "c64-s2"])
    assert f"| test F1 | {f1[30]:.2f} ± – | {f1[30]:.2f} |" in capsys.readouterr().out.splitlines()  # one seed
    main(["compare", "--repo", str(root), "--seeds", "c0-s1", "c64-s2", "--json"])
    groups = json.loads(capsys.readouterr().out)
    assert [(g["params"]["prepare.context"], [r["seed"] for r in g["runs"]]) for g in groups] == [(0, [1]), (64, [2])]
    assert groups[1]["runs"][0]["f1"]["test.conlleval.f1"] == pytest.approx(f1[100] / 100, abs=1e-6)
