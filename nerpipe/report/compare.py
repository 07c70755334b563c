"""Is a difference real? Paired bootstrap of two runs' F1, or the spread of runs that differ only in seed.

    nerpipe compare main exp-context64               # B against A: F1 difference, its interval, p-value
    nerpipe compare HEAD~1 HEAD --json               # the same as JSON
    nerpipe compare runs:/<run id A> <run id B>      # MLflow runs (their logged eval/ predictions)
    nerpipe compare --seeds                          # this commit's experiments, grouped by all params but
                                                     # train.seed: mean ± std and each seed's F1
    nerpipe compare --seeds exp-s1 exp-s2 exp-s3     # those revisions only

A and B are each a git revision or DVC experiment name (its reports/eval/predictions_{dev,test}.conll,
read from git or the DVC cache), `workspace` (the files on disk), a directory holding those two files,
or an MLflow run id (32 hex digits, or runs:/<id>). Both must hold the same sentences and gold tags:
predictions of different splits cannot be paired, and are refused.

The test resamples the documents of the split (its sentences where the files hold no `-DOCSTART-`
markers) 1,000 times (--resamples, seeded by --seed) and applies the same resample to both runs
(nerpipe.evaluate.bootstrap): Δ = F1(B) - F1(A), the percentile interval of the resampled Δ, and a
two-sided shift p-value. One comparison is declared primary before looking: overall test F1, tested
at 0.05 as it is. Every other row (dev, and each entity type) is one more test of the same two runs,
so its p-value is Holm-adjusted over those rows, and they are exploratory. Seed groups read params.yaml
and reports/eval/metrics.json at each revision (docs/experiments.md, "Confidence intervals and
significance").
"""

import json
import re
import statistics
import sys
from pathlib import Path

from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.evaluate.metrics import SPLITS, flatten_metrics, headline_rows, metric_name

# numpy, seqeval, dvc and mlflow are imported where they are used: the `nerpipe` CLI imports every
# command module on each command.

PREDICTIONS = "reports/eval/predictions_{split}.conll"
EVAL_METRICS = "reports/eval/metrics.json"
PARAMS = "params.yaml"
WORKSPACE = "workspace"
RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})/?$")
ALPHA = 0.05
PRIMARY = ("test", None)  # the one pre-declared comparison: overall test F1; every other row is exploratory
SEED_KEY = "train.seed"


def read_source(repo, source, path):
    """The text of `path` (relative to the repository root) as `source` has it: a revision or DVC
    experiment, `workspace` or None (on disk), a directory (its file of the same name), or an MLflow
    run (the artifact eval/<file name>, as the evaluate stage logs it)."""
    repo = Path(repo)
    if source in (None, WORKSPACE):
        return _read_file(repo / path, source or WORKSPACE)
    if Path(source).is_dir():
        return _read_file(Path(source) / Path(path).name, source)
    run = RUN_ID.match(source)
    if run:
        return _read_run_artifact(run.group(1), f"eval/{Path(path).name}")
    return _read_at_revision(repo, source, path)


def _read_file(path, source):
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{source}: {path} not found; run `dvc repro evaluate` first") from None


def _read_at_revision(repo, rev, path):
    import dvc.api
    from dvc.scm import SCM, RevError, resolve_rev

    try:
        commit = resolve_rev(SCM(str(repo)), rev)  # also resolves DVC experiment names
    except RevError as err:
        raise UserError(f"{rev!r} is not a revision, DVC experiment, directory or MLflow run id of {repo} "
                        f"({err})") from None
    try:
        return dvc.api.read(path, repo=str(repo), rev=commit)
    except Exception as err:  # FileNotFoundError, PathMissingError, a missing cache entry: all "not there"
        raise UserError(f"{rev}: could not read {path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                        "the revision must have run the evaluate stage, and its outputs must be in the DVC "
                        "cache (`dvc pull`)") from None


