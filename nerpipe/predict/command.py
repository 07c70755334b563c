"""Tag raw text with the trained model: entities with character offsets, type and score.

    nerpipe predict "John Smith flew to Paris." "Reuters reported it."    # each argument is one text
    nerpipe predict --input news.txt --format table                       # one text per line of a file
    cat news.txt | nerpipe predict --model runs:/<run_id>/model > entities.jsonl

Each text is split into CoNLL-style words (nerpipe/predict/words.py), windowed exactly as the prepare
stage did for the model's training (its prepare.max_length and prepare.window_overlap, which the model
directory records in nerpipe_model.json) and labelled by the code evaluate runs: a word gets the tag of
its first sub-token. IOB2 tags become entities as conlleval reads them; an entity's score is the mean of
its words' softmax scores. No params.yaml is read: the model says how to use it, and flags override it.

A model trained with document context (prepare.context > 0) reads each text as one document: split into
sentences after `.`, `!` and `?`, each tagged with its neighbours as context, as in training and
evaluation. --context overrides it (0: each text one sequence).
"""

import argparse
import sys
from pathlib import Path

from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.core.params import EvaluateParams, PrepareParams
from nerpipe.model.description import RETRAIN, no_settings
from nerpipe.predict.output import FORMATS


def read_texts(args):
    """The texts to tag: the arguments, else the lines of --input, else the lines of stdin."""
    if args.texts and args.input:
        raise UserError("give texts as arguments or --input FILE, not both")
    if args.texts:
        return list(args.texts)
    if args.input and str(args.input) != "-":
        try:
            raw, name = args.input.read_bytes(), str(args.input)
        except OSError as err:
            raise UserError(f"{args.input}: cannot read it ({err.strerror})") from None
    else:
        if sys.stdin.isatty():
            print("reading texts from stdin, one per line (end with Ctrl-D)", file=sys.stderr)
        raw, name = sys.stdin.buffer.read(), "stdin"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UserError(f"{name}:{line}: byte 0x{raw[err.start]:02x} is not valid UTF-8; re-encode the input "
                        "as UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another one
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def model_settings(args, description, source):
    """{max_length, window_overlap, context, bf16}: each from its flag, else from the model's own description
    (nerpipe_model.json), never from a params.yaml. A model without one needs every flag."""
    flags = {"max_length": args.max_length, "window_overlap": args.window_overlap, "context": args.context,
             "bf16": args.bf16}
    missing = [key for key, value in flags.items() if value is None and key not in (description or {})]
    if missing:
        raise UserError(f"model {source!r}: {no_settings(description)}. {RETRAIN.capitalize()}, or give "
                        f"{' '.join(FLAG_OF[key] for key in missing)}")
    settings = {key: description[key] if value is None else value for key, value in flags.items()}
    check_settings(settings)
    return settings


FLAG_OF = {"max_length": "--max-length", "window_overlap": "--window-overlap", "context": "--context",
           "bf16": "--bf16"}


def check_settings(settings):
    """The window settings' problems, by the names of their flags; a missing one is not checked."""
    prepare = PrepareParams(**{k: settings[k] for k in ("max_length", "window_overlap", "context")
                               if settings.get(k) is not None})
    if settings.get("max_length") is None or settings.get("window_overlap") is None:
        prepare.window_overlap = 0  # only one of the two known: its pair cannot be checked yet
    problems = prepare.problems()
    if problems:
        raise UserError("; ".join(p.replace("prepare.max_length", "--max-length")
                                  .replace("prepare.window_overlap", "--window-overlap")
                                  .replace("prepare.context", "--context") for p in problems))


def batch_size(args):
    """Windows per forward pass: --batch-size, else evaluate.batch_size's default."""
    size = EvaluateParams.batch_size if args.batch_size is None else args.batch_size
    if size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {size}")
    return size


def add_arguments(parser):
    parser.add_argument("texts", nargs="*", metavar="TEXT",
                        help="texts to tag (default: the lines of --input or stdin)")
    parser.add_argument("-i", "--input", type=Path,
                        help="file with one text (sentence or document) per line; - is stdin")
    parser.add_argument("-m", "--model", default="data/model",
                        help="trained model directory or MLflow model URI, e.g. runs:/<run_id>/model "
                             "(default: data/model)")
    parser.add_argument("-f", "--format", choices=["auto", *FORMATS], default="auto",
                        help="jsonl: one JSON object per text; table: one row per entity; conll: `word tag` "
                             "lines (default auto: table on a terminal, jsonl otherwise)")
    parser.add_argument("--max-length", type=int, help="sub-tokens per window (default: the model's, from its "
                                                       "nerpipe_model.json: prepare.max_length of its training)")
    parser.add_argument("--window-overlap", type=int, help="sub-tokens shared by neighbouring windows (default: "
                                                            "the model's prepare.window_overlap)")
    parser.add_argument("--context", type=int, help="sub-tokens of document context around each sentence of a "
                                                     "text (default: the model's prepare.context; 0: each text is "
                                                     "one sequence)")
    parser.add_argument("--batch-size", type=int, help=f"windows per forward pass (default: "
                                                       f"{EvaluateParams.batch_size})")
    parser.add_argument("--bf16", choices=["auto", "on", "off"],
                        help="bf16 autocast (default: the model's train.bf16; 'auto' = CUDA or a CPU with "
                             "avx512_bf16/AMX); 'off' gives scores identical to an fp32 transformers pipeline")


def run(args):
    # Imported here so that `nerpipe --help` and other commands do not pay for torch and transformers.
    from transformers.utils import logging as transformers_logging

    from nerpipe.model.families import position_limit
    from nerpipe.predict.model_source import load_trained_model
    from nerpipe.predict.output import write_predictions
    from nerpipe.predict.text import CHUNK_CHARS, predict_lines, ready_to_tag

    transformers_logging.disable_progress_bar()  # "Loading weights" bars; ours is the one that matters
    with exit_on_user_error():
        check_settings(vars(args))  # bad flags fail before the model loads
        windows_per_pass = batch_size(args)
        texts = read_texts(args)
        model, tokenizer, description = load_trained_model(args.model)
        settings = model_settings(args, description, args.model)
        max_length = settings["max_length"]
        positions, _ = position_limit(model.config)  # RoBERTa's 514 embeddings take 512 tokens
        if positions and max_length > positions:
            raise UserError(f"max_length {max_length} exceeds the model's {positions} positions; "
                            f"use --max-length {positions} or less")
        device, bf16 = ready_to_tag(model, tokenizer, args.model, settings["bf16"])
        fmt = args.format if args.format != "auto" else ("table" if sys.stdout.isatty() else "jsonl")
        predictions = predict_lines(model, tokenizer, texts, max_length, settings["window_overlap"], windows_per_pass,
                                    device, bf16, progress=sum(map(len, texts)) > CHUNK_CHARS,
                                    context=settings["context"])
        write_predictions(predictions, fmt, sys.stdout)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nerpipe predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
