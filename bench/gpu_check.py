"""The prepared GPU check: nerpipe's whole GPU path in one command, about 8 minutes on one GPU, no network.

    bench/gpu_check.sh [--out DIR] [--steps 1 2 3 4 5]    # on the GPU machine; writes to $OUT if set

In the order 1, 5, 2, 3, 4 (--steps picks others); each step is timed and recorded even when an earlier one
failed:
  1. tests: tests/test_cuda.py with NERPIPE_TEST_CUDA=1 (the `cuda` tests: precision rules, strict-fp32
     prediction, fit resumed after a crash and the tiny `dvc repro` killed and resumed -- both compared
     with uninterrupted runs, how close recorded --, a GPU checkpoint read where no GPU is visible), then
     the CPU-side tests of the GPU path pinned to the CPU as always, which on a GPU host proves the pinning.
  2. pipeline: `dvc repro` of the real pipeline in a throwaway repository, one epoch of full CoNLL-2003
     with the payload's MiniLM-L6: wall time per stage, sentences/s, dev/test F1.
  3. benchmark: `bench.run_benchmark --device cuda`, the Trainer at its best GPU settings against
     nerpipe, full training set, one epoch, same GPU.
  4. bert-base proxy: training throughput of a randomly initialised model of bert-base-cased's shape
     (BertConfig's defaults, vocabulary 28,996) on the CoNLL rows, through nerpipe's own collate_step and run_step:
     a fixed number of steps after a warmup, extrapolated to 3 epochs, compared with the GPU's measured
     bf16 matmul rate. Its loss and F1 mean nothing.
  5. step overhead: `bench.step_speed` on the same MiniLM batches in alternating blocks: the step as it
     was (collated when needed, unpinned copies, loss read and GPU synchronized every step) against fit's
     (collated ahead by a worker, pinned, asynchronous copies, nothing read back), and batches padded to
     static widths (train.static_widths) eager against CUDA graphs (torch.compile mode="reduce-overhead"),
     the graphs' compilation counted apart. `--steps 5` runs it alone.

Writes gpu_check.json and gpu_check.md, and each step's log, to --out ($OUT when set, else
bench/results/gpu_check), after every step. Exit status 0 when every step passed, 1 when one failed or
was left out, 2 when it cannot start: no CUDA GPU, no payload, missing packages it names.

What the GPU machine needs:
  - this working tree and gpu_payload/, built where the offline model and data are (`make gpu-payload`,
    49 MiB: MiniLM's weights in bf16, cast back to fp32 here before training; the CoNLL files);
  - a Python (PYTHON=..., default python3) with a CUDA build of torch and the packages in PACKAGES,
    checked before anything runs and never installed by this script (PyPI may not be reachable):
      pip install 'transformers>=5,<6' datasets tokenizers safetensors 'accelerate>=1.1' 'seqeval>=1.2.2' \\
          'dvc>=3.50,<4' 'mlflow>=3,<4' pandas matplotlib tqdm ruamel.yaml regex pytest
  - git, when present, for the pipeline's repository (DVC runs without it otherwise).

--cpu-smoke runs every step on the CPU on a few hundred sentences, to try this script's own code where
there is no GPU (the `cuda` tests are then deselected); its numbers mean nothing.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = REPO / "gpu_payload"
# import name -> what to pip install
PACKAGES = {"torch": "torch (a CUDA build)", "numpy": "numpy", "transformers": "transformers>=5,<6",
            "datasets": "datasets", "tokenizers": "tokenizers", "safetensors": "safetensors",
            "accelerate": "accelerate>=1.1", "seqeval": "seqeval>=1.2.2", "dvc": "dvc>=3.50,<4",
            "mlflow": "mlflow>=3,<4",
            "pandas": "pandas", "matplotlib": "matplotlib", "tqdm": "tqdm", "ruamel.yaml": "ruamel.yaml",
            "regex": "regex", "pytest": "pytest"}
STEPS = {1: "tests", 2: "pipeline", 3: "benchmark", 4: "bert-base proxy", 5: "step overhead"}
TIMEOUTS = {1: 270, 2: 240, 3: 270, 4: 150, 5: 240}  # seconds; each is also cut to what the deadline leaves
BERT_BASE_CASED_VOCAB = 28996


def missing_packages():
    missing = []
    for module, pip_name in PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            missing.append(pip_name)
    return missing


def preflight(smoke):
    """What is checked before any step runs, printed as it goes; the problems, each saying what to do."""
    from bench.gpu_payload import verify

    problems = verify(PAYLOAD)
    if not problems:
        manifest = json.loads((PAYLOAD / "manifest.json").read_text())
        print(f"payload: {PAYLOAD}, {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB, "
              "sha256 verified", flush=True)
    missing = missing_packages()
    if missing:
        problems.append(f"{sys.executable} lacks {', '.join(missing)}: pip install them (see bench/gpu_check.py)")
    else:
        print(f"packages: {sys.executable} (Python {platform.python_version()}) has {', '.join(PACKAGES)}", flush=True)
    if "torch (a CUDA build)" not in missing and not smoke:
        import torch
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            problems.append(f"a CUDA GPU is required: torch {torch.__version__} ({build}) sees none "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); run this on a "
                            "machine with a GPU (or --cpu-smoke to try the script itself on a CPU)")
    return problems


def run_logged(cmd, log, env, cwd, timeout):
    """Run `cmd`, its output into `log` with each line's seconds since the start; (returncode, lines).
    On timeout the whole process group is killed and the return code is 'timeout'."""
    started = time.perf_counter()
    lines = []
    with open(log, "w") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = started + timeout
        killed = False
        for line in proc.stdout:
            at = time.perf_counter() - started
            lines.append((at, line.rstrip("\n")))
            out.write(f"[{at:8.2f}] {line}")
            out.flush()
            if time.perf_counter() > deadline and not killed:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
        try:
            proc.wait(timeout=max(1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    return ("timeout" if killed else proc.returncode), lines


def junit_outcomes(path):
    """{test name: 'passed' | 'failed' | 'skipped', with seconds} from pytest's --junitxml."""
    if not Path(path).is_file():
        return {}
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        out[case.get("name")] = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 2)}
    return out


