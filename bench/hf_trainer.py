"""The baseline: the Hugging Face `Trainer` configured the way transformers' examples/pytorch/
token-classification/run_ner.py configures it, on exactly the rows nerpipe trains on.

run_ner.py's setup, reproduced here:
  - `DataCollatorForTokenClassification` (dynamic padding to the longest row of each batch; no
    `pad_to_multiple_of`, which run_ner.py sets only for fp16), labels padded with -100;
  - first-sub-token labels (`label_all_tokens=False`), which nerpipe's `build_examples` produces;
  - the Trainer's default optimizer for torch >= 2.8, `adamw_torch_fused` (torch.optim.AdamW with
    fused=True, betas 0.9/0.999, eps 1e-8), weight decay not applied to biases and LayerNorm;
    linear schedule with warmup; gradient clipping at `max_grad_norm`;
  - `train_sampling_strategy` "random" (RandomSampler) or "group_by_length" (LengthGroupedSampler;
    transformers 5.x replaced the `group_by_length=True` flag with this argument);
  - no evaluation during training, no checkpoints, `report_to="none"`; CPU, or CUDA with `device="cuda"`:
    one GPU (bench.gpu.one_gpu_env; checked, no DataParallel), and there its best settings: bf16 and TF32
    where the GPU has them natively (compute capability 8.0 on; transformers refuses `tf32=True` before
    that), fp32 elsewhere -- nerpipe's `train.bf16: auto` rule -- and rows padded to a multiple of 8.

The model is seeded with `transformers.set_seed(seed)` right before `from_pretrained`, as
nerpipe.model.loading.load_for_training does, so both trainers start from the same classifier head.

Caveat found while writing this: with `train_sampling_strategy="group_by_length"` the Trainer also
uses a LengthGroupedSampler for *prediction* (`Trainer._get_eval_sampler`), so `predict()` returns
rows in a shuffled, length-grouped order, not the dataset's. run_ner.py's metrics survive that (its
labels come back in the same order) but its written predictions file would not. Here the order is
recovered from the sampler and checked row by row against the returned `label_ids`.
"""

import math
import tempfile
import time

import numpy as np
import torch
import transformers
from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,
                          TrainerCallback, TrainingArguments)

from bench import gpu
from bench.data import rows_to_word_tags
from bench.result import TrainResult, entity_scores_only, fed_counts, loadavg, peak_rss_mib, reached_target
from nerpipe.evaluate.scoring import entity_scores, score_split
from nerpipe.model.device import use_bf16

STRATEGIES = ("random", "group_by_length")


class CountingCollator:
    """Wraps a collator and counts what the model is actually fed: rows, real and padded tokens."""

    def __init__(self, inner):
        self.inner = inner
        self.rows = self.tokens = self.padded_tokens = 0
        self.counting = True  # DevEvaluation turns it off while it predicts

    def __call__(self, features):
        batch = self.inner(features)
        if not self.counting:
            return batch
        mask = batch["attention_mask"]
        self.rows += int(mask.shape[0])
        self.tokens += int(mask.sum())
        self.padded_tokens += int(mask.numel())
        return batch


def planned_steps(n_rows, batch_size, epochs):
    return math.ceil(n_rows / batch_size) * epochs


def _eval_order(trainer, dataset):
    """Row order in which `trainer.predict(dataset)` returns predictions."""
    sampler = trainer._get_eval_sampler(dataset)
    if sampler is None or isinstance(sampler, torch.utils.data.SequentialSampler):
        return list(range(len(dataset)))
    return [int(i) for i in sampler]


def _check_order(label_ids, dataset, order):
    """The returned label rows must be the dataset's label rows in `order`, padded with -100."""
    labels = dataset["labels"]
    if len(order) != len(labels) or len(label_ids) != len(labels):
        raise AssertionError(f"predict returned {len(label_ids)} rows for {len(labels)} examples")
    for j, row in enumerate(order):
        want = np.asarray(labels[row])
        got = label_ids[j]
        if not (np.array_equal(got[:len(want)], want) and np.all(got[len(want):] == -100)):
            raise AssertionError(f"prediction row {j} is not example {row}: the eval order was not recovered")


