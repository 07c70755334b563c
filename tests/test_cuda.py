"""The GPU path on a real GPU: what tests/test_gpu_path.py can only fake on the CPU.

    NERPIPE_TEST_CUDA=1 pytest -m cuda tests/test_cuda.py      # bench/gpu_check.sh runs this first

Every test here is marked `cuda`: without NERPIPE_TEST_CUDA=1 and a visible GPU, conftest.py
deselects them and says so. CUDA does not promise bit-exact results, so a resumed run is compared with
an uninterrupted one within a tolerance, and how close they came is written to
$NERPIPE_GPU_CHECK_OUT/<test>.json when that variable is set (gpu_check's summary reads it).
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from nerpipe.core.params import TrainParams
from nerpipe.data.prepared import PreparedSplit
from nerpipe.evaluate.inference import predict_word_labels
from nerpipe.model.device import set_tf32, use_bf16
from nerpipe.model.loading import load_for_training, load_trained
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.loop import DevSet, RunContext, TrainState, dev_scorer, fit
from tests.conftest import CONLL_LABELS
from tests.pipeline_repo import PROJECT, PipelineRepo, tiny_overrides
from tests.test_resume import results, start_until_checkpoint

pytestmark = pytest.mark.cuda

GPU = torch.device("cuda")
CFG = TrainParams(epochs=3, batch_size=2, warmup_ratio=0.0, patience=0, checkpoint_every=2, seed=42, bf16="off")


def record(name, values):
    """How close a GPU result came, for bench/gpu_check.py's summary."""
    out = os.environ.get("NERPIPE_GPU_CHECK_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(values, f, indent=1)


class Crash(Exception):
    pass


def crash_at(step):
    def log_metrics(metrics, at):
        if at == step:
            raise Crash
    return log_metrics


def train_on_gpu(model_dir, prepared, directory, cfg=CFG, log_metrics=lambda metrics, step: None, bf16=False):
    model = load_for_training(str(model_dir), CONLL_LABELS, cfg.dropout, cfg.seed).to(GPU)
    set_tf32(GPU, bf16)
    train, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    checkpoints = Checkpoints(directory, "tiny")
    checkpoints.run_id = "gpu-run"
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train.examples, RunContext(cfg, 1e-3, 0, GPU, bf16, checkpoints,
                                                  dev_scorer(devset, 0, GPU, bf16), log_metrics))
    return state, model, checkpoints


def max_abs_difference(a, b):
    return max(float((a[k].float().cpu() - b[k].float().cpu()).abs().max()) for k in a)


def test_auto_precision_follows_this_gpu():
    major, minor = torch.cuda.get_device_capability()
    assert use_bf16("auto", GPU) is (major >= 8)
    assert set_tf32(GPU, False) is False and torch.backends.cuda.matmul.allow_tf32 is False
    assert set_tf32(GPU, True) is True and torch.backends.cuda.matmul.allow_tf32 is True
    set_tf32(GPU, False)
    record("precision", {"gpu": torch.cuda.get_device_name(), "capability": f"{major}.{minor}",
                         "bf16_auto": use_bf16("auto", GPU)})


def test_bf16_off_predicts_what_a_plain_fp32_forward_does(tiny_model_dir, prepared):
    """nerpipe's batched, pad-to-8 prediction in strict fp32 against one unpadded transformers forward per
    window, both on the GPU: the same labels (README: `--bf16 off` gives the scores of an fp32 pipeline)."""
    set_tf32(GPU, False)
    model = load_trained(tiny_model_dir).to(GPU).eval()
    dev = PreparedSplit(prepared, "valid")
    ids, scores = predict_word_labels(model, dev.examples, [len(w) for w in dev.words], 0, 8, GPU, False,
                                      progress=False)
    worst = 0.0
    with torch.no_grad():
        for i in range(len(dev.examples)):
            row = torch.as_tensor(dev.examples.input_ids.row(i), device=GPU)[None]
            probs = torch.softmax(model(input_ids=row, attention_mask=torch.ones_like(row)).logits.float(), -1)[0]
            word_index = dev.examples.word_index.row(i)
            sentence = dev.examples.sentence_id[i]
            for position, word in enumerate(word_index):
                if word >= 0:
                    assert ids[sentence][word] == int(probs[position].argmax())
                    worst = max(worst, abs(scores[sentence][word] - float(probs[position].max())))
    assert worst < 1e-5
    record("fp32_prediction", {"max_score_difference": worst})


