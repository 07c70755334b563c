"""The training loop: AdamW, linear warmup/decay, length-grouped dynamic batches, dev F1 evaluation,
early stopping, best-by-dev-F1 model, resumable checkpoints and a clean stop on Ctrl-C.

A plain loop rather than the HF Trainer: it is short enough to read in one sitting, and its sampler,
length-grouped dynamic batches, wastes little on padding. At equal precision it runs at the Trainer's
speed (BENCHMARKS.md).
"""

import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from nerpipe.core.errors import Interrupted
from nerpipe.data.batching import collate, length_grouped_batches
from nerpipe.evaluate.inference import predict_tags
from nerpipe.evaluate.scoring import entity_scores
from nerpipe.model.device import autocast, pad_multiple
from nerpipe.train.distributed import World, rng_state, seed_rank, set_rng_state

LOG_EVERY = 10  # optimizer steps between loss/lr rows in the history: ~100 points per CoNLL epoch
ESTIMATE_AFTER = 10  # steps of a run before it prints the time left (bert-base on a CPU: hours)
PREFETCH = 4  # steps collated ahead on CUDA


@dataclass
class TrainState:
    """Everything about progress that a resumed run needs to continue exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_dev_f1: float = -1.0
    best_step: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0  # optimizer steps only: dev evaluations and checkpoints excluded
    eval_seconds: float = 0.0  # dev evaluations
    sentences_seen: int = 0
    optimizer_state_bytes: int = 0  # AdamW's moments: 8 bytes per trainable fp32 parameter, read at the end
    tokens_seen: int = 0
    loss_sum: float = 0.0  # since the last history row; during training a float64 tensor on the device
    loss_steps: int = 0
    history: list = field(default_factory=list)  # rows: step, epoch, loss, lr
    dev_evals: list = field(default_factory=list)  # rows: step, epoch, dev_f1, dev_precision, dev_recall


@dataclass
class DevSet:
    examples: object  # prepared.WindowedExamples
    words: list
    gold: list
    id2label: dict
    batch_size: int


def _ignore(*args):
    pass


def _never(scores):
    return False


def say(message):
    """A line above the progress bar, on stdout at once: through a pipe (`make repro | tee`, CI) stdout is
    block-buffered, and the time left would otherwise arrive when the run has ended."""
    tqdm.write(message)
    sys.stdout.flush()


@dataclass
class RunContext:
    """What `fit` needs besides the model and the training windows: the settings, where it runs, and
    its side effects as hooks. Every side effect (dev evaluation, checkpoints, metric logging, the
    progress bar) passes one gate, `_on_main`, so that only the main process performs it; what every
    process must agree on (dev scores, a stop request) comes from the main one or from all of them."""

    cfg: object  # params.TrainParams
    lr: float
    pad_id: int
    device: torch.device
    bf16: bool  # resolved (model.device.use_bf16), not the 'auto' setting
    checkpoints: object  # checkpoints.Checkpoints: resume, save, save_best
    evaluate_dev: Callable  # model -> {"f1", "precision", "recall"}; see dev_scorer
    log_metrics: Callable = _ignore  # ({name: value}, step) -> None
    world: World = World()  # the processes training together (distributed.py); one by default
    log_every: int = LOG_EVERY  # optimizer steps between loss/lr rows
    stop_when: Callable = _never  # dev scores -> True to stop now (a time-to-accuracy target, say)

    @property
    def is_main_process(self):
        return self.world.is_main


def dev_scorer(dev, pad_id, device, bf16):
    """The usual RunContext.evaluate_dev: conlleval entity scores of the model on `dev` (a DevSet)."""
    def evaluate(model):
        pred = predict_tags(model, dev.examples, dev.words, dev.id2label, pad_id, dev.batch_size, device, bf16,
                            desc="dev", progress=False)
        return entity_scores(dev.gold, pred)
    return evaluate


def _on_main(run, hook, *args):
    """The one gate for side effects: run `hook` in the main process only; None elsewhere."""
    return hook(*args) if run.is_main_process else None


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and then stops."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stop requested: finishing this step (with several processes, up to the next logged step) "
                   "and writing a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def build_optimizer(model, lr, weight_decay):
    """AdamW; biases and LayerNorm weights get no weight decay (as in BERT's original recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists for CPU too since torch 2.4: one MiniLM step takes 16 ms fused vs
    # ~90 ms foreach on the 2-core CPU here (BENCHMARKS.md "Levers tried").
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def plan_steps(n_examples, cfg):
    batches_per_epoch = math.ceil(n_examples / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum_steps)
    total = steps_per_epoch * cfg.epochs
    return steps_per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


@dataclass
class StepBatch:
    """One optimizer step's input, collated on the host: this process's share of each micro-batch with the
    weight of its loss, and what the whole step counts."""

    micro: list  # [({input_ids, attention_mask, labels: (rows, width) int64 CPU tensors}, loss weight)]
    n_labelled: int  # labelled sub-tokens of the whole step over all processes: the loss's divisor
    sentences: int
    subtokens: int

    def pin_memory(self):
        """Page-locked copies, so that the copies to a GPU run without blocking (DataLoader's pin thread calls it)."""
        return dataclasses.replace(self, micro=[({k: v.pin_memory() for k, v in batch.items()}, weight)
                                                for batch, weight in self.micro])


def collate_step(group, train, lengths, pad_id, multiple=1, limit=None, world=World(), widths=()):
    """The StepBatch of `group` (the micro-batches' window indices). Every process holds the whole step's
    indices, so each counts its labelled tokens without an all-reduce; a process whose share of a
    micro-batch is empty takes one window weighted 0, since every process must join each gradient sync."""
    n_labelled = sum(int((train.labels.row(i) >= 0).sum()) for batch in group for i in batch)
    micro = []
    for indices in group:
        share, weight = world.share(indices), world.size
        if len(share) == 0:
            share, weight = indices[:1], 0
        micro.append((collate(share, train.input_ids, pad_id, train.labels, multiple, limit, widths), weight))
    return StepBatch(micro, n_labelled, sum(len(b) for b in group), sum(int(lengths[b].sum()) for b in group))


class StepBatches(torch.utils.data.Dataset):
    """An epoch's optimizer steps as a dataset of StepBatch, for a DataLoader to collate ahead."""

    def __init__(self, groups, collate_one):
        self.groups, self.collate_one = groups, collate_one

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, k):
        return self.collate_one(self.groups[k])


