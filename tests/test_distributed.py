"""Training in several processes (torchrun, DDP over gloo on the CPU) on the tiny model and the fixtures:

- fit() in 2 processes gives the loss of every step, the dev scores and the weights of 1 process with
  the same global batch, to a stated tolerance (they differ only in the order of float reductions);
- the real train stage with `train.processes=2` under `dvc repro`: one MLflow run, one set of outputs;
- SIGKILL of one process, then `dvc repro`: resumes to exactly the metrics of an uninterrupted run;
- a process that fails makes the stage fail within seconds, not hang;
- a checkpoint written by 2 processes is refused (and kept) by 1.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from nerpipe.core.set_params import set_params
from tests.pipeline_repo import PROJECT, PipelineRepo, tiny_overrides
from tests.test_resume import TRAIN_CMD, checkpoint_step, results, start_until_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "PYTHONPATH": str(PROJECT), "TQDM_DISABLE": "1"}
# Float sums in another order: measured 1e-7 relative on the losses and 1.2e-7 on the weights.
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-5


def fit_in(processes, model_dir, prepared, out, *flags):
    out.mkdir(exist_ok=True)
    launcher = TORCHRUN if processes == 2 else [sys.executable]
    subprocess.run([*launcher, str(PROJECT / "tests/ddp_fit.py"), str(model_dir), str(prepared), str(out), *flags],
                   env=ENV, check=True, capture_output=True, timeout=300)
    return json.loads((out / "result.json").read_text()), load_file(out / "model.safetensors")


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_model_dir, prepared, tmp_path):
    one, one_weights = fit_in(1, tiny_model_dir, prepared, tmp_path / "one")
    two, two_weights = fit_in(2, tiny_model_dir, prepared, tmp_path / "two")
    assert list(one["losses"]) == list(two["losses"]) == ["1", "2", "3", "4"]  # every step logged
    for step, loss in one["losses"].items():
        assert two["losses"][step] == pytest.approx(loss, rel=LOSS_RTOL)
    assert two["dev_evals"] == one["dev_evals"] and two["best_dev_f1"] == one["best_dev_f1"] > 0
    assert (two["steps"], two["sentences_seen"], two["tokens_seen"]) == (4, 48, one["tokens_seen"])
    assert max(float((one_weights[k] - two_weights[k]).abs().max()) for k in one_weights) < WEIGHT_ATOL
    assert one_weights.keys() == two_weights.keys()


def test_each_process_draws_its_own_dropout_masks_and_resumes_them(tiny_model_dir, prepared, tmp_path):
    """Dropout 0.1 in 2 processes: seeds 42 and 43. A run resumed from the checkpoint of step 2 ends with the
    weights of the uninterrupted one, bit for bit: each process gets its own RNG state back."""
    flags = ("--dropout", "0.1", "--checkpoint-every", "2")
    straight, straight_weights = fit_in(2, tiny_model_dir, prepared, tmp_path / "straight", *flags, "--keep-step", "2")
    assert straight["seeds"] == [42, 43]
    saved = torch.load(tmp_path / "straight/kept/last/state.pt", weights_only=True)
    assert saved["state"]["step"] == 2 and [set(rng) for rng in saved["rank_rngs"]] == [{"cpu", "cuda"}] * 2
    assert not torch.equal(saved["rank_rngs"][0]["cpu"], saved["rank_rngs"][1]["cpu"])
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "straight/kept", tmp_path / "resumed/checkpoints")
    resumed, resumed_weights = fit_in(2, tiny_model_dir, prepared, tmp_path / "resumed", *flags)
    assert resumed["dev_evals"] == straight["dev_evals"] and resumed["steps"] == 4
    assert list(resumed["losses"]) == ["3", "4"]  # it did resume at step 2
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in straight_weights)


# --- the train stage under `dvc repro` ----------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("ddp"), tiny_overrides(fixture_dir, fixture_sha256,
                               tiny_model_dir) + ["train.epochs=3", "train.batch_size=2", "train.patience=0",
                                                  "train.processes=2"])
    result = repo.repro("evaluate")
    return repo, result


def worker_pids(root):
    """pid by RANK of the torchrun workers running in `root`."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            environ = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
            if environ.get("TORCHELASTIC_RUN_ID") and "RANK" in environ and Path(proc / "cwd").resolve() == root:
                found[int(environ["RANK"])] = int(proc.name)
        except (OSError, ValueError):
            continue
    return found


