"""Interrupted training resumes and ends exactly as an uninterrupted run; a checkpoint from other
settings is discarded; the same seed gives the same numbers and another seed other numbers.

First nerpipe.train.loop.fit and nerpipe.train.checkpoints in-process on the prepared fixtures (seconds),
then the real `dvc repro` of the tiny pipeline killed with SIGKILL and stopped with Ctrl-C, in one
repository shared by the module (a few minutes).
"""

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nerpipe.core.errors import Interrupted
from nerpipe.core.params import TrainParams
from nerpipe.core.set_params import set_params
from nerpipe.data.prepared import PreparedSplit
from nerpipe.model.loading import load_for_training
from nerpipe.train.checkpoints import Checkpoints, run_settings
from nerpipe.train.loop import DevSet, RunContext, TrainState, dev_scorer, fit
from tests.conftest import CONLL_LABELS
from tests.pipeline_repo import PipelineRepo, tiny_overrides

# 12 training windows, batch 2: 6 optimizer steps per epoch, 18 in all; a checkpoint every 2 steps.
CFG = TrainParams(epochs=3, batch_size=2, warmup_ratio=0.0, patience=0, checkpoint_every=2, seed=42, bf16="off")
LR = 1e-3


# --- in-process: fit() and Checkpoints, on `prepared` (conftest.py) --------------------------------

def train(model_dir, prepared, checkpoint_dir, cfg=CFG, settings="tiny", log_metrics=lambda metrics, step: None):
    """fit() as the train stage calls it; returns (state, model, checkpoints)."""
    model = load_for_training(str(model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    train_split, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    checkpoints = Checkpoints(checkpoint_dir, settings)
    device = torch.device("cpu")
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train_split.examples, RunContext(cfg, LR, 0, device, False, checkpoints,
                                                        dev_scorer(devset, 0, device, False), log_metrics))
    assert torch.load(checkpoint_dir / "last/state.pt", weights_only=True)["state"]["step"] == state.step
    checkpoints.finish()  # as nerpipe.train.run does once the model, reports and MLflow logging are done
    return state, model, checkpoints


def without_timing(state):
    return {k: v for k, v in vars(state).items() if k not in ("train_seconds", "eval_seconds")}


def same_tensors(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Crash(Exception):
    """Stands in for the machine dying: fit() stops where it is, without writing anything more."""


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, prepared, tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    state, model, checkpoints = train(tiny_model_dir, prepared, directory)
    return state, model.state_dict(), load_file(checkpoints.best_dir / "model.safetensors"), checkpoints


def test_a_finished_run_leaves_nothing_to_resume(uninterrupted):
    state, _, _, checkpoints = uninterrupted
    assert (state.step, state.epoch, state.best_step) == (18, 3, 6)
    # A later run of the stage (forced, or after a code change) must train, not "resume" at step 18.
    assert sorted(p.name for p in checkpoints.directory.iterdir()) == ["best"]


def test_crash_and_ctrl_c_then_resume_end_exactly_like_the_uninterrupted_run(
        tiny_model_dir, prepared, tmp_path, uninterrupted, capsys):
    ref_state, ref_weights, ref_best, _ = uninterrupted

    def crash_at_step_10(metrics, step):  # log_metrics runs at steps 6, 10, 12 and 18 here
        if step == 10:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_model_dir, prepared, tmp_path, log_metrics=crash_at_step_10)
    saved = torch.load(tmp_path / "last/state.pt", weights_only=True)["state"]
    assert (saved["step"], saved["epoch"], saved["step_in_epoch"]) == (8, 1, 2)  # mid-epoch
    assert saved["loss_steps"] == 2 and saved["loss_sum"] > 0  # steps 7-8, logged at step 10
    assert type(saved["loss_sum"]) is float  # fit sums it on the device; the checkpoint holds the number

    (tmp_path / ".last.k1ll3d").mkdir()  # the temporary of a save that was killed
    sent = []

    def ctrl_c_at_step_12(metrics, step):
        if step == 12 and not sent:  # once: a second Ctrl-C means "abort now"
            sent.append(step)
            signal.raise_signal(signal.SIGINT)  # fit's handler only sets a flag

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="stopped at step 12"):
        train(tiny_model_dir, prepared, tmp_path, log_metrics=ctrl_c_at_step_12)
    assert "resuming from the checkpoint at step 8 (epoch 1)" in capsys.readouterr().out
    assert torch.load(tmp_path / "last/state.pt", weights_only=True)["state"]["step"] == 12
    assert signal.getsignal(signal.SIGINT) is handler  # put back

    state, model, checkpoints = train(tiny_model_dir, prepared, tmp_path)
    assert "resuming from the checkpoint at step 12 (epoch 2)" in capsys.readouterr().out
    assert without_timing(state) == without_timing(ref_state)  # history, dev evals, best step, counters
    assert same_tensors(model.state_dict(), ref_weights)
    assert same_tensors(load_file(checkpoints.best_dir / "model.safetensors"), ref_best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_another_seed_gives_other_weights(tiny_model_dir, prepared, tmp_path, uninterrupted):
    ref_state, ref_weights, _, _ = uninterrupted
    cfg = TrainParams(**{**vars(CFG), "seed": 7})
    state, model, _ = train(tiny_model_dir, prepared, tmp_path, cfg=cfg)
    assert state.step == 18
    assert [row["loss"] for row in state.history] != [row["loss"] for row in ref_state.history]
    assert not torch.equal(model.state_dict()["classifier.weight"], ref_weights["classifier.weight"])


def checkpoint_in(directory, tiny_model_dir, prepared, settings):
    """A checkpoint at step 4 with `settings`, written by a run that died at step 6."""
    def crash(metrics, step):
        raise Crash

    with pytest.raises(Crash):
        train(tiny_model_dir, prepared, directory, settings=settings, log_metrics=crash)
    assert torch.load(directory / "last/state.pt", weights_only=True)["state"]["step"] == 4


def test_checkpoint_from_other_settings_is_discarded_naming_what_changed(tiny_model_dir, prepared, tmp_path, capsys):
    checkpoint_in(tmp_path, tiny_model_dir, prepared, {"train.seed": 42, "lr": 0.001, "prepared data": "ab"})
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.1, 42)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = Checkpoints(tmp_path, {"train.seed": 7, "lr": 0.001, "prepared data": "cd"})
    assert checkpoints.resume(model, optimizer, scheduler) is None
    assert capsys.readouterr().out == (
        f"discarding the checkpoint in {tmp_path}: it was written with other settings: prepared data ab -> cd, "
        "train.seed 42 -> 7; training starts over\n")
    assert list(tmp_path.iterdir()) == []  # best/ of that run goes too