def _as_is(step):
    return step


def step_loader(groups, collate_one, device):
    """The steps of `groups` in order, collated ahead of the step that computes. On CUDA one worker process
    collates up to PREFETCH steps ahead and DataLoader's thread pins them, so each copy to the GPU is
    asynchronous and the GPU never waits for the host's collation. On the CPU, which computes the step
    itself, collation stays in this process, step by step. The loader draws its base seed from a
    generator of its own: from the global one it would shift every dropout mask after it."""
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(StepBatches(groups, collate_one), batch_size=None, collate_fn=_as_is,
                                       num_workers=1 if cuda else 0, prefetch_factor=PREFETCH if cuda else None,
                                       pin_memory=cuda, generator=torch.Generator())


def run_step(model, step, device, bf16, world=World()):
    """One optimizer step's forward/backward over `step` (a StepBatch of grad-accumulation micro-batches).

    The loss is summed over labelled tokens and divided by their total count in the whole step, so
    every labelled token weighs the same however the step is split into micro-batches or processes.
    DDP averages gradients over processes, so each share's loss is scaled by their number to make that
    average the sum; the gradients are all-reduced once, on the last micro-batch (no_sync on the others).

    Returns this process's part of the step's loss as a 0-dim float64 tensor on `device`: reading it is
    a host sync that would make the CPU wait for the GPU, so fit reads it only when it logs.
    """
    # float64, the precision of the Python float this used to be summed in: the logged loss is unchanged
    total = torch.zeros((), dtype=torch.float64, device=device)
    for k, (host_batch, weight) in enumerate(step.micro):
        batch = {name: t.to(device, non_blocking=True) for name, t in host_batch.items()}  # async from pinned memory
        labels = batch.pop("labels")
        with world.no_sync(model, last=k == len(step.micro) - 1):
            with autocast(device, bf16):
                logits = model(**batch).logits  # (batch, seq_len, num_labels)
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                reduction="sum") / max(step.n_labelled, 1)
            (loss if weight == 1 else loss * weight).backward()
        if weight:
            total += loss.detach().double()
    return total


def synchronize(device):
    """Wait for the GPU's queued work: CUDA runs asynchronously. Nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """The seconds of the optimizer steps. On the CPU, the wall clock around each step. On CUDA, a pair of
    events per step recorded on the stream, which costs the host nothing; their times are read (which
    waits for the last of them) only by `collect`, when the loss is logged, which waits for the GPU anyway."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.pending = []  # CUDA: (start, end) event pairs not yet read

    def start(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self):
        """Seconds of the step just ended where they are known at once (CPU); 0.0 on CUDA, for collect."""
        if not self.cuda:
            return time.perf_counter() - self._start
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pending.append((self._start, end))
        return 0.0

    def collect(self):
        """Seconds of the CUDA steps not read yet (0.0 on the CPU)."""
        if not self.pending:
            return 0.0
        self.pending[-1][1].synchronize()
        seconds = sum(start.elapsed_time(end) for start, end in self.pending) / 1000  # elapsed_time: ms
        self.pending.clear()
        return seconds


