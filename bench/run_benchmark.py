"""Side-by-side speed benchmark: the Hugging Face Trainer (run_ner.py setup) vs nerpipe's training loop.

    # quick: first 2000 training sentences, 1 epoch, bs 32, lr 5e-5, seed 42, the default trainers
    PYTHONPATH=. .venv/bin/python -m bench.run_benchmark --quick --out bench/results/quick.json

    # thread settings only, no evaluation
    PYTHONPATH=. .venv/bin/python -m bench.run_benchmark --train-sentences 500 --threads 1 2 \\
        --trainers hf-random --eval-splits none --out bench/results/threads.json

`make bench` installs the `bench` extra (accelerate, which the Trainer needs) and runs the quick one.
Data and model: --data / --model, else $NERPIPE_BENCH_DATA / $NERPIPE_BENCH_MODEL, else the offline
copies beside the repository (bench/inputs.py).

The default trainers are run_ner.py's Trainer (random batches, fp32), the Trainer with
group_by_length (fp32), nerpipe with its defaults, and, on a CPU with native bf16 (avx512_bf16 or
AMX: exactly where nerpipe's `train.bf16: auto` turns bf16 on), the Trainer with bf16=True, its
strongest setting there. So each precision nerpipe trains in has a like-for-like Trainer row; at
equal precision the two loops have run at the same speed (BENCHMARKS.md). bf16 is never measured
where the CPU would emulate it: neither those rows nor the bf16 matmul reference.

With --device cuda every row runs on one GPU (the first visible: several would make the Trainer use
DataParallel) at the Trainer's best GPU settings, which are nerpipe's defaults there: bf16 and TF32
where the GPU has them natively (compute capability 8.0 on), fp32 elsewhere, rows padded to a
multiple of 8. Without a GPU it is an error, not a CPU run. The reference is then the GPU's own
measured bf16 torch.mm rate, the GPU's name and each run's peak GPU memory are recorded, and the
per-CPU-second columns give way to per-second ones (on a GPU the CPU mostly waits).

Every (trainer, threads, repeat) runs in a fresh Python process (`--worker`), so each one pays the
same cold-start costs, gets its own peak RSS, and a crash in one does not lose the others. All
trainers get the same rows (bench/data.py builds them with nerpipe's own tokenization) and the same
hyperparameters, and return the same record (bench/result.py). Writes <out>.json (everything) and
<out>.md (the table); prints the table.

Speed columns, all over training only (evaluation is timed separately):
  train s     nerpipe: its own TrainState.train_seconds (optimizer steps; fit() times its dev
              evaluations apart, in eval_seconds); the Trainer: trainer.train(), which evaluates nothing
  sent/s      training sentences * epochs / train seconds
  subtok/s    real sub-tokens ([CLS]/[SEP] included, padding excluded) / train seconds
  subtok/cpu-s  the same per CPU second the process used (all threads): less sensitive to other
              processes on a shared machine, best compared at 1 thread (2 threads count
              OpenMP spin-waiting as CPU time)
  padded/s    sub-tokens including padding, i.e. what the matmuls processed / train seconds
  GFLOP/cpu-s padded tokens * model train FLOPs per token (bench/flops.py) / (train seconds * cpu util
              * threads): model FLOPs per CPU second the trainer actually got
  % of fp32 mm  that, as a share of a 2048^3 fp32 torch.mm on the same threads, also per CPU second
              (bench/matmul.py): how close training gets to plain GEMM speed
`cpu util` (process CPU seconds / (wall * threads)) well below 1 means other processes took cores
during the run; treat such a row's speed as a lower bound.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import gpu, inputs
from bench.result import TrainResult, entity_scores_only, fed_counts, loadavg, peak_rss_mib, reached_target
from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.model.device import use_bf16

# name -> (kind, keyword arguments of bench.hf_trainer.train_and_evaluate or of run_nerpipe).
# "nerpipe" runs its defaults (bf16 "auto"); "nerpipe-fp32" switches bf16 off, "hf-group-bf16" on for the
# Trainer: the rows that show what that one lever is worth on each side.
TRAINERS = {"hf-random": ("hf", {"train_sampling_strategy": "random"}),
            "hf-group": ("hf", {"train_sampling_strategy": "group_by_length"}),
            "hf-group-bf16": ("hf", {"train_sampling_strategy": "group_by_length", "bf16": True}),
            "nerpipe": ("nerpipe", {}),
            "nerpipe-fp32": ("nerpipe", {"bf16": "off"})}
QUICK_TRAIN_SENTENCES = 2000
CPU = torch.device("cpu")


def native_bf16(device="cpu"):
    """True where this CPU (or GPU) runs bf16 matmuls natively: the rule of nerpipe's `train.bf16: auto`."""
    return use_bf16("auto", torch.device(device))


