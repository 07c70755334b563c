"""Inference throughput of the trained model on the CoNLL test sentences as raw text (words joined by
spaces), by every path that serves it, and by transformers.pipeline for comparison:

  - `nerpipe predict --input FILE --format jsonl` (a process: start-up and model loading included, and
    also given apart), in the precision train.bf16 says (bf16 autocast on a CPU with avx512_bf16/AMX)
    and with --bf16 off
  - the MLflow model loaded with mlflow.pyfunc.load_model, in process: one predict call with every sentence
  - `mlflow models serve`: one client, one request after the other, with 1 and with 64 sentences per request
  - transformers.pipeline("token-classification", aggregation_strategy="first") on the model's
    save_pretrained directory, at the best of several batch sizes (picked on the first --pick sentences),
    in fp32 (its default) and under the same bf16 autocast as nerpipe

    PYTHONPATH=. MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python -m bench.inference \\
        --model runs:/<run_id>/model --out bench/results/inference.json

Each path's answers are compared with `nerpipe predict`'s, text by text: identical, the same entities
(types and offsets) with scores apart by at most "max_score_gap", or other entities. In bf16 a text's
scores depend a little on which other texts share its forward pass (see BENCHMARKS.md). The pipeline
is only counted for the same entities: it splits words at every punctuation character (U.S. is three).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from bench import inputs
from tests.server_process import BIN, raw_texts, serve_model

PIPELINE_BATCH_SIZES = (1, 8, 32, 64, 128)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def nerpipe_predict_rows(model_dir, texts, tmp):
    """(rows, entities of the default precision)."""
    path, one = Path(tmp) / "test.txt", Path(tmp) / "one.txt"
    path.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
    one.write_text(texts[0] + "\n", encoding="utf-8")
    rows, entities = [], None
    for flags, label in (((), "nerpipe predict (train.bf16: auto)"),
                         (("--bf16", "off"), "nerpipe predict --bf16 off")):
        def run(source):
            command = [str(BIN / "nerpipe"), "predict", "--model", str(model_dir), "--input", str(source),
                       "--format", "jsonl", *flags]
            return subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp).stdout
        _, startup = timed(lambda: run(one))
        out, seconds = timed(lambda: run(path))
        if not flags:
            entities = [json.loads(line)["entities"] for line in out.splitlines()]
        rows.append({"path": label, "batch": "file", "seconds": seconds, "startup_seconds": startup,
                     "sentences_per_s": len(texts) / seconds,
                     "sentences_per_s_after_startup": len(texts) / (seconds - startup)})
    return rows, entities


def pyfunc_row(model_dir, texts):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    model.predict(texts[:64])  # warm-up: first-call costs (oneDNN kernels, lazy imports)
    predictions, seconds = timed(lambda: model.predict(texts))
    return {"path": "mlflow.pyfunc in process", "batch": "all", "seconds": seconds,
            "sentences_per_s": len(texts) / seconds}, predictions


def http_rows(model_dir, texts, tmp):
    rows, answers = [], {}
    with serve_model(str(model_dir), Path(tmp) / "serve.log") as server, requests.Session() as session:
        def post(batch):
            response = session.post(f"{server.url}/invocations", json={"inputs": batch}, timeout=600)
            response.raise_for_status()
            return response.json()["predictions"]

        for size in (1, 64):
            post(texts[:size])  # warm-up
            predictions, seconds = timed(lambda: [p for i in range(0, len(texts), size)
                                                  for p in post(texts[i:i + size])])
            answers[size] = predictions
            rows.append({"path": "mlflow models serve, HTTP", "batch": size, "seconds": seconds,
                         "sentences_per_s": len(texts) / seconds})
    return rows, answers


def pipeline_rows(save_pretrained, texts, pick):
    from transformers import pipeline

    tagger = pipeline("token-classification", model=str(save_pretrained), aggregation_strategy="first",
                      device="cpu")
    rows, outputs = [], None
    for label, bf16 in (("transformers.pipeline, first (fp32)", False),
                        ("transformers.pipeline, first, bf16 autocast", True)):
        def run(subset, batch_size):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return tagger(subset, batch_size=batch_size)
        run(texts[:16], 8)  # warm-up
        trial = {bs: timed(lambda: run(texts[:pick], bs))[1] for bs in PIPELINE_BATCH_SIZES}
        best = min(trial, key=trial.get)
        found, seconds = timed(lambda: run(texts, best))
        if not bf16:
            outputs = found
        rows.append({"path": label, "batch": best, "seconds": seconds, "sentences_per_s": len(texts) / seconds,
                     "pick_seconds": {str(bs): s for bs, s in trial.items()}})
    return rows, outputs


def spans(entities):
    return [(e["type"], e["start"], e["end"]) for e in entities]


def compare(name, answers, reference):
    """How `answers` agree with `nerpipe predict`'s, text by text: identical, same spans (types and offsets),
    and the largest score difference where the spans agree."""
    same_spans = [spans(a) == spans(r) for a, r in zip(answers, reference)]
    gaps = [abs(x["score"] - y["score"]) for a, r, same in zip(answers, reference, same_spans) if same
            for x, y in zip(a, r)]
    return {f"{name}_identical": sum(a == r for a, r in zip(answers, reference)),
            f"{name}_same_spans": sum(same_spans), f"{name}_max_score_gap": max(gaps, default=0.0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="MLflow model URI or local MLflow model directory")
    parser.add_argument("--data", help="CoNLL-2003 directory (test.txt is used; default: bench/inputs.py)")
    parser.add_argument("--pick", type=int, default=512, help="sentences to pick the pipeline's batch size on")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import mlflow

    texts = raw_texts(inputs.data_dir(args.data) / "test.txt")
    with tempfile.TemporaryDirectory(prefix="nerpipe-bench-") as tmp:
        model_dir = Path(mlflow.artifacts.download_artifacts(args.model, dst_path=str(Path(tmp) / "download")))
        rows, reference = nerpipe_predict_rows(model_dir, texts, tmp)
        row, predictions = pyfunc_row(model_dir, texts)
        rows.append(row)
        http, answers = http_rows(model_dir, texts, tmp)
        rows += http
        pipe, pipe_out = pipeline_rows(model_dir / "artifacts" / "save_pretrained", texts, args.pick)
        rows += pipe
    checks = {"sentences": len(texts), "entities": sum(map(len, reference)),
              **compare("pyfunc", predictions, reference),
              **{k: v for size, answer in answers.items()
                 for k, v in compare(f"http_{size}", answer, reference).items()},
              "pipeline_same_spans": sum(spans(r) == [(e["entity_group"], e["start"], e["end"]) for e in p]
                                         for r, p in zip(reference, pipe_out))}
    best_pipeline = max(r["sentences_per_s"] for r in rows if r["path"].startswith("transformers"))
    lines = ["| path | batch | seconds | sentences/s | vs best pipeline |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        extra = (f" ({r['sentences_per_s_after_startup']:.0f} after {r['startup_seconds']:.1f} s start-up)"
                 if "startup_seconds" in r else "")
        lines.append(f"| {r['path']} | {r['batch']} | {r['seconds']:.1f} | {r['sentences_per_s']:.0f}{extra} | "
                     f"{r['sentences_per_s'] / best_pipeline:.2f}x |")
    print("\n".join(lines))
    print(json.dumps(checks))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "checks": checks, "torch_threads": torch.get_num_threads()},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