def test_unreadable_checkpoint_is_discarded_not_a_crash(tiny_model_dir, prepared, tmp_path, capsys):
    checkpoint_in(tmp_path, tiny_model_dir, prepared, "tiny")
    state_file = tmp_path / "last/state.pt"
    state_file.write_bytes(state_file.read_bytes()[:1000])  # what a full disk can leave
    state, _, _ = train(tiny_model_dir, prepared, tmp_path)
    out = capsys.readouterr().out
    assert f"discarding the checkpoint in {tmp_path}: it cannot be read (" in out
    assert "resuming" not in out and state.step == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_resume_restores_the_best_model_of_the_checkpoint(tiny_model_dir, tmp_path):
    """A best/ saved after the last checkpoint (by a run then killed) is rolled back on resume: the
    resumed run may not reach that dev F1 again (GPU kernels are not bit-exact), and its best_step
    and best_dev_f1 must describe the model that data/model ends up holding."""
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.1, 42)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = Checkpoints(tmp_path, "tiny")
    checkpoints.save_best(model)
    at_checkpoint = (tmp_path / "best/model.safetensors").read_bytes()
    checkpoints.save(model, optimizer, scheduler, TrainState(step=4, best_step=4, best_dev_f1=0.5))
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    checkpoints.save_best(model)  # step 6 was better; then the machine died before the next checkpoint
    assert (tmp_path / "best/model.safetensors").read_bytes() != at_checkpoint
    state = Checkpoints(tmp_path, "tiny").resume(model, optimizer, scheduler)
    assert (state.step, state.best_step) == (4, 4)
    assert (tmp_path / "best/model.safetensors").read_bytes() == at_checkpoint
    assert (tmp_path / "last/best/model.safetensors").stat().st_nlink >= 2  # hard links, not copies


