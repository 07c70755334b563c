"""Stage `download`: fetch the CoNLL-2003 English splits and verify them against data.sha256.

    python stages/download.py --out data/raw

data.source is the original files' URL (default) or a local directory; either way a file whose
sha256 differs from params.yaml is refused and any earlier good copy is kept.
"""

import argparse
from pathlib import Path

from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import SPLITS, load_params
from nerpipe.data.fetch import fetch_split


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for train.txt, valid.txt, test.txt")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        data = load_params(args.params).data
        for split in SPLITS:
            origin = fetch_split(data.source, split, args.out / f"{split}.txt", data.sha256[split])
            print(f"{split}: {origin} -> {args.out / f'{split}.txt'} (sha256 verified)")


if __name__ == "__main__":
    main()
