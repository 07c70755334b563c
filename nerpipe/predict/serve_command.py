"""Serve the logged MLflow model over HTTP on Ray Serve, batching concurrent requests (docs/serving.md).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db nerpipe serve --model runs:/<run_id>/model --port 8000 --replicas 2
    curl -s localhost:8000/invocations -H 'Content-Type: application/json' -d '{"inputs": ["John Smith flew to Paris."]}'

The same requests and answers as `mlflow models serve` (POST /invocations, GET /ping), but concurrent requests
share a model call (nerpipe/predict/batched_service.py). Without --address a Ray instance of its own starts on
this machine; with --address auto the service joins the Ray cluster this machine belongs to (`ray start`), and
Ray Serve places the replicas on its machines. On SIGTERM or Ctrl-C the service stops taking requests, finishes
the ones in flight, and exits 0.
"""

import os
import signal
import sys
import threading

APP = "nerpipe"
MAX_BATCH_SIZE = 64
"""Requests per model call, at most."""
BATCH_WAIT_S = 0.005
"""How long a batch's first request waits for more. A request that finds the model busy waits for it anyway, so
under load batches fill while the model runs; alone, a request pays at most this."""


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True,
                        help="MLflow model URI (runs:/<run_id>/model, models:/<name>/<version>) or local MLflow "
                             "model directory; runs:/ and models:/ need MLFLOW_TRACKING_URI")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all; default %(default)s)")
    parser.add_argument("-p", "--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    parser.add_argument("--replicas", type=int, default=1, help="copies of the model, each a process that loads it "
                                                                "once (default %(default)s)")
    parser.add_argument("--cpus-per-replica", type=float,
                        help="CPUs Ray reserves for each replica; its torch threads follow (default: this machine's "
                             "CPUs / replicas, at least 1)")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                        help="requests per model call, at most (default %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=BATCH_WAIT_S * 1000,
                        help="how long a batch's first request waits for more (default %(default)s)")
    parser.add_argument("--address", help="Ray cluster to join (auto: the one `ray start` set up on this machine; "
                                          "default: start a Ray instance of its own)")


def run(args):
    import ray
    from ray import serve

    from nerpipe.core.errors import UserError, exit_on_user_error
    from nerpipe.predict.batched_service import application

    with exit_on_user_error():
        for name in ("replicas", "max_batch_size"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
        if args.batch_wait_ms < 0:
            raise UserError(f"--batch-wait-ms: must be >= 0, got {args.batch_wait_ms}")
    cpus = args.cpus_per_replica or max(1.0, (os.cpu_count() or 1) // args.replicas)
    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    ray.init(address=args.address, include_dashboard=False, runtime_env={"env_vars": env} if env else None)
    stop = threading.Event()
    # Ray's workers live in processes of their own; the signal reaches this one, which drains them.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(args.model, args.replicas, cpus, args.max_batch_size, args.batch_wait_ms / 1000),
              name=APP, blocking=False, route_prefix="/")
    print(f"nerpipe serve: ready at http://{args.host}:{args.port}/invocations ({args.replicas} replica(s), "
          f"{cpus:g} CPU(s) each)", file=sys.stderr, flush=True)
    stop.wait()
    print("nerpipe serve: stopping; finishing the requests in flight", file=sys.stderr, flush=True)
    # Deleting the application first: its replicas finish their requests in flight (graceful_shutdown_timeout_s)
    # while the HTTP proxy still carries the answers back. serve.shutdown() alone closes the proxy's connections.
    serve.delete(APP)
    serve.shutdown()
    ray.shutdown()
    return 0