def edited_copy(module, tmp_path):
    """A copy of `module`'s source with a line added: what a later edit of the file looks like to run_settings."""
    copy = tmp_path / f"{module.__name__}.py"
    copy.write_text(Path(module.__file__).read_text() + "# edited\n")
    return str(copy)


def test_only_code_that_decides_the_trajectory_discards_a_checkpoint(prepared, tmp_path, monkeypatch, capsys):
    import nerpipe.model.description
    import nerpipe.predict.command
    import nerpipe.track.trained_model
    import nerpipe.train.loop
    import nerpipe.train.outputs
    import nerpipe.train.run

    train_split, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    where = {"device": torch.device("cpu"), "bf16": False, "tf32": False}
    settings = run_settings({"lr": 0.001}, train_split.examples, dev.examples, **where)
    assert not [k for k in settings if k.startswith("source of") and
                k.removeprefix("source of ").startswith(("nerpipe.track", "nerpipe.predict", "nerpipe.report",
                                                         "nerpipe.train.outputs", "nerpipe.train.run",
                                                         "nerpipe.model.description", "__main__"))]
    # Tracking, export, description, the stage's wiring and prediction code edited: the same settings, so
    # the checkpoint resumes.
    for module in (nerpipe.track.trained_model, nerpipe.train.outputs, nerpipe.predict.command,
                   nerpipe.model.description, nerpipe.train.run):
        monkeypatch.setattr(module, "__file__", edited_copy(module, tmp_path))
    assert run_settings({"lr": 0.001}, train_split.examples, dev.examples, **where) == settings
    # The loop edited: a checkpoint of the old code is discarded, naming the module.
    monkeypatch.setattr(nerpipe.train.loop, "__file__", edited_copy(nerpipe.train.loop, tmp_path))
    edited = run_settings({"lr": 0.001}, train_split.examples, dev.examples, **where)
    assert [k for k in settings if settings[k] != edited[k]] == ["source of nerpipe.train.loop"]


def test_the_checkpoint_covers_the_params_of_the_trajectory_only(tiny_model_dir):
    from nerpipe.core.params import load_params
    from nerpipe.train.checkpoints import trajectory_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    covered = trajectory_params(params)
    assert {"lr", "model.name", "train.seed", "train.method", "train.processes", "prepare.max_length"} <= set(covered)
    assert not [k for k in covered if k.startswith(("mlflow.", "evaluate.", "data."))]
    assert "train.checkpoint_every" not in covered


def test_run_settings_change_with_the_data_and_name_the_code(prepared):
    train_split, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    where = {"device": torch.device("cpu"), "bf16": False, "tf32": False}
    settings = run_settings({"lr": 0.001}, train_split.examples, dev.examples, **where)
    assert settings["lr"] == 0.001 and settings["torch"] == str(torch.__version__)
    assert {f"source of nerpipe.{m}" for m in ("train.loop", "train.checkpoints", "data.batching", "train.trajectory",
                                               "model.loading", "model.families", "model.methods")} <= set(settings)
    assert run_settings({"lr": 0.001}, train_split.examples, dev.examples, **where) == settings
    labels = train_split.examples.labels
    labels.values = labels.values.copy()
    labels.values[3] += 1  # the same params over other prepared data
    assert run_settings({"lr": 0.001}, train_split.examples, dev.examples, **where)["prepared data"] != \
        settings["prepared data"]


# --- the real pipeline: `dvc repro` killed, interrupted, re-run ------------------------------------

TRAIN_CMD = ("dvc", "repro", "--force", "--single-item", "train")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("resume"), tiny_overrides(fixture_dir, fixture_sha256,
                               tiny_model_dir) + ["train.epochs=3", "train.batch_size=2", "train.patience=0"])
    repo.repro("evaluate")
    return repo


@pytest.fixture(scope="module")
def reference(repo):
    return results(repo)


