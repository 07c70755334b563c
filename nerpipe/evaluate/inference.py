"""Predict word-level tags: run windows through the model and map first sub-tokens back to words."""

import numpy as np
import torch
from tqdm import tqdm

from nerpipe.data.batching import collate, sorted_batches
from nerpipe.model.device import autocast, pad_multiple


@torch.no_grad()
def predict_word_labels(model, examples, words_per_sentence, pad_id, batch_size, device, bf16=False,
                        desc="predict", progress=True):
    """Label ids and softmax scores per word: two lists (one per sentence) of int / float arrays.

    Each word is read from the one window that owns it (word_index >= 0 on its first sub-token).
    """
    model.eval()
    label_ids = [np.zeros(n, dtype=np.int64) for n in words_per_sentence]
    scores = [np.zeros(n, dtype=np.float32) for n in words_per_sentence]
    multiple, limit = pad_multiple(device), getattr(model.config, "max_position_embeddings", None)
    batches = sorted_batches(examples.input_ids.lengths(), batch_size)
    for indices in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        batch = collate(indices, examples.input_ids, pad_id, pad_to_multiple_of=multiple, max_width=limit)
        with autocast(device, bf16):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (batch, seq_len, labels)
        probs = torch.softmax(logits.float(), dim=-1)
        best_score, best_id = (t.cpu().numpy() for t in probs.max(dim=-1))
        for row, i in enumerate(indices):
            word_index = examples.word_index.row(i)
            positions = np.nonzero(word_index >= 0)[0]
            sentence = examples.sentence_id[i]
            label_ids[sentence][word_index[positions]] = best_id[row, positions]
            scores[sentence][word_index[positions]] = best_score[row, positions]
    return label_ids, scores


def predict_tags(model, examples, sentences_words, id2label, pad_id, batch_size, device, bf16=False, **kw):
    """Tag strings per word for every sentence (the input seqeval and the CoNLL writer take)."""
    ids, _ = predict_word_labels(model, examples, [len(w) for w in sentences_words], pad_id, batch_size,
                                 device, bf16, **kw)
    return [[id2label[int(i)] for i in row] for row in ids]
