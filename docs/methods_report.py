"""The fine-tuning methods table and plots of docs/results.md, from the runs recorded in MLflow.

    .venv/bin/python docs/methods_report.py --tracking-uri sqlite:///path/to/mlflow.db --out docs

Reads every finished run of the experiment (`--experiment`, default conll2003-ner): the methods table
takes the runs on the whole training set, the learning curve the runs of `full` and `lora` whatever
their `prepare.max_train_sentences`. Prints the table (markdown) and writes methods-f1.png and
learning-curve-train-size.png to --out.
"""

import argparse
from pathlib import Path

import matplotlib
import mlflow

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

TRAIN_SENTENCES = 14041  # CoNLL-2003 English train: what prepare.max_train_sentences 0 means


def load_runs(tracking_uri, experiment):
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'")
    if runs.empty:
        raise SystemExit(f"error: no finished runs in experiment {experiment!r} at {tracking_uri}")
    runs = runs.rename(columns=lambda c: c.split(".", 1)[1] if c.startswith(("params.", "metrics.")) else c)
    runs["sentences"] = runs["prepare.max_train_sentences"].astype(int).replace(0, TRAIN_SENTENCES)
    runs["lr"] = runs["lr"].astype(float)
    return runs.loc[:, ~runs.columns.duplicated()]


def methods_table(runs):
    whole = runs[runs["sentences"] == TRAIN_SENTENCES].sort_values("train.total_parameters")
    rows = ["| run | method | lr | trainable parameters | % | adapter MiB | AdamW state MiB | s / epoch | "
            "sentences/s | peak RSS MiB | dev F1 (strict) | test F1 (strict) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    best = set(whole.loc[whole.groupby("train.method")["dev.conlleval.f1"].idxmax(), "run_id"])
    for _, r in whole.sort_values(["train.trainable_parameters", "lr"], ascending=[False, True]).iterrows():
        name = f"**`{r['tags.mlflow.runName']}`**" if r["run_id"] in best else f"`{r['tags.mlflow.runName']}`"
        rows.append(
            f"| {name} | {r['train.method']} | {r['lr']:g} | {int(r['train.trainable_parameters']):,} | "
            f"{r['train.trainable_percent']:.2f} | {r['train.adapter_mib']:.2f} | {r['train.optimizer_state_mib']:.1f} | "
            f"{r['train.train_seconds'] / r['train.epochs_completed']:.0f} | {r['train.train_sentences_per_second']:.1f} | "
            f"{r['train.peak_rss_mib']:,.0f} | {100 * r['dev.conlleval.f1']:.2f} ({100 * r['dev.strict.f1']:.2f}) | "
            f"{100 * r['test.conlleval.f1']:.2f} ({100 * r['test.strict.f1']:.2f}) |")
    return "\n".join(rows)


def plot_methods(runs, path):
    whole = runs[runs["sentences"] == TRAIN_SENTENCES]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for _, r in whole.iterrows():
        ax.scatter(r["train.trainable_percent"], 100 * r["test.conlleval.f1"], color="tab:blue")
        ax.annotate(r["tags.mlflow.runName"], (r["train.trainable_percent"], 100 * r["test.conlleval.f1"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of the model, log scale)")
    ax.set_ylabel("test F1 (conlleval)")
    ax.set_title("Fine-tuning methods on CoNLL-2003 (MiniLM, 3 epochs)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curve(runs, path):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    longer = runs[(runs["train.method"] == "full") & (runs["train.epochs"].astype(int) > 3)]
    runs = runs[runs["train.epochs"].astype(int) == 3]
    for method, color in (("full", "tab:blue"), ("lora", "tab:orange")):
        curve = runs[runs["train.method"] == method]
        if method == "lora":  # the learning-curve runs' rate, on every size
            curve = curve[curve["lr"] == curve[curve["sentences"] < TRAIN_SENTENCES]["lr"].max()]
        curve = curve.sort_values("sentences").drop_duplicates("sentences", keep="last")
        for split, style in (("test", "-o"), ("dev", "--o")):
            ax.plot(curve["sentences"], 100 * curve[f"{split}.conlleval.f1"], style, color=color,
                    label=f"{method} ({split})")
    if not longer.empty:
        longer = longer.sort_values("sentences")
        ax.plot(longer["sentences"], 100 * longer["test.conlleval.f1"], "s", color="tab:green",
                label="full, more epochs (test): " + ", ".join(longer["tags.mlflow.runName"]))
    ax.set_xscale("log")
    ax.set_xlabel("training sentences (log scale)")
    ax.set_ylabel("F1 (conlleval)")
    ax.set_title("F1 by training-set size (MiniLM; lines: 3 epochs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True, help="e.g. sqlite:///path/to/mlflow.db")
    parser.add_argument("--experiment", default="conll2003-ner")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="directory for the PNGs")
    args = parser.parse_args()
    runs = load_runs(args.tracking_uri, args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    print(methods_table(runs))
    plot_methods(runs, args.out / "methods-f1.png")
    plot_learning_curve(runs, args.out / "learning-curve-train-size.png")
    print(f"\nwrote {args.out / 'methods-f1.png'} and {args.out / 'learning-curve-train-size.png'}")
    print("\n| run | method | lr | training sentences | epochs | optimizer steps | dev F1 | test F1 |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    curve = runs[runs["train.method"].isin(["full", "lora"])].sort_values(["train.method", "sentences", "lr",
                                                                           "train.steps"])
    for _, r in curve.iterrows():
        print(f"| `{r['tags.mlflow.runName']}` | {r['train.method']} | {r['lr']:g} | {r['sentences']:,} | "
              f"{r['train.epochs_completed']:.0f} | {r['train.steps']:.0f} | {100 * r['dev.conlleval.f1']:.2f} | "
              f"{100 * r['test.conlleval.f1']:.2f} |")


if __name__ == "__main__":
    main()
