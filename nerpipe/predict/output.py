"""Write `nerpipe predict` results as JSON lines, a readable table, or CoNLL columns.

- jsonl: one object per input text, in input order, also for texts without entities:
  {"line": 1, "text": "...", "entities": [{"text": "John Smith", "type": "PER", "start": 0, "end": 10,
  "score": 0.9731}]}. Offsets index the text as a Python string (code points); end is exclusive.
- table: a header, then one row per entity: line, start, end, type, score, text.
- conll: `word tag` per word, a blank line after each text (texts without words write nothing):
  the layout of the CoNLL-2003 files, with the predicted IOB2 tag as the last column.
"""

import json

FORMATS = ("jsonl", "table", "conll")


def entity_records(prediction):
    """A LinePrediction's entities as jsonl and the MLflow model give them: scores rounded to 4 digits."""
    return [{**e, "score": round(e["score"], 4)} for e in prediction.entities()]


def write_predictions(predictions, fmt, stream):
    """Write an iterable of LinePrediction to `stream` as it is produced (large inputs stream out)."""
    if fmt == "table":
        stream.write(f"{'line':>6} {'start':>6} {'end':>6}  {'type':<5} {'score':>6}  text\n")
    for line_no, prediction in enumerate(predictions, start=1):
        if fmt == "jsonl":
            stream.write(json.dumps({"line": line_no, "text": prediction.text, "entities": entity_records(prediction)},
                                    ensure_ascii=False) + "\n")
        elif fmt == "table":
            for e in prediction.entities():
                text = " ".join(e["text"].split())  # a tab or newline inside an entity would break the row
                stream.write(f"{line_no:>6} {e['start']:>6} {e['end']:>6}  {e['type']:<5} {e['score']:>6.4f}  {text}\n")
        elif fmt == "conll":
            if prediction.spans:
                stream.write("".join(f"{w} {t}\n" for w, t in zip(prediction.words(), prediction.tags)) + "\n")
        else:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
