"""bench/: nerpipe's loop and the Hugging Face Trainer train on the same rows and return the same record
(the tiny offline BERT, the CoNLL fixtures, a few steps); the default comparison and the matmul
reference follow nerpipe's `train.bf16: auto` rule; data and model come from flags or the environment.

The Trainer needs accelerate, which the `bench` extra installs (`make setup` installs it): without it
these tests fail, they do not skip.
"""

import json
import math

import pytest

from bench import gpu, inputs, matmul
from bench import run_benchmark as rb
from bench.data import load_data
from bench.hf_trainer import train_and_evaluate
from bench.result import TrainResult
from nerpipe.core.errors import UserError

HYPER = {"lr": 1e-3, "batch_size": 4, "epochs": 2, "seed": 42, "warmup_ratio": 0.0, "weight_decay": 0.0,
         "max_grad_norm": 1.0, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def data(tiny_tokenizer, fixture_dir):
    return load_data(tiny_tokenizer, fixture_dir, train_sentences=10, eval_sentences=6)


@pytest.fixture(scope="module")
def results(tiny_model_dir, data):
    """{'hf': ..., 'nerpipe': ...}: both trainers in fp32 on the same rows."""
    return {"hf": train_and_evaluate(str(tiny_model_dir), data, **HYPER, train_sampling_strategy="group_by_length",
                                     eval_splits=("valid", "test")),
            "nerpipe": rb.run_nerpipe(str(tiny_model_dir), data, **HYPER, eval_splits=("valid", "test"), bf16="off")}


def test_load_data_cuts_train_and_eval_splits(data):
    assert [len(data.splits[s].sentences) for s in ("train", "valid", "test")] == [10, 6, 6]
    assert data.labels[0] == "O" and len(data.labels) == len(set(data.labels))


def test_both_trainers_fill_the_same_record_with_the_same_counts(results, data):
    hf, nerpipe = results["hf"], results["nerpipe"]
    assert type(hf) is TrainResult and type(nerpipe) is TrainResult
    assert hf.to_json().keys() == nerpipe.to_json().keys()
    assert (hf.trainer, nerpipe.trainer) == ("hf_trainer", "nerpipe")
    rows = len(data.splits["train"].examples)
    for r in (hf, nerpipe):
        assert r.bf16 is False
        assert r.train_sentences == 10 and r.train_rows == rows
        assert r.steps == r.planned_steps == math.ceil(rows / 4) * 2
        # both count real sub-tokens ([CLS]/[SEP] included) over both epochs, and pad no more than that
        assert r.fed["rows"] == 2 * rows
        assert r.fed["tokens"] == 2 * data.splits["train"].n_subtokens()
        assert r.fed["padded_tokens"] >= r.fed["tokens"]
        assert r.device == "cpu" and r.peak_gpu_mib is None
        assert 0 < r.train_seconds <= r.training_call_seconds
        assert math.isfinite(r.train_loss) and r.train_loss > 0
        assert r.eval_seconds.keys() == {"valid", "test"}
        for split in ("valid", "test"):
            for mode in ("conlleval", "strict"):
                assert 0.0 <= r.f1[split][mode] <= 1.0
    # the same gold entities were scored on both sides
    assert ({s: hf.scores[s]["conlleval"]["support"] for s in hf.scores}
            == {s: nerpipe.scores[s]["conlleval"]["support"] for s in nerpipe.scores})


def test_fit_reports_its_own_dev_evaluation_time(results):
    nerpipe, hf = results["nerpipe"], results["hf"]
    assert [e["step"] for e in nerpipe.dev_evals] == [nerpipe.steps // 2, nerpipe.steps]  # once per epoch
    assert 0 < nerpipe.dev_eval_seconds_in_training < nerpipe.training_call_seconds
    assert nerpipe.train_seconds + nerpipe.dev_eval_seconds_in_training <= nerpipe.training_call_seconds
    assert hf.dev_evals == [] and hf.dev_eval_seconds_in_training == 0.0


@pytest.mark.parametrize("native", [True, False])
def test_default_comparison_has_the_bf16_trainer_exactly_where_bf16_is_native(monkeypatch, native):
    monkeypatch.setattr(rb, "native_bf16", lambda device="cpu": native and device == "cpu")
    monkeypatch.setattr(rb, "use_bf16", lambda setting, device: setting == "on" or (setting == "auto" and native))
    expected = ["hf-random", "hf-group"] + (["hf-group-bf16"] if native else []) + ["nerpipe"]
    assert rb.default_trainers("cpu") == expected
    assert rb.default_trainers("cuda") == ["hf-random", "hf-group", "nerpipe"]  # every row is bf16 there
    assert [rb.trains_in_bf16(t, "cpu") for t in expected] == [False, False] + ([True, True] if native else [False])
    if native:
        rb.check_trainers(list(rb.TRAINERS), "cpu")
    else:
        rb.check_trainers(expected + ["nerpipe-fp32"], "cpu")
        with pytest.raises(UserError, match="hf-group-bf16: bf16 on this CPU would be emulated"):
            rb.check_trainers(["hf-group", "hf-group-bf16"], "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_matmul_reference_measures_bf16_only_where_native(monkeypatch, native):
    monkeypatch.setattr(matmul, "use_bf16", lambda setting, device: native)
    measured = []
    monkeypatch.setattr(matmul, "measure", lambda m, dtype, **kw: measured.append((m, dtype)) or {"dtype": dtype})
    matmul.summary(sizes=(2048,))
    assert measured == ([(2048, "fp32"), (2048, "bf16")] if native else [(2048, "fp32")])


def test_data_and_model_come_from_flag_then_environment(monkeypatch, tmp_path, fixture_dir):
    monkeypatch.setenv(inputs.DATA_ENV, str(fixture_dir))
    monkeypatch.setenv(inputs.MODEL_ENV, "/some/model")
    assert inputs.data_dir() == fixture_dir
    assert inputs.model_dir() == "/some/model" and inputs.model_dir("other") == "other"
    with pytest.raises(UserError, match=r"train.txt, valid.txt, test.txt not found; pass --data DIR"):
        inputs.data_dir(str(tmp_path))
    monkeypatch.delenv(inputs.MODEL_ENV)
    monkeypatch.setattr(inputs, "OFFLINE_MODEL_SCRIPT", tmp_path / "offline-model")
    with pytest.raises(UserError, match="pass --model DIR"):
        inputs.model_dir()


# --- --device cuda, checked on the CPU -------------------------------------------------------------------

def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(capsys, tiny_model_dir, data, fixture_dir):
    with pytest.raises(SystemExit) as exit_info:
        rb.main(["--device", "cuda", "--data", str(fixture_dir), "--model", str(tiny_model_dir), "--no-matmul"])
    assert exit_info.value.code == 2
    assert "--device cuda: a CUDA GPU is required, and torch" in capsys.readouterr().err
    with pytest.raises(UserError, match="nerpipe with device='cuda': a CUDA GPU is required"):
        rb.run_nerpipe(str(tiny_model_dir), data, **HYPER, eval_splits=(), device="cuda")
    with pytest.raises(UserError, match="the Trainer with device='cuda': a CUDA GPU is required"):
        train_and_evaluate(str(tiny_model_dir), data, **HYPER, eval_splits=(), device="cuda")


@pytest.mark.parametrize("visible, pinned", [(None, "0"), ("3", "3"), ("2,3", "2"), ("GPU-5f0e,GPU-a1b2", "GPU-5f0e")])
def test_every_worker_sees_one_gpu(visible, pinned):
    env = {"PATH": "/bin"} | ({} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
    assert gpu.one_gpu_env(env) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": pinned}


@pytest.mark.parametrize("native", [True, False])
def test_on_a_gpu_bf16_and_tf32_are_forced_on_the_trainer_only_where_native(monkeypatch, tiny_model_dir, data,
                                                                              native):
    """On an A100/H100 the Trainer gets bf16 and TF32; on a T4 or V100, where transformers refuses tf32=True and
    bf16 is emulated, neither. The GPU is faked up to TrainingArguments, whose arguments are recorded."""
    import bench.hf_trainer as hf

    class Recorded(Exception):
        pass

    def training_arguments(**kwargs):
        raise Recorded(kwargs)

    monkeypatch.setattr(hf.gpu, "require_cuda", lambda what: None)
    monkeypatch.setattr(hf, "use_bf16", lambda setting, device: native and setting == "auto" and device.type == "cuda")
    monkeypatch.setattr(hf, "TrainingArguments", training_arguments)
    monkeypatch.setattr(rb, "native_bf16", lambda device="cpu": native and device == "cuda")
    with pytest.raises(Recorded) as recorded:
        train_and_evaluate(str(tiny_model_dir), data, **HYPER, eval_splits=(), device="cuda")
    args = recorded.value.args[0]
    assert (args["bf16"], args["tf32"], args["use_cpu"]) == (native, native, False)
    assert [rb.trains_in_bf16(t, "cuda") for t in ("hf-random", "hf-group")] == [native, native]
    assert rb.default_trainers("cuda") == ["hf-random", "hf-group", "nerpipe"]
    if native:
        rb.check_trainers(list(rb.TRAINERS), "cuda")
    else:
        with pytest.raises(UserError, match=r"hf-group-bf16: bf16 on this GPU would be emulated \(compute capability"):
            rb.check_trainers(["hf-group", "hf-group-bf16", "nerpipe"], "cuda")


def test_the_gpu_reference_is_measured_on_the_gpu(monkeypatch):
    monkeypatch.setattr(matmul, "summary", lambda **kw: pytest.fail("the CPU matmul ran for --device cuda"))
    rows = [{"device": "cuda", "m": 8192, "dtype": "bf16", "tf32": False, "gflops_median": 700000.0,
             "gflops_best": 710000.0}]
    monkeypatch.setattr(matmul, "cuda_summary", lambda: rows)
    assert rb.measure_matmul([2], "cuda") == rows


def test_gpu_rows_are_per_second_against_the_gpu_bf16_rate_with_peak_memory(results, tmp_path):
    run = results["nerpipe"].to_json()
    run.update(spec={"trainer": "nerpipe", "threads": 16, "repeat": 0, "device": "cuda", "train_sentences": 10,
                     "epochs": 2}, cpu_utilisation=0.05, device="NVIDIA H200", bf16=True,
               peak_gpu_mib={"allocated": 1234.5, "reserved": 2048.0})
    report = {"environment": {**rb.environment("cpu"), "gpu": {"name": "NVIDIA H200", "capability": "9.0",
                                                                 "memory_mib": 143771, "torch_cuda": "12.8"},
                              "native_bf16": True, "loadavg_end": (0.1, 0.1, 0.1)},
              "flops": {"flops_per_token": 1e9}, "runs": [run],
              "matmul": [{"device": "cuda", "m": 8192, "dtype": "bf16", "tf32": False, "gflops_median": 500000.0,
                          "gflops_best": 510000.0}]}
    rb.write_report(report, tmp_path / "gpu.json")
    md = (tmp_path / "gpu.md").read_text()
    assert "| model TFLOP/s | % of bf16 mm |" in md and "peak GPU MiB" in md and "contended" not in md
    assert "- GPU: NVIDIA H200 (compute capability 9.0, 143,771 MiB, CUDA 12.8), one GPU per run" in md
    assert "torch.mm 8192^3 bf16 on the GPU: 500,000.0 GFLOP/s median" in md
    row = next(line for line in md.splitlines() if line.startswith("| nerpipe |")).split(" | ")
    tflops = run["train_padded_tokens_per_second"] * 1e9 / 1e12
    assert row[9] == f"{tflops:,.1f}" and row[10] == f"{100 * tflops * 1e3 / 500000.0:,.1f}"
    assert row[-1].strip(" |") == "1,234"
    assert json.loads((tmp_path / "gpu.json").read_text())["runs"][0]["peak_gpu_mib"]["allocated"] == 1234.5


# --- time to accuracy ----------------------------------------------------------------------------------------

def tta_runs(model_dir, data, target):
    """Both trainers evaluating dev every 2 steps (and at each epoch's end: 3 steps an epoch here), up to `target`."""
    hyper = {**HYPER, "eval_every": 2, "target_f1": target}
    return {"hf": train_and_evaluate(model_dir, data, **hyper, train_sampling_strategy="group_by_length",
                                     eval_splits=()),
            "nerpipe": rb.run_nerpipe(model_dir, data, **hyper, eval_splits=(), bf16="off")}


def test_both_trainers_evaluate_dev_at_the_same_steps_and_stop_at_the_target(tiny_model_dir, data, monkeypatch):
    model_dir = str(tiny_model_dir)
    unreachable = tta_runs(model_dir, data, 1.01)
    for r in unreachable.values():
        # every 2 steps and at each epoch's end (steps 3 and 6), the target never reached
        assert [e["step"] for e in r.dev_evals] == [2, 3, 4, 6] and r.steps == r.planned_steps == 6
        assert r.time_to_target_seconds is None and r.target_step is None
        seconds = [e["seconds"] for e in r.dev_evals]
        assert seconds == sorted(seconds) and 0 < seconds[-1] <= r.training_call_seconds
        assert 0 < r.dev_eval_seconds_in_training < r.training_call_seconds
        assert r.train_seconds + r.dev_eval_seconds_in_training <= r.training_call_seconds + 1e-3
    # the Trainer's token count is training's alone, its dev predictions not counted
    assert unreachable["hf"].fed["tokens"] == 2 * data.splits["train"].n_subtokens()

    # The tiny model learns no entity in 6 steps (its dev F1 stays 0), so the one thing faked is the F1 of
    # each evaluation: 0.1, 0.2, 0.3, ... on both sides. A target of 0.25 is reached at the third, step 4.
    import bench.hf_trainer as hf
    from nerpipe.train import loop

    def rising(calls):
        def scores(*args):
            calls.append(1)
            return {"f1": 0.1 * len(calls), "precision": 0.0, "recall": 0.0}
        return scores
    monkeypatch.setattr(hf, "entity_scores", rising([]))
    monkeypatch.setattr(loop, "dev_scorer", lambda *args: rising([]))
    reached = tta_runs(model_dir, data, 0.25)
    for name, r in reached.items():
        assert [e["step"] for e in r.dev_evals] == [2, 3, 4], name
        assert r.steps == r.target_step == 4 and r.target_f1 == 0.25, name
        assert r.time_to_target_seconds == r.dev_evals[-1]["seconds"] > 0, name


def tta_run(results, trainer, seconds, seed=42, step=4, repeat=0):
    """A run record of `results` with a time to target: what a --target-f1 run at `seed` returns."""
    run = results["nerpipe" if trainer == "nerpipe" else "hf"].to_json()
    run.update(spec={"trainer": trainer, "threads": 2, "repeat": repeat, "seed": seed, "device": "cpu",
                     "train_sentences": 10, "epochs": 2}, target_f1=0.5, time_to_target_seconds=seconds,
               target_step=step, dev_evals=[{"step": 2, "dev_f1": 0.3, "seconds": 1.0},
                                            {"step": step, "dev_f1": 0.55, "seconds": 2.0}])
    return run


def tta_report(runs, tmp_path):
    report = {"environment": {**rb.environment("cpu"), "loadavg_end": (0.1, 0.1, 0.1)},
              "flops": {"flops_per_token": 1e9}, "runs": runs, "matmul": []}
    rb.write_report(report, tmp_path / "tta.json")
    return (tmp_path / "tta.md").read_text()


def test_the_report_gives_time_to_accuracy_and_its_ratio(results, tmp_path):
    runs = [tta_run(results, "hf-group", 30.0), tta_run(results, "nerpipe", 20.0)]
    md = tta_report(runs, tmp_path)
    assert "- time to target, hf-group (fp32) / nerpipe (fp32): **1.50x** (30.0 s vs 20.0 s)" in md
    row = next(line for line in md.splitlines() if line.startswith("| nerpipe | fp32 | 42 | 0 | 50.00 |"))
    assert row.split(" | ")[5:9] == ["4", "20.0", f"{runs[1]['dev_eval_seconds_in_training']:,.1f}", "2"]
    assert "by seed" not in md  # one seed: nothing to test across seeds


def test_several_seeds_are_compared_seed_by_seed_with_a_sign_test(results, tmp_path):
    runs = [tta_run(results, "nerpipe", 20.0, seed=1), tta_run(results, "hf-group", 30.0, seed=1, step=6),
            tta_run(results, "nerpipe", 24.0, seed=2), tta_run(results, "hf-group", 22.0, seed=2),
            tta_run(results, "nerpipe", 10.0, seed=3), tta_run(results, "nerpipe", 12.0, seed=3, repeat=1),
            tta_run(results, "hf-group", 15.0, seed=3)]
    md = tta_report(runs, tmp_path)
    assert "| 1 | 4, 20.0 s (1 run) | 6, 30.0 s (1 run) | 1.50x |" in md
    assert "| 2 | 4, 24.0 s (1 run) | 4, 22.0 s (1 run) | 0.92x |" in md
    assert "| 3 | 4, 11.0 s (2 runs) | 4, 15.0 s (1 run) | 1.36x |" in md  # the median of seed 3's two runs
    geomean = (1.5 * 22 / 24 * 15 / 11) ** (1 / 3)
    assert (f"- nerpipe reached the target first at 2 of 3 seeds (1 the other way); two-sided sign test p = 1, not "
            f"significant at 0.05; geometric mean of the ratios {geomean:.2f}x") in md


def test_the_sign_test_is_the_exact_two_sided_binomial():
    assert rb.sign_test(3, 0) == 0.25 and rb.sign_test(0, 3) == 0.25
    assert rb.sign_test(5, 0) == 0.0625 and rb.sign_test(1, 1) == 1.0 and rb.sign_test(0, 0) == 1.0
    assert abs(rb.sign_test(13, 3) - 2 * (560 + 120 + 16 + 1) / 2 ** 16) < 1e-12  # 0.0213


def test_each_seed_gets_its_repeats_and_every_other_round_runs_in_reverse():
    order = rb.schedule(["nerpipe", "hf-group-bf16"], seeds=[42, 1], repeats=2, threads_list=[2])
    assert order == [("nerpipe", 2, 42, 0), ("hf-group-bf16", 2, 42, 0), ("hf-group-bf16", 2, 42, 1),
                     ("nerpipe", 2, 42, 1), ("nerpipe", 2, 1, 0), ("hf-group-bf16", 2, 1, 0),
                     ("hf-group-bf16", 2, 1, 1), ("nerpipe", 2, 1, 1)]
    assert rb.schedule(["a", "b"], seeds=[1, 2, 3], repeats=1, threads_list=[1, 2]) == [
        ("a", 1, 1, 0), ("b", 1, 1, 0), ("a", 2, 1, 0), ("b", 2, 1, 0), ("b", 1, 2, 0), ("a", 1, 2, 0),
        ("b", 2, 2, 0), ("a", 2, 2, 0), ("a", 1, 3, 0), ("b", 1, 3, 0), ("a", 2, 3, 0), ("b", 2, 3, 0)]


# --- bench.step_speed --------------------------------------------------------------------------------------

def test_step_speed_runs_each_variant_on_the_same_batches(tiny_model_dir, fixture_dir):
    from bench import step_speed

    report = step_speed.run(str(tiny_model_dir), str(fixture_dir), ["waiting", "pipelined", "static", "regional"],
                            train_sentences=0, batch_size=2, warmup=1, blocks=2, block_steps=2, widths=(16, 64))
    rows = report["variants"]
    assert list(rows) == ["waiting", "pipelined", "static", "regional"]
    for row in rows.values():
        assert len(row["block_seconds"]) == 2 and all(s > 0 for s in row["block_seconds"])
        assert row["first_pass_seconds"] > 0 and row["ms_per_step"] > 0
    # the same batches: the same padding unless padded to the static widths, which pad more, to 2 widths at most
    assert rows["waiting"]["padding_fraction"] == rows["pipelined"]["padding_fraction"] == rows["regional"]["padding_fraction"]
    assert rows["static"]["padding_fraction"] > rows["pipelined"]["padding_fraction"]
    assert rows["static"]["distinct_widths"] <= 2 < rows["pipelined"]["distinct_widths"]


def test_regional_compilation_routes_every_residual_block_and_computes_the_same(tiny_model_dir):
    import torch

    from bench.step_speed import compile_residual_blocks
    from nerpipe.model.loading import load_for_training
    from tests.conftest import CONLL_LABELS

    eager = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.1, 42).eval()
    compiled = load_for_training(str(tiny_model_dir), CONLL_LABELS, 0.1, 42).eval()
    assert compile_residual_blocks(compiled) == 2 * compiled.config.num_hidden_layers  # attention and feed-forward
    ids = torch.randint(5, 90, (3, 9))
    with torch.no_grad():
        want, got = (m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for m in (eager, compiled))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
