"""Predict word-level tags: run windows through the model and map first sub-tokens back to words."""

from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from nerpipe.batching import RaggedColumn, collate, sorted_batches
from nerpipe.packing import first_fit_decreasing, pack_rows


def autocast(device, enabled):
    """bf16 autocast where asked for; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


class WindowedExamples:
    """The columns of a prepared split that prediction needs, loaded once from Arrow."""

    def __init__(self, dataset):
        self.input_ids = RaggedColumn(dataset, "input_ids")
        self.word_index = RaggedColumn(dataset, "word_index")
        self.sentence_id = dataset.data.table.column("sentence_id").to_numpy()
        self.labels = RaggedColumn(dataset, "labels") if "labels" in dataset.column_names else None

    def __len__(self):
        return len(self.input_ids)


@torch.no_grad()
def predict_word_labels(model, examples, words_per_sentence, pad_id, batch_size, device, bf16=False,
                        desc="predict", progress=True, pack_width=0):
    """Label ids and softmax scores per word: two lists (one per sentence) of int / float arrays.

    Each word is read from the one window that owns it (word_index >= 0 on its first sub-token).
    With `pack_width`, windows are packed into rows of that width (nerpipe.packing) and a batch is
    `batch_size` rows: the whole split then runs in one or two tensor shapes.
    """
    model.eval()
    label_ids = [np.zeros(n, dtype=np.int64) for n in words_per_sentence]
    scores = [np.zeros(n, dtype=np.float32) for n in words_per_sentence]
    batches = list(_forward_passes(examples, pad_id, batch_size, device, pack_width))
    for tensors, placed in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        with autocast(device, bf16):
            logits = model(**{k: v.to(device) for k, v in tensors.items()}).logits  # (rows, width, labels)
        probs = torch.softmax(logits.float(), dim=-1)
        best_score, best_id = (t.cpu().numpy() for t in probs.max(dim=-1))
        for i, row, start in placed:
            word_index = examples.word_index.row(i)
            positions = np.nonzero(word_index >= 0)[0]
            sentence = examples.sentence_id[i]
            label_ids[sentence][word_index[positions]] = best_id[row, start + positions]
            scores[sentence][word_index[positions]] = best_score[row, start + positions]
    return label_ids, scores


def _forward_passes(examples, pad_id, batch_size, device, pack_width):
    """(model inputs, [(example, row, start offset)]) for each forward pass over `examples`."""
    lengths = examples.input_ids.lengths()
    if pack_width:
        width = max(pack_width, int(lengths.max(initial=0)))
        rows = first_fit_decreasing(lengths, width)
        for b in range(0, len(rows), batch_size):
            chunk = rows[b:b + batch_size]
            placed = [(i, r, int(lengths[row[:k]].sum())) for r, row in enumerate(chunk) for k, i in enumerate(row)]
            yield pack_rows(chunk, examples.input_ids, pad_id, width), placed
        return
    pad_multiple = 8 if device.type == "cuda" else 1
    for indices in sorted_batches(lengths, batch_size):
        yield (collate(indices, examples.input_ids, pad_id, pad_to_multiple_of=pad_multiple),
               [(i, row, 0) for row, i in enumerate(indices)])


def predict_tags(model, examples, sentences_words, id2label, pad_id, batch_size, device, bf16=False, **kw):
    """Tag strings per word for every sentence (the input seqeval and the CoNLL writer take)."""
    ids, _ = predict_word_labels(model, examples, [len(w) for w in sentences_words], pad_id, batch_size,
                                 device, bf16, **kw)
    return [[id2label[int(i)] for i in row] for row in ids]