def results(repo):
    """What a run produced: train and eval metrics (no timings in them), histories, model bytes."""
    root = repo.root
    train = json.loads((root / "reports/train/metrics.json").read_text())
    evaluation = json.loads((root / "reports/eval/metrics.json").read_text())
    return {"train": train, "eval": evaluation,
            "history": (root / "reports/train/history.csv").read_text(),
            "dev_eval": (root / "reports/train/dev_eval.csv").read_text(),
            "model": hashlib.sha256((root / "data/model/model.safetensors").read_bytes()).hexdigest()}


def start_until_checkpoint(repo, log):
    """Start the train stage under `dvc repro` in its own process group; return once a checkpoint exists."""
    with open(log, "w") as out:
        proc = subprocess.Popen(TRAIN_CMD, cwd=repo.root, env=repo.env, stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    state = repo.root / "data/checkpoints/last/state.pt"
    deadline = time.monotonic() + 300
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run ended before its first checkpoint:\n{log.read_text()}")
        time.sleep(0.01)
    return proc


def checkpoint_step(repo):
    return torch.load(repo.root / "data/checkpoints/last/state.pt", weights_only=True)["state"]["step"]


def killed_after_a_checkpoint(repo, log):
    """SIGKILL the train stage under `dvc repro` once it wrote a checkpoint; the checkpoint's step."""
    proc = start_until_checkpoint(repo, log)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc, the shell and the stage: the machine died
    proc.wait()
    return checkpoint_step(repo)


def test_same_seed_gives_identical_metrics(repo, reference):
    first = repo.run(*TRAIN_CMD)
    assert "resuming" not in first.stdout  # the finished run left no checkpoint to "resume"
    assert PipelineRepo.stages_run(repo.repro("evaluate")) == ["evaluate"]
    assert results(repo) == reference
    assert reference["train"]["steps"] == 18


def test_sigkill_mid_run_then_repro_resumes_with_identical_metrics(repo, reference, tmp_path):
    step = killed_after_a_checkpoint(repo, tmp_path / "killed.log")
    assert 2 <= step < 18
    # A fix to tracking or reporting code meanwhile does not change what training computes: it resumes.
    edited = ["nerpipe/track/store.py", "nerpipe/track/trained_model.py", "nerpipe/report/render.py"]
    for path in edited:
        with open(repo.root / path, "a") as source:
            source.write("# a fix after the crash\n")
    try:
        result = repo.repro("evaluate")
    finally:
        repo.run("git", "checkout", *edited)
    assert PipelineRepo.stages_run(result) == ["train", "evaluate"]
    assert f"resuming from the checkpoint at step {step} " in result.stdout
    assert results(repo) == reference
    assert sorted(os.listdir(repo.root / "data/checkpoints")) == ["best"]


def test_ctrl_c_stops_after_a_checkpoint_and_repro_resumes(repo, reference, tmp_path):
    log = tmp_path / "interrupted.log"
    proc = start_until_checkpoint(repo, log)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
    assert proc.wait(timeout=300) != 0
    output = log.read_text()
    step = checkpoint_step(repo)
    assert f"stopped at step {step}; the checkpoint in data/checkpoints resumes on the next `dvc repro`" in output
    assert "exited with 130" in output and "Traceback" not in output
    # Forced, as the stopped run was: unforced, `dvc repro` finds train unchanged since its last finished
    # run (dvc.lock) and checks that run's outputs out of the cache, without training.
    result = repo.run(*TRAIN_CMD)  # identical weights make identical eval metrics (see the tests above)
    assert f"resuming from the checkpoint at step {step} " in result.stdout
    assert {k: v for k, v in results(repo).items() if k != "eval"} == {
        k: v for k, v in reference.items() if k != "eval"}


def test_checkpoint_from_other_params_is_discarded_and_another_seed_changes_metrics(repo, reference, tmp_path):
    killed_after_a_checkpoint(repo, tmp_path / "killed.log")
    set_params(repo.root / "params.yaml", ["train.seed=7"])
    try:
        result = repo.repro("evaluate")
    finally:
        repo.run("git", "checkout", "params.yaml")
    assert "discarding the checkpoint in data/checkpoints: it was written with other settings: " \
           "train.seed 42 -> 7; training starts over" in result.stdout
    assert "resuming" not in result.stdout
    other = results(repo)
    assert other["train"]["steps"] == 18
    assert other["history"] != reference["history"] and other["model"] != reference["model"]
    assert other["eval"] != reference["eval"]


def in_process(repo, monkeypatch):
    """(params, TrainPaths) for train_model in the repository, as `dvc repro` would run the stage there."""
    import mlflow

    from nerpipe.core.params import load_params
    from nerpipe.train.run import TrainPaths

    monkeypatch.chdir(repo.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the repository's mlflow.db, as under dvc repro
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", mlflow.get_tracking_uri())
    params = load_params(Path("params.yaml"))
    paths = TrainPaths(Path("data/prepared"), Path("data/model"), Path("data/checkpoints"), Path("reports/train"),
                       Path("reports/timings/train.json"))
    return params, paths


def fails(*args, **kwargs):
    raise Crash


def failed_at_export(params, paths):
    """train_model with the export failing: the final checkpoint (step 18) is kept."""
    import nerpipe.train.run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nerpipe.train.run, "export_model", fails)
        with pytest.raises(Crash):
            nerpipe.train.run.train_model(params, paths)
    saved = torch.load(Path(paths.checkpoints) / "last/state.pt", weights_only=True)
    assert saved["state"]["step"] == 18
    return saved


def test_a_failure_after_training_resumes_at_the_end_without_a_step(repo, reference, monkeypatch, capsys, tmp_path):
    """The last checkpoint is removed only once data/model, the reports and the MLflow logging are done.
    The export fails, and its fix (an edit of model/description.py and train/run.py, outside the
    trajectory's code) keeps the checkpoint: the next run resumes at the last step and trains no more.
    Then the final logging fails, and the run after it still resumes there."""
    import mlflow

    import nerpipe.model.description
    import nerpipe.train.loop
    import nerpipe.train.run
    from nerpipe.train.run import train_model

    params, paths = in_process(repo, monkeypatch)
    saved = failed_at_export(params, paths)
    # The fix of the export: both files edited, as the checkpoint's source digests see them.
    for module in (nerpipe.model.description, nerpipe.train.run):
        monkeypatch.setattr(module, "__file__", edited_copy(module, tmp_path))

    def no_step(*args, **kwargs):
        raise AssertionError("an optimizer step after the training had finished")

    monkeypatch.setattr(nerpipe.train.loop, "run_step", no_step)
    with monkeypatch.context() as patch:
        patch.setattr(nerpipe.train.run, "log_training", fails)
        with pytest.raises(Crash):
            train_model(params, paths)
    assert "resuming from the checkpoint at step 18 (epoch 3)" in capsys.readouterr().out
    state = train_model(params, paths)
    out = capsys.readouterr().out
    assert "resuming from the checkpoint at step 18 (epoch 3)" in out and "discarding" not in out
    assert state.step == 18
    assert {k: v for k, v in results(repo).items() if k != "eval"} == {
        k: v for k, v in reference.items() if k != "eval"}  # model bytes, train metrics, histories
    assert json.loads((repo.root / "reports/train/run.json").read_text())["run_id"] == saved["mlflow_run_id"]
    assert sorted(os.listdir(repo.root / "data/checkpoints")) == ["best"]
    run = mlflow.MlflowClient().get_run(saved["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["train.steps"] == 18


def test_an_edit_of_the_loop_discards_the_checkpoint_of_a_failed_export(repo, monkeypatch, capsys, tmp_path):
    """The same failure at export, but the fix edits the training loop: the kept checkpoint no longer
    describes what the code computes, so it is discarded and training starts over."""
    import nerpipe.train.loop
    from nerpipe.train.run import train_model

    params, paths = in_process(repo, monkeypatch)
    failed_at_export(params, paths)
    capsys.readouterr()
    monkeypatch.setattr(nerpipe.train.loop, "__file__", edited_copy(nerpipe.train.loop, tmp_path))
    steps = []
    real_step = nerpipe.train.loop.run_step
    monkeypatch.setattr(nerpipe.train.loop, "run_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    state = train_model(params, paths)
    out = capsys.readouterr().out
    assert "discarding the checkpoint in data/checkpoints: it was written with other settings: source of " \
           "nerpipe.train.loop" in out and "resuming" not in out
    assert state.step == 18 and len(steps) == 18  # every step trained again
