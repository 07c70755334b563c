"""Convert a directory of CoNLL files to a parquet dataset laid out as on the Hugging Face Hub: a tokens
column, a ner_tags column whose feature is a ClassLabel (the tags as written: IOB1 stays IOB1), and a
document_id column where the files have -DOCSTART- lines. For trying a dataset source on a corpus you have
as files, and for the check that both give the same prepared data (docs/corpora.md).

    .venv/bin/python tools/conll_to_parquet.py ../shared/data/conll2003 /tmp/conll2003-parquet

Writes <out>/data/<split>-00000-of-00001.parquet for the splits train, validation and test (from
train.txt, valid.txt and test.txt; --files to name others). Set data.dataset.documents=document_id to
keep the documents (prepare.context reads them).
"""

import argparse
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, List, Value

from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.data.conll import read_conll

DEFAULT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


def has_documents(path):
    with open(path, encoding="utf-8") as f:
        return any(line.startswith("-DOCSTART-") for line in f)


def convert(source, out, files):
    """Write one parquet file per split; returns {split: sentences}."""
    sentences = {split: read_conll(source / name) for split, name in files.items()}
    names = sorted({tag for split in sentences.values() for s in split for tag in s.tags} - {"O"})
    features = {"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=["O"] + names))}
    # read_conll numbers documents from 0 in each file; without -DOCSTART- lines there are none to keep.
    documents = all(has_documents(source / name) for name in files.values())
    if documents:
        features["document_id"] = Value("int32")
    for split, split_sentences in sentences.items():
        columns = {"tokens": [s.words for s in split_sentences], "ner_tags": [s.tags for s in split_sentences]}
        if documents:
            columns["document_id"] = [s.doc_id for s in split_sentences]
        dataset = Dataset.from_dict(columns, features=Features(features))
        (out / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return {split: len(s) for split, s in sentences.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="directory of the CoNLL files")
    parser.add_argument("out", type=Path, help="directory for the parquet dataset (must not exist)")
    parser.add_argument("--files", nargs="+", metavar="SPLIT=FILE",
                        help="split name and file, e.g. train=eng.train validation=eng.testa test=eng.testb")
    args = parser.parse_args()
    with exit_on_user_error():
        bad = [f for f in args.files or [] if "=" not in f]
        if bad:
            raise UserError(f"--files {' '.join(bad)}: expected SPLIT=FILE, e.g. validation=eng.testa")
        files = dict(f.split("=", 1) for f in args.files) if args.files else DEFAULT_FILES
        if args.out.exists():
            raise UserError(f"{args.out} exists; name a new directory")
        counts = convert(args.source, args.out, files)
    print(", ".join(f"{split}: {n} sentences" for split, n in counts.items()) + f" -> {args.out}/data")


if __name__ == "__main__":
    main()
