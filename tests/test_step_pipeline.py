"""The training step that never waits for the host (nerpipe.train.loop: batches collated ahead by a
DataLoader, pinned and copied without blocking on a GPU, the clock read from CUDA events, the loss and
the stop vote read only when logged) computes on the CPU exactly what the plain synchronous loop computed
before it: the same weights, bit for bit, with dropout on, in fp32 and under bf16 autocast, with gradient
accumulation. The reference below is that plain loop, written out from its parts."""

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from nerpipe.core.params import TrainParams
from nerpipe.data.batching import collate, length_grouped_batches
from nerpipe.data.prepared import PreparedSplit
from nerpipe.model.device import autocast
from nerpipe.model.loading import load_for_training
from nerpipe.train.checkpoints import Checkpoints
from nerpipe.train.loop import DevSet, RunContext, build_optimizer, dev_scorer, fit, plan_steps
from tests.conftest import CONLL_LABELS

CPU = torch.device("cpu")
LR = 1e-3


def config(bf16):
    # 12 windows, 2 per micro-batch, 2 micro-batches per step: 3 steps an epoch, the last of one micro-batch
    return TrainParams(epochs=2, batch_size=2, grad_accum_steps=2, warmup_ratio=0.2, dropout=0.1, patience=0,
                       checkpoint_every=0, seed=42, bf16=bf16)


def plain_loop(model, train, cfg, bf16):
    """The loop as it was: collate each micro-batch when it is needed, step, read nothing back."""
    optimizer = build_optimizer(model, LR, cfg.weight_decay)
    _, total = plan_steps(len(train), cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    lengths = train.input_ids.lengths()
    losses = []
    for epoch in range(cfg.epochs):
        batches = length_grouped_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        for start in range(0, len(batches), cfg.grad_accum_steps):
            model.train()
            group = batches[start:start + cfg.grad_accum_steps]
            n_labelled = sum(int((train.labels.row(i) >= 0).sum()) for b in group for i in b)
            step_loss = 0.0
            for indices in group:
                batch = collate(indices, train.input_ids, 0, train.labels)
                labels = batch.pop("labels")
                with autocast(CPU, bf16):
                    logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                                         ignore_index=-100, reduction="sum") / n_labelled
                loss.backward()
                step_loss += loss.item()
            losses.append(step_loss)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return losses


@pytest.mark.parametrize("bf16", ["off", "on"])
def test_fit_computes_exactly_what_the_plain_synchronous_loop_computed(tiny_model_dir, prepared, tmp_path, bf16):
    cfg = config(bf16)
    on = bf16 == "on"
    train, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")

    reference = load_for_training(str(tiny_model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    losses = plain_loop(reference, train.examples, cfg, on)

    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train.examples, RunContext(cfg, LR, 0, CPU, on, Checkpoints(tmp_path, "t"),
                                                  dev_scorer(devset, 0, CPU, on), log_every=1))
    assert state.step == len(losses) == 6
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert differ == [], f"{len(differ)} tensors differ from the plain loop's, e.g. {differ[:3]}"
    # the loss of every step, logged one step at a time, is the plain loop's (float64 sums of the same terms)
    assert [row["loss"] for row in state.history] == [round(x, 6) for x in losses]


def test_static_widths_feed_the_model_only_those_widths(tiny_model_dir, prepared, tmp_path):
    cfg = TrainParams(epochs=1, batch_size=2, warmup_ratio=0.0, patience=0, checkpoint_every=0, bf16="off",
                      static_widths=[12, 24])
    train, dev = PreparedSplit(prepared, "train"), PreparedSplit(prepared, "valid")
    lengths = train.examples.input_ids.lengths()
    assert lengths.max() <= 24 and len(set(lengths.tolist())) > 2  # the fixtures' windows: many lengths, max_length 24
    model = load_for_training(str(tiny_model_dir), CONLL_LABELS, cfg.dropout, cfg.seed)
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, 8)
    state = fit(model, train.examples, RunContext(cfg, LR, 0, CPU, False, Checkpoints(tmp_path, "t"),
                                                  dev_scorer(devset, 0, CPU, False)))
    trained = widths[:state.step]  # then dev evaluation, which pads to its own widths
    assert len(trained) == 6 and set(trained) <= {12, 24}
    batches = length_grouped_batches(lengths, 2, cfg.seed, 0)
    assert trained == [12 if lengths[b].max() <= 12 else 24 for b in batches]