def default_trainers(device):
    """The Trainer as run_ner.py sets it up, with group_by_length, and nerpipe; plus the Trainer in bf16
    on a CPU with native bf16, where nerpipe's default trains in bf16 too. (On CUDA every Trainer row
    takes bf16 where the GPU has it natively: hf-group-bf16 would repeat hf-group.)"""
    return ["hf-random", "hf-group"] + (["hf-group-bf16"] if device == "cpu" and native_bf16() else []) + ["nerpipe"]


def trains_in_bf16(trainer, device):
    kind, options = TRAINERS[trainer]
    if kind == "hf":  # on CUDA, bench.hf_trainer adds bf16 wherever the GPU has it natively
        return bool(options.get("bf16", False) or (device == "cuda" and native_bf16("cuda")))
    return use_bf16(options.get("bf16", "auto"), torch.device(device))


# --------------------------------------------------------------------------------------------------
# nerpipe's trainer, through the same calls nerpipe/train/run.py makes
# --------------------------------------------------------------------------------------------------
def run_nerpipe(model_dir, data, *, lr, batch_size, epochs, seed, warmup_ratio, weight_decay, max_grad_norm,
                eval_batch_size, eval_splits, bf16="auto", device="cpu", eval_every=0, target_f1=0.0):
    """Train with nerpipe.train.loop.fit on the benchmark rows (dev F1 once per epoch, or every `eval_every`
    steps and at each epoch's end, the best model kept, as the train stage does; with `target_f1` (0-1)
    stopping at the first evaluation that reaches it), predict `eval_splits` with the best model; a TrainResult."""
    from nerpipe.core.params import TrainParams
    from nerpipe.data.batching import length_grouped_batches, padded_width
    from nerpipe.data.prepared import WindowedExamples
    from nerpipe.evaluate.inference import predict_tags
    from nerpipe.evaluate.scoring import score_split
    from nerpipe.model.device import pad_multiple, set_tf32
    from nerpipe.model.loading import load_for_training, load_tokenizer, load_trained
    from nerpipe.train.checkpoints import Checkpoints
    from nerpipe.train.loop import DevSet, RunContext, dev_scorer, fit, plan_steps

    if device == "cuda":
        gpu.require_cuda("nerpipe with device='cuda'")
    device = torch.device(device)
    tokenizer = load_tokenizer(model_dir)
    pad_id = tokenizer.pad_token_id
    cfg = TrainParams(epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                      max_grad_norm=max_grad_norm, seed=seed, dropout=0.1, eval_every_steps=eval_every, patience=0,
                      checkpoint_every=0, bf16=bf16)
    bf16 = use_bf16(cfg.bf16, device)
    set_tf32(device, bf16)
    train_split, dev_split = data.splits["train"], data.splits["valid"]
    train = WindowedExamples(train_split.examples)
    devset = DevSet(WindowedExamples(dev_split.examples), dev_split.words, dev_split.gold, data.id2label,
                    eval_batch_size)
    score_dev = dev_scorer(devset, pad_id, device, bf16)
    dev_cpu_seconds, wall0, ended = 0.0, None, []

    def evaluate_dev(model):
        # fit() times its dev evaluations in wall seconds (TrainState.eval_seconds); their CPU seconds are
        # counted here, so that the CPU seconds of training alone can be reported, and when each one ended.
        nonlocal dev_cpu_seconds
        started = time.process_time()
        try:
            return score_dev(model)
        finally:
            dev_cpu_seconds += time.process_time() - started
            ended.append(time.perf_counter() - wall0)

    model = load_for_training(model_dir, data.labels, cfg.dropout, seed).to(device)
    rss_before_train = peak_rss_mib()
    gpu.reset_peak_memory(device)
    with tempfile.TemporaryDirectory(prefix="nerpipe_bench_") as tmp:
        checkpoints = Checkpoints(Path(tmp) / "checkpoints", "bench")
        load_before = loadavg()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        state = fit(model, train, RunContext(cfg, lr, pad_id, device, bf16, checkpoints, evaluate_dev,
                                             stop_when=lambda scores: bool(target_f1) and scores["f1"] >= target_f1))
        fit_seconds = time.perf_counter() - wall0
        # The rest of the call besides dev evaluation is the steps, plus saving the best model once an epoch.
        train_cpu_seconds = time.process_time() - cpu0 - dev_cpu_seconds
        load_after, rss_after_train = loadavg(), peak_rss_mib()
        best = load_trained(checkpoints.best_dir).to(device)
        scores, eval_seconds = {}, {}
        for name in eval_splits:
            split = data.splits[name]
            started = time.perf_counter()
            pred = predict_tags(best, WindowedExamples(split.examples), split.words, data.id2label, pad_id,
                                eval_batch_size, device, bf16, progress=False)
            eval_seconds[name] = time.perf_counter() - started
            scores[name] = score_split(split.gold, pred)

    threads = torch.get_num_threads()
    lengths = train.input_ids.lengths()
    # the width fit's collate pads each batch to (a multiple of 8 on CUDA, within the model's positions)
    multiple, limit = pad_multiple(device), getattr(model.config, "max_position_embeddings", None)
    # the batches fed: one per optimizer step (no gradient accumulation here), epoch after epoch, the last
    # epoch cut where a run stopped at its target
    fed_batches = [b for epoch in range(state.epoch + 1)
                   for b in length_grouped_batches(lengths, batch_size, seed, epoch)][:state.step]
    padded = sum(padded_width(int(lengths[b].max()), multiple, limit) * len(b) for b in fed_batches)
    dev_evals = [{**row, "seconds": round(seconds, 3)} for row, seconds in zip(state.dev_evals, ended)]
    time_to_target, target_step = reached_target(dev_evals, target_f1)
    logged_steps = [row["step"] for row in state.history]
    # each history row is the mean loss of the steps since the previous row
    loss_sum = sum(row["loss"] * (step - previous)
                   for row, step, previous in zip(state.history, logged_steps, [0] + logged_steps))
    return TrainResult(
        trainer="nerpipe", batch_order="nerpipe length_grouped_batches", bf16=bf16,
        config={"lr": lr, "batch_size": batch_size, "epochs": epochs, "seed": seed, "warmup_ratio": warmup_ratio,
                "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "threads": threads,
                "torch": torch.__version__},
        train_sentences=len(train_split.sentences), train_rows=len(train),
        steps=state.step, planned_steps=plan_steps(len(train), cfg)[1],
        train_seconds=round(state.train_seconds, 3), training_call_seconds=round(fit_seconds, 3),
        dev_eval_seconds_in_training=round(state.eval_seconds, 3),
        train_cpu_seconds=round(train_cpu_seconds, 3),
        cpu_utilisation=round(train_cpu_seconds / ((fit_seconds - state.eval_seconds) * threads), 3),
        fed=fed_counts(state.sentences_seen, state.tokens_seen, padded),
        train_loss=round(loss_sum / max(state.step, 1), 6),
        loss_history=[{"step": row["step"], "loss": row["loss"]} for row in state.history],
        dev_evals=dev_evals,
        eval_seconds={k: round(v, 3) for k, v in eval_seconds.items()}, scores=entity_scores_only(scores),
        eval_batch_size=eval_batch_size,
        peak_rss_mib={"before_train": rss_before_train, "after_train": rss_after_train,
                      "after_eval": peak_rss_mib()},
        loadavg_1min=[load_before, load_after],
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        peak_gpu_mib=gpu.peak_memory_mib(device), target_f1=target_f1 or None,
        time_to_target_seconds=time_to_target, target_step=target_step)


