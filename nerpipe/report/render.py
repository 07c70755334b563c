"""Build reports/report.md and its figures from the metrics, history and predictions files."""

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from nerpipe.evaluate.metrics import SPLITS, entity_types, scores_in, type_order  # noqa: E402


def plot_learning_curve(history, dev_eval, path):
    fig, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot(history["step"], history["loss"], color="tab:blue", label="train loss")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("train loss", color="tab:blue")
    f1_ax = loss_ax.twinx()
    f1_ax.plot(dev_eval["step"], dev_eval["dev_f1"], "o-", color="tab:orange", label="dev F1")
    f1_ax.set_ylabel("dev entity F1 (conlleval)", color="tab:orange")
    f1_ax.set_ylim(0, 1)
    fig.suptitle("Learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(confusion, path):
    order = type_order(set(confusion["actual"]) | set(confusion["predicted"]))  # the types of the data, O last
    table = pd.crosstab(confusion["actual"], confusion["predicted"]).reindex(index=order, columns=order,
                                                                             fill_value=0)
    share = table.div(table.sum(axis=1).clip(lower=1), axis=0)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.imshow(share.values, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(order)), order)
    ax.set_yticks(range(len(order)), order)
    ax.set_xlabel("predicted type")
    ax.set_ylabel("gold type")
    for i in range(len(order)):
        for j in range(len(order)):
            ax.text(j, i, f"{table.values[i, j]:,}", ha="center", va="center",
                    color="white" if share.values[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title("Test words by entity type (row-normalised colour)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(x):
    return f"{100 * x:.2f}"


def f1_with_interval(scores, bold=False):
    """`84.64 [84.0, 85.3]`: F1 in % and, where the file has it, its 95% bootstrap interval."""
    f1 = f"**{_pct(scores['f1'])}**" if bold else _pct(scores["f1"])
    if "f1_ci_low" not in scores:
        return f1
    return f"{f1} [{100 * scores['f1_ci_low']:.1f}, {100 * scores['f1_ci_high']:.1f}]"


def headline_table(metrics):
    """Dev/test P/R/F1 overall and per entity type of the split (conlleval mode), F1 strict and before
    fine-tuning (0 where that mode or the untrained head has no entity of the type); F1s after
    fine-tuning with their 95% interval where metrics.json has one."""
    rows = ["| split | type | precision | recall | F1 | F1 strict | F1 before fine-tuning | support |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for split in SPLITS:
        for t in (None, *entity_types(metrics, splits=(split,))):
            s = scores_in(metrics, split, "conlleval", t)
            strict = scores_in(metrics, split, "strict", t) or {"f1": 0.0}
            before_f1 = scores_in(metrics, split, "conlleval", t, before=True).get("f1", 0.0)
            rows.append(f"| {split} | {t or '**all**'} | {_pct(s['precision'])} | {_pct(s['recall'])} | "
                        f"{f1_with_interval(s, bold=t is None)} | {f1_with_interval(strict)} | {_pct(before_f1)} | "
                        f"{s['support']} |")
    return "\n".join(rows)


def interval_note(metrics):
    """The sentence under the headline table that says what the bracketed intervals are and which unit
    the bootstrap resampled (documents, or sentences in a corpus without document markers)."""
    if "f1_ci_low" not in scores_in(metrics, "test"):
        return "No confidence intervals: this metrics.json predates them (re-run `dvc repro evaluate`)."
    bootstrap = {split: metrics[split]["bootstrap"] for split in SPLITS if "bootstrap" in metrics.get(split, {})}
    over = ("the split's sentences" if not bootstrap else  # a file from before the unit was recorded
            "the split's " + ", ".join(f"{b['units']} {split} {b['unit']}s" for split, b in bootstrap.items()))
    return (f"F1 [95% interval]: a bootstrap over {over} (evaluate.bootstrap_samples resamples, seeded by "
            "evaluate.bootstrap_seed); `nerpipe compare` tests a difference between two runs.")


def method_line(method, train):
    """What the fine-tuning method trained, from reports/train/metrics.json. Its cost in time and memory
    is in reports/timings/train.json, not here: report.md is a DVC output, the same bytes for the same
    inputs, and those numbers differ on every run."""
    adapter = f"; adapter {train['adapter_mib']:.2f} MiB" if train["adapter_mib"] else ""
    return (f"Fine-tuning method **{method}**: {train['trainable_parameters']:,} of {train['total_parameters']:,} "
            f"parameters trained ({train['trainable_percent']:.2f}%){adapter}; AdamW state "
            f"{train['optimizer_state_mib']:.1f} MiB.")


TIMINGS_NOTE = ("Wall times, speed and peak memory of each stage are in reports/timings/<stage>.json and in the "
                "model's MLflow run (stage_seconds.*), not in this report: they differ on every run, and this "
                "report is a DVC output, the same bytes for the same inputs.")


def errors_section(summary):
    lines = []
    for kind in summary:
        pairs = ", ".join(f"{p} ({n})" for p, n in kind["top_pairs"])
        lines.append(f"### {kind['description']}: {kind['count']}\n\nMost common (gold -> predicted): {pairs}\n")
        for ex in kind["examples"]:
            lines.append(f"- gold: {ex['gold']}\n  <br>pred: {ex['pred']}")
        lines.append("")
    return "\n".join(lines) if lines else "No entity errors on the test set."