def fit(model, train, run):
    """Train `model` in place on `train` (prepared.WindowedExamples) as `run` (a RunContext) says;
    returns the final TrainState. The best model is in run.checkpoints.best_dir.

    Resumes from the last checkpoint of the same settings, if any, and ends exactly as an uninterrupted
    run would: data order is a function of (seed, epoch), and the checkpoint holds everything else
    that changes (weights, optimizer, scheduler, torch RNG, position in the epoch, loss accumulators).
    With cfg.checkpoint_every, the last checkpoint is of the final step, and stays: the caller removes it
    (Checkpoints.finish) once what it makes of the training is saved, so a failure there resumes at the
    end and trains no more.
    """
    cfg, checkpoints, world = run.cfg, run.checkpoints, run.world
    optimizer = build_optimizer(model, run.lr, cfg.weight_decay)
    steps_per_epoch, total_steps = plan_steps(len(train), cfg)
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    seed_rank(world, cfg.seed)  # before the resume, which puts back each process's saved state
    state = _resume(model, optimizer, scheduler, run)
    saved_at = state.step if state.step else None  # the step of the last checkpoint written
    trained = world.wrap(model)  # DDP (after the resume: it starts every process from the main's weights)
    eval_every = cfg.eval_every_steps or steps_per_epoch
    lengths = train.input_ids.lengths()
    multiple, limit = pad_multiple(run.device), getattr(model.config, "max_position_embeddings", None)

    def collate_one(group):
        return collate_step(group, train, lengths, run.pad_id, multiple, limit, world, tuple(cfg.static_widths))

    clock = StepClock(run.device)
    estimate_at, loop_started, eval_before = state.step + ESTIMATE_AFTER, time.perf_counter(), state.eval_seconds
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not run.is_main_process)
    with StopRequest() as stop:
        while state.epoch < cfg.epochs and not _finished(state, total_steps):
            batches = length_grouped_batches(lengths, cfg.batch_size, cfg.seed, state.epoch)
            groups = [batches[i:i + cfg.grad_accum_steps] for i in range(0, len(batches), cfg.grad_accum_steps)]
            steps = iter(step_loader(groups[state.step_in_epoch:], collate_one, run.device))
            while state.step_in_epoch < len(groups) and not _finished(state, total_steps):
                model.train()
                clock.start()
                step = next(steps)  # collated ahead on CUDA; here, on the CPU
                loss = run_step(trained, step, run.device, run.bf16, world)
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.train_seconds += clock.stop()
                state.step += 1
                state.step_in_epoch += 1
                state.sentences_seen += step.sentences
                state.tokens_seen += step.subtokens
                state.loss_sum += loss  # stays on the device until _log_loss reads it
                state.loss_steps += 1
                end_of_epoch = state.step_in_epoch == len(groups)
                last = end_of_epoch or state.step >= total_steps
                progress = round(state.epoch + state.step_in_epoch / len(groups), 4)  # fractional epoch
                logs = state.step % run.log_every == 0 or last
                if logs:
                    _log_loss(state, progress, scheduler.get_last_lr()[0], run)  # waits for the device
                    state.train_seconds += clock.collect()
                if state.step % eval_every == 0 or last:
                    state.train_seconds += clock.collect()
                    _evaluate(model, state, progress, run, warmup_steps)
                bar.update(1)
                if state.step == estimate_at and state.step < total_steps:
                    seconds = time.perf_counter() - loop_started - (state.eval_seconds - eval_before)
                    _on_main(run, say, time_left(seconds, ESTIMATE_AFTER, total_steps - state.step))
                bar.set_postfix(loss=f"{state.history[-1]['loss']:.4f}" if state.history else "-",
                                lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                dev_f1=f"{state.best_dev_f1:.4f}" if state.dev_evals else "-")
                if end_of_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
                # A signal to any process stops all of them. One process asks itself every step; several
                # vote (an all-reduce, read back) only at the steps whose loss is logged, which wait anyway.
                stop_now = world.any(stop.requested) if logs or not world.distributed else False
                if stop_now or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
                    state.train_seconds += clock.collect()
                    _save_checkpoint(model, optimizer, scheduler, state, run)
                    saved_at = state.step
                if stop_now:
                    bar.close()
                    raise Interrupted(f"stopped at step {state.step}; the checkpoint in {checkpoints.directory} "
                                      "resumes on the next `dvc repro`")
                if end_of_epoch:
                    break
    state.train_seconds += clock.collect()
    bar.close()
    state.optimizer_state_bytes = sum(t.numel() * t.element_size() for per_param in optimizer.state.values()
                                      for t in per_param.values() if torch.is_tensor(t))
    if cfg.checkpoint_every and saved_at != state.step:  # the same decision in every process: each joins the save
        _save_checkpoint(model, optimizer, scheduler, state, run)
    return state


