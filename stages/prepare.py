"""Stage `prepare`: parse CoNLL, convert IOB1 to IOB2, tokenize and align labels, window long sentences.

    python stages/prepare.py --raw data/raw --out data/prepared

Writes unpadded Arrow datasets per split, labels.json (written once, read by every later stage)
and stats.json. See nerpipe/prepared.py for the layout.
"""

import argparse
import time
from pathlib import Path

from nerpipe.atomic import atomic_path, write_json
from nerpipe.conll import iob1_to_iob2, label_list, read_conll
from nerpipe.errors import UserError, exit_on_user_error
from nerpipe.modeling import load_config, load_tokenizer
from nerpipe.params import SPLITS, load_params
from nerpipe.preparation import prepare_split


def check_max_length(max_length, model_name, tokenizer):
    # The tokenizer's model_max_length is the usable bound where position ids are offset: RoBERTa's
    # 514 position embeddings take 512 tokens. Tokenizers that do not know say 1e30.
    bounds = [getattr(load_config(model_name), "max_position_embeddings", None), tokenizer.model_max_length]
    limit = min((b for b in bounds if b and b < 1_000_000), default=None)
    if limit and max_length > limit:
        raise UserError(f"prepare.max_length: {max_length} exceeds what model {model_name!r} supports "
                        f"({limit} positions); set prepare.max_length <= {limit}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="directory with train.txt, valid.txt, test.txt")
    parser.add_argument("--out", type=Path, required=True, help="directory for the prepared datasets")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    with exit_on_user_error():
        params = load_params(args.params)
        tokenizer = load_tokenizer(params.model.name)
        check_max_length(params.prepare.max_length, params.model.name, tokenizer)
        started = time.perf_counter()
        sentences = {split: read_conll(args.raw / f"{split}.txt") for split in SPLITS}
        if params.prepare.max_train_sentences:
            sentences["train"] = sentences["train"][:params.prepare.max_train_sentences]
        for split_sentences in sentences.values():
            for s in split_sentences:
                s.tags = iob1_to_iob2(s.tags)
        labels = label_list(s.tags for split_sentences in sentences.values() for s in split_sentences)
        with atomic_path(args.out, is_dir=True) as tmp:
            stats = {split: prepare_split(sentences[split], tokenizer, labels, params.prepare, tmp / split)
                     for split in SPLITS}
            write_json(tmp / "labels.json", labels)
            write_json(tmp / "stats.json", {"labels": labels, "splits": stats,
                                            "seconds": round(time.perf_counter() - started, 2)})
        for split, s in stats.items():
            print(f"{split}: {s['sentences']} sentences, {s['words']} words, {s['windows']} windows "
                  f"({s['sentences_windowed']} sentences windowed), {s['subtokens_per_word']} sub-tokens/word")


if __name__ == "__main__":
    main()
