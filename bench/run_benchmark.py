"""Side-by-side speed benchmark: the Hugging Face Trainer (run_ner.py setup) vs nerpipe's training loop.

    # quick: first 2000 training sentences, 1 epoch, bs 32, lr 5e-5, seed 42, both HF samplers + nerpipe
    PYTHONPATH=. .venv/bin/python -m bench.run_benchmark --quick --out bench/results/quick.json

    # thread settings only, no evaluation
    PYTHONPATH=. .venv/bin/python -m bench.run_benchmark --train-sentences 500 --threads 1 2 \
        --trainers hf-random --eval-splits none --out bench/results/threads.json

Every (trainer, threads, repeat) runs in a fresh Python process (`--worker`), so each one pays the
same cold-start costs, gets its own peak RSS, and a crash in one does not lose the others. All
trainers get the same rows (bench/data.py builds them with nerpipe's own tokenization) and the same
hyperparameters. Writes <out>.json (everything) and <out>.md (the table); prints the table.

Speed columns, all over the training call only (evaluation is timed separately):
  sent/s      training sentences * epochs / train seconds
  subtok/s    real sub-tokens ([CLS]/[SEP] included, padding excluded) / train seconds
  subtok/cpu-s  the same per CPU second the process used (all threads): less sensitive to other
              processes on this shared machine, best compared at 1 thread (2 threads count
              OpenMP spin-waiting as CPU time)
  padded/s    sub-tokens including padding, i.e. what the matmuls processed / train seconds
  GFLOP/cpu-s padded tokens * model train FLOPs per token (bench/flops.py) / (train seconds * cpu util
              * threads): model FLOPs per CPU second the trainer actually got
  % of fp32 mm  that, as a share of a 2048^3 fp32 torch.mm on the same threads, also per CPU second
              (bench/matmul.py): how close training gets to plain GEMM speed
The machine is shared: `cpu util` (process CPU seconds / (wall * threads)) well below 1 means other
processes took cores during the run; treat such a row's speed as a lower bound.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (kind, keyword arguments of bench.hf_trainer.train_and_evaluate or nerpipe TrainParams overrides).
# "nerpipe" runs its defaults; "nerpipe-fp32" switches bf16 off and "hf-group-bf16" switches it on for the
# Trainer, to show what that one lever is worth on each side.
TRAINERS = {"hf-random": ("hf", {"train_sampling_strategy": "random"}),
            "hf-group": ("hf", {"train_sampling_strategy": "group_by_length"}),
            "hf-group-bf16": ("hf", {"train_sampling_strategy": "group_by_length", "bf16": True}),
            "nerpipe": ("nerpipe", {}),
            "nerpipe-fp32": ("nerpipe", {"bf16": "off"})}
DEFAULT_TRAINERS = ["hf-random", "hf-group", "nerpipe"]
QUICK_TRAIN_SENTENCES = 2000


def offline_model():
    return subprocess.check_output(["/work/shared/scripts/offline-model"], text=True).strip()


# --------------------------------------------------------------------------------------------------
# nerpipe's trainer. PLUG-IN POINT: keep the signature and the returned keys (the same as
# bench.hf_trainer.train_and_evaluate returns) when nerpipe.train.loop changes.
# --------------------------------------------------------------------------------------------------
def run_nerpipe(model_dir, data, *, lr, batch_size, epochs, seed, warmup_ratio, weight_decay, max_grad_norm,
                eval_batch_size, threads, eval_splits, overrides=None, device="cpu"):
    """Train with nerpipe.train.loop.fit on the benchmark rows, predict with nerpipe.evaluate.inference; score."""
    import torch

    from bench.hf_trainer import peak_rss_mib
    from nerpipe import training as nerpipe_training
    from nerpipe.core.params import TrainParams
    from nerpipe.data.batching import length_grouped_batches
    from nerpipe.evaluate.inference import WindowedExamples, predict_tags
    from nerpipe.evaluate.scoring import score_split
    from nerpipe.model.loading import load_for_training, load_tokenizer, load_trained, pick_device
    from nerpipe.train.checkpoints import Checkpoints
    from nerpipe.train.loop import DevSet, fit, plan_steps

    if threads:
        torch.set_num_threads(threads)
    device = pick_device() if device == "cuda" else torch.device("cpu")  # pick_device also turns TF32 on
    tokenizer = load_tokenizer(model_dir)
    cfg = TrainParams(epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                      max_grad_norm=max_grad_norm, seed=seed, dropout=0.1, eval_every_steps=0, patience=0,
                      checkpoint_every=0, **(overrides or {}))
    bf16 = nerpipe_training.use_bf16(cfg.bf16, device)
    train_split, dev_split = data.splits["train"], data.splits["valid"]
    if "valid" not in eval_splits:  # a speed-only run: keep fit()'s end-of-epoch dev evaluation short
        dev_split = _first_sentences(dev_split, 64)
    train = WindowedExamples(train_split.examples)
    dev = DevSet(WindowedExamples(dev_split.examples), dev_split.words, dev_split.gold, data.id2label,
                 eval_batch_size)
    model = load_for_training(model_dir, data.labels, cfg.dropout, seed).to(device)
    rss_before_train = peak_rss_mib()
    # fit() evaluates dev and saves the best model inside its loop; time those separately so that the
    # CPU seconds of training alone can be reported (nerpipe's own train_seconds already excludes them).
    side = {"wall": 0.0, "cpu": 0.0}

    def timed(fn):
        def wrapper(*a, **kw):
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                side["cpu"] += time.process_time() - cpu
                side["wall"] += time.perf_counter() - wall
        return wrapper

    class TimedCheckpoints(Checkpoints):
        save = timed(Checkpoints.save)
        save_best = timed(Checkpoints.save_best)

    original_evaluate_dev = nerpipe_training.evaluate_dev
    nerpipe_training.evaluate_dev = timed(original_evaluate_dev)
    with tempfile.TemporaryDirectory(prefix="nerpipe_bench_") as tmp:
        checkpoints = TimedCheckpoints(Path(tmp) / "checkpoints", "bench")
        load_before = os.getloadavg()[0]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            state = fit(model, train, dev, cfg, lr, tokenizer.pad_token_id, device, checkpoints)
        finally:
            nerpipe_training.evaluate_dev = original_evaluate_dev
        fit_seconds = time.perf_counter() - wall0
        cpu_seconds = time.process_time() - cpu0 - side["cpu"]
        rss_after_train = peak_rss_mib()
        best = (load_trained(checkpoints.best_dir).to(device) if (checkpoints.best_dir / "config.json").exists()
                else model)
        scores, eval_seconds = {}, {}
        for name in eval_splits:
            split = data.splits[name]
            started = time.perf_counter()
            pred = predict_tags(best, WindowedExamples(split.examples), split.words, data.id2label,
                                tokenizer.pad_token_id, eval_batch_size, device, bf16, progress=False)
            eval_seconds[name] = time.perf_counter() - started
            scores[name] = score_split(split.gold, pred)
    train_seconds = state.train_seconds  # nerpipe's own clock: optimizer steps only, dev evals excluded
    lengths = train.input_ids.lengths()
    padded = sum(int(lengths[b].max()) * len(b) for e in range(state.epoch)
                 for b in length_grouped_batches(lengths, batch_size, seed, e))
    threads_used = torch.get_num_threads()
    return {
        "trainer": "nerpipe",
        "train_sampling_strategy": "nerpipe length_grouped_batches",
        "bf16": bf16,
        "config": {"lr": lr, "batch_size": batch_size, "epochs": epochs, "seed": seed, "warmup_ratio": warmup_ratio,
                   "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "eval_batch_size": eval_batch_size,
                   "threads": threads_used, "torch": torch.__version__},
        "train_rows": len(train),
        "train_sentences": len(train_split.sentences),
        "steps": state.step,
        "planned_steps": plan_steps(len(train), cfg)[1],
        "train_seconds": round(train_seconds, 3),
        "fit_seconds_incl_dev_eval": round(fit_seconds, 3),
        "train_sentences_per_second": round(len(train_split.sentences) * state.epoch / train_seconds, 2),
        "train_rows_per_second": round(state.sentences_seen / train_seconds, 2),
        "train_subtokens_per_second": round(state.tokens_seen / train_seconds, 1),
        "train_padded_tokens_per_second": round(padded / train_seconds, 1),
        "train_fed": {"rows": state.sentences_seen, "tokens": state.tokens_seen, "padded_tokens": padded,
                      "padding_fraction": round(1 - state.tokens_seen / max(padded, 1), 4)},
        "train_loss_last_log": state.history[-1]["loss"] if state.history else None,  # not the epoch mean
        "loss_history": state.history,
        "dev_eval_and_save_seconds_in_fit": round(side["wall"], 3),
        "train_cpu_seconds": round(cpu_seconds, 3),
        "train_subtokens_per_cpu_second": round(state.tokens_seen / cpu_seconds, 1),
        "cpu_utilisation": round(cpu_seconds / ((fit_seconds - side["wall"]) * threads_used), 3),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "eval_seconds": {k: round(v, 3) for k, v in eval_seconds.items()},
        "eval_batch_size": eval_batch_size,
        "f1": {name: {mode: s[mode]["f1"] for mode in ("conlleval", "strict")} for name, s in scores.items()},
        "scores": {name: {mode: {k: v for k, v in s[mode].items() if k != "per_type"}
                          for mode in ("conlleval", "strict")} for name, s in scores.items()},
        "peak_rss_mib": {"before_train": rss_before_train, "after_train": rss_after_train,
                         "after_eval": peak_rss_mib()},
        "dev_evals": state.dev_evals,
    }


def _first_sentences(split, n):
    from bench.data import Split
    examples = split.examples.filter(lambda row: row["sentence_id"] < n).flatten_indices()
    return Split(split.sentences.select(range(n)).flatten_indices(), examples)


# --------------------------------------------------------------------------------------------------
# Worker: one training run in this process.
# --------------------------------------------------------------------------------------------------
def worker(spec):
    import torch
    from transformers import AutoTokenizer

    from bench.data import load_data
    from bench.hf_trainer import train_and_evaluate

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    # All three splits always: the label list is built over all of them, as stages/prepare.py does.
    data = load_data(tokenizer, train_sentences=spec["train_sentences"])
    kind, options = TRAINERS[spec["trainer"]]
    hyper = {k: spec[k] for k in ("lr", "batch_size", "epochs", "seed", "warmup_ratio", "weight_decay",
                                  "max_grad_norm", "eval_batch_size")}
    if kind == "hf":
        result = train_and_evaluate(spec["model"], data, **options, threads=spec["threads"], device=spec["device"],
                                    eval_splits=tuple(spec["eval_splits"]), **hyper)
    else:
        result = run_nerpipe(spec["model"], data, threads=spec["threads"], eval_splits=tuple(spec["eval_splits"]),
                             device=spec["device"],
                             overrides=options,
                             **hyper)
    result["data_seconds"] = round(data.seconds, 2)
    result["spec"] = spec
    return result


def run_in_subprocess(spec, timeout):
    with tempfile.TemporaryDirectory(prefix="bench_worker_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TQDM_DISABLE": "1",
               "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.run_benchmark", "--worker", str(spec_path),
                                   "--worker-out", str(out_path)], env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"spec": spec, "error": f"timed out after {timeout} s"}
        if proc.returncode or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"spec": spec, "error": "\n".join(tail), "returncode": proc.returncode}
        result = json.loads(out_path.read_text())
        result["process_seconds"] = round(time.perf_counter() - started, 2)
        return result


# --------------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------------
def _fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table_rows(runs, flops_per_token, fp32_gflops):
    """fp32_gflops: {threads: torch.mm fp32 GFLOP per CPU second} (median rate / (cpu utilisation * threads))."""
    rows = []
    for r in runs:
        spec = r["spec"]
        if "error" in r:
            rows.append([spec["trainer"], str(spec["threads"]), str(spec["repeat"]), "ERROR: " +
                         r["error"].splitlines()[-1][:80]] + [""] * (len(HEADER) - 4))
            continue
        # Per CPU second, so that time other processes took does not count against the trainer.
        cpu_scale = r["cpu_utilisation"] * r["config"]["threads"]
        gflops = r["train_padded_tokens_per_second"] * flops_per_token / 1e9 / cpu_scale if flops_per_token else None
        f1 = r.get("f1", {})
        rows.append([
            spec["trainer"], str(r["config"]["threads"]), str(spec["repeat"]),
            _fmt(r["train_seconds"], 1), _fmt(r["train_sentences_per_second"], 1),
            _fmt(r["train_subtokens_per_second"]), _fmt(r.get("train_subtokens_per_cpu_second")),
            _fmt(r["train_padded_tokens_per_second"]),
            _fmt(100 * r["train_fed"]["padding_fraction"], 1),
            _fmt(gflops, 1), _fmt(100 * gflops / fp32_gflops[r["config"]["threads"]]
                                  if gflops and r["config"]["threads"] in fp32_gflops else None, 0),
            "/".join(_fmt(100 * f1[s]["conlleval"], 2) for s in ("valid", "test") if s in f1) or "-",
            "/".join(_fmt(100 * f1[s]["strict"], 2) for s in ("valid", "test") if s in f1) or "-",
            "/".join(_fmt(v, 1) for v in r["eval_seconds"].values()) or "-",
            _fmt(r["peak_rss_mib"]["after_eval"]),
            _fmt(r["cpu_utilisation"], 2) + (" (contended)" if r["cpu_utilisation"] < 0.85 else ""),
        ])
    return rows


HEADER = ["trainer", "threads", "rep", "train s", "sent/s", "subtok/s", "subtok/cpu-s", "padded/s", "pad %",
          "GFLOP/cpu-s", "% of fp32 mm", "F1 dev/test (conlleval)", "F1 dev/test (strict)", "eval s dev/test",
          "peak RSS MiB", "cpu util"]


def markdown_table(rows):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(rows):
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [HEADER, *rows])


def medians(runs):
    """Median speed per (trainer, threads) over repeats."""
    groups = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault((r["spec"]["trainer"], r["config"]["threads"]), []).append(r)
    out = []
    for (trainer, threads), rs in groups.items():
        out.append({"trainer": trainer, "threads": threads, "repeats": len(rs),
                    **{k: statistics.median(x[k] for x in rs) for k in
                       ("train_seconds", "train_sentences_per_second", "train_subtokens_per_second",
                        "train_padded_tokens_per_second")},
                    "train_subtokens_per_cpu_second": statistics.median(
                        x.get("train_subtokens_per_cpu_second") or 0 for x in rs),
                    "dev_f1": statistics.median(x["f1"]["valid"]["conlleval"] for x in rs) if "valid" in rs[0].get(
                        "f1", {}) else None})
    return out


def ratio_lines(medians_):
    """nerpipe's median speed over each other trainer's, at the same thread count, and the dev F1 gap."""
    lines = []
    for base in (m for m in medians_ if m["trainer"] == "nerpipe"):
        for other in (m for m in medians_ if m["threads"] == base["threads"] and m["trainer"] != "nerpipe"):
            line = (f"- nerpipe / {other['trainer']} ({base['threads']} threads, medians of {base['repeats']} and "
                    f"{other['repeats']} runs): **{base['train_sentences_per_second'] / other['train_sentences_per_second']:.2f}x**"
                    f" sentences/s")
            if base["dev_f1"] is not None and other["dev_f1"] is not None:
                line += f"; dev F1 (conlleval) {100 * (base['dev_f1'] - other['dev_f1']):+.2f} points"
            lines.append(line)
    return lines


def environment():
    import torch
    import transformers
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": cpu, "cores": os.cpu_count(), "default_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_report(report, out):
    """Print the table; write <out>.json and <out>.md."""
    runs = report["runs"]
    report["medians"] = medians(runs)
    flops_per_token = report["flops"]["flops_per_token"]
    fp32 = {m["threads"]: m["gflops_median"] / ((m["cpu_utilisation"] or 1) * m["threads"])
            for m in report.get("matmul", []) if m["dtype"] == "fp32"}  # GFLOP per CPU second
    rows = table_rows(runs, flops_per_token, fp32)
    print()
    print(plain_table(rows))
    print("\n".join(["", *ratio_lines(report["medians"])]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    env, spec = report["environment"], (runs[0]["spec"] if runs else {})
    md = [f"# Benchmark {env['date']}", "",
          f"- training sentences: {spec.get('train_sentences') or 'all'}, epochs {spec.get('epochs')}, batch size "
          f"{spec.get('batch_size')}, lr {spec.get('lr')}, seed {spec.get('seed')}, warmup ratio "
          f"{spec.get('warmup_ratio')}, weight decay {spec.get('weight_decay')}, eval batch size "
          f"{spec.get('eval_batch_size')}",
          f"- {env['cpu']}, {env['cores']} cores; torch {env['torch']}, transformers {env['transformers']}",
          f"- load average at start/end: {env['loadavg_start'][0]:.2f} / {env['loadavg_end'][0]:.2f} "
          "(shared machine; see `cpu util`)",
          f"- model train FLOPs per sub-token (seq 40): {flops_per_token / 1e6:.2f} M"]
    md += [f"- torch.mm {m['m']}^3 {m['dtype']} threads={m['threads']}: {m['gflops_median']} GFLOP/s "
           f"(cpu util {m['cpu_utilisation']})" for m in report.get("matmul", [])]
    md += ["", markdown_table(rows), "", *ratio_lines(report["medians"]), "",
           "Columns: see the docstring of bench/run_benchmark.py.", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


def merge(paths, out):
    """Combine run_benchmark JSONs; a bench.matmul --out JSON among them supplies the matmul reference."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    reports = [r for r in loaded if "runs" in r]
    for r in loaded:
        if "summary" in r and "runs" not in r:  # bench.matmul output: its 2048^3 plain torch.mm rows
            rows = [m for m in r["summary"] + r.get("sweep", []) if (m["m"], m["k"], m["n"], m["op"], m["layout"])
                    == (2048, 2048, 2048, "mm", "nn")]
            picked = {}
            for m in rows:
                picked.setdefault((m["dtype"], m["threads"]), m)
            reports[0]["matmul"] = sorted(picked.values(), key=lambda m: (m["threads"], m["dtype"]))
    merged = {"environment": reports[0]["environment"], "merged_from": [str(p) for p in paths],
              "args": [r["args"] for r in reports], "runs": [run for r in reports for run in r["runs"]]}
    merged["environment"]["loadavg_end"] = reports[-1]["environment"]["loadavg_end"]
    for key in ("flops", "matmul"):
        found = [r[key] for r in reports if r.get(key)]
        if found:
            merged[key] = found[0]
    write_report(merged, out)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_TRAIN_SENTENCES} training sentences")
    parser.add_argument("--train-sentences", type=int, default=0, help="first N training sentences (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="0.0: the Trainer's and run_ner's default")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--eval-splits", nargs="+", default=["valid", "test"], help="'none' to skip evaluation")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS, choices=list(TRAINERS))
    parser.add_argument("--model", default=None, help="model directory (default: the offline MiniLM-L6)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: both trainers on the GPU with bf16 autocast, TF32, fused AdamW and rows padded "
                             "to a multiple of 8 (pass --no-matmul: the matmul reference is a CPU one)")
    parser.add_argument("--no-matmul", action="store_true", help="skip the matmul GFLOP/s measurement")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per training run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/benchmark.json"))
    parser.add_argument("--merge", type=Path, nargs="+", help="combine earlier result JSONs into --out; runs nothing")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(json.loads(args.worker.read_text()))
        args.worker_out.write_text(json.dumps(result))
        return result

    if args.merge:
        return merge(args.merge, args.out)

    import transformers

    from bench import flops, matmul

    transformers.logging.set_verbosity_error()
    train_sentences = args.train_sentences or (QUICK_TRAIN_SENTENCES if args.quick else 0)
    model_dir = args.model or offline_model()
    eval_splits = [] if args.eval_splits == ["none"] else args.eval_splits
    report = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}}

    model = flops.load_model(model_dir)
    report["flops"] = flops.train_flops_per_token(model, seq_len=40)
    flops_per_token = report["flops"]["flops_per_token"]
    del model
    print(f"model train FLOPs per sub-token (seq 40): {flops_per_token / 1e6:.2f} M", flush=True)

    if not args.no_matmul:
        report["matmul"] = []
        for threads in args.threads:
            report["matmul"] += matmul.summary(sizes=(2048,), threads=threads, min_seconds=2.0)
        for m in report["matmul"]:
            print(f"matmul {m['m']}^3 {m['dtype']} threads={m['threads']}: {m['gflops_median']} GFLOP/s "
                  f"(best {m['gflops_best']}, cpu util {m['cpu_utilisation']})", flush=True)

    runs = []
    for repeat in range(args.repeats):
        for threads in args.threads:
            # every other repeat in reverse order, so that a slow drift of the machine's speed does not
            # favour whoever runs first
            for trainer in (args.trainers if repeat % 2 == 0 else args.trainers[::-1]):
                spec = {"trainer": trainer, "threads": threads, "repeat": repeat, "model": model_dir,
                        "train_sentences": train_sentences, "epochs": args.epochs, "batch_size": args.batch_size,
                        "lr": args.lr, "seed": args.seed, "warmup_ratio": args.warmup_ratio,
                        "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm,
                        "eval_batch_size": args.eval_batch_size, "eval_splits": eval_splits,
                        "device": args.device}
                print(f"run {trainer} threads={threads} repeat={repeat} ...", flush=True)
                result = run_in_subprocess(spec, args.timeout)
                runs.append(result)
                if "error" in result:
                    print(f"  ERROR: {result['error']}", flush=True)
                else:
                    print(f"  {result['train_seconds']} s, {result['train_sentences_per_second']} sent/s, "
                          f"{result['train_subtokens_per_second']} subtok/s, F1 {result.get('f1')}", flush=True)
    report["runs"] = runs
    report["environment"]["loadavg_end"] = os.getloadavg()
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