def test_the_stage_trains_in_two_processes_and_records_once(repo):
    repo, result = repo
    assert PipelineRepo.stages_run(result)[-3:] == ["score_untrained", "train", "evaluate"]
    assert "x 2 process(es)" in result.stdout
    assert result.stdout.count("best dev F1") == 1  # the main process alone reports and writes
    train = json.loads((repo.root / "reports/train/metrics.json").read_text())
    assert train["steps"] == 18 and train["epochs_completed"] == 3
    client = MlflowClient(f"sqlite:///{repo.root / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("conll2003-ner").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.processes"] == "2"
    assert json.loads((repo.root / "reports/train/run.json").read_text())["run_id"] == run.info.run_id
    assert len(client.get_metric_history(run.info.run_id, "dev_f1")) == 3  # one evaluation per epoch, once


def slowed(repo, tmp_path):
    """The repository's environment with every training step taking 0.2 s more: the tiny run would
    otherwise end before a signal sent after its first checkpoint reaches the processes."""
    hook = tmp_path / "slow"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK'):\n"
        "    import time\n"
        "    from nerpipe.train import loop\n"
        "    real = loop.run_step\n"
        "    def slow(*args, **kwargs):\n"
        "        time.sleep(0.2)\n"
        "        return real(*args, **kwargs)\n"
        "    loop.run_step = slow\n")  # what fit calls each step
    repo.env = {**repo.env, "PYTHONPATH": f"{hook}{os.pathsep}{repo.root}"}
    return repo


def test_sigkill_of_one_process_then_repro_resumes_to_the_same_metrics(repo, tmp_path):
    repo, _ = repo
    reference = results(repo)
    log = tmp_path / "killed.log"
    proc = start_until_checkpoint(slowed(repo, tmp_path), log)
    pids = worker_pids(repo.root)
    assert sorted(pids) == [0, 1], log.read_text()
    os.kill(pids[1], signal.SIGKILL)
    started = time.monotonic()
    assert proc.wait(timeout=120) != 0
    assert time.monotonic() - started < 45, "the other process was not stopped within torchrun's grace time"
    step = checkpoint_step(repo)
    repo.env["PYTHONPATH"] = str(repo.root)
    result = repo.run(*TRAIN_CMD)  # forced: unforced, DVC would check the unchanged stage's outputs out
    assert f"resuming from the checkpoint at step {step} " in result.stdout
    assert {k: v for k, v in results(repo).items() if k != "eval"} == {
        k: v for k, v in reference.items() if k != "eval"}


def test_a_failing_process_fails_the_stage_within_seconds(repo, tmp_path):
    repo, _ = repo
    # sitecustomize runs in every Python process started with this PYTHONPATH: in rank 1 only, the
    # third training step raises, as a bug or an out-of-memory would.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    from nerpipe.train import loop\n"
        "    real, calls = loop.run_step, []\n"
        "    def failing(*args, **kwargs):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 3:\n"
        "            raise RuntimeError('rank 1 fails at its third step')\n"
        "        return real(*args, **kwargs)\n"
        "    loop.run_step = failing\n")
    env = {**repo.env, "PYTHONPATH": f"{hook}{os.pathsep}{repo.env['PYTHONPATH']}"}
    started = time.monotonic()
    result = subprocess.run(TRAIN_CMD, cwd=repo.root, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode != 0 and "rank 1 fails at its third step" in result.stdout + result.stderr
    assert seconds < 60, f"the stage took {seconds:.0f} s to fail"


def test_a_checkpoint_of_two_processes_is_refused_and_kept_by_one(repo, tmp_path):
    repo, _ = repo
    shutil.rmtree(repo.root / "data/checkpoints")  # what the failed run above left, so a new one is awaited
    log = tmp_path / "stopped.log"
    proc = start_until_checkpoint(slowed(repo, tmp_path), log)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: torchrun passes it on to both processes
    assert proc.wait(timeout=120) != 0
    repo.env["PYTHONPATH"] = str(repo.root)
    state = repo.root / "data/checkpoints/last/state.pt"
    saved = torch.load(state, weights_only=True)
    assert f"stopped at step {saved['state']['step']}; the checkpoint in data/checkpoints resumes" in log.read_text()
    assert len(saved["rank_rngs"]) == 2
    set_params(repo.root / "params.yaml", ["train.processes=1"])
    result = repo.run(*TRAIN_CMD, check=False)
    assert result.returncode != 0
    assert ("kept, not resumed: it was written with other settings (train.processes 2 -> 1); resume it with "
            "train.processes=2, or delete data/checkpoints to train from the start") in result.stdout + result.stderr
    assert state.is_file()
    set_params(repo.root / "params.yaml", ["train.processes=2"])
    resumed = repo.run(*TRAIN_CMD)
    assert f"resuming from the checkpoint at step {saved['state']['step']} " in resumed.stdout
