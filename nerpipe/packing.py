"""Pack several sentences into one fixed-width row, each attending only to itself.

CoNLL sentences are short (median ~14 sub-tokens), so a batch of 32 padded to its own longest row
still feeds the CPU a new (batch, seq_len) shape almost every step. oneDNN's bf16 kernels are built
per shape, so varying shapes cost more than bf16 saves. Packing the same 32 sentences into rows of
one width gives a handful of shapes for the whole run and almost no padding, without changing the
maths: a block-diagonal attention mask keeps sentences apart and position ids restart per sentence,
so every sentence is encoded exactly as if it were alone in its row.
"""

import numpy as np
import torch

from nerpipe.alignment import IGNORE


def first_fit_decreasing(lengths, width):
    """Row assignment: a list of rows, each a list of positions into `lengths` whose sum fits `width`.

    Longest first, each into the first row with room: rows end up nearly full (a whole split packs
    within a few percent of the ideal), and the result depends only on the lengths.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > width:
        raise ValueError(f"a sequence of {lengths.max()} sub-tokens does not fit a packed row of {width}")
    free = np.full(len(lengths), width, dtype=np.int64)  # at most one row per sequence
    row_of = np.empty(len(lengths), dtype=np.int64)
    used = 0
    for i in np.argsort(-lengths, kind="stable"):
        row = int(np.argmax(free[:used + 1] >= lengths[i]))  # row `used` is empty, so one always fits
        free[row] -= lengths[i]
        row_of[i] = row
        used = max(used, row + 1)
    rows = [[] for _ in range(used)]
    for i in np.argsort(-lengths, kind="stable"):
        rows[row_of[i]].append(int(i))
    return rows


def pack(indices, input_ids, pad_id, width, labels=None):
    """The rows `indices` of a RaggedColumn, packed into (rows, width) tensors the model takes.

    Returns input_ids, position_ids, a 4D additive attention_mask (rows, 1, width, width) and, when
    `labels` is given, labels with IGNORE on padding.
    """
    lengths = [len(input_ids.row(i)) for i in indices]
    rows = [[indices[m] for m in row] for row in first_fit_decreasing(lengths, width)]
    return pack_rows(rows, input_ids, pad_id, width, labels)


def pack_rows(rows, input_ids, pad_id, width, labels=None):
    """Tensors for a given layout: `rows` lists, per packed row, the example ids it holds, in order.

    Padding forms one segment of its own, so no query is left with nothing to attend to (which
    would make softmax NaN).
    """
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    segments = np.full((len(rows), width), -1, dtype=np.int64)
    lab = np.full((len(rows), width), IGNORE, dtype=np.int64) if labels is not None else None
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members):
            seq = input_ids.row(i)
            n = len(seq)
            ids[r, start:start + n] = seq
            positions[r, start:start + n] = np.arange(n)
            segments[r, start:start + n] = segment
            if lab is not None:
                lab[r, start:start + n] = labels.row(i)
            start += n
    seg = torch.from_numpy(segments)
    same = seg[:, :, None] == seg[:, None, :]
    # bf16's most negative value is also a valid fp32, so the mask survives autocast's cast unchanged.
    mask = torch.zeros(same.shape, dtype=torch.float32).masked_fill_(~same, torch.finfo(torch.bfloat16).min)
    batch = {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(positions),
             "attention_mask": mask[:, None]}
    if lab is not None:
        batch["labels"] = torch.from_numpy(lab)
    return batch