def _read_run_artifact(run_id, artifact):
    import mlflow

    from nerpipe.track.store import tracking_uri

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                    tracking_uri=tracking_uri())
    except Exception as err:  # MlflowException, OSError: the run or its artifact is not there
        raise UserError(f"MLflow run {run_id}: could not download {artifact} from {tracking_uri()} "
                        f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); set "
                        "MLFLOW_TRACKING_URI to the store of that run") from None
    return Path(local).read_text(encoding="utf-8")


def paired_predictions(text_a, text_b, name_a, name_b, path):
    """(gold, pred A, pred B, document ids) of two predictions files; UserError unless they hold the same
    sentences in the same documents."""
    from nerpipe.data.conll import parse_prediction_documents

    (words_a, gold_a, pred_a, docs_a), (words_b, gold_b, pred_b, docs_b) = (
        parse_prediction_documents(text_a), parse_prediction_documents(text_b))
    if len(words_a) != len(words_b):
        raise UserError(f"{path}: {name_a} has {len(words_a)} sentences, {name_b} {len(words_b)}; only "
                        "predictions of the same split can be compared")
    for i, (wa, wb, ga, gb) in enumerate(zip(words_a, words_b, gold_a, gold_b)):
        if wa != wb or ga != gb:
            what = "words" if wa != wb else "gold tags"
            raise UserError(f"{path}: sentence {i + 1} has other {what} in {name_b} than in {name_a} "
                            f"({' '.join(wa[:8])!r} vs {' '.join(wb[:8])!r}); only predictions of the same "
                            "split can be compared (was the data or prepare changed?)")
    if docs_a != docs_b:  # a file written before document ids were kept: resample the sentences of both
        docs_a = None
    return gold_a, pred_a, pred_b, docs_a


def compare_runs(repo, a, b, resamples=1000, seed=0, mode="conlleval", splits=SPLITS):
    """{split: {None or entity type: paired_bootstrap result}} of B against A, each with "p_holm": its
    p-value itself for the PRIMARY comparison, Holm-adjusted over all the other (exploratory) rows."""
    from nerpipe.evaluate.bootstrap import paired_bootstrap

    results = {}
    for split in splits:
        path = PREDICTIONS.format(split=split)
        gold, pred_a, pred_b, doc_ids = paired_predictions(read_source(repo, a, path), read_source(repo, b, path),
                                                           a or WORKSPACE, b or WORKSPACE, path)
        results[split] = paired_bootstrap(gold, pred_a, pred_b, mode, resamples, seed, doc_ids)
    return with_holm(results)


def with_holm(results):
    """results with "p_holm" in each row: the primary row's own p, Holm over the exploratory rows."""
    from nerpipe.evaluate.bootstrap import holm_adjusted

    rows = [(split, t) for split, per_type in results.items() for t in per_type if (split, t) != PRIMARY]
    adjusted = dict(zip(rows, holm_adjusted([results[split][t]["p_value"] for split, t in rows])))
    return {split: {t: {**r, "p_holm": r["p_value"] if (split, t) == PRIMARY else adjusted[split, t]}
                    for t, r in per_type.items()} for split, per_type in results.items()}


def is_primary(split, entity_type):
    return (split, entity_type) == PRIMARY


def significant(result):
    """Significant at ALPHA after the correction ("p_holm"; the primary row's own p)."""
    return result["p_holm"] < ALPHA


def unit_phrase(result):
    """What the test resampled, in words: "231 documents"."""
    return f"{result['units']} {result['unit']}s"


def by_metric_name(results, mode="conlleval"):
    """compare_runs' results keyed by the metric catalogue's names (test.conlleval.PER.f1)."""
    return {metric_name(split, mode, "f1", t): r for split, per_type in results.items() for t, r in per_type.items()}


def format_p(p_value):
    """Three decimals: 1,000 resamples cannot give a p-value below 1/1001."""
    return f"{p_value:.3f}"