def _resume(model, optimizer, scheduler, run):
    """The main process resumes the last checkpoint (or starts over); the others take its optimizer,
    scheduler and progress, and every process its own CPU and CUDA RNG state. Their weights come from the
    main's when DDP wraps the model, so the checkpoint need not be on a disk they see."""
    state = _on_main(run, run.checkpoints.resume, model, optimizer, scheduler)
    world = run.world
    if not world.distributed:
        return state or TrainState()
    shared = world.from_main(state and {"state": state, "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "rngs": run.checkpoints.rank_rngs})
    if shared is None:
        return TrainState()
    if not world.is_main:
        optimizer.load_state_dict(shared["optimizer"])
        scheduler.load_state_dict(shared["scheduler"])
        state = dataclasses.replace(shared["state"], loss_sum=0.0)  # the main holds the saved sum of all
    if shared["rngs"]:
        set_rng_state(shared["rngs"][world.rank], run.device)
    return state


def _save_checkpoint(model, optimizer, scheduler, state, run):
    """Every process calls this: the loss sum and the RNG states of all of them go into the main's save."""
    world = run.world
    if world.distributed:
        state = dataclasses.replace(state, loss_sum=float(world.sum(state.loss_sum)))
    rngs = world.gather_to_main(rng_state(run.device)) if world.distributed else None
    _on_main(run, run.checkpoints.save, model, optimizer, scheduler, state, rngs)


def time_left(seconds, steps_done, steps_left):
    """The estimate printed after the first steps: `seconds` of training for `steps_done` steps, in words."""
    per_step = seconds / steps_done
    left = per_step * steps_left
    hours, minutes = divmod(round(left / 60), 60)
    words = f"{hours} h {minutes} min" if hours else f"{minutes} min" if minutes else f"{round(left)} s"
    return (f"time left: about {words} for {steps_left:,} more steps ({per_step:.2f} s per step over the first "
            f"{steps_done}), plus the dev evaluations")


def _finished(state, total_steps):
    return state.stopped_early or state.step >= total_steps


def _log_loss(state, epoch, lr, run):
    loss = float(run.world.sum(state.loss_sum)) / max(state.loss_steps, 1)  # the one host sync for the loss
    state.history.append({"step": state.step, "epoch": epoch, "loss": round(loss, 6),
                          "lr": lr})
    state.loss_sum, state.loss_steps = 0.0, 0
    _on_main(run, run.log_metrics, {"train_loss": loss, "learning_rate": lr}, state.step)


def _evaluate(model, state, epoch, run, warmup_steps=0):
    """Score dev, keep the best model, and stop early after `patience` evaluations without a better F1.
    An evaluation at a step of the warm-up does not count towards patience: dev F1 often stays at 0
    while the rate is still rising (small data, many epochs), and that says nothing about convergence."""
    started = time.perf_counter()
    # Only the main process evaluates; every process takes its scores, so all take the same decisions.
    scores = run.world.from_main(_on_main(run, run.evaluate_dev, model))
    state.eval_seconds += time.perf_counter() - started
    state.dev_evals.append({"step": state.step, "epoch": epoch,
                            "dev_f1": scores["f1"], "dev_precision": scores["precision"],
                            "dev_recall": scores["recall"]})
    _on_main(run, run.log_metrics, {"dev_f1": scores["f1"], "dev_precision": scores["precision"],
                                    "dev_recall": scores["recall"]}, state.step)
    if run.stop_when(scores):
        state.stopped_early = True
    if scores["f1"] > state.best_dev_f1:
        state.best_dev_f1, state.best_step, state.evals_since_best = scores["f1"], state.step, 0
        _on_main(run, run.checkpoints.save_best, model)
    elif state.step > warmup_steps:
        state.evals_since_best += 1
        if run.cfg.patience and state.evals_since_best >= run.cfg.patience:
            state.stopped_early = True
            _on_main(run, say, f"early stopping at step {state.step}: dev F1 has not improved for "
                     f"{run.cfg.patience} evaluations (best {state.best_dev_f1:.4f} at step {state.best_step})")


def summary(state, total_steps):
    """What the training reached, the same for the same inputs: reports/train/metrics.json."""
    return {"steps": state.step, "planned_steps": total_steps, "epochs_completed": state.epoch,
            "best_dev_f1": state.best_dev_f1, "best_step": state.best_step, "stopped_early": state.stopped_early,
            "optimizer_state_mib": round(state.optimizer_state_bytes / 2**20, 3)}


def speed(state):
    """How long it took and how fast it went, different on every run: for the train stage's timings file."""
    return {"train_seconds": round(state.train_seconds, 3), "dev_eval_seconds": round(state.eval_seconds, 3),
            "train_sentences_per_second": round(state.sentences_seen / max(state.train_seconds, 1e-9), 2),
            "train_subtokens_per_second": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1)}

