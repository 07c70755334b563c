"""The MLflow model the train stage logs, served on one machine by mosec: its compiled (Rust) HTTP front end
takes the requests and batches them dynamically; Python workers run two stages (docs/serving.md).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db nerpipe serve --model runs:/<run_id>/model --port 8000
    curl -s localhost:8000/invocations -H 'Content-Type: application/json' -d '{"inputs": ["John Smith flew to Paris."]}'

POST /invocations with {"inputs": [text, ...]} answers {"predictions": [[entity, ...], ...]}, as `mlflow models
serve` does. The stages of that route:

1. ParseRequest, one request at a time: checks the body (nerpipe.predict.served_requests.parse_inputs). mosec
   gives a whole batch one status, so a bad request must get its 400 here, before it joins a batch.
2. TagEntities, `--replicas` processes, each loading the model once before the server opens its port: up to
   `--max-batch-size` requests that waited at most `--batch-wait-ms` go to the model in one predict call.

mosec binds the port only once every stage has a worker running, so GET / answers 200 (the readiness probe)
only after a model is loaded and warmed up. GET /metrics is mosec's Prometheus record, with the requests per
model call (`nerpipe_batch_size`).
"""

import os
import time

from mosec import Worker
from mosec.errors import DecodingError

from nerpipe.predict.served_requests import BadRequest, compact_json, parse_inputs, tag_together

MODEL_ENV = "NERPIPE_SERVE_MODEL"
THREADS_ENV = "NERPIPE_SERVE_THREADS"
"""How `nerpipe serve` tells the model workers (started by mosec, without arguments) what to load and how many
torch threads to use."""


class ParseRequest(Worker):
    def deserialize(self, data):
        try:
            return parse_inputs(data)
        except BadRequest as err:
            raise DecodingError(str(err)) from None  # 400 "decoding error: <what is wrong>"

    def forward(self, data):
        return data


class TagEntities(Worker):
    def __init__(self):
        super().__init__()
        import mlflow.pyfunc
        import torch

        # Each replica gets its share of the cores: torch's OpenMP threads spin-wait, so more threads than
        # cores (or two replicas on the same cores) slow every pass down.
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
        started = time.perf_counter()
        self.model = mlflow.pyfunc.load_model(os.environ[MODEL_ENV])
        self.model.predict(["John Smith flew to Paris ."])  # first-call costs (oneDNN kernels) before readiness
        print(f"nerpipe serve: replica pid {os.getpid()} ({torch.get_num_threads()} torch thread(s)) loaded "
              f"{os.environ[MODEL_ENV]} in {time.perf_counter() - started:.1f} s", flush=True)

    def forward(self, data):
        # A list of requests' texts; with --max-batch-size 1 mosec hands over one request's texts alone.
        return tag_together(self.model, data) if self.max_batch_size > 1 else tag_together(self.model, [data])[0]

    def serialize(self, data):
        return compact_json({"predictions": data})  # mosec's own is indented
