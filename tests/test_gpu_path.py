"""The GPU path, tested on the CPU: checkpoints that a GPU wrote open anywhere, the RNG saved is that
of the GPU in use, the settings digest holds the device and the resolved precision, the step clock
reads CUDA events, batches are collated ahead and pinned, and the loss stays on the GPU, and the tests themselves are pinned to the CPU.

Where a test needs CUDA behaviour it fakes exactly one thing, named in the test: the device tag a
GPU's torch.save writes, or the torch.cuda RNG functions. What these fakes cannot show (optimizer
state really moving to a GPU, real CUDA generators) tests/test_cuda.py checks on a GPU.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.serialization

from nerpipe.core.errors import UserError
from nerpipe.core.params import TrainParams
from nerpipe.data.prepared import PreparedSplit
from nerpipe.model.loading import load_for_training
from nerpipe.train import checkpoints as checkpoints_module
from nerpipe.train import loop
from nerpipe.train.checkpoints import Checkpoints, run_settings
from nerpipe.train.loop import DevSet, RunContext, TrainState, collate_step, dev_scorer, fit, run_step
from tests.conftest import CONLL_LABELS
from tests.pipeline_repo import PROJECT, PipelineRepo

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def trained_a_step(model_dir):
    """The tiny model, fused AdamW with state after one step (exp_avg, exp_avg_sq, step tensors), a scheduler."""
    model = load_for_training(str(model_dir), CONLL_LABELS, 0.1, 42)
    optimizer = loop.build_optimizer(model, 1e-3, 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ids = torch.tensor([[2, 10, 11, 3]])
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


# --- 1. a checkpoint written on a GPU opens without one ----------------------------------------------

def test_a_checkpoint_whose_tensors_a_gpu_wrote_resumes_on_the_cpu(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """state.pt is saved here with every storage tagged 'cuda:1', as torch.save tags a second GPU's
    tensors (the bytes are the same); only the tag is faked. Without map_location that file does not
    load on a machine without that GPU; resume() and the cheap saved_run_id() must read it."""
    model, optimizer, scheduler = trained_a_step(tiny_model_dir)
    checkpoints = Checkpoints(tmp_path, "tiny")
    checkpoints.run_id = "abc123"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:1")
        loss_on_device = torch.tensor(1.5, dtype=torch.float64)  # as fit keeps it between log rows
        checkpoints.save(model, optimizer, scheduler, TrainState(step=4, loss_sum=loss_on_device))
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "last/state.pt", weights_only=True)  # what resume() used to do

    assert Checkpoints(tmp_path, "tiny").saved_run_id() == "abc123"
    fresh_model, fresh_optimizer, fresh_scheduler = trained_a_step(tiny_model_dir)
    for group in fresh_optimizer.state.values():
        group["exp_avg"].zero_()
    state = Checkpoints(tmp_path, "tiny").resume(fresh_model, fresh_optimizer, fresh_scheduler)
    assert "resuming from the checkpoint at step 4" in capsys.readouterr().out  # not "cannot be read"
    assert state.step == 4 and state.loss_sum == 1.5
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for i in saved:
        assert torch.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"]) and saved[i]["exp_avg"].abs().sum() > 0
        assert loaded[i]["exp_avg"].device == next(fresh_model.parameters()).device  # the parameters' device


# --- 2. the RNG of the GPU in use, not of every visible GPU --------------------------------------------

def test_the_rng_saved_and_restored_is_the_gpu_in_use(tiny_model_dir, tmp_path, monkeypatch):
    """Saved on cuda:1 of two GPUs, resumed on cuda:0, the only one visible then. torch.cuda's RNG
    functions are faked (no GPU here); get/set_rng_state_all, which raised IndexError with fewer GPUs,
    must not be called at all."""
    generators = {1: torch.tensor([7, 7, 7], dtype=torch.uint8), 0: torch.tensor([0, 0, 0], dtype=torch.uint8)}
    calls = []

    def get_rng_state(device):
        calls.append(("get", device))
        return generators[device.index].clone()

    def set_rng_state(state, device):
        calls.append(("set", device))
        generators[device.index] = state

    def every_gpu(*args):
        raise AssertionError("the RNG of every visible GPU was asked for")

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    model, optimizer, scheduler = trained_a_step(tiny_model_dir)
    monkeypatch.setattr(checkpoints_module, "_device_of", lambda model: torch.device("cuda", 1))
    Checkpoints(tmp_path, "tiny").save(model, optimizer, scheduler, TrainState(step=2))
    monkeypatch.setattr(checkpoints_module, "_device_of", lambda model: torch.device("cuda", 0))
    assert Checkpoints(tmp_path, "tiny").resume(model, optimizer, scheduler).step == 2
    assert calls == [("get", torch.device("cuda", 1)), ("set", torch.device("cuda", 0))]
    assert generators[0].tolist() == [7, 7, 7]


def test_a_cpu_run_saves_no_gpu_rng(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: pytest.fail("asked a GPU for its RNG"))
    model, optimizer, scheduler = trained_a_step(tiny_model_dir)
    Checkpoints(tmp_path, "tiny").save(model, optimizer, scheduler, TrainState(step=2))
    assert torch.load(tmp_path / "last/state.pt", weights_only=True)["cuda_rng"] is None


# --- 3. the settings digest holds the device and the resolved precision --------------------------------

def test_settings_hold_the_device_type_and_resolved_precision():
    settings = run_settings({"train.bf16": "auto"}, device=torch.device("cuda", 1), bf16=True, tf32=True)
    assert (settings["device"], settings["bf16 in use"], settings["tf32 in use"]) == ("cuda", "on", "on")
    assert settings["train.bf16"] == "auto"  # the param, and beside it what it resolved to
    cpu = run_settings({"train.bf16": "auto"}, device=CPU, bf16=False, tf32=False)
    assert (cpu["device"], cpu["bf16 in use"], cpu["tf32 in use"]) == ("cpu", "off", "off")
    assert {k for k in settings if settings[k] != cpu[k]} == {"device", "bf16 in use", "tf32 in use"}


def test_a_gpu_checkpoint_is_refused_on_the_cpu_naming_what_differs(tiny_model_dir, tmp_path, capsys):
    params = {"train.bf16": "auto", "lr": 0.001}
    on_gpu = run_settings(params, device=CUDA, bf16=True, tf32=True)
    on_cpu = run_settings(params, device=CPU, bf16=False, tf32=False)
    model, optimizer, scheduler = trained_a_step(tiny_model_dir)
    gpu_run = Checkpoints(tmp_path, on_gpu)
    gpu_run.run_id = "gpu-run"
    gpu_run.save(model, optimizer, scheduler, TrainState(step=4))
    assert Checkpoints(tmp_path, on_gpu).saved_run_id() == "gpu-run"
    assert Checkpoints(tmp_path, on_cpu).saved_run_id() is None  # a new MLflow run, as for any other settings
    # Another kind of device is refused and the checkpoint kept: a GPU not seen must not cost the GPU run.
    with pytest.raises(UserError) as refused:
        Checkpoints(tmp_path, on_cpu).resume(model, optimizer, scheduler)
    assert str(refused.value) == (
        f"{tmp_path}/last: kept, not resumed: it was written with other settings (bf16 in use on -> off, "
        f"device cuda -> cpu, tf32 in use on -> off); resume it with on cuda, or delete {tmp_path} to train from "
        "the start")
    assert (tmp_path / "last" / "state.pt").is_file()
    assert Checkpoints(tmp_path, on_gpu).saved_run_id() == "gpu-run"


# --- 7. no host sync per micro-batch or step; the clock is CUDA events, batches are collated ahead ----------------------------------

def test_train_step_leaves_the_loss_on_the_device_as_float64(tiny_model_dir, prepared):
    train = PreparedSplit(prepared, "train").examples
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.1, 42)
    step = collate_step([[0, 1], [2]], train, train.input_ids.lengths(), 0)
    loss = run_step(model, step, CPU, False)
    assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.dtype == torch.float64
    assert loss.device == CPU and loss.item() > 0
    assert step.sentences == 3 and step.subtokens == int(train.input_ids.lengths()[[0, 1, 2]].sum())


def test_synchronize_waits_only_for_a_gpu(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    loop.synchronize(CPU)
    assert waited == []
    loop.synchronize(CUDA)
    assert waited == [CUDA]


class FakeEvent:
    """torch.cuda.Event as the step clock uses it: recorded on the stream, read later; each pair 250 ms apart."""
    log = []

    def __init__(self, enable_timing):
        assert enable_timing

    def record(self):
        FakeEvent.log.append("record")

    def synchronize(self):
        FakeEvent.log.append("wait")

    def elapsed_time(self, end):
        return 250.0


def test_the_step_clock_on_a_gpu_records_events_and_waits_only_when_collected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    FakeEvent.log = []
    clock = loop.StepClock(CUDA)
    for _ in range(3):
        clock.start()
        assert clock.stop() == 0.0
    assert FakeEvent.log == ["record"] * 6  # no wait during the steps
    assert clock.collect() == pytest.approx(0.75)
    assert FakeEvent.log == ["record"] * 6 + ["wait"]  # one wait, on the last event
    assert clock.collect() == 0.0 and FakeEvent.log[-1] == "wait" and len(FakeEvent.log) == 7


def test_the_step_clock_on_the_cpu_is_the_wall_clock(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", lambda **kw: pytest.fail("no CUDA event on the CPU"))
    times = iter([10.0, 10.5])
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(times))
    clock = loop.StepClock(CPU)
    clock.start()
    assert clock.stop() == 0.5 and clock.collect() == 0.0


def test_on_a_gpu_steps_are_collated_ahead_by_a_worker_and_pinned(tiny_model_dir, prepared):
    train = PreparedSplit(prepared, "train").examples
    lengths = train.input_ids.lengths()
    groups = [[[0, 1]], [[2, 3], [4]]]

    def collate_one(group):
        return loop.collate_step(group, train, lengths, 0)

    gpu, cpu = loop.step_loader(groups, collate_one, CUDA), loop.step_loader(groups, collate_one, CPU)
    assert (gpu.num_workers, gpu.prefetch_factor, gpu.pin_memory) == (1, loop.PREFETCH, True)
    assert (cpu.num_workers, cpu.pin_memory) == (0, False)
    steps = list(cpu)  # on the CPU: in this process, in order, the global RNG untouched
    assert [[len(batch["input_ids"]) for batch, _ in s.micro] for s in steps] == [[2], [2, 1]]
    assert [s.sentences for s in steps] == [2, 3]
    assert steps[1].n_labelled == sum(int((train.labels.row(i) >= 0).sum()) for i in (2, 3, 4))


def test_ddp_does_not_broadcast_buffers(monkeypatch):
    from nerpipe.train.distributed import World

    made = {}
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **kw: made.update(kw) or model)
    World(0, 2).wrap(torch.nn.Linear(2, 2))
    assert made == {"device_ids": None, "broadcast_buffers": False}


def test_fit_never_waits_for_the_device_between_steps_and_reads_the_loss_at_log_time(
        tiny_model_dir, prepared, tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(loop, "synchronize", lambda device: events.append(("sync", device)))
    real_log = loop._log_loss

    def log_loss(state, *args):
        events.append(("log", type(state.loss_sum)))
        real_log(state, *args)
    monkeypatch.setattr(loop, "_log_loss", log_loss)
    cfg = TrainParams(epochs=1, max_steps=3, batch_size=2, warmup_ratio=0.0, patience=0, checkpoint_every=0,
                      bf16="off")
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    train, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train.examples, RunContext(cfg, 1e-3, 0, CPU, False, Checkpoints(tmp_path, "t"),
                                                  dev_scorer(devset, 0, CPU, False)))
    assert state.step == 3 and state.train_seconds > 0
    # no host sync around the steps; the loss logged once (step 3, the last), summed as a tensor until then
    assert events == [("log", torch.Tensor)]
    assert type(state.history[0]["loss"]) is float and state.loss_sum == 0.0


# --- 6. the tests run on the CPU, also where a GPU is visible ----------------------------------------

def test_the_test_process_sees_no_gpu():
    """On a GPU machine this is what keeps in-process fits on the CPU; here there is no GPU either way."""
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert torch.cuda.is_available() is False and torch.cuda.device_count() == 0


def test_the_pipeline_repository_runs_its_stages_without_a_gpu(tmp_path):
    repo = PipelineRepo(tmp_path)
    assert repo.env["CUDA_VISIBLE_DEVICES"] == ""
    seen = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], env=repo.env,
                          capture_output=True, text=True, check=True).stdout
    assert seen.strip() == "0"
    assert PipelineRepo(tmp_path, env={"CUDA_VISIBLE_DEVICES": "0"}).env["CUDA_VISIBLE_DEVICES"] == "0"  # a CUDA test


def pytest_on_test_cuda(env):
    """tests/test_cuda.py (every test in it is marked `cuda`) in a pytest of its own, under `env`."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                          cwd=PROJECT, capture_output=True, text=True, env=env, timeout=300)


def test_cuda_tests_are_deselected_without_a_gpu_and_the_summary_says_why():
    result = pytest_on_test_cuda({k: v for k, v in os.environ.items() if k != "NERPIPE_TEST_CUDA"})
    assert result.returncode == 5, result.stdout + result.stderr  # 5: no test ran
    assert "deselected" in result.stdout
    assert "`cuda` test(s) deselected: the tests are pinned to the CPU" in result.stdout


def test_asking_for_the_cuda_tests_without_a_gpu_is_an_error():
    result = pytest_on_test_cuda({**os.environ, "NERPIPE_TEST_CUDA": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 4, result.stdout + result.stderr  # 4: usage error
    assert "NERPIPE_TEST_CUDA=1 asks for the `cuda` tests, but torch sees no CUDA GPU" in result.stderr