# --------------------------------------------------------------------------------------------------
# Worker: one training run in this process.
# --------------------------------------------------------------------------------------------------
def worker(spec):
    from transformers import AutoTokenizer

    from bench.data import load_data
    from bench.hf_trainer import train_and_evaluate

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    # All three splits always: the label list is built over all of them, as stages/prepare.py does. A run
    # without evaluation still has fit() score dev once an epoch: on its first 64 sentences, then.
    eval_sentences = spec["eval_sentences"] or (0 if spec["eval_splits"] else 64)
    data = load_data(tokenizer, spec["data"], spec["train_sentences"], eval_sentences)
    kind, options = TRAINERS[spec["trainer"]]
    hyper = {k: spec[k] for k in ("lr", "batch_size", "epochs", "seed", "warmup_ratio", "weight_decay",
                                  "max_grad_norm", "eval_batch_size")}
    hyper |= {"eval_every": spec.get("eval_every", 0), "target_f1": spec.get("target_f1", 0.0) / 100}
    run = train_and_evaluate if kind == "hf" else run_nerpipe
    result = run(spec["model"], data, **options, **hyper, eval_splits=tuple(spec["eval_splits"]),
                 device=spec["device"])
    return {**result.to_json(), "data_seconds": round(data.seconds, 2), "spec": spec}


