"""Tag raw text with the trained model: entities with character offsets, type and score.

    nerpipe predict "John Smith flew to Paris." "Reuters reported it."    # each argument is one text
    nerpipe predict --input news.txt --format table                       # one text per line of a file
    cat news.txt | nerpipe predict --model runs:/<run_id>/model > entities.jsonl

Each text is split into CoNLL-style words (nerpipe/predict/words.py), windowed exactly as the prepare
stage does (with the settings logged with an MLflow model, else prepare.max_length and
prepare.window_overlap from params.yaml when present) and labelled by the code evaluate runs: a word
gets the tag of its first sub-token. IOB2 tags become entities
as conlleval reads them; an entity's score is the mean of its words' softmax scores.

A model trained with document context (prepare.context > 0, recorded with an MLflow model) reads each
text as one document: split into sentences after `.`, `!` and `?`, each tagged with its neighbours as
context, as in training and evaluation. --context overrides it (0: each text one sequence).
"""

import argparse
import sys
from pathlib import Path

from nerpipe.core.errors import UserError, exit_on_user_error
from nerpipe.core.params import Params, PrepareParams, load_params
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


def window_settings(args, logged=None):
    """(max_length, window_overlap, batch_size, bf16 setting), each from the first that gives it: the flags,
    the settings logged with an MLflow model (`logged`), params.yaml (when present), the defaults."""
    params_path = args.params or (Path("params.yaml") if Path("params.yaml").is_file() else None)
    params = load_params(params_path) if params_path else Params()
    logged = logged or {}
    prepare = PrepareParams(
        max_length=_either(args.max_length, logged.get("max_length", params.prepare.max_length)),
        window_overlap=_either(args.window_overlap, logged.get("window_overlap", params.prepare.window_overlap)))
    problems = prepare.problems()
    if problems:
        raise UserError("; ".join(p.replace("prepare.max_length", "--max-length")
                                  .replace("prepare.window_overlap", "--window-overlap") for p in problems))
    batch_size = _either(args.batch_size, params.evaluate.batch_size)
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    bf16 = _either(args.bf16, logged.get("bf16", params.train.bf16))
    return prepare.max_length, prepare.window_overlap, batch_size, bf16


def context_setting(args, logged=None):
    """Sub-tokens of document context: --context, else what an MLflow model logged, else prepare.context of
    params.yaml (when present), else 0."""
    params_path = args.params or (Path("params.yaml") if Path("params.yaml").is_file() else None)
    params = load_params(params_path) if params_path else Params()
    context = _either(args.context, (logged or {}).get("context", params.prepare.context))
    if context < 0:
        raise UserError(f"--context: must be >= 0 (0: each text is one sequence), got {context}")
    window_settings(args, logged)  # and the window flags are checked too
    return context


def _either(flag, param):
    return param if flag is None else flag


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
    parser.add_argument("--params", type=Path, help="params.yaml to read prepare.* and evaluate.batch_size from "
                                                    "(default: ./params.yaml when present)")
    parser.add_argument("--max-length", type=int, help="sub-tokens per window (default: what an MLflow model "
                                                       "logged, else prepare.max_length)")
    parser.add_argument("--window-overlap", type=int, help="sub-tokens shared by neighbouring windows (default: "
                                                            "what an MLflow model logged, else prepare.window_overlap)")
    parser.add_argument("--context", type=int, help="sub-tokens of document context around each sentence of a "
                                                     "text (default: what an MLflow model logged, else "
                                                     "prepare.context; 0: each text is one sequence)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: evaluate.batch_size)")
    parser.add_argument("--bf16", choices=["auto", "on", "off"],
                        help="bf16 autocast (default: what an MLflow model logged, else train.bf16; 'auto' = CUDA "
                             "or a CPU with avx512_bf16/AMX); 'off' gives scores identical to an fp32 transformers "
                             "pipeline")


def run(args):
    # Imported here so that `nerpipe --help` and other commands do not pay for torch and transformers.
    from transformers.utils import logging as transformers_logging

    from nerpipe.model.families import position_limit
    from nerpipe.predict.model_source import load_trained_model
    from nerpipe.predict.output import write_predictions
    from nerpipe.predict.text import CHUNK_CHARS, predict_lines, ready_to_tag

    transformers_logging.disable_progress_bar()  # "Loading weights" bars; ours is the one that matters
    with exit_on_user_error():
        context_setting(args)  # bad flags or params fail before the model loads
        texts = read_texts(args)
        model, tokenizer, logged = load_trained_model(args.model)
        max_length, overlap, batch_size, bf16_setting = window_settings(args, logged)
        context = context_setting(args, logged)
        positions, _ = position_limit(model.config)  # RoBERTa's 514 embeddings take 512 tokens
        if positions and max_length > positions:
            raise UserError(f"max_length {max_length} exceeds the model's {positions} positions; "
                            f"use --max-length {positions} or less")
        device, bf16 = ready_to_tag(model, tokenizer, args.model, bf16_setting)
        fmt = args.format if args.format != "auto" else ("table" if sys.stdout.isatty() else "jsonl")
        predictions = predict_lines(model, tokenizer, texts, max_length, overlap, batch_size, device, bf16,
                                    progress=sum(map(len, texts)) > CHUNK_CHARS, context=context)
        write_predictions(predictions, fmt, sys.stdout)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nerpipe predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