def test_fit_on_the_gpu_resumes_after_a_crash_close_to_an_uninterrupted_run(tiny_model_dir, prepared, tmp_path,
                                                                              capsys):
    ref_state, ref_model, _ = train_on_gpu(tiny_model_dir, prepared, tmp_path / "reference")
    with pytest.raises(Crash):
        train_on_gpu(tiny_model_dir, prepared, tmp_path / "resumed", log_metrics=crash_at(10))
    state, model, _ = train_on_gpu(tiny_model_dir, prepared, tmp_path / "resumed")
    assert "resuming from the checkpoint at step 8 (epoch 1)" in capsys.readouterr().out
    assert (state.step, state.epoch) == (ref_state.step, ref_state.epoch) == (18, 3)
    weights = max_abs_difference(model.state_dict(), ref_model.state_dict())
    losses = max(abs(a["loss"] - b["loss"]) for a, b in zip(state.history, ref_state.history))
    record("fit_resume", {"max_abs_weight_difference": weights, "max_logged_loss_difference": losses,
                          "dev_f1": [e["dev_f1"] for e in state.dev_evals],
                          "dev_f1_uninterrupted": [e["dev_f1"] for e in ref_state.dev_evals]})
    assert weights < 1e-2 and losses < 1e-3


def test_a_gpu_checkpoint_opens_where_no_gpu_is_visible(tiny_model_dir, prepared, tmp_path):
    """Written on the GPU (fused AdamW state and its step counters are CUDA tensors), read by a process
    that sees no GPU: without map_location it cannot be loaded at all."""
    with pytest.raises(Crash):
        train_on_gpu(tiny_model_dir, prepared, tmp_path, log_metrics=crash_at(6))
    probe = f"""
import json, torch
from nerpipe.model.loading import load_for_training
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.loop import build_optimizer
out = {{}}
try:
    torch.load({str(tmp_path / "last/state.pt")!r}, weights_only=True)
    out["plain_load"] = "loaded"
except RuntimeError as err:
    out["plain_load"] = str(err).splitlines()[0]
checkpoints = Checkpoints({str(tmp_path)!r}, "tiny")
out["run_id"] = checkpoints.saved_run_id()
model = load_for_training({str(tiny_model_dir)!r}, {CONLL_LABELS!r}, 0.1, 42)
optimizer = build_optimizer(model, 1e-3, 0.01)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
out["step"] = checkpoints.resume(model, optimizer, scheduler).step
out["state_devices"] = sorted({{str(v.device) for s in optimizer.state.values() for v in s.values()}})
print(json.dumps(out))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(PROJECT)}
    out = json.loads(subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                    check=True).stdout.splitlines()[-1])
    record("checkpoint_without_gpu", out)
    assert "CUDA" in out["plain_load"]  # the file does hold CUDA tensors
    assert out["run_id"] == "gpu-run" and out["step"] == 4 and out["state_devices"] == ["cpu"]


def test_the_rng_of_the_gpu_in_use_is_restored(tiny_model_dir, tmp_path):
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.1, 42).to(GPU)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    Checkpoints(tmp_path, "tiny").save(model, optimizer, scheduler, TrainState(step=1))
    drawn = torch.rand(4, device=GPU)
    assert Checkpoints(tmp_path, "tiny").resume(model, optimizer, scheduler).step == 1
    assert torch.equal(torch.rand(4, device=GPU), drawn)


def test_the_pipeline_trains_on_the_gpu_and_resumes_after_sigkill(tmp_path_factory, fixture_dir, fixture_sha256,
                                                                 tiny_model_dir, tmp_path):
    """tests/test_resume.py's `dvc repro` killed mid-run, on the GPU: it resumes and finishes; the metrics
    are compared with the uninterrupted run's and how close they came is recorded."""
    visible = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    repo = PipelineRepo.create(tmp_path_factory.mktemp("cuda-resume"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir)
                               + ["train.epochs=3", "train.batch_size=2", "train.patience=0"],
                               env={"CUDA_VISIBLE_DEVICES": visible})
    first = repo.repro("evaluate")
    assert "device cuda" in first.stdout, first.stdout
    reference = results(repo)
    proc = start_until_checkpoint(repo, tmp_path / "killed.log")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(repo.root / "data/checkpoints/last/state.pt", weights_only=True, map_location="cpu")
    step = saved["state"]["step"]
    resumed = repo.repro("evaluate")
    assert f"resuming from the checkpoint at step {step} " in resumed.stdout
    again = results(repo)
    f1 = {split: [again["eval"][split]["conlleval"]["f1"], reference["eval"][split]["conlleval"]["f1"]]
          for split in ("dev", "test")}
    record("pipeline_resume", {"killed_at_checkpoint_step": step, "settings_device": saved["settings"]["device"],
                               "bf16_in_use": saved["settings"]["bf16 in use"],
                               "train_metrics_equal": again["train"] == reference["train"],
                               "model_bytes_equal": again["model"] == reference["model"],
                               "f1_resumed_vs_uninterrupted": f1})
    assert saved["settings"]["device"] == "cuda" and 2 <= step < 18
    # it resumed and finished; how close its scores came is recorded, not asserted: on the tiny test set one
    # entity is worth ~0.1 F1, and bf16 on a GPU does not promise the same predictions after a resume
    assert again["train"]["steps"] == reference["train"]["steps"] == 18
