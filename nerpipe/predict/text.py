"""Predict entities in raw text: CoNLL-style words, prepare's windows, evaluate's prediction code.

A word gets the tag of its first sub-token (as in training and evaluation); IOB2 tags become
entities the way conlleval reads them (seqeval's get_entities: an I-X after O starts an entity);
an entity's score is the mean of its words' softmax scores.

With document context (`context` > 0, prepare.context) a text is one document: its words are split into
sentences (split_sentences) and each sentence is tagged with its neighbours as context, as prepare
builds them for training and evaluation. At 0 a text is one sequence, windowed if long, as before.
"""

import sys
from dataclasses import dataclass

import numpy as np
import torch
from seqeval.metrics.sequence_labeling import get_entities
from tqdm import tqdm

from nerpipe.core.errors import UserError
from nerpipe.data.alignment import build_examples
from nerpipe.data.prepared import WindowedExamples
from nerpipe.evaluate.inference import predict_word_labels
from nerpipe.model.device import pick_device, set_tf32, use_bf16
from nerpipe.predict.words import split_words

CHUNK_CHARS = 200_000  # texts per model pass, in characters: large enough to batch by length, small enough to stream


@dataclass
class LinePrediction:
    text: str
    spans: list
    """(start, end) character offsets of each word."""
    tags: list
    """IOB2 tag of each word."""
    scores: np.ndarray
    """Softmax probability of each word's tag."""

    def words(self):
        return [self.text[start:end] for start, end in self.spans]

    def entities(self):
        """[{'text', 'type', 'start', 'end', 'score'}]: text == self.text[start:end]."""
        out = []
        for entity_type, first, last in get_entities(self.tags):
            start, end = self.spans[first][0], self.spans[last][1]
            out.append({"text": self.text[start:end], "type": entity_type, "start": start, "end": end,
                        "score": float(np.mean(self.scores[first:last + 1]))})
        return out


SENTENCE_END = frozenset({".", "!", "?"})


def split_sentences(words):
    """[start, end) word ranges of the sentences of a word list: a sentence ends after a run of `.`, `!` or
    `?` words (CoNLL-style words keep the dot of U.S. or Mr. inside, so those do not end one)."""
    ranges, start = [], 0
    for i, word in enumerate(words):
        if word in SENTENCE_END and (i + 1 == len(words) or words[i + 1] not in SENTENCE_END):
            ranges.append((start, i + 1))
            start = i + 1
    if start < len(words):
        ranges.append((start, len(words)))
    return ranges


def tag_words(model, tokenizer, sentences_words, max_length, overlap, batch_size, device, bf16=False,
              context=0, doc_ids=None):
    """Label ids and scores per word (lists of arrays), through the same windows prepare builds. With
    `context` > 0, `doc_ids` gives each sentence's document, in document order as prepare reads them."""
    keep = [i for i, words in enumerate(sentences_words) if words]
    label_ids = [np.zeros(0, dtype=np.int64) for _ in sentences_words]
    scores = [np.zeros(0, dtype=np.float32) for _ in sentences_words]
    if not keep:
        return label_ids, scores
    kept = [sentences_words[i] for i in keep]
    # Dummy 'O' tags: build_examples wants labels; prediction reads only input_ids and word_index.
    batch = {"sentence_id": list(range(len(kept))), "words": kept, "tags": [["O"] * len(w) for w in kept]}
    if context:
        batch["doc_id"] = [doc_ids[i] for i in keep]
    rows = build_examples(batch, tokenizer, {"O": 0}, max_length, overlap, label_all_tokens=False, context=context)
    examples = WindowedExamples.from_rows(rows)
    kept_ids, kept_scores = predict_word_labels(model, examples, [len(w) for w in kept], tokenizer.pad_token_id,
                                                batch_size, device, bf16, progress=False)
    for j, i in enumerate(keep):
        label_ids[i], scores[i] = kept_ids[j], kept_scores[j]
    return label_ids, scores


def ready_to_tag(model, tokenizer, source, bf16_setting):
    """Check that `model` (loaded from `source`) tags IOB2, move it to the device and set its precision as
    `bf16_setting` says there: (device, bf16). What nerpipe predict and the MLflow model both do."""
    check_labels(model.config.id2label, source)
    tokenizer.model_max_length = int(1e9)  # windows bound the length; silences the tokenizer's too-long warning
    device = pick_device()
    bf16 = use_bf16(bf16_setting, device)
    set_tf32(device, bf16)  # as evaluate does: TF32 on a GPU only in bf16
    model.to(device)
    if bf16:
        cast_linear_layers_for_bf16(model)
    return device, bf16


def cast_linear_layers_for_bf16(model):
    """Store every nn.Linear's weight and bias in bf16, for prediction under bf16 autocast only. Autocast
    casts them to bf16 on every forward pass anyway, with the same rounding, so the scores are bit for bit
    the same; casting once saves that work: 10 -> 5.5 ms for one CoNLL sentence with MiniLM on a 2-core
    CPU, where a single sentence used to be faster in fp32. Norms and embeddings stay fp32, as autocast
    runs them."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return model


def predict_lines(model, tokenizer, texts, max_length, overlap, batch_size, device, bf16=False, progress=False,
                  context=0):
    """Yield one LinePrediction per text, in input order, running the model on chunks of texts."""
    id2label = model.config.id2label
    with tqdm(total=len(texts), desc="predict", unit="line", disable=not progress, file=sys.stderr) as bar:
        for chunk in _chunks(texts, CHUNK_CHARS):
            spans = [split_words(text) for text in chunk]
            words = [[text[s:e] for s, e in sp] for text, sp in zip(chunk, spans)]
            if context:
                label_ids, scores = _tag_documents(model, tokenizer, words, max_length, overlap, batch_size,
                                                   device, bf16, context)
            else:
                label_ids, scores = tag_words(model, tokenizer, words, max_length, overlap, batch_size, device,
                                              bf16)
            for text, sp, ids, sc in zip(chunk, spans, label_ids, scores):
                yield LinePrediction(text, sp, [id2label[int(i)] for i in ids], sc)
            bar.update(len(chunk))


def _tag_documents(model, tokenizer, documents_words, max_length, overlap, batch_size, device, bf16, context):
    """tag_words over the sentences of each document (one per text), joined back into one array per text."""
    ranges = [split_sentences(words) for words in documents_words]
    sentences = [words[s:e] for words, rs in zip(documents_words, ranges) for s, e in rs]
    doc_ids = [d for d, rs in enumerate(ranges) for _ in rs]
    ids, scores = tag_words(model, tokenizer, sentences, max_length, overlap, batch_size, device, bf16,
                            context=context, doc_ids=doc_ids)
    out_ids, out_scores, k = [], [], 0
    for rs in ranges:
        out_ids.append(np.concatenate([np.zeros(0, dtype=np.int64), *ids[k:k + len(rs)]]))
        out_scores.append(np.concatenate([np.zeros(0, dtype=np.float32), *scores[k:k + len(rs)]]))
        k += len(rs)
    return out_ids, out_scores


def _chunks(texts, max_chars):
    chunk, size = [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def check_labels(id2label, source):
    bad = [label for label in id2label.values() if not (label == "O" or label[:2] in ("B-", "I-"))]
    if bad:
        raise UserError(f"model {source!r}: labels {bad[:3]} are not IOB2 tags (O, B-X, I-X); "
                        "predict needs a model trained by the pipeline (data/model)")