def run_in_subprocess(spec, timeout):
    with tempfile.TemporaryDirectory(prefix="bench_worker_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TQDM_DISABLE": "1",
               "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if spec["device"] == "cuda":
            env = gpu.one_gpu_env(env)
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


def table_rows(runs, flops_per_token, reference):
    """reference: on a CPU {threads: torch.mm fp32 GFLOP per CPU second} (median rate / (cpu utilisation *
    threads)); on a GPU its bf16 torch.mm GFLOP/s (None when not measured)."""
    rows = []
    for r in runs:
        spec = r["spec"]
        if "error" in r:
            head = header(spec.get("device", "cpu"))
            rows.append([spec["trainer"], "", str(spec["threads"]), str(spec["repeat"]), "ERROR: " +
                         r["error"].splitlines()[-1][:80]] + [""] * (len(head) - 5))
            continue
        if spec.get("device") == "cuda":
            rows.append(_gpu_row(r, flops_per_token, reference))
            continue
        fp32_gflops = reference
        # Per CPU second, so that time other processes took does not count against the trainer.
        cpu_scale = r["cpu_utilisation"] * r["config"]["threads"]
        gflops = r["train_padded_tokens_per_second"] * flops_per_token / 1e9 / cpu_scale if flops_per_token else None
        f1 = r["f1"]
        rows.append([
            spec["trainer"], "bf16" if r["bf16"] else "fp32", str(r["config"]["threads"]), str(spec["repeat"]),
            _fmt(r["train_seconds"], 1), _fmt(r["train_sentences_per_second"], 1),
            _fmt(r["train_subtokens_per_second"]), _fmt(r["train_subtokens_per_cpu_second"]),
            _fmt(r["train_padded_tokens_per_second"]),
            _fmt(100 * r["fed"]["padding_fraction"], 1),
            _fmt(gflops, 1), _fmt(100 * gflops / fp32_gflops[r["config"]["threads"]]
                                  if gflops and r["config"]["threads"] in fp32_gflops else None, 0),
            "/".join(_fmt(100 * f1[s]["conlleval"], 2) for s in ("valid", "test") if s in f1) or "-",
            "/".join(_fmt(100 * f1[s]["strict"], 2) for s in ("valid", "test") if s in f1) or "-",
            "/".join(_fmt(v, 1) for v in r["eval_seconds"].values()) or "-",
            _fmt(r["peak_rss_mib"]["after_eval"]),
            _fmt(r["cpu_utilisation"], 2) + (" (contended)" if r["cpu_utilisation"] < 0.85 else ""),
        ])
    return rows


def _f1_cells(r):
    f1 = r["f1"]
    return ["/".join(_fmt(100 * f1[s]["conlleval"], 2) for s in ("valid", "test") if s in f1) or "-",
            "/".join(_fmt(100 * f1[s]["strict"], 2) for s in ("valid", "test") if s in f1) or "-",
            "/".join(_fmt(v, 1) for v in r["eval_seconds"].values()) or "-"]


def _gpu_row(r, flops_per_token, bf16_gflops):
    """A GPU run: rates per wall second (the CPU mostly waits for the GPU, so its utilisation says nothing
    of contention), model FLOP/s against the GPU's own bf16 matmul rate, peak GPU memory."""
    gflops = r["train_padded_tokens_per_second"] * flops_per_token / 1e9 if flops_per_token else None
    return [r["spec"]["trainer"], "bf16" if r["bf16"] else "fp32", "1 GPU", str(r["spec"]["repeat"]),
            _fmt(r["train_seconds"], 1), _fmt(r["train_sentences_per_second"], 1),
            _fmt(r["train_subtokens_per_second"]), _fmt(r["train_padded_tokens_per_second"]),
            _fmt(100 * r["fed"]["padding_fraction"], 1), _fmt(gflops / 1e3 if gflops else None, 1),
            _fmt(100 * gflops / bf16_gflops if gflops and bf16_gflops else None, 1), *_f1_cells(r),
            _fmt((r.get("peak_gpu_mib") or {}).get("allocated"))]


HEADER = ["trainer", "precision", "threads", "rep", "train s", "sent/s", "subtok/s", "subtok/cpu-s", "padded/s",
          "pad %", "GFLOP/cpu-s", "% of fp32 mm", "F1 dev/test (conlleval)", "F1 dev/test (strict)", "eval s dev/test",
          "peak RSS MiB", "cpu util"]
HEADER_GPU = ["trainer", "precision", "device", "rep", "train s", "sent/s", "subtok/s", "padded/s", "pad %",
              "model TFLOP/s", "% of bf16 mm", "F1 dev/test (conlleval)", "F1 dev/test (strict)", "eval s dev/test",
              "peak GPU MiB"]


def header(device):
    return HEADER_GPU if device == "cuda" else HEADER


def markdown_table(rows, head=HEADER):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(rows, head=HEADER):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*row) for row in [head, *rows])


