"""Tokenize words into sub-tokens, split long sentences into overlapping windows, align labels.

Label alignment follows transformers' run_ner.py: the first sub-token of a word carries the word's
label; special tokens and later sub-tokens get -100 (ignored by the loss), or, with
`label_all_tokens`, the word's I- label. Unlike run_ner.py nothing is truncated: a sentence longer
than `max_length` sub-tokens becomes several windows that share `overlap` sub-tokens of context,
and each word is *owned* (labelled for training, read back at prediction) by exactly one window.

With `context` > 0 (FLERT-style document context) the first window of a sentence is preceded by up to
`context` sub-tokens of the sentences before it in the same document, and its last window is followed
by up to `context` sub-tokens of the sentences after it. The sentence comes first: context only fills
the room its windows leave under `max_length`, split evenly between the two sides. Context sub-tokens
get label -100 and word_index -1, so they are never trained on or scored, and it never crosses a
document boundary (a change of `doc_id`).
"""

import bisect

IGNORE = -100


def plan_windows(subtoken_counts, budget, overlap):
    """Split words into windows of at most `budget` sub-tokens.

    Returns a list of (start, end, own_start, own_end) word indices: the window covers words
    [start, end) and owns [own_start, own_end); owned ranges tile the sentence exactly once.
    A single word longer than the budget gets a window of its own (its sub-tokens are cut later).
    """
    n = len(subtoken_counts)
    spans, start = [], 0
    while start < n:
        end, used = start, 0
        while end < n and used + subtoken_counts[end] <= budget:
            used += subtoken_counts[end]
            end += 1
        end = max(end, start + 1)
        spans.append((start, end))
        if end == n:
            break
        # Step back so the next window starts with up to `overlap` sub-tokens of left context.
        nxt, shared = end, 0
        room = min(overlap, budget - subtoken_counts[end])  # word `end` must still fit next to the context
        while nxt - 1 > start and shared + subtoken_counts[nxt - 1] <= room:
            nxt -= 1
            shared += subtoken_counts[nxt]
        start = nxt
    windows = []
    for i, (s, e) in enumerate(spans):
        # Words in an overlap belong to the window where they sit further from the edge.
        own_start = 0 if i == 0 else (s + spans[i - 1][1]) // 2
        own_end = n if i == len(spans) - 1 else (spans[i + 1][0] + e) // 2
        windows.append((s, e, own_start, own_end))
    return windows


def to_inside(label):
    return "I-" + label[2:] if label.startswith("B-") else label


def word_subtokens(tokenizer, sentences_words):
    """Sub-token ids per word, batched through the fast tokenizer.

    A word the tokenizer maps to nothing (a lone zero-width space or control character) is given
    the unknown token, so it keeps its position, its label and its score.
    """
    encoded = tokenizer(sentences_words, is_split_into_words=True, add_special_tokens=False)
    out = []
    for i, words in enumerate(sentences_words):
        per_word = [[] for _ in words]
        for token_id, word_id in zip(encoded["input_ids"][i], encoded.word_ids(i)):
            per_word[word_id].append(token_id)
        for pieces in per_word:
            if not pieces:
                pieces.append(tokenizer.unk_token_id)
        out.append(per_word)
    return out


def running_text_subtokens(tokenizer, words):
    """Sub-token ids per word from tokenizing the words joined by single spaces, as running text, each
    sub-token given to a word through its character offsets: what `word_subtokens` must agree with.

    A sub-token belongs to the word holding its first non-space character; one of spaces only (byte-level
    BPE's lone `Ġ`, SentencePiece's lone `▁`) marks the start of the word after it.
    """
    text, starts, position = " ".join(words), [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    per_word = [[] for _ in words]
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        visible = [i for i in range(start, end) if not text[i].isspace()]
        at = visible[0] if visible else end
        per_word[bisect.bisect_right(starts, at) - 1].append(token_id)
    return per_word


def special_affixes(tokenizer):
    """The special token ids the tokenizer puts before and after a sequence ([CLS] / [SEP] for BERT)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


def document_context(per_sentence, doc_ids, size):
    """(left, right) sub-token ids per sentence: up to `size` sub-tokens of the sentences just before and
    just after it in the same document (consecutive equal `doc_ids`), in text order."""
    flat = [[token_id for pieces in sentence for token_id in pieces] for sentence in per_sentence]
    left, right = [], []
    for i, doc in enumerate(doc_ids):
        before, j = [], i - 1
        while j >= 0 and doc_ids[j] == doc and len(before) < size:
            before = flat[j] + before
            j -= 1
        after, j = [], i + 1
        while j < len(flat) and doc_ids[j] == doc and len(after) < size:
            after += flat[j]
            j += 1
        left.append(before[len(before) - size:] if len(before) > size else before)
        right.append(after[:size])
    return left, right


def split_room(room, want_left, want_right):
    """Sub-tokens of context (left, right) that fit in `room`: each side up to half, or more if the other
    side needs less."""
    left = min(want_left, max(room // 2, room - want_right))
    return left, min(want_right, room - left)


def build_examples(batch, tokenizer, label2id, max_length, overlap, label_all_tokens, context=0):
    """`datasets.map(batched=True)` function: sentences in, one row per window out.

    With `context` > 0 the batch needs a `doc_id` column and must hold whole documents (prepare passes
    the whole split as one batch): a sentence's context comes from its neighbours in the batch.
    """
    prefix, suffix = special_affixes(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    out = {"input_ids": [], "labels": [], "word_index": [], "sentence_id": [], "length": []}
    per_sentence = word_subtokens(tokenizer, batch["words"])
    n = len(per_sentence)
    lefts, rights = document_context(per_sentence, batch["doc_id"], context) if context else ([[]] * n, [[]] * n)
    for sentence_id, tags, pieces, left, right in zip(batch["sentence_id"], batch["tags"], per_sentence,
                                                      lefts, rights):
        counts = [min(len(p), budget) for p in pieces]
        for start, end, own_start, own_end in plan_windows(counts, budget, overlap):
            ids, labels, word_index = [], [], []
            for w in range(start, end):
                owned = own_start <= w < own_end
                for k, token_id in enumerate(pieces[w][:budget]):
                    ids.append(token_id)
                    if not owned:
                        labels.append(IGNORE)
                    elif k == 0:
                        labels.append(label2id[tags[w]])
                    else:
                        labels.append(label2id[to_inside(tags[w])] if label_all_tokens else IGNORE)
                    word_index.append(w if owned and k == 0 else -1)
            if left or right:
                n_left, n_right = split_room(budget - len(ids), len(left) if start == 0 else 0,
                                             len(right) if end == len(pieces) else 0)
                before, after = left[len(left) - n_left:] if n_left else [], right[:n_right]
                ids = before + ids + after
                labels = [IGNORE] * n_left + labels + [IGNORE] * n_right
                word_index = [-1] * n_left + word_index + [-1] * n_right
            # Special tokens carry no label and no word.
            out["input_ids"].append(prefix + ids + suffix)
            out["labels"].append([IGNORE] * len(prefix) + labels + [IGNORE] * len(suffix))
            out["word_index"].append([-1] * len(prefix) + word_index + [-1] * len(suffix))
            out["sentence_id"].append(sentence_id)
            out["length"].append(len(prefix) + len(ids) + len(suffix))
    return out
