"""Read and write CoNLL-format files: validate every line, keep document ids, convert tags to IOB2.

Format (CoNLL-2003 and the many corpora written like it): one token per line, two or more columns
separated by spaces or tabs, the word first and the NER tag last; a blank line ends a sentence;
`-DOCSTART-` lines, where present, start documents and are not sentences. CRLF line endings, extra
blank lines and a UTF-8 byte-order mark are accepted.

Tags follow IOB1 (CoNLL-2003's own), IOB2 or BIOES (also called IOBES). The entity types are whatever
the data holds (PER, creative-work, WORK_OF_ART): nothing here lists them.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from nerpipe.core.errors import UserError

# O, or a scheme prefix and an entity type: letters and digits, words joined by hyphens or underscores.
TAG_PATTERN = re.compile(r"^(?:O|[BIES]-[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*)$")
TAG_EXPECTED = ("expected O, or B-, I-, E- or S- (IOB1, IOB2 or BIOES) and an entity type of letters, digits, "
                "hyphens or underscores (B-PER, I-creative-work)")


@dataclass
class Sentence:
    words: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    doc_id: int = 0
    line: int = 0
    """1-based line number of the sentence's first token in its file."""


def _decode(raw, where, lineno):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{where(lineno)}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not "
                        "valid UTF-8; re-encode the file as UTF-8") from None


def read_conll(path, origin=None):
    """Parse one CoNLL file into sentences, tags as written; raise UserError naming file:line on the
    first bad line. `origin`: the file `path` was copied from, named too since that is the one to fix."""
    path = Path(path)

    def where(lineno=None):
        at = f":{lineno}" if lineno else ""
        return f"{path}{at} (copied from {origin}{at})" if origin else f"{path}{at}"

    try:
        raw_lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line does not start another one
    sentences, current, doc_id, n_columns = [], Sentence(), -1, None
    for lineno, raw in enumerate(raw_lines, start=1):
        line = _decode(raw, where, lineno).rstrip("\r\n")
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 BOM would otherwise turn -DOCSTART- into a word
        columns = line.split()
        if not columns:
            if current.words:
                sentences.append(current)
            current = Sentence(doc_id=max(doc_id, 0))
            continue
        if columns[0] == "-DOCSTART-":
            doc_id += 1
            current.doc_id = doc_id
            continue
        if n_columns is None:
            n_columns = len(columns)
        if len(columns) < 2 or len(columns) != n_columns:
            raise UserError(f"{where(lineno)}: found {len(columns)} column(s) in {line!r}; expected "
                            f"{max(n_columns, 2)} like the file's first token line (word ... NER-tag)")
        tag = columns[-1]
        if not TAG_PATTERN.match(tag):
            raise UserError(f"{where(lineno)}: unknown NER tag {tag!r} in the last column; {TAG_EXPECTED}")
        if not current.words:
            current.line, current.doc_id = lineno, max(doc_id, 0)
        current.words.append(columns[0])
        current.tags.append(tag)
    if current.words:
        sentences.append(current)
    check_split_usable(sentences, where())
    return sentences


def check_split_usable(sentences, where):
    if not sentences:
        raise UserError(f"{where}: no sentences found; expected CoNLL lines 'word ... NER-tag' (the word first, "
                        "the tag last)")
    if all(tag == "O" for s in sentences for tag in s.tags):
        raise UserError(f"{where}: {len(sentences)} sentences but not one entity tag; is this the right file?")


def iob1_to_iob2(tags):
    """IOB1 marks B- only between two adjacent entities of one type; IOB2 starts every entity with B-.

    Idempotent: a sequence already in IOB2 comes back unchanged.
    """
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = out[i - 1] if i else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


def to_iob2(tags):
    """Any of IOB1, IOB2 and BIOES to IOB2: S-X -> B-X and E-X -> I-X (S- and E- exist only in BIOES,
    where B- and I- already mean what they mean in IOB2), then IOB1's entity-initial I- -> B-.

    No scheme needs telling apart first: each step leaves the others' tags unchanged.
    """
    return iob1_to_iob2(["B-" + t[2:] if t[:2] == "S-" else "I-" + t[2:] if t[:2] == "E-" else t for t in tags])


def label_list(tag_sequences):
    """O first, then B-/I- per entity type in sorted order: a stable id mapping for the model config."""
    types = sorted({tag[2:] for tags in tag_sequences for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]


DOCSTART_LINE = "-DOCSTART- O O"  # as CoNLL-2003 writes it, in the three columns; conlleval skips it


def format_predictions(sentences_words, gold_tags, pred_tags, doc_ids=None):
    """CoNLL text `word gold pred`, a blank line after each sentence: the input conlleval reads. Where
    `doc_ids` (one per sentence) name more than one document, a `-DOCSTART-` line and a blank line open
    each document, as in the corpus, so that the document bootstrap can be computed from the file."""
    documents = doc_ids is not None and len(set(doc_ids)) > 1
    lines, previous = [], None
    for i, (words, gold, pred) in enumerate(zip(sentences_words, gold_tags, pred_tags)):
        if documents and (i == 0 or doc_ids[i] != previous):
            lines += [DOCSTART_LINE, ""]
            previous = doc_ids[i]
        lines += [f"{w} {g} {p}" for w, g, p in zip(words, gold, pred)]
        lines.append("")
    return "\n".join(lines) + "\n"


def read_predictions(path):
    """Read a `word gold pred` file back: (words, gold, pred), each a list of per-sentence lists."""
    return parse_predictions(Path(path).read_text(encoding="utf-8"))


def parse_predictions(text):
    """(words, gold, pred) of the text of a `word gold pred` file (read from a file or a revision)."""
    return parse_prediction_documents(text)[:3]


def parse_prediction_documents(text):
    """(words, gold, pred, doc_ids) of the text of a `word gold pred` file: doc_ids numbers the
    `-DOCSTART-` documents of each sentence (0, 1, ...), None in a file without such lines."""
    words, gold, pred, doc_ids, sentence, doc_id = [], [], [], [], [], -1
    for line in list(text.splitlines()) + [""]:
        if line.split()[:1] == ["-DOCSTART-"]:
            doc_id += 1
        elif line.strip():
            sentence.append(line.split())
        elif sentence:
            words.append([c[0] for c in sentence])
            gold.append([c[-2] for c in sentence])
            pred.append([c[-1] for c in sentence])
            doc_ids.append(max(doc_id, 0))
            sentence = []
    return words, gold, pred, (doc_ids if doc_id >= 0 else None)
