"""Compare two revisions in Markdown: a metric/base/PR/delta table with each delta's significance, the
changed params and the plots.

    nerpipe pr-report --base main                                   # main against the working tree
    nerpipe pr-report --base pr-base --head pr-head --out pr-report # two revisions, with plots

A revision is anything DVC accepts: a branch, tag, commit or experiment name. The numbers come from
`dvc metrics diff` and `dvc params diff`, the plots from `dvc plots diff` (the plots the stages of
dvc.yaml declare, drawn as PNGs so a pull-request comment can show them). Each F1 delta is tested by a paired
bootstrap over the documents of the predictions both revisions wrote (`nerpipe compare`). One test is the
primary one, declared before looking: overall test F1, at 0.05; the summary line says in words whether it
moved by more than resampling noise. The other F1 rows (dev, per type) are exploratory: their p-values
are Holm-adjusted over those rows. Without --out the Markdown goes
to stdout and has no plots; with --out DIR it is written to DIR/report.md beside the PNGs it links.
This is what the pull-request workflow posts; `make pr-report BASE=main` runs it locally.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

from nerpipe.core.atomic import write_text
from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.core.params import read_yaml
from nerpipe.evaluate.metrics import flatten_metrics, headline_rows, metric_name, type_order
from nerpipe.report.compare import (
    ALPHA,
    PRIMARY,
    by_metric_name,
    check_resamples,
    compare_runs,
    format_p,
    significant,
    summary_sentence,
    unit_phrase,
)

# pandas and matplotlib are imported where they are used: the `nerpipe` CLI imports every command
# module, and they would add seconds to each `nerpipe set-params`.

EVAL_METRICS = "reports/eval/metrics.json"
TRAIN_METRICS = "reports/train/metrics.json"
TRAIN_TIMINGS = "reports/timings/train.json"  # train_seconds; in TRAIN_METRICS in revisions made before it
LINE_TEMPLATES = ("linear", "simple", "scatter", "smooth")
CONFUSION_TEMPLATES = ("confusion", "confusion_normalized")


def _revision_file(file_diff, side):
    """One revision's metrics file ("old" or "new" side) rebuilt from `dvc metrics diff` output, which
    joins nested keys with dots ({"dev.conlleval.per_type.PER.f1": {"old": ..., "new": ...}})."""
    nested = {}
    for key, change in file_diff.items():
        if change.get(side) is not None:
            *parents, leaf = key.split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = change[side]
    return nested


def metric_rows(metrics_diff):
    """(label, base value, PR value, unit) of each row of the table, in order; None where a revision has no
    value. The entity types are those either revision scored (nerpipe.evaluate.metrics)."""
    evaluation = [_revision_file(metrics_diff.get(EVAL_METRICS, {}), side) for side in ("old", "new")]
    old, new = (flatten_metrics(m) for m in evaluation)
    rows = [(label, old.get(name), new.get(name), "f1") for label, name in headline_rows(*evaluation)]
    times = [metrics_diff.get(path, {}).get("train_seconds", {}) for path in (TRAIN_TIMINGS, TRAIN_METRICS)]
    old, new = (next((t[side] for t in times if t.get(side) is not None), None) for side in ("old", "new"))
    rows.append(("train time (s)", old, new, "seconds"))
    return rows


def run_dvc(repo, *args):
    """Run `dvc ARGS --json` in repo (the dvc of this interpreter) and return the parsed output."""
    cmd = [sys.executable, "-m", "dvc", *args, "--json"]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise UserError(f"`dvc {' '.join(args)}` failed in {repo}: {lines[-1] if lines else 'no message'}\n"
                        "  (a revision must be a branch, tag, commit or experiment name of that repository)")
    return json.loads(result.stdout or "{}")


def _revs(base, head):
    return [base] if head is None else [base, head]


def _format(value, unit, signed=False):
    if value is None:
        return "–"
    if unit == "f1":
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def metrics_table(metrics_diff, paired=None):
    """Markdown table from `dvc metrics diff --all --json` output; F1 in %, deltas in points. paired:
    {metric name: paired bootstrap result} (nerpipe.report.compare) for the interval and p columns."""
    paired = paired or {}
    lines = [f"| metric | base | PR | Δ | Δ 95% interval | p (significant at {ALPHA}?) |",
             "|---|---:|---:|---:|---:|---|"]
    names = dict(headline_rows(*(_revision_file(metrics_diff.get(EVAL_METRICS, {}), side) for side in ("old", "new"))))
    for label, old, new, unit in metric_rows(metrics_diff):
        delta = new - old if old is not None and new is not None else None
        lines.append(f"| {label} | {_format(old, unit)} | {_format(new, unit)} | {_format(delta, unit, True)} | "
                     f"{_significance_cells(paired.get(names.get(label)))} |")
    return "\n".join(lines)


def _significance_cells(result):
    """The primary row: its p and verdict. Every other row: its Holm-adjusted p, and exploratory."""
    if result is None:
        return "– | –"
    verdict = "significant" if significant(result) else "not significant"
    interval = f"[{100 * result['ci_low']:+.2f}, {100 * result['ci_high']:+.2f}]"
    if result.get("primary"):
        return f"{interval} | {format_p(result['p_value'])}, {verdict} (primary)"
    return f"{interval} | Holm {format_p(result['p_holm'])}, {verdict} (exploratory)"


def paired_tests(repo, base, head, resamples, seed):
    """({metric name: paired bootstrap result}, summary line) of head against base; ({}, why not) when
    a revision has no predictions to pair."""
    try:
        results = compare_runs(repo, base, head, resamples, seed)
    except UserError as err:
        return {}, f"No significance test: {err}"
    split, entity_type = PRIMARY
    results[split][entity_type] = {**results[split][entity_type], "primary": True}
    return by_metric_name(results), "**" + summary_sentence(results[split][entity_type], split, f"`{base}`",
                                                            f"`{head or 'working tree'}`") + "**"


def _units(paired):
    """What the bootstrap resampled: "documents" or "sentences" (the unit of the test split's files)."""
    primary = paired.get(metric_name(PRIMARY[0], "conlleval", "f1", PRIMARY[1]))
    return f"{primary['unit']}s ({unit_phrase(primary)} in test)" if primary else "documents"


def params_table(params_diff):
    """Markdown table of the params that differ, from `dvc params diff --json` output."""
    rows = [(f"`{key}`" if path == "params.yaml" else f"`{path}:{key}`", change.get("old"), change.get("new"))
            for path, changes in sorted(params_diff.items()) for key, change in sorted(changes.items())]
    if not rows:
        return "No params changed."
    return "\n".join(["| param | base | PR |", "|---|---|---|"] +
                     [f"| {key} | {_param_cell(old)} | {_param_cell(new)} |" for key, old, new in rows])


def _param_cell(value):
    return "–" if value is None else f"`{value}`"


def plot_definitions(repo):
    """{plot id: properties} of the plots in dvc.yaml: the top-level `plots:`, and each stage's `plots:`
    outputs, whose id is their path (`y` given as {path: field} for both)."""
    dvc_yaml = read_yaml(Path(repo) / "dvc.yaml") or {}
    defs = {}
    for entry in dvc_yaml.get("plots", []):
        plot_id, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        defs[plot_id] = props or {}
    for stage in dvc_yaml.get("stages", {}).values():
        for entry in stage.get("plots", []):
            path, props = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
            props = {k: v for k, v in (props or {}).items() if k not in ("cache", "persist")}
            if isinstance(props.get("y"), str):
                props["y"] = {path: props["y"]}
            defs[path] = props
    return defs


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _single_source(props):
    """(file, y field) of a plot with one y column, the only kind drawn here; else None."""
    y = props.get("y")
    if isinstance(y, dict) and len(y) == 1:
        (path, field), = y.items()
        if isinstance(field, str):
            return path, field
    return None


def draw_lines(points, revs, props, y_field, title, path):
    import matplotlib.pyplot as plt

    x_field = props["x"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for rev in revs:
        rows = points[points["rev"] == rev]
        ax.plot(rows[x_field].astype(float), rows[y_field].astype(float), marker="o", markersize=3, label=rev)
    ax.set_xlabel(props.get("x_label", x_field))
    ax.set_ylabel(props.get("y_label", y_field))
    ax.set_title(props.get("title", title))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_confusions(points, revs, props, y_field, title, path):
    """One matrix per revision, side by side: counts as text, colour normalised per gold (row) class."""
    import matplotlib.pyplot as plt
    import pandas as pd

    x_field = props["x"]
    labels = type_order(set(points[x_field]) | set(points[y_field]))
    fig, axes = plt.subplots(1, len(revs), figsize=(4.2 * len(revs), 3.8), squeeze=False)
    for ax, rev in zip(axes[0], revs):
        rows = points[points["rev"] == rev]
        table = pd.crosstab(rows[y_field], rows[x_field]).reindex(index=labels, columns=labels, fill_value=0)
        share = table.div(table.sum(axis=1).clip(lower=1), axis=0)
        ax.imshow(share.values, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel(props.get("x_label", x_field))
        ax.set_ylabel(props.get("y_label", y_field))
        ax.set_title(rev)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{table.values[i, j]:,}", ha="center", va="center", fontsize=7,
                        color="white" if share.values[i, j] > 0.5 else "black")
    fig.suptitle(props.get("title", title))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_plots(repo, base, head, out_dir):
    """Draw each plot of dvc.yaml for both revisions into out_dir; Markdown image links."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")  # no display on servers and CI
    rendered = run_dvc(repo, "plots", "diff", *_revs(base, head), "--split").get("data", {})
    links = []
    for plot_id, props in plot_definitions(repo).items():
        source = _single_source(props)
        entries = rendered.get(plot_id) or [{}]
        anchors = entries[0].get("anchor_definitions", {})
        points = pd.DataFrame(anchors.get("<DVC_METRIC_DATA>", []))
        template = props.get("template", "linear")
        if source is None or points.empty or template not in LINE_TEMPLATES + CONFUSION_TEMPLATES:
            links.append(f"- {props.get('title', plot_id)}: not drawn (no data at either revision, or not a "
                         "one-column linear/confusion plot); see `dvc plots diff`")
            continue
        revs = [rev for rev in entries[0].get("revisions", []) if rev in set(points["rev"])]
        draw = draw_lines if template in LINE_TEMPLATES else draw_confusions
        title = props.get("title", plot_id)
        name = f"{_slug(title)}.png"
        draw(points, revs, props, source[1], title, Path(out_dir) / name)
        links.append(f"![{title}]({name})")
    return links


def build_report(repo, base, head=None, out_dir=None, resamples=1000, seed=0):
    """The Markdown comparing head (None: the working tree) with base; plots only when out_dir is given."""
    revs = _revs(base, head)
    metrics = run_dvc(repo, "metrics", "diff", *revs, "--all")
    params = run_dvc(repo, "params", "diff", *revs)
    paired, summary = paired_tests(repo, base, head, resamples, seed)
    head_name = head or "working tree"
    parts = [f"## NER metrics: `{head_name}` (PR) against `{base}` (base)", summary,
             "Entity-level micro F1 in % (conlleval mode); Δ is PR minus base, in points (seconds for train time); "
             "– where a revision has no value. Δ's interval and p: paired bootstrap over the split's "
             f"{_units(paired)} (`nerpipe compare {base} {head or 'workspace'}`, {resamples} resamples, seed "
             f"{seed}). Primary test, declared in advance: test F1, significant where p < {ALPHA}. Every other "
             f"row is exploratory: its p is Holm-adjusted over those rows, significant where that is < {ALPHA}.",
             metrics_table(metrics, paired), "### Changed params", params_table(params)]
    if not metrics:
        parts.insert(3, f"Neither revision has {EVAL_METRICS} or {TRAIN_METRICS}: run the pipeline and commit "
                        "them (DVC does not cache them, so git holds them).")
    if out_dir is not None:
        parts += ["### Plots", "\n\n".join(draw_plots(repo, base, head, out_dir))]
    return "\n\n".join(parts) + "\n"


def add_arguments(parser):
    parser.add_argument("--base", default="main", help="revision to compare against (default: main)")
    parser.add_argument("--head", default=None, help="revision to compare (default: the working tree)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git + DVC repository (default: .)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for report.md and the plot PNGs (default: Markdown to stdout, no plots)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per test (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")


def run(args):
    with exit_on_user_error():
        check_resamples(args.resamples)
        if args.out is None:
            sys.stdout.write(build_report(args.repo, args.base, args.head, resamples=args.resamples, seed=args.seed))
            return
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(args.out / "report.md", build_report(args.repo, args.base, args.head, args.out, args.resamples,
                                                        args.seed))
    print(f"wrote {args.out / 'report.md'}", file=sys.stderr)
