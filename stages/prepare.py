"""Stage `prepare`: parse CoNLL, convert IOB1/BIOES to IOB2, tokenize and align labels, window long sentences.

    python stages/prepare.py --raw data/raw --out data/prepared --timings reports/timings/prepare.json

Writes unpadded Arrow datasets per split, labels.json (the entity types found in the data, written
once, read by every later stage) and stats.json (with download's sources.json: where each split came
from and its sha256). See nerpipe/data/prepared.py for the layout.
"""

import argparse
import time
from pathlib import Path

from nerpipe.core.atomic import write_json
from nerpipe.core.errors import exit_on_user_error
from nerpipe.core.params import SPLITS, load_params
from nerpipe.data.fetch import read_sources
from nerpipe.data.prepare import prepare_corpus
from nerpipe.model.loading import check_max_length, load_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="download's output: train.txt, valid.txt, test.txt, "
                        "sources.json")
    parser.add_argument("--out", type=Path, required=True, help="directory for the prepared datasets")
    parser.add_argument("--timings", type=Path, help="JSON file for the stage's wall time (none if not given)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        params = load_params(args.params)
        tokenizer = load_tokenizer(params.model.name)
        check_max_length(params.prepare.max_length, params.model.name, tokenizer)
        started = time.perf_counter()  # the corpus work: parse, tokenize, align, write
        stats = prepare_corpus({split: args.raw / f"{split}.txt" for split in SPLITS}, tokenizer, params.prepare,
                               args.out, sources=read_sources(args.raw))
        if args.timings:
            write_json(args.timings, {"seconds": round(time.perf_counter() - started, 2)})
        for split, s in stats.items():
            print(f"{split}: {s['sentences']} sentences, {s['words']} words, {s['windows']} windows "
                  f"({s['sentences_windowed']} sentences windowed), {s['subtokens_per_word']} sub-tokens/word")


if __name__ == "__main__":
    main()