def medians(runs):
    """Median speed per (trainer, threads) over repeats."""
    groups = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault((r["spec"]["trainer"], r["config"]["threads"]), []).append(r)
    out = []
    for (trainer, threads), rs in groups.items():
        out.append({"trainer": trainer, "threads": threads, "repeats": len(rs), "bf16": rs[0]["bf16"],
                    **{k: statistics.median(x[k] for x in rs) for k in
                       ("train_seconds", "train_sentences_per_second", "train_subtokens_per_second",
                        "train_padded_tokens_per_second", "train_subtokens_per_cpu_second")},
                    "dev_f1": statistics.median(x["f1"]["valid"]["conlleval"] for x in rs)
                    if "valid" in rs[0]["f1"] else None,
                    "time_to_target_seconds": statistics.median(x["time_to_target_seconds"] for x in rs)
                    if all(x.get("time_to_target_seconds") for x in rs) else None})
    return out


def _precision(median):
    return "bf16" if median["bf16"] else "fp32"


def ratio_lines(medians_):
    """nerpipe's median speed over each other trainer's, at the same thread count, and the dev F1 gap; the
    precision of each side is named, since at equal precision the two loops have run at the same speed."""
    lines = []
    for base in (m for m in medians_ if m["trainer"] == "nerpipe"):
        for other in (m for m in medians_ if m["threads"] == base["threads"] and m["trainer"] != "nerpipe"):
            speedup = base["train_sentences_per_second"] / other["train_sentences_per_second"]
            line = (f"- nerpipe ({_precision(base)}) / {other['trainer']} ({_precision(other)}) "
                    f"({base['threads']} threads, medians of {base['repeats']} and {other['repeats']} runs): "
                    f"**{speedup:.2f}x** sentences/s")
            if base["dev_f1"] is not None and other["dev_f1"] is not None:
                line += f"; dev F1 (conlleval) {100 * (base['dev_f1'] - other['dev_f1']):+.2f} points"
            lines.append(line)
    return lines


def target_runs(runs):
    """The runs that finished with a target F1 set."""
    return [r for r in runs if "error" not in r and r.get("target_f1")]


def target_lines(runs, medians_):
    """With --target-f1: each run's time to the target (dev evaluations included), then nerpipe's median
    against each other trainer's. Empty without a target."""
    done = target_runs(runs)
    if not done:
        return []
    head = ["trainer", "precision", "seed", "rep", "target dev F1", "reached at step", "time to target s",
            "of which dev eval s", "dev evals", "train s (steps)", "sent/s", "best dev F1"]
    rows = []
    for r in done:
        at = r["target_step"]
        before = [e for e in r["dev_evals"] if at is None or e["step"] <= at]
        rows.append([r["spec"]["trainer"], "bf16" if r["bf16"] else "fp32", str(r["spec"].get("seed")),
                     str(r["spec"]["repeat"]), _fmt(100 * r["target_f1"], 2), str(at) if at else "not reached",
                     _fmt(r["time_to_target_seconds"], 1), _fmt(r["dev_eval_seconds_in_training"], 1),
                     str(len(before)), _fmt(r["train_seconds"], 1), _fmt(r["train_sentences_per_second"], 1),
                     _fmt(100 * max(e["dev_f1"] for e in r["dev_evals"]), 2) if r["dev_evals"] else "-"])
    lines = ["Time to accuracy (wall seconds from the start of training to the end of the first dev evaluation "
             "that reached the target; steps, dev evaluations and the rest of the training call included):", "",
             markdown_table(rows, head), ""]
    for base in (m for m in medians_ if m["trainer"] == "nerpipe" and m["time_to_target_seconds"]):
        for other in (m for m in medians_ if m["threads"] == base["threads"] and m["trainer"] != "nerpipe"):
            if other["time_to_target_seconds"]:
                lines.append(f"- time to target, {other['trainer']} ({_precision(other)}) / nerpipe "
                             f"({_precision(base)}): **{other['time_to_target_seconds'] / base['time_to_target_seconds']:.2f}x** "
                             f"({other['time_to_target_seconds']:.1f} s vs {base['time_to_target_seconds']:.1f} s)")
            else:
                lines.append(f"- {other['trainer']} did not reach the target in every run")
    return lines + [""]


