"""The MLflow model the train stage logs, served on Ray Serve, the cluster path (`nerpipe serve --engine ray`):
concurrent requests are batched into one model call (`@serve.batch`), and the service runs as several
replicas, on the machines of a Ray cluster, each loading the model once. On one machine mosec's front end
costs less per request (nerpipe/predict/mosec_service.py, docs/serving.md).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db nerpipe serve --engine ray --model runs:/<run_id>/model --port 8000
    curl -s localhost:8000/invocations -H 'Content-Type: application/json' -d '{"inputs": ["John Smith flew to Paris."]}'

The HTTP interface is `mlflow models serve`'s: POST /invocations with {"inputs": [text, ...]} answers
{"predictions": [[entity, ...], ...]}, GET /ping answers 200. Ray Serve routes /ping to a replica only once
one is running, that is once its model is loaded: the readiness probe. GET /batches is the record of the
replica that answers: {"pid": its process id, "batches": {requests per model call: number of calls}}.

A batch is the texts of every request waiting (up to max_batch_size requests, waiting at most
batch_wait_s for more), given to the model's predict together, in one call: nerpipe's prediction code cuts
them into windows and runs the windows longest first, by token budget (nerpipe.data.batching.sorted_batches),
so texts of similar length share a forward pass and padding stays small.
"""

import asyncio
import logging
import os
import time
from collections import Counter

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from nerpipe.predict.serve_command import BATCH_WAIT_S, MAX_BATCH_SIZE
from nerpipe.predict.served_requests import BadRequest, parse_inputs, tag_together

GRACEFUL_SHUTDOWN_S = 120
"""How long a stopping replica waits for its requests in flight (Ray's default is 20 s, less than a long document
takes on a busy CPU)."""


@serve.deployment(graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
class EntityService:
    def __init__(self, model_uri, max_batch_size=MAX_BATCH_SIZE, batch_wait_s=BATCH_WAIT_S):
        import mlflow.pyfunc

        started = time.perf_counter()
        self.model = mlflow.pyfunc.load_model(model_uri)  # once per replica, before it takes requests
        logging.getLogger("ray.serve").info("replica pid %d loaded %s in %.1f s", os.getpid(), model_uri,
                                            time.perf_counter() - started)
        self.tag_batch.set_max_batch_size(max_batch_size)
        self.tag_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.batches = Counter()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def tag_batch(self, requests_texts):
        """One model call for the texts of every request in the batch: a list of entity lists per request."""
        self.batches[len(requests_texts)] += 1
        # In a thread, so that the replica keeps taking requests (the next batch) while the model runs.
        return await asyncio.to_thread(tag_together, self.model, requests_texts)

    async def __call__(self, request: Request):
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/ping"):
            return JSONResponse({"status": "ready"})
        if request.method == "GET" and path.endswith("/batches"):
            return JSONResponse({"pid": os.getpid(),
                                 "batches": {str(size): n for size, n in sorted(self.batches.items())}})
        if request.method != "POST" or not path.endswith("/invocations"):
            return JSONResponse({"error_code": "NOT_FOUND", "message": f"no {request.method} {path or '/'}: "
                                 "POST /invocations, GET /ping or GET /batches"}, status_code=404)
        try:
            texts = parse_inputs(await request.body())
        except BadRequest as err:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": str(err)}, status_code=400)
        if not texts:
            return JSONResponse({"predictions": []})
        return JSONResponse({"predictions": await self.tag_batch(texts)})


def application(model_uri, replicas=1, cpus_per_replica=1.0, max_batch_size=MAX_BATCH_SIZE, batch_wait_s=BATCH_WAIT_S):
    """The Ray Serve application: `replicas` copies of EntityService, each with `cpus_per_replica` CPUs (its torch
    threads: Ray sets OMP_NUM_THREADS to them)."""
    # Room for a full batch in the model and the next one filling, per replica.
    return EntityService.options(num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
                                 max_ongoing_requests=2 * max_batch_size).bind(model_uri, max_batch_size, batch_wait_s)


def build(args):
    """Ray's own commands take the application from here: `serve run nerpipe.predict.batched_service:build
    model=URI replicas=2` or a `serve deploy` config file with `import_path: nerpipe.predict.batched_service:build`
    and these `args` (model, replicas, cpus_per_replica, max_batch_size, batch_wait_s)."""
    return application(args["model"], int(args.get("replicas", 1)), float(args.get("cpus_per_replica", 1)),
                       int(args.get("max_batch_size", MAX_BATCH_SIZE)), float(args.get("batch_wait_s", BATCH_WAIT_S)))
