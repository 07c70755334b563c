"""Length-grouped batches with dynamic padding, read straight from Arrow without per-example Python.

Padding every batch to `max_length` wastes most of the compute on CoNLL (median sentence ~14
sub-tokens). Grouping sentences of similar length and padding each batch only to its own longest
row removes nearly all of that waste.
"""

import numpy as np
import torch

from nerpipe.data.alignment import IGNORE


class RaggedColumn:
    """A list-of-ints Arrow column as one flat numpy array plus offsets: row i is values[o[i]:o[i+1]]."""

    def __init__(self, table, name):
        column = table.column(name).combine_chunks()
        self.values = column.values.to_numpy(zero_copy_only=False)
        self.offsets = column.offsets.to_numpy()

    def __len__(self):
        return len(self.offsets) - 1

    def row(self, i):
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self):
        return np.diff(self.offsets)


def length_grouped_batches(lengths, batch_size, seed, epoch, group_size=50):
    """Indices of each batch for one epoch, a pure function of (seed, epoch) so a run can resume.

    Shuffle, cut into groups of `group_size` batches, sort each group by length, cut the group into
    batches, then shuffle the batch order: similar lengths share a batch, yet the model never sees
    a length-sorted stream.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * group_size
    batches = []
    for start in range(0, len(order), chunk):
        group = order[start:start + chunk]
        group = group[np.argsort(-lengths[group], kind="stable")]
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


TOKEN_BUDGET = 2048
"""Padded tokens per inference forward pass, at most (rows x padded width). On a 2-core CPU a pass of 64
CoNLL windows padded to a long one's width ran at half the speed per token of 16 (activations that outgrow
the caches, attention quadratic in the width); BENCHMARKS.md, "Serving at the machine's ceiling"."""


def sorted_batches(lengths, batch_size, token_budget=TOKEN_BUDGET, multiple=1):
    """Batches for inference, longest first (the largest allocation happens once, up front): at most
    `batch_size` rows, and at most `token_budget` padded tokens, rows x the width the batch's first (longest)
    row is padded to (rounded up to `multiple`). A row wider than the budget is a batch of its own. Short
    rows share a pass many at a time, long ones few; padding stays within each pass, as before."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        width = padded_width(int(lengths[order[start]]), multiple)
        rows = max(1, min(batch_size, token_budget // max(width, 1))) if token_budget else batch_size
        batches.append(order[start:start + rows])
        start += rows
    return batches


def padded_width(longest, multiple=1, limit=None, widths=()):
    """The width a batch whose longest row holds `longest` sub-tokens is padded to: the next multiple of
    `multiple`, but never past `limit`, the model's max_position_embeddings (a limit that is not a
    multiple of 8, such as RoBERTa's 514, would otherwise be exceeded), nor below `longest`. With static
    `widths` (ascending; train.static_widths), the smallest of them that holds that width, so that batches
    come in a few shapes only; a batch wider than all of them keeps its own width."""
    width = -(-longest // multiple) * multiple
    width = max(longest, min(width, limit)) if limit else width
    return next((w for w in widths if w >= width), width)


def collate(indices, input_ids, pad_id, labels=None, pad_to_multiple_of=1, max_width=None, widths=()):
    """Pad the rows `indices` to their own longest length (rounded up to `pad_to_multiple_of`, at most
    `max_width`, or up to one of the static `widths`: see padded_width) -> dict of (batch, seq_len) tensors."""
    rows = [input_ids.row(i) for i in indices]
    width = padded_width(max(len(r) for r in rows), pad_to_multiple_of, max_width, widths)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, :len(r)] = r
        mask[j, :len(r)] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if labels is not None:
        lab = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for j, i in enumerate(indices):
            r = labels.row(i)
            lab[j, :len(r)] = r
        batch["labels"] = torch.from_numpy(lab)
    return batch