def delta_with_interval(result):
    """`+1.06 [+0.31, +1.80]`: Δ F1 in points and its 95% interval."""
    return f"{100 * result['delta']:+.2f} [{100 * result['ci_low']:+.2f}, {100 * result['ci_high']:+.2f}]"


def summary_sentence(result, split="test", a="A", b="B"):
    """The difference in words, for the PR comment and `nerpipe compare`."""
    delta = 100 * result["delta"]
    direction = "the same as" if delta == 0 else f"{abs(delta):.2f} points {'above' if delta > 0 else 'below'}"
    units = f"{split} {result['unit']}s"
    if result["p_value"] < ALPHA:
        verdict = (f"significant at {ALPHA}: a resampling of the {units} rarely gives a difference "
                   "this large by chance")
    else:
        verdict = (f"not significant at {ALPHA}: within what resampling the {units} gives, so not "
                   "evidence of a real change")
    return (f"{split.capitalize()} F1 of {b} is {direction} {a} ({delta_with_interval(result)} points, 95% "
            f"interval; p = {format_p(result['p_value'])}): {verdict}.")


def comparison_markdown(results, a, b, resamples, seed, mode):
    units = ", ".join(f"{split}: {unit_phrase(per_type[None])}" for split, per_type in results.items())
    lines = [f"## `{b}` (B) against `{a}` (A)",
             f"Entity F1 in % ({mode} mode); Δ = B - A in points with its 95% interval; p: two-sided paired "
             f"bootstrap shift test ({units}; {resamples} resamples, seed {seed}). The primary comparison, "
             f"declared in advance, is overall test F1, tested at {ALPHA} as it is; every other row is "
             "exploratory, its p Holm-adjusted over those rows (p Holm).", "",
             f"| split | type | A | B | Δ [95% interval] | p | p Holm | significant at {ALPHA} |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for split, per_type in results.items():
        for t, r in per_type.items():
            verdict = ("yes" if significant(r) else "no") + (" (primary)" if is_primary(split, t) else "")
            holm = "–" if is_primary(split, t) else format_p(r["p_holm"])
            lines.append(f"| {split} | {t or '**all**'} | {100 * r['a']:.2f} | {100 * r['b']:.2f} | "
                         f"{delta_with_interval(r)} | {format_p(r['p_value'])} | {holm} | {verdict} |")
    if "test" in results:
        lines += ["", summary_sentence(results["test"][None], "test", a, b)]
    return "\n".join(lines) + "\n"


# --- seeds ---------------------------------------------------------------------------------------------

def experiment_names(repo):
    """The finished DVC experiments of the current commit (what `dvc exp show` lists under it; queued,
    running and failed ones have no results yet)."""
    import dvc.api

    rows = dvc.api.exp_show(repo=str(repo))
    return [row.get("Experiment") or row["rev"] for row in rows
            if row.get("typ") != "baseline" and row.get("State") in (None, "Success")]


def run_summary(repo, rev):
    """(params, metrics) of one revision: its params.yaml flattened to dotted keys as written (an older
    revision's keys need not be today's), and its evaluate metrics.json."""
    from ruamel.yaml import YAML

    params = _dotted(YAML(typ="safe", pure=True).load(read_source(repo, rev, PARAMS)) or {})
    return params, json.loads(read_source(repo, rev, EVAL_METRICS))


def _dotted(mapping, prefix=""):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out |= _dotted(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def seed_groups(summaries):
    """[(shared params, [(seed, rev, metrics), ...])] of runs that differ only in train.seed, in the order
    first seen; summaries is [(rev, params, metrics)]."""
    groups = {}
    for rev, params, metrics in summaries:
        shared = {k: v for k, v in params.items() if k != SEED_KEY}
        key = json.dumps(shared, sort_keys=True, default=str)
        groups.setdefault(key, (shared, []))[1].append((params.get(SEED_KEY), rev, metrics))
    return list(groups.values())


def seed_statistics(runs):
    """[(label, mean, std, [value per run])] of the headline F1s (std: sample; None for one run)."""
    rows = []
    for label, name in headline_rows(*(metrics for _, _, metrics in runs)):
        values = [flatten_metrics(metrics).get(name) for _, _, metrics in runs]
        if any(v is None for v in values):
            continue
        std = statistics.stdev(values) if len(values) > 1 else None
        rows.append((label, statistics.fmean(values), std, values))
    return rows


def seeds_markdown(groups):
    differing = sorted({k for shared, _ in groups for k in shared
                        if len({json.dumps(s.get(k), default=str) for s, _ in groups}) > 1})
    parts = ["## Runs that differ only in `train.seed`",
             "Entity F1 in % (conlleval mode): mean ± sample standard deviation over the seeds, then each "
             "seed's value."]
    for shared, runs in groups:
        setting = ", ".join(f"`{k}={shared.get(k)}`" for k in differing) or "the same params"
        seeds = ", ".join(f"{seed} (`{rev}`)" for seed, rev, _ in runs)
        lines = [f"### {setting}: {len(runs)} seed(s): {seeds}", "",
                 "| metric | mean ± std | " + " | ".join(f"seed {seed}" for seed, _, _ in runs) + " |",
                 "|---|---:|" + "---:|" * len(runs)]
        for label, mean, std, values in seed_statistics(runs):
            spread = "–" if std is None else f"{100 * std:.2f}"
            lines.append(f"| {label} | {100 * mean:.2f} ± {spread} | "
                         + " | ".join(f"{100 * v:.2f}" for v in values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


# --- command -------------------------------------------------------------------------------------------

def check_resamples(resamples):
    from nerpipe.evaluate import bootstrap

    try:
        bootstrap.check_resamples(resamples)
    except ValueError as err:
        raise UserError(f"--resamples: {err} (1000 is usual)") from None


def add_arguments(parser):
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="A and B (or, with --seeds, the runs to group; default: this commit's experiments)")
    parser.add_argument("--seeds", action="store_true",
                        help="group runs that differ only in train.seed: mean ± std and each seed's F1")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git + DVC repository (default: .)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: 0)")
    parser.add_argument("--mode", choices=("conlleval", "strict"), default="conlleval",
                        help="entity matching of nerpipe.evaluate.scoring (default: conlleval)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def run(args):
    with exit_on_user_error():
        check_resamples(args.resamples)
        if args.seeds:
            revs = args.runs or experiment_names(args.repo)
            if not revs:
                raise UserError(f"{args.repo}: no DVC experiments at this commit; run some, e.g. "
                                "`dvc exp run --queue -S 'train.seed=1,2,3' && dvc queue start`, or name revisions")
            groups = seed_groups([(rev, *run_summary(args.repo, rev)) for rev in revs])
            if args.json:
                print(json.dumps([{"params": shared, "runs": [{"seed": s, "rev": r, "f1": _headline(m)}
                                                              for s, r, m in runs]} for shared, runs in groups],
                                 indent=2, default=str))
            else:
                sys.stdout.write(seeds_markdown(groups))
            return
        if len(args.runs) != 2:
            raise UserError(f"nerpipe compare takes two runs A and B (got {len(args.runs)}); or --seeds")
        a, b = args.runs
        results = compare_runs(args.repo, a, b, args.resamples, args.seed, args.mode)
        if args.json:
            print(json.dumps({split: {t or "all": r for t, r in per_type.items()}
                              for split, per_type in results.items()}, indent=2))
        else:
            sys.stdout.write(comparison_markdown(results, a, b, args.resamples, args.seed, args.mode))


def _headline(metrics):
    values = flatten_metrics(metrics)
    return {name: values[name] for _, name in headline_rows(metrics) if name in values}
