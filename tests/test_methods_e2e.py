"""train.method in the pipeline: `dvc exp run -S train.method=lora` re-runs train and what follows only,
and every stage after it reads the result; a crash mid-epoch resumes exactly for the PEFT methods, in
process (bitfit, lora, adapter, prompt) and as the real `dvc repro` after SIGKILL (lora)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nerpipe.core.params import AdapterParams, LoraParams, PromptParams, TrainParams
from nerpipe.core.set_params import set_params
from nerpipe.data.prepared import PreparedSplit
from nerpipe.model.loading import load_for_training
from nerpipe.model.methods import prepare_for_training
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.loop import DevSet, RunContext, dev_scorer, fit
from tests.conftest import CONLL_LABELS
from tests.pipeline_repo import PipelineRepo, tiny_overrides
from tests.test_resume import TRAIN_CMD, Crash, killed_after_a_checkpoint, results, without_timing

# --- in process: fit() with each PEFT method, crashed mid-epoch and resumed -------------------------

def cfg(method):
    return TrainParams(epochs=3, batch_size=2, warmup_ratio=0.0, patience=0, checkpoint_every=2, seed=42, bf16="off",
                       method=method, lora=LoraParams(r=4), adapter=AdapterParams(size=8),
                       prompt=PromptParams(virtual_tokens=4))


def train(model_dir, prepared, checkpoint_dir, method, log_metrics=lambda metrics, step: None):
    config = cfg(method)
    model = prepare_for_training(load_for_training(str(model_dir), CONLL_LABELS, config.dropout, config.seed),
                                 config, max_length=24)
    train_split, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    checkpoints = Checkpoints(checkpoint_dir, f"tiny-{method}")
    device = torch.device("cpu")
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train_split.examples, RunContext(config, 1e-2, 0, device, False, checkpoints,
                                                        dev_scorer(devset, 0, device, False), log_metrics))
    return state, model, checkpoints


@pytest.mark.parametrize("method", ["bitfit", "lora", "adapter", "prompt"])
def test_crash_mid_epoch_then_resume_ends_like_the_uninterrupted_run(tiny_model_dir, prepared, tmp_path, method):
    ref_state, ref_model, ref_checkpoints = train(tiny_model_dir, prepared, tmp_path / "ref", method)

    def crash_at_step_10(metrics, step):
        if step == 10:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_model_dir, prepared, tmp_path / "run", method, log_metrics=crash_at_step_10)
    assert torch.load(tmp_path / "run/last/state.pt", weights_only=True)["state"]["step_in_epoch"] == 2  # mid-epoch
    state, model, checkpoints = train(tiny_model_dir, prepared, tmp_path / "run", method)
    assert without_timing(state) == without_timing(ref_state)
    assert state.optimizer_state_bytes > 0
    reference = ref_model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in model.state_dict().items())
    best, ref_best = checkpoints.best_dir, ref_checkpoints.best_dir
    assert sorted(p.name for p in best.rglob("*")) == sorted(p.name for p in ref_best.rglob("*"))
    weights = sorted(p.relative_to(ref_best) for p in ref_best.rglob("*.safetensors"))
    assert len(weights) == (1 if method == "bitfit" else 2)  # model.safetensors (+ adapter/adapter_model.safetensors)
    for name in weights:
        a, b = load_file(best / name), load_file(ref_best / name)
        assert all(torch.equal(a[k], b[k]) for k in b)


# --- the pipeline ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("methods"), tiny_overrides(fixture_dir, fixture_sha256,
                               tiny_model_dir) + ["train.epochs=3", "train.batch_size=2", "train.patience=0"])
    repo.repro("report")
    repo.commit("full fine-tuning")
    return repo


def test_exp_run_lora_reruns_train_and_after_and_everything_reads_the_result(repo):
    full = json.loads((repo.root / "reports/train/metrics.json").read_text())
    result = repo.run("dvc", "exp", "run", "-S", "train.method=lora")
    # check_params validates params.yaml whenever it changes; of the real stages only train and after run
    assert PipelineRepo.stages_run(result) == ["check_params", "train", "evaluate", "report"]
    root = repo.root
    train = json.loads((root / "reports/train/metrics.json").read_text())
    # 9 labels: head 32*9 + 9 = 297; r 8 on query and value of 2 layers: 2 * 2 * (8*32 + 32*8)
    assert (train["trainable_parameters"], full["trainable_parameters"]) == (297 + 2048, full["total_parameters"])
    assert train["total_parameters"] == full["total_parameters"] + 2048
    assert train["trainable_percent"] == round(100 * 2345 / train["total_parameters"], 4)
    # AdamW: two fp32 moments per trainable parameter, and a step counter per tensor (10 tensors)
    assert train["optimizer_state_mib"] == round((2 * 4 * 2345 + 10 * 4) / 2**20, 3)
    assert full["optimizer_state_mib"] > 10 * train["optimizer_state_mib"]
    assert 0 < train["adapter_mib"] < 1
    assert json.loads((root / "reports/timings/train.json").read_text())["peak_rss_mib"] > 100  # memory: apart
    described = json.loads((root / "data/model/nerpipe_model.json").read_text())
    assert described["method"] == {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "auto",
                                   "merged": True}
    assert (described["max_length"], described["window_overlap"], described["context"]) == (24, 4, 0)
    assert json.loads((root / "data/model/adapter/adapter_config.json").read_text())["r"] == 8
    evaluation = json.loads((root / "reports/eval/metrics.json").read_text())
    assert 0.0 <= evaluation["test"]["conlleval"]["f1"] <= 1.0
    report = (root / "reports/report.md").read_text()
    assert "Fine-tuning method **lora**: 2,345 of " in report
    logged = [p.relative_to(root).parts[-2:] for p in root.rglob("adapter_model.safetensors")
              if "mlartifacts" in p.parts or "mlruns" in p.parts]
    assert ("adapter", "adapter_model.safetensors") in logged  # the adapter in the MLflow run


def test_sigkill_mid_run_then_repro_resumes_a_lora_run_exactly(repo, tmp_path):
    set_params(repo.root / "params.yaml", ["train.method=lora"])  # as the exp run above left it
    repo.run(*TRAIN_CMD)
    repo.repro("report")
    reference = results(repo)
    step = killed_after_a_checkpoint(repo, tmp_path / "killed.log")
    assert 2 <= step < 18
    result = repo.run(*TRAIN_CMD)  # forced: unforced, DVC would check the unchanged stage's outputs out
    assert f"resuming from the checkpoint at step {step} " in result.stdout
    repo.repro("report")
    assert results(repo) == reference