def predict_split(trainer, split, id2label):
    """Predict one split, map first-sub-token predictions to words, score with nerpipe.evaluate.scoring."""
    started = time.perf_counter()
    out = trainer.predict(split.examples)
    seconds = time.perf_counter() - started
    order = _eval_order(trainer, split.examples)
    _check_order(out.label_ids, split.examples, order)
    pred_ids = out.predictions.argmax(-1)
    pred = rows_to_word_tags(pred_ids, split.examples, split.words, id2label, order)
    return pred, seconds


class DevEvaluation(TrainerCallback):
    """Dev F1 during `trainer.train()` where nerpipe's fit evaluates it: every `every` optimizer steps and at
    each epoch's end, scored by the same code (nerpipe.evaluate.scoring.entity_scores, conlleval); with a
    `target` (0-1), training stops at the first evaluation that reaches it (control.should_training_stop).
    Records each evaluation with the wall seconds since `started` when it ended, and their wall and CPU time."""

    def __init__(self, split, id2label, every, steps_per_epoch, target, collator):
        self.split, self.id2label, self.every, self.steps_per_epoch, self.target = (
            split, id2label, every, steps_per_epoch, target)
        self.collator = collator  # CountingCollator: what prediction collates is not training's
        self.trainer = None  # set once the Trainer exists
        self.started = None  # set right before trainer.train()
        self.evals, self.seconds, self.cpu_seconds = [], 0.0, 0.0

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if not ((self.every and step % self.every == 0) or step % self.steps_per_epoch == 0 or step == state.max_steps):
            return
        wall, cpu = time.perf_counter(), time.process_time()
        self.collator.counting = False
        try:
            pred, _ = predict_split(self.trainer, self.split, self.id2label)
        finally:
            self.collator.counting = True
        scores = entity_scores(self.split.gold, pred)
        self.seconds += time.perf_counter() - wall
        self.cpu_seconds += time.process_time() - cpu
        self.evals.append({"step": step, "epoch": round(step / self.steps_per_epoch, 4), "dev_f1": scores["f1"],
                           "dev_precision": scores["precision"], "dev_recall": scores["recall"],
                           "seconds": round(time.perf_counter() - self.started, 3)})
        if self.target and scores["f1"] >= self.target:
            control.should_training_stop = True