class Check:
    def __init__(self, out, smoke, deadline, proxy_steps):
        self.out, self.smoke, self.proxy_steps = Path(out), smoke, proxy_steps
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.deadline = deadline
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke_on_cpu": smoke, "steps": {}}
        # `python` in dvc.yaml's commands must be this interpreter: a wrapper, since a symlink to a
        # virtual environment's python outside its bin/ would not find the environment
        self.bin = self.work / "bin"
        self.bin.mkdir()
        (self.bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (self.bin / "python").chmod(0o755)

    def env(self, **extra):
        from bench.gpu import one_gpu_env

        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1",
               "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
        env.pop("MLFLOW_TRACKING_URI", None)  # the pipeline's runs go to its own mlflow.db
        return one_gpu_env(env) if not self.smoke else {**env, "CUDA_VISIBLE_DEVICES": ""}

    def left(self):
        return self.deadline - (time.perf_counter() - self.started)

    def run(self, number, step):
        name = STEPS[number]
        timeout = min(TIMEOUTS[number], self.left() - 15)
        print(f"\n== step {number}: {name} (up to {timeout:.0f} s) ==", flush=True)
        started = time.perf_counter()
        if timeout < 30:
            result = {"status": "left out", "reason": f"the {self.deadline:.0f} s deadline leaves {self.left():.0f} s"}
        else:
            try:
                result = step(self, timeout)
            except Exception as err:  # recorded, and the next step still runs
                (self.out / f"step{number}_error.log").write_text(traceback.format_exc())
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.report["steps"][f"{number} {name}"] = result
        print(f"   {result['status']} in {result['seconds']} s", flush=True)
        self.write()

    def write(self):
        self.report["total_seconds"] = round(time.perf_counter() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.report))

    def fp32_model(self):
        """The payload's bf16 MiniLM cast back to fp32 (once): training starts from fp32 weights."""
        target = self.work / "minilm-fp32"
        if not target.is_dir():
            from safetensors.torch import load_file, save_file

            target.mkdir()
            for source in (PAYLOAD / "model").iterdir():
                if source.name == "model.safetensors":
                    tensors = load_file(source)
                    save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
                              target / source.name, metadata={"format": "pt"})
                else:
                    shutil.copy(source, target / source.name)
        return target

    def data(self):
        """The payload's CoNLL files; in a smoke run, the first 300 sentences of each."""
        if not self.smoke:
            return PAYLOAD / "conll2003"
        target = self.work / "conll-smoke"
        if not target.is_dir():
            target.mkdir()
            for name in ("train.txt", "valid.txt", "test.txt"):
                blocks = (PAYLOAD / "conll2003" / name).read_text().split("\n\n")
                (target / name).write_text("\n\n".join(blocks[:300]) + "\n")
        return target


