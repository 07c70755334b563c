"""What bench/inference.py, bench/load.py and bench/batching_load.py share: a model server as a child process
(nerpipe/predict/server_process.py: `mlflow models serve` or `nerpipe serve`), the CoNLL test sentences as raw
text, and `nerpipe predict`'s code in process as the reference answer.

    with serve_model("runs:/<run_id>/model", Path("serve.log")) as server:
        requests.post(f"{server.url}/invocations", json={"inputs": ["John Smith flew to Paris."]})
"""

import argparse

from nerpipe.predict.server_process import BIN, Server, raw_texts, serve_batched, serve_model  # noqa: F401 (bench/ imports them)


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