def train_and_evaluate(model_dir, data, *, lr=5e-5, batch_size=32, epochs=1, seed=42, warmup_ratio=0.0,
                       weight_decay=0.0, max_grad_norm=1.0, train_sampling_strategy="random", bf16=False,
                       eval_batch_size=64, eval_splits=("valid", "test"), logging_steps=50, device="cpu",
                       eval_every=0, target_f1=0.0):
    """Fine-tune with the HF Trainer on data.splits['train'], predict `eval_splits`; a TrainResult.
    With `eval_every` or `target_f1` (0-1), dev F1 during training as nerpipe's fit does it (DevEvaluation):
    every `eval_every` steps (0: once per epoch) and at each epoch's end, stopping at the target.

    Speed numbers cover `trainer.train()` only (data loading, collation, forward, backward, optimizer), less
    its dev evaluations.
    Sub-tokens are counted as nerpipe's loop counts them: real (non-pad) ones, [CLS]/[SEP] included.
    """
    if train_sampling_strategy not in STRATEGIES:
        raise ValueError(f"train_sampling_strategy {train_sampling_strategy!r}: expected one of {STRATEGIES}")
    train = data.splits["train"]
    steps = planned_steps(len(train.examples), batch_size, epochs)
    warmup_steps = int(warmup_ratio * steps)  # nerpipe's rounding (the Trainer ceils a float ratio)

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    transformers.set_seed(seed)
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=len(data.labels), id2label=data.id2label, label2id=data.label2id,
        use_safetensors=True)
    cuda = device == "cuda"
    if cuda:
        gpu.require_cuda("the Trainer with device='cuda'")
    # On CUDA, the Trainer's best: bf16 autocast where the GPU runs it natively, TF32 with it for what
    # stays fp32 (as nerpipe's TF32 follows its bf16), rows padded to a multiple of 8 for the tensor
    # cores. On CPU, bf16 is torch.autocast("cpu", bfloat16) around the forward pass, as nerpipe's train.bf16.
    bf16 = bool(bf16 or (cuda and use_bf16("auto", torch.device("cuda"))))
    collator = CountingCollator(DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8 if cuda else None))
    rss_before_train = peak_rss_mib()

    with tempfile.TemporaryDirectory(prefix="hf_trainer_") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=eval_batch_size,
            learning_rate=lr,
            num_train_epochs=epochs,
            seed=seed,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            lr_scheduler_type="linear",
            train_sampling_strategy=train_sampling_strategy,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=logging_steps,
            report_to="none",
            use_cpu=not cuda,
            bf16=bf16,
            tf32=bf16 if cuda else None,
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        if cuda and args.n_gpu != 1:
            raise AssertionError(f"the Trainer sees {args.n_gpu} GPUs and would use DataParallel; run it with "
                                 "one visible (bench.gpu.one_gpu_env)")
        dev = None
        if eval_every or target_f1:
            dev = DevEvaluation(data.splits["valid"], data.id2label, eval_every,
                                planned_steps(len(train.examples), batch_size, 1), target_f1, collator)
        trainer = Trainer(model=model, args=args, train_dataset=train.examples, data_collator=collator,
                          processing_class=tokenizer, callbacks=[dev] if dev else None)
        gpu.reset_peak_memory(args.device)
        load_before = loadavg()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if dev:
            dev.trainer, dev.started = trainer, wall0
        train_output = trainer.train()
        call_seconds = time.perf_counter() - wall0
        dev_seconds, dev_cpu_seconds = (dev.seconds, dev.cpu_seconds) if dev else (0.0, 0.0)
        train_seconds = call_seconds - dev_seconds
        cpu_seconds = time.process_time() - cpu0 - dev_cpu_seconds
        fed = fed_counts(collator.rows, collator.tokens, collator.padded_tokens)  # before predict() adds to them
        load_after, rss_after_train = loadavg(), peak_rss_mib()

        scores, eval_seconds = {}, {}
        for name in eval_splits:
            split = data.splits[name]
            pred, eval_seconds[name] = predict_split(trainer, split, data.id2label)
            scores[name] = score_split(split.gold, pred)

    threads = torch.get_num_threads()
    expected_tokens = train.n_subtokens() * epochs
    if trainer.state.global_step == steps and fed["tokens"] != expected_tokens:  # a run stopped at its target: fewer
        raise AssertionError(f"the collator saw {fed['tokens']} sub-tokens, expected {expected_tokens}")
    time_to_target, target_step = reached_target(dev.evals if dev else [], target_f1)
    return TrainResult(
        trainer="hf_trainer", batch_order=train_sampling_strategy, bf16=bf16,
        config={"lr": lr, "batch_size": batch_size, "epochs": epochs, "seed": seed, "warmup_ratio": warmup_ratio,
                "warmup_steps": warmup_steps, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm,
                "optim": str(args.optim), "threads": threads, "torch": torch.__version__,
                "transformers": transformers.__version__},
        train_sentences=len(train.sentences), train_rows=len(train.examples),
        steps=trainer.state.global_step, planned_steps=steps,
        train_seconds=round(train_seconds, 3), training_call_seconds=round(call_seconds, 3),
        dev_eval_seconds_in_training=round(dev_seconds, 3),
        train_cpu_seconds=round(cpu_seconds, 3), cpu_utilisation=round(cpu_seconds / (train_seconds * threads), 3),
        fed=fed,
        train_loss=round(float(train_output.training_loss), 6),  # the Trainer's mean over all steps
        loss_history=[{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        dev_evals=dev.evals if dev else [],
        eval_seconds={k: round(v, 3) for k, v in eval_seconds.items()}, scores=entity_scores_only(scores),
        eval_batch_size=eval_batch_size,
        peak_rss_mib={"before_train": rss_before_train, "after_train": rss_after_train,
                      "after_eval": peak_rss_mib()},
        loadavg_1min=[load_before, load_after],
        device=torch.cuda.get_device_name(args.device) if cuda else "cpu",
        peak_gpu_mib=gpu.peak_memory_mib(args.device), target_f1=target_f1 or None,
        time_to_target_seconds=time_to_target, target_step=target_step)