def sign_test(wins, losses):
    """Two-sided exact sign test: the probability, were both sides equally likely to come first, of a split at
    least as uneven as wins:losses (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(max(wins, losses), n + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def seed_lines(runs):
    """With runs at more than one seed and a target: per seed, each trainer's median time to the target against
    nerpipe's, and whether nerpipe coming first is more than chance (a sign test over the seeds). The batch
    order, and so the step at which the target is reached, is one draw per seed; repeats only re-time it."""
    done = target_runs(runs)
    seeds = sorted({r["spec"]["seed"] for r in done})
    if len(seeds) < 2:
        return []

    def at(trainer, seed, threads):
        rs = [r for r in done if (r["spec"]["trainer"], r["spec"]["seed"], r["config"]["threads"]) == (trainer, seed, threads)]
        if not rs or not all(r.get("time_to_target_seconds") for r in rs):
            return None
        return {"step": rs[0]["target_step"], "seconds": statistics.median(r["time_to_target_seconds"] for r in rs),
                "runs": len(rs)}

    lines = []
    pairs = sorted({(r["spec"]["trainer"], r["config"]["threads"]) for r in done if r["spec"]["trainer"] != "nerpipe"})
    for other, threads in pairs:
        rows, ratios = [], []
        for seed in seeds:
            mine, theirs = at("nerpipe", seed, threads), at(other, seed, threads)
            if mine and theirs:
                ratios.append(theirs["seconds"] / mine["seconds"])
            rows.append([str(seed), *(f"{x['step']}, {x['seconds']:.1f} s ({x['runs']} run{'s' * (x['runs'] > 1)})"
                                      if x else "not reached" for x in (mine, theirs)),
                         f"{ratios[-1]:.2f}x" if mine and theirs else "-"])
        wins, losses = sum(r > 1 for r in ratios), sum(r < 1 for r in ratios)
        p = sign_test(wins, losses)
        lines += [f"Time to target by seed, {other} against nerpipe ({threads} threads):", "",
                  markdown_table(rows, ["seed", "nerpipe: step, time to target", f"{other}: step, time to target",
                                        f"{other} / nerpipe"]), ""]
        if ratios:
            geomean = math.exp(statistics.fmean(math.log(r) for r in ratios))
            verdict = "significant" if p < 0.05 else "not significant"
            lines.append(f"- nerpipe reached the target first at {wins} of {len(ratios)} seeds ({losses} the other way); "
                         f"two-sided sign test p = {p:.3g}, {verdict} at 0.05; geometric mean of the ratios "
                         f"{geomean:.2f}x")
        lines.append("")
    return lines


def environment(device="cpu"):
    import transformers
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": cpu, "cores": os.cpu_count(), "default_threads": torch.get_num_threads(),
            "native_bf16": native_bf16(device), "device": device,
            **({"gpu": gpu.gpu_info()} if device == "cuda" else {}),
            "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _matmul_line(m):
    if m.get("device") == "cuda":
        return (f"- torch.mm {m['m']}^3 {m['dtype']}{' (TF32)' if m.get('tf32') else ''} on the GPU: "
                f"{m['gflops_median']:,} GFLOP/s median (best {m['gflops_best']:,})")
    return f"- torch.mm {m['m']}^3 {m['dtype']} threads={m['threads']}: {m['gflops_median']} GFLOP/s " \
           f"(cpu util {m['cpu_utilisation']})"


def write_report(report, out):
    """Print the table; write <out>.json and <out>.md."""
    runs = report["runs"]
    report["medians"] = medians(runs)
    flops_per_token = report["flops"]["flops_per_token"]
    device = runs[0]["spec"].get("device", "cpu") if runs else "cpu"
    matmul = report.get("matmul", [])
    if device == "cuda":  # the GPU's own bf16 rate
        reference = next((m["gflops_median"] for m in matmul if m.get("device") == "cuda" and m["dtype"] == "bf16"),
                         None)
    else:  # GFLOP per CPU second
        reference = {m["threads"]: m["gflops_median"] / ((m["cpu_utilisation"] or 1) * m["threads"])
                     for m in matmul if m.get("device", "cpu") == "cpu" and m["dtype"] == "fp32"}
    rows, head = table_rows(runs, flops_per_token, reference), header(device)
    print()
    print(plain_table(rows, head))
    print("\n".join(["", *ratio_lines(report["medians"])]))
    target_md = target_lines(runs, report["medians"]) + seed_lines(runs)
    if target_md:
        print("\n".join(["", *target_md]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    env, spec = report["environment"], (runs[0]["spec"] if runs else {})
    seeds = [str(seed) for seed in dict.fromkeys(r["spec"].get("seed") for r in runs)]
    md = [f"# Benchmark {env['date']}", "",
          f"- training sentences: {spec.get('train_sentences') or 'all'}, epochs {spec.get('epochs')}, batch size "
          f"{spec.get('batch_size')}, lr {spec.get('lr')}, seed {', '.join(seeds)}, warmup ratio "
          f"{spec.get('warmup_ratio')}, weight decay {spec.get('weight_decay')}, eval batch size "
          f"{spec.get('eval_batch_size')}",
          f"- {env['cpu']}, {env['cores']} cores; torch {env['torch']}, transformers {env['transformers']}",
          *([f"- GPU: {g['name']} (compute capability {g['capability']}, {g['memory_mib']:,} MiB, CUDA "
             f"{g['torch_cuda']}{'; ' + g['nvidia_smi'] if g.get('nvidia_smi') else ''}), one GPU per run"]
            if (g := env.get("gpu")) else []),
          f"- native bf16 ({'compute capability >= 8.0' if device == 'cuda' else 'avx512_bf16 or AMX'}; where "
          f"nerpipe's `train.bf16: auto` turns bf16 on): {'yes' if env.get('native_bf16') else 'no'}",
          f"- load average at start/end: {env['loadavg_start'][0]:.2f} / {env['loadavg_end'][0]:.2f} "
          "(shared machine; see `cpu util`)",
          f"- model train FLOPs per sub-token (seq 40): {flops_per_token / 1e6:.2f} M"]
    md += [_matmul_line(m) for m in matmul]
    md += ["", markdown_table(rows, head), "", *ratio_lines(report["medians"]), "", *target_md,
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


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help=f"CoNLL-2003 directory (else ${inputs.DATA_ENV}, else "
                                       "../shared/data/conll2003 beside the repository)")
    parser.add_argument("--model", help=f"local model directory (else ${inputs.MODEL_ENV}, else what "
                                        "../shared/scripts/offline-model beside the repository prints)")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_TRAIN_SENTENCES} training sentences")
    parser.add_argument("--train-sentences", type=int, default=0, help="first N training sentences (0: all)")
    parser.add_argument("--eval-sentences", type=int, default=0,
                        help="first N sentences of valid and test, for dev F1 and evaluation (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="several seeds, each with --repeats runs per trainer (instead of --seed); with "
                             "--target-f1 the report compares the time to target seed by seed, with a sign test")
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="0.0: the Trainer's and run_ner's default")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--eval-splits", nargs="+", default=["valid", "test"], help="'none' to skip evaluation")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="dev F1 every N optimizer steps and at each epoch's end, on both sides (0: nerpipe once "
                             "per epoch, the Trainer never, unless --target-f1)")
    parser.add_argument("--target-f1", type=float, default=0.0,
                        help="time-to-accuracy: dev F1 (conlleval, in percent, e.g. 88.0) at which each trainer "
                             "stops; the wall time until its first dev evaluation reaches it is reported")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch threads per run (default: torch's, %(default)s here)")
    parser.add_argument("--trainers", nargs="+", choices=list(TRAINERS),
                        help="default: hf-random hf-group nerpipe, and hf-group-bf16 where the CPU has native bf16 "
                             f"({' '.join(default_trainers('cpu'))} here)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: every trainer on one GPU (the first visible), with bf16 autocast and TF32 where "
                             "the GPU has them natively, fused AdamW and rows padded to a multiple of 8; an error "
                             "without a GPU")
    parser.add_argument("--no-matmul", action="store_true",
                        help="skip the matmul GFLOP/s reference (the CPU's, or with --device cuda the GPU's)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per training run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/benchmark.json"))
    parser.add_argument("--merge", type=Path, nargs="+", help="combine earlier result JSONs into --out; runs nothing")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_trainers(trainers, device):
    """bf16 rows only where bf16 is native: emulated, a bf16 matmul runs at ~1 GFLOP/s on a CPU (and
    slower than fp32 on a T4 or V100) and measures nothing; transformers refuses it on such GPUs."""
    emulated = [t for t in trainers if trains_in_bf16(t, device) and not native_bf16(device)]
    if emulated:
        why = "GPU would be emulated (compute capability below 8.0)" if device == "cuda" else \
            "CPU would be emulated (no avx512_bf16 or AMX)"
        raise UserError(f"--trainers {' '.join(emulated)}: bf16 on this {why}; leave those out")


def measure_matmul(threads_list, device="cpu"):
    """The matmul reference. On a CPU: 2048^3 torch.mm per thread count, fp32, and bf16 only where the CPU
    has it natively. On a GPU: 8192^3 on the GPU, bf16 (the reference), strict fp32 and fp32 with TF32."""
    from bench import matmul

    if device == "cuda":
        rows = matmul.cuda_summary()
        for m in rows:
            print(_matmul_line(m)[2:], flush=True)
        return rows
    rows = []
    for threads in threads_list:
        rows += matmul.summary(sizes=(2048,), threads=threads, min_seconds=2.0)
    for m in rows:
        print(f"matmul {m['m']}^3 {m['dtype']} threads={m['threads']}: {m['gflops_median']} GFLOP/s "
              f"(best {m['gflops_best']}, cpu util {m['cpu_utilisation']})", flush=True)
    return rows


def schedule(trainers, seeds, repeats, threads_list):
    """The runs, in order: (trainer, threads, seed, repeat). Each seed gets `repeats` rounds; every other round
    runs the trainers in reverse order, so that a slow drift of the machine's speed does not favour whoever
    runs first."""
    rounds = [(seed, repeat) for seed in seeds for repeat in range(repeats)]
    return [(trainer, threads, seed, repeat) for turn, (seed, repeat) in enumerate(rounds) for threads in threads_list
            for trainer in (trainers if turn % 2 == 0 else trainers[::-1])]


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        with exit_on_user_error():
            result = worker(json.loads(args.worker.read_text()))
        args.worker_out.write_text(json.dumps(result))
        return result
    if args.merge:
        return merge(args.merge, args.out)

    import transformers

    from bench import flops

    transformers.logging.set_verbosity_error()
    trainers = args.trainers or default_trainers(args.device)
    with exit_on_user_error():
        if args.device == "cuda":
            gpu.require_cuda()
        check_trainers(trainers, args.device)
        data_dir, model_dir = str(inputs.data_dir(args.data)), inputs.model_dir(args.model)
    train_sentences = args.train_sentences or (QUICK_TRAIN_SENTENCES if args.quick else 0)
    eval_splits = [] if args.eval_splits == ["none"] else args.eval_splits
    report = {"environment": environment(args.device), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"data {data_dir}, model {model_dir}, trainers {' '.join(trainers)}", flush=True)

    report["flops"] = flops.train_flops_per_token(flops.load_model(model_dir), seq_len=40)
    print(f"model train FLOPs per sub-token (seq 40): {report['flops']['flops_per_token'] / 1e6:.2f} M", flush=True)
    if not args.no_matmul:
        report["matmul"] = measure_matmul(args.threads, args.device)

    runs = []
    for trainer, threads, seed, repeat in schedule(trainers, args.seeds or [args.seed], args.repeats, args.threads):
        spec = {"trainer": trainer, "threads": threads, "repeat": repeat, "data": data_dir,
                "model": model_dir, "train_sentences": train_sentences,
                "eval_sentences": args.eval_sentences, "epochs": args.epochs, "batch_size": args.batch_size,
                "lr": args.lr, "seed": seed, "warmup_ratio": args.warmup_ratio,
                "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm,
                "eval_batch_size": args.eval_batch_size, "eval_splits": eval_splits,
                "device": args.device, "eval_every": args.eval_every, "target_f1": args.target_f1}
        print(f"run {trainer} threads={threads} seed={seed} repeat={repeat} ...", flush=True)
        result = run_in_subprocess(spec, args.timeout)
        runs.append(result)
        if "error" in result:
            print(f"  ERROR: {result['error']}", flush=True)
        else:
            print(f"  {result['train_seconds']} s, {result['train_sentences_per_second']} sent/s, "
                  f"{result['train_subtokens_per_second']} subtok/s, F1 {result['f1']}", flush=True)
    report["runs"] = runs
    report["environment"]["loadavg_end"] = os.getloadavg()
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