# --- 1. tests ---------------------------------------------------------------------------------------------

def step_tests(check, timeout):
    pytest = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    closeness_dir = check.out / "cuda_tests"
    started = time.perf_counter()
    # a smoke run does not ask for them: it checks that they are deselected without a GPU
    cuda_env = check.env(NERPIPE_GPU_CHECK_OUT=str(closeness_dir),
                         **({} if check.smoke else {"NERPIPE_TEST_CUDA": "1"}))
    cuda_rc, _ = run_logged(pytest + ["-m", "cuda", "tests/test_cuda.py", f"--junitxml={check.out / 'cuda_tests.xml'}"],
                            check.out / "step1_cuda_tests.log", cuda_env, REPO, timeout * 0.8)
    env = check.env()
    env.pop("NERPIPE_TEST_CUDA", None)
    env.pop("CUDA_VISIBLE_DEVICES")  # the tests' own conftest pins them to the CPU: that is what is checked
    pinned_rc, _ = run_logged(pytest + ["tests/test_gpu_path.py", "tests/test_bf16_setting.py", "tests/test_padding.py",
                                        f"--junitxml={check.out / 'pinned_tests.xml'}"],
                              check.out / "step1_pinned_tests.log", env, REPO,
                              max(30, timeout - (time.perf_counter() - started)))
    cuda_ok = cuda_rc == 0 or (check.smoke and cuda_rc == 5)  # 5: all deselected, as without a GPU
    closeness = {p.stem: json.loads(p.read_text()) for p in sorted(closeness_dir.glob("*.json"))}
    return {"status": "passed" if cuda_ok and pinned_rc == 0 else "failed",
            "cuda_tests": {"returncode": cuda_rc, "outcomes": junit_outcomes(check.out / "cuda_tests.xml")},
            "pinned_tests": {"returncode": pinned_rc, "outcomes": junit_outcomes(check.out / "pinned_tests.xml")},
            "closeness": closeness}


# --- 2. the real pipeline ---------------------------------------------------------------------------------

