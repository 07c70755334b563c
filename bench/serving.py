"""What bench/inference.py, bench/load.py and bench/batching_load.py share: a model server as a child process
(nerpipe/predict/server_process.py: `mlflow models serve` or `nerpipe serve`), the CoNLL test sentences as raw
text, and `nerpipe predict` as the reference answer (as a command, or its code in process).

    with serve_model("runs:/<run_id>/model", Path("serve.log")) as server:
        requests.post(f"{server.url}/invocations", json={"inputs": ["John Smith flew to Paris."]})
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from nerpipe.data.conll import read_conll
from nerpipe.predict.server_process import BIN, Server, serve_batched, serve_model  # noqa: F401 (bench/ imports them here)


def raw_texts(conll_file):
    """Each sentence of a CoNLL file as raw text: its words joined by single spaces."""
    return [" ".join(sentence.words) for sentence in read_conll(conll_file)]


def nerpipe_predict(model, texts, *flags, env=None):
    """The entities `nerpipe predict --format jsonl` gives for each text (one text per line of a file)."""
    assert not any("\n" in text or "\r" in text for text in texts), "one text per line"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
        out = subprocess.run([str(BIN / "nerpipe"), "predict", "--model", str(model), "--input", str(path),
                              "--format", "jsonl", *flags], capture_output=True, text=True, env=env, cwd=tmp)
    if out.returncode != 0:
        raise RuntimeError(f"nerpipe predict exited {out.returncode}:\n{out.stderr[-3000:]}")
    return [json.loads(line)["entities"] for line in out.stdout.splitlines()]


class NerpipeTagger:
    """`nerpipe predict --model MODEL`'s code in process, the model loaded once: called with a list of texts,
    the entities the command prints for them given together (one --input file), bit for bit."""

    def __init__(self, model):
        from nerpipe.predict.command import add_arguments, batch_size, model_settings
        from nerpipe.predict.model_source import load_trained_model
        from nerpipe.predict.text import ready_to_tag

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(["--model", str(model)])
        self.model, self.tokenizer, description = load_trained_model(args.model)
        self.settings, self.batch_size = model_settings(args, description, args.model), batch_size(args)
        self.device, self.bf16 = ready_to_tag(self.model, self.tokenizer, args.model, self.settings["bf16"])

    def __call__(self, texts):
        from nerpipe.predict.output import entity_records
        from nerpipe.predict.text import predict_lines

        return [entity_records(p) for p in predict_lines(
            self.model, self.tokenizer, texts, self.settings["max_length"], self.settings["window_overlap"],
            self.batch_size, self.device, self.bf16, context=self.settings["context"])]
