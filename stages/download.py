"""Stage `download`: fetch the corpus's train/valid/test splits and verify them against data.sha256.

    python stages/download.py --out data/raw

data.source is a URL (default: the original CoNLL-2003 English files) or a local directory of CoNLL
files, whose names come from data.remote_files and data.local_files; or a Hugging Face dataset
(hf://datasets/<owner>/<name>@<commit sha>, a save_to_disk directory, a directory of parquet files),
whose splits and columns come from data.dataset and which is written out as CoNLL text. Every split
must be there and match its sha256 before anything is written: on any failure an earlier good download
is kept as it was. Except for a URL a sha256 of "" is not checked; the one found is recorded in
<out>/sources.json, which prepare copies into its stats.json and training into the MLflow run's tags.
"""

import argparse
from pathlib import Path

from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import load_params
from nerpipe.data.fetch import fetch_corpus
from nerpipe.data.hf_dataset import fetch_dataset, is_dataset_source


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for train.txt, valid.txt, test.txt and sources.json")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        data = load_params(args.params).data
        fetch = fetch_dataset if is_dataset_source(data.source) else fetch_corpus
        sources = fetch(data, args.out)
    for split, source in sources.items():
        check = ("sha256 verified" if data.sha256[split]
                 else f"sha256 {source['sha256']} recorded, not checked: data.sha256.{split} is empty")
        origin = source.get("file") or f"{data.source} split {source['split']!r}"
        print(f"{split}: {origin} -> {args.out / f'{split}.txt'} ({check})")


if __name__ == "__main__":
    main()