def step_pipeline(check, timeout):
    from nerpipe.core.set_params import set_params

    repo = check.work / "pipeline"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", "stages", "nerpipe"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\nmlartifacts/\n__pycache__/\n/data/checkpoints/\n")
    data = check.data()
    manifest = json.loads((PAYLOAD / "manifest.json").read_text())
    digests = {split: "" if check.smoke else manifest["files"][f"conll2003/{split_file}"]["sha256"]
               for split, split_file in (("train", "train.txt"), ("valid", "valid.txt"), ("test", "test.txt"))}
    set_params(repo / "params.yaml", [f"data.source={data}", f"model.name={check.fp32_model()}", "train.epochs=1",
                                      *[f"data.sha256.{split}={d}" for split, d in digests.items()]])
    env = check.env(GIT_AUTHOR_NAME="gpu-check", GIT_AUTHOR_EMAIL="gpu@check", GIT_COMMITTER_NAME="gpu-check",
                    GIT_COMMITTER_EMAIL="gpu@check", TQDM_DISABLE="1", PYTHONPATH=str(repo))  # the copy's nerpipe
    dvc = [sys.executable, "-m", "dvc"]
    if shutil.which("git"):
        for cmd in (["git", "init", "-q"], dvc + ["init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "gpu check"]):
            subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    else:
        subprocess.run(dvc + ["init", "-q", "--no-scm"], cwd=repo, env=env, check=True, capture_output=True)
    started = time.perf_counter()
    rc, lines = run_logged(dvc + ["repro"], check.out / "step2_pipeline.log", env, repo, timeout - 20)
    total = time.perf_counter() - started
    starts = [(at, line.split("'")[1]) for at, line in lines if line.startswith("Running stage '")]
    ends = [at for at, _ in starts[1:]] + [total]
    stage_seconds = {stage: round(end - at, 1) for (at, stage), end in zip(starts, ends)}
    result = {"status": "passed" if rc == 0 else "failed", "returncode": rc, "stage_wall_seconds": stage_seconds,
              "repro_seconds": round(total, 1),
              "device_line": next((line for _, line in lines if line.startswith("device ")), None)}
    if rc != 0:
        result["error"] = "\n".join(line for _, line in lines[-15:])
        return result
    reports = repo / "reports"
    # speed is in the timings file (reports/timings/train.json), the rest in train/metrics.json
    train = {**json.loads((reports / "train/metrics.json").read_text()),
             **json.loads((reports / "timings/train.json").read_text())}
    evaluation = json.loads((reports / "eval/metrics.json").read_text())
    result["train"] = {k: train[k] for k in ("steps", "train_seconds", "train_sentences_per_second",
                                             "train_subtokens_per_second", "best_dev_f1")}
    result["f1"] = {f"{split} {mode}": round(100 * evaluation[split][mode]["f1"], 2)
                    for split in ("dev", "test") for mode in ("conlleval", "strict")}
    result["f1_before_finetuning"] = {split: round(100 * evaluation["before_finetuning"][split]["conlleval"]["f1"], 2)
                                      for split in ("dev", "test")}
    again = time.perf_counter()
    rc2, lines2 = run_logged(dvc + ["repro"], check.out / "step2_repro_again.log", env, repo, 60)
    result["repro_with_nothing_to_do_seconds"] = round(time.perf_counter() - again, 1)
    if rc2 != 0 or any(line.startswith("Running stage") for _, line in lines2):
        result["status"] = "failed"
        result["error"] = "a second `dvc repro` ran stages again or failed"
    return result


# --- 3. the benchmark ---------------------------------------------------------------------------------------

def step_benchmark(check, timeout):
    out = check.out / "bench.json"
    cmd = [sys.executable, "-m", "bench.run_benchmark", "--data", check.data(), "--model", check.fp32_model(),
           "--out", out, "--timeout", str(int(timeout / 3))]
    cmd += ["--device", "cpu", "--trainers", "hf-group", "nerpipe", "--no-matmul"] if check.smoke else \
        ["--device", "cuda"]
    rc, lines = run_logged(cmd, check.out / "step3_benchmark.log", check.env(TQDM_DISABLE="1"), REPO, timeout)
    if rc != 0 or not out.is_file():
        return {"status": "failed", "returncode": rc, "error": "\n".join(line for _, line in lines[-15:])}
    report = json.loads(out.read_text())
    errors = [f"{r['spec']['trainer']}: {r['error'].splitlines()[-1]}" for r in report["runs"] if "error" in r]
    return {"status": "failed" if errors else "passed", "errors": errors, "medians": report["medians"],
            "matmul": report.get("matmul"), "table_md": out.with_suffix(".md").read_text()}


# --- 4. bert-base-shaped throughput ------------------------------------------------------------------------

def step_proxy(check, timeout):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, get_linear_schedule_with_warmup

    from bench import gpu, matmul
    from bench.flops import analytic_flops_per_token, count_train_flops
    from nerpipe.core.params import SPLITS, PrepareParams
    from nerpipe.data.batching import length_grouped_batches, padded_width
    from nerpipe.data.prepare import prepare_corpus
    from nerpipe.data.prepared import PreparedSplit, read_labels
    from nerpipe.model.device import pad_multiple, set_tf32, use_bf16
    from nerpipe.train.loop import build_optimizer, collate_step, run_step, synchronize

    device = torch.device("cpu" if check.smoke else "cuda")
    tokenizer = AutoTokenizer.from_pretrained(check.fp32_model())
    prepared = check.work / "proxy_prepared"
    data = check.data()
    prepare_corpus({split: data / f"{split}.txt" for split in SPLITS}, tokenizer, PrepareParams(), prepared)
    train = PreparedSplit(prepared, "train").examples
    # MiniLM's uncased ids, folded into bert-base-cased's vocabulary: only the shapes matter here
    train.input_ids.values = train.input_ids.values % BERT_BASE_CASED_VOCAB
    torch.manual_seed(42)
    config = BertConfig(vocab_size=BERT_BASE_CASED_VOCAB, num_labels=len(read_labels(prepared)))
    model = BertForTokenClassification(config).to(device).train()
    bf16 = use_bf16("auto", device)
    tf32 = set_tf32(device, bf16)
    lengths = train.input_ids.lengths()
    epochs = [length_grouped_batches(lengths, 32, 42, epoch) for epoch in range(3)]
    total_steps = sum(len(batches) for batches in epochs)
    optimizer = build_optimizer(model, 5e-5, 0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total_steps), total_steps)
    warmup, measured = (2, 3) if check.smoke else (20, check.proxy_steps)
    multiple, limit = pad_multiple(device), config.max_position_embeddings
    padded, sentences, seconds = 0, 0, None
    for i, batch in enumerate(epochs[0][:warmup + measured]):
        if i == warmup:
            synchronize(device)
            gpu.reset_peak_memory(device)
            started = time.perf_counter()
        loss = run_step(model, collate_step([batch], train, lengths, tokenizer.pad_token_id, multiple, limit), device,
                        bf16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            padded += padded_width(int(lengths[batch].max()), multiple, limit) * len(batch)
            sentences += len(batch)
    synchronize(device)
    seconds = time.perf_counter() - started
    three_epochs_padded = sum(padded_width(int(lengths[b].max()), multiple, limit) * len(b)
                              for batches in epochs for b in batches)
    mean_width = three_epochs_padded / (3 * len(train))
    seq = max(8, round(mean_width))
    ids = torch.randint(1000, BERT_BASE_CASED_VOCAB, (8, seq), device=device)
    counted = count_train_flops(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                        "labels": torch.zeros_like(ids)})
    flops_per_token = counted["total"] / ids.numel()
    if check.smoke:
        reference = matmul.measure(1024, dtype="fp32", min_seconds=0.5)
    else:
        reference = matmul.measure_cuda(8192, "bf16")
    padded_per_second = padded / seconds
    achieved = padded_per_second * flops_per_token
    return {"status": "passed" if torch.isfinite(loss) else "failed",
            "model": "BertForTokenClassification, BertConfig defaults (12 x 768, 3072 FFN), vocab 28,996, random init",
            "device": gpu.gpu_info()["name"] if device.type == "cuda" else "cpu", "bf16": bf16, "tf32": tf32,
            "batch_size": 32, "warmup_steps": warmup, "measured_steps": measured, "measured_seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / measured, 4), "sentences_per_second": round(sentences / seconds, 1),
            "padded_tokens_per_second": round(padded_per_second), "steps_for_3_epochs": total_steps,
            "estimated_3_epoch_train_seconds_by_steps": round(seconds / measured * total_steps, 1),
            "estimated_3_epoch_train_seconds_by_tokens": round(three_epochs_padded / padded_per_second, 1),
            "mean_padded_width": round(mean_width, 1), "train_flops_per_token": round(flops_per_token),
            "analytic_flops_per_token": analytic_flops_per_token(config, seq),
            "achieved_tflops": round(achieved / 1e12, 2), "reference_matmul": reference,
            "share_of_reference_matmul": round(achieved / (reference["gflops_median"] * 1e9), 3),
            "peak_gpu_mib": gpu.peak_memory_mib(device), "last_loss": round(float(loss), 4)}


# --- 5. a step that never waits; static widths, eager against CUDA graphs ---------------------------------

def step_overhead(check, timeout):
    out = check.out / "step_speed.json"
    cmd = [sys.executable, "-m", "bench.step_speed", "--data", check.data(), "--model", check.fp32_model(),
           "--variants", "waiting", "pipelined", "static", "graphs", "--out", out]
    cmd += ["--device", "cpu", "--train-sentences", "300", "--warmup", "1", "--blocks", "2", "--block-steps", "1",
            "--graphs-backend", "eager"] if check.smoke else \
        ["--device", "cuda", "--train-sentences", "8000", "--warmup", "30", "--blocks", "4", "--block-steps", "50"]
    rc, lines = run_logged(cmd, check.out / "step5_step_overhead.log", check.env(TQDM_DISABLE="1"), REPO, timeout)
    if rc != 0 or not out.is_file():
        return {"status": "failed", "returncode": rc, "error": "\n".join(line for _, line in lines[-15:])}
    from bench.step_speed import table

    report = json.loads(out.read_text())
    variants = report["variants"]
    return {"status": "passed", "report": report, "table_md": table(report),
            "pipelined_over_waiting": round(variants["waiting"]["ms_per_step"] / variants["pipelined"]["ms_per_step"], 3),
            "graphs_over_static_eager": round(variants["static"]["ms_per_step"] / variants["graphs"]["ms_per_step"], 3)}


# --- the summary ------------------------------------------------------------------------------------------

def markdown(report):
    env = report.get("environment", {})
    gpu = env.get("gpu") or {}
    md = [f"# GPU check {report['started']}" + (" (CPU smoke run: the numbers mean nothing)"
                                                  if report["smoke_on_cpu"] else ""), "",
          f"- GPU: {gpu.get('name', '-')} (compute capability {gpu.get('capability', '-')}, "
          f"{gpu.get('memory_mib', '-')} MiB; {gpu.get('nvidia_smi', '')}); torch {env.get('torch')} "
          f"(CUDA {env.get('torch_cuda')}), transformers {env.get('transformers')}, Python {env.get('python')}",
          f"- total {report.get('total_seconds')} s", ""]
    for name, step in report["steps"].items():
        md.append(f"## {name}: {step['status']} ({step.get('seconds')} s)")
        md.append("")
        if step.get("error") or step.get("reason"):
            md += ["```", str(step.get("error") or step.get("reason"))[-2000:], "```", ""]
        if name.endswith("tests"):
            for kind, label in (("cuda_tests", "`cuda` tests on the GPU"), ("pinned_tests", "tests pinned to the CPU")):
                run = step.get(kind, {})
                outcomes = run.get("outcomes", {})
                counts = {o: sum(1 for x in outcomes.values() if x["outcome"] == o) for o in ("passed", "failed",
                                                                                            "skipped")}
                md.append(f"- {label} (pytest exit {run.get('returncode')}): "
                          + ", ".join(f"{n} {o}" for o, n in counts.items() if n) if outcomes else
                          f"- {label} (pytest exit {run.get('returncode')}): none ran")
                md += [f"  - {t}: {o['outcome']} ({o['seconds']} s)" for t, o in outcomes.items()
                       if kind == "cuda_tests" or o["outcome"] != "passed"]
            md += ["", "How close the GPU results came (tests/test_cuda.py):", ""]
            md += [f"- {k}: `{json.dumps(v)}`" for k, v in step.get("closeness", {}).items()] or ["- nothing recorded"]
        elif name.endswith("pipeline") and "stage_wall_seconds" in step:
            md += [f"- {step.get('device_line')}", "", "| stage | wall s |", "|---|---:|"]
            md += [f"| {stage} | {seconds} |" for stage, seconds in step["stage_wall_seconds"].items()]
            md += [f"| `dvc repro` with nothing to do | {step.get('repro_with_nothing_to_do_seconds')} |", ""]
            if "train" in step:
                md += [f"- train: {step['train']}", f"- F1: {step['f1']}",
                       f"- F1 before fine-tuning (conlleval): {step['f1_before_finetuning']}"]
        elif name.endswith("benchmark") and "table_md" in step:
            md += [step["table_md"]]
        elif name.endswith("overhead") and "table_md" in step:
            md += [step["table_md"], "",
                   f"- speed-up of fit's step over the waiting one: {step['pipelined_over_waiting']}x",
                   f"- speed-up of CUDA graphs over eager, both at static widths: {step['graphs_over_static_eager']}x "
                   "(graph capture and compilation in `first pass s`)"]
        elif name.endswith("proxy") and "seconds_per_step" in step:
            md += [f"- {k}: {v}" for k, v in step.items() if k not in ("status", "seconds")]
            md += ["- the 3-epoch time is extrapolated from the measured steps (after the warmup), by steps and "
                   "by padded tokens; rows are CoNLL tokenized by the uncased MiniLM tokenizer, whose ids are "
                   "folded into bert-base-cased's vocabulary (a cased tokenizer splits capitalised words "
                   "somewhat more, so real rows are a little longer)"]
        md.append("")
    return "\n".join(md)


def environment(smoke):
    import torch
    import transformers

    from bench.gpu import gpu_info

    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__, "executable": sys.executable,
            **({} if smoke else {"gpu": gpu_info()})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench/results/gpu_check"))
    # step 5 second: it is short, and what it measures has never run on a GPU
    parser.add_argument("--steps", type=int, nargs="+", choices=sorted(STEPS), default=[1, 5, 2, 3, 4],
                        help="which steps, in this order (default: %(default)s)")
    parser.add_argument("--deadline", type=float, default=570,
                        help="seconds for the whole check: a step that would not fit is left out (default %(default)s)")
    parser.add_argument("--proxy-steps", type=int, default=300, help="measured bert-base steps (default %(default)s)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step on the CPU on a few hundred sentences")
    args = parser.parse_args(argv)
    problems = preflight(args.cpu_smoke)
    if problems:
        print("gpu_check cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    check = Check(args.out, args.cpu_smoke, args.deadline, args.proxy_steps)
    check.report["environment"] = environment(args.cpu_smoke)
    where = "a CPU smoke run" if args.cpu_smoke else check.report["environment"]["gpu"]["name"]
    print(f"gpu_check: payload verified, packages present, {where}; results in {check.out}", flush=True)
    steps = {1: step_tests, 2: step_pipeline, 3: step_benchmark, 4: step_proxy, 5: step_overhead}
    try:
        for number in args.steps:
            check.run(number, steps[number])
    finally:
        shutil.rmtree(check.work, ignore_errors=True)
    print(f"\nwrote {check.out / 'gpu_check.json'} and {check.out / 'gpu_check.md'}")
    return 0 if all(s["status"] == "passed" for s in check.report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
