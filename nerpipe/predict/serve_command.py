"""Serve the logged MLflow model over HTTP, batching concurrent requests into one model call (docs/serving.md).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db nerpipe serve --model runs:/<run_id>/model --port 8000
    curl -s localhost:8000/invocations -H 'Content-Type: application/json' -d '{"inputs": ["John Smith flew to Paris."]}'

One machine (the default, --engine mosec): mosec's compiled HTTP front end batches the requests for Python
workers that run the pyfunc model (nerpipe/predict/mosec_service.py); GET / answers 200 once a model is loaded.
A Ray cluster (--engine ray): Ray Serve places --replicas over the cluster's machines (--address auto joins the
cluster `ray start` set up; nerpipe/predict/ray_service.py); GET /ping is its readiness probe. Both run the
same pyfunc model that `nerpipe predict` runs. On SIGTERM or Ctrl-C either stops taking requests, finishes the
ones in flight, and exits 0.
"""

import os
import signal
import sys
import threading

from nerpipe.core.errors import UserError, exit_on_user_error

APP = "nerpipe"
MAX_BATCH_SIZE = 64
"""Requests per model call, at most."""
BATCH_WAIT_S = 0.005
"""How long a batch's first request waits for more. A request that finds the model busy waits for it anyway, so
under load batches fill while the model runs; alone, a request pays at most this."""
TIMEOUT_S = 120
"""How long a request may take, queueing included: a 50-sentence document behind a full batch on a busy 2-core
machine takes seconds, not mosec's default 3 s."""


def add_arguments(parser):
    parser.add_argument("-m", "--model", required=True,
                        help="MLflow model URI (runs:/<run_id>/model, models:/<name>/<version>) or local MLflow "
                             "model directory; runs:/ and models:/ need MLFLOW_TRACKING_URI")
    parser.add_argument("--engine", choices=["mosec", "ray"], default="mosec",
                        help="mosec: one machine, the fastest there; ray: Ray Serve, replicas over a Ray cluster "
                             "(needs the serve extra's ray) (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all; default %(default)s)")
    parser.add_argument("-p", "--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    parser.add_argument("--replicas", type=int, default=1, help="copies of the model, each a process that loads it "
                                                                "once (default %(default)s)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of each replica (ray: the CPUs it reserves for each) (default: the cores "
                             "this process may use / replicas, at least 1)")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                        help="requests per model call, at most (default %(default)s)")
    parser.add_argument("--batch-wait-ms", type=int, default=round(BATCH_WAIT_S * 1000),
                        help="how long a batch's first request waits for more (default %(default)s)")
    parser.add_argument("--timeout-s", type=int, default=TIMEOUT_S,
                        help="how long a request may take, waiting included, before it gets 408 (mosec; default "
                             "%(default)s)")
    parser.add_argument("--address", help="ray: the Ray cluster to join (auto: the one `ray start` set up on this "
                                          "machine; default: start a Ray instance of its own)")


def check(args):
    for name in ("replicas", "max_batch_size", "batch_wait_ms", "timeout_s", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.address and args.engine != "ray":
        raise UserError("--address joins a Ray cluster: add --engine ray")


def run(args):
    with exit_on_user_error():
        check(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.replicas)
    return (run_ray if args.engine == "ray" else run_mosec)(args, threads)


def run_mosec(args, threads):
    from mosec import Server

    from nerpipe.predict.mosec_service import MODEL_ENV, THREADS_ENV, ParseRequest, TagEntities

    # mosec reads its settings from MOSEC_* variables and from sys.argv, where nerpipe's flags are not its own.
    os.environ.update(MOSEC_ADDRESS=args.host, MOSEC_PORT=str(args.port), MOSEC_TIMEOUT=str(args.timeout_s * 1000),
                      MOSEC_NAMESPACE=APP, MOSEC_LOG_LEVEL=os.environ.get("MOSEC_LOG_LEVEL", "warning"))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # in the replicas' logs
    sys.argv = sys.argv[:1]
    server = Server()
    server.append_worker(ParseRequest, route="/invocations")
    server.append_worker(TagEntities, num=args.replicas, max_batch_size=args.max_batch_size,
                         max_wait_time=args.batch_wait_ms, timeout=args.timeout_s, route="/invocations",
                         env=[{MODEL_ENV: args.model, THREADS_ENV: str(threads)}] * args.replicas)
    print(f"nerpipe serve: starting mosec at http://{args.host}:{args.port}/invocations ({args.replicas} "
          f"replica(s), {threads} torch thread(s) each); GET / answers 200 once a model is loaded",
          file=sys.stderr, flush=True)
    server.run()  # SIGTERM/SIGINT: mosec stops taking requests, finishes the ones in flight, stops the workers
    return 0


def run_ray(args, threads):
    import ray
    from ray import serve

    from nerpipe.predict.ray_service import application

    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    ray.init(address=args.address, include_dashboard=False, runtime_env={"env_vars": env} if env else None)
    stop = threading.Event()
    # Ray's workers live in processes of their own; the signal reaches this one, which drains them.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(args.model, args.replicas, threads, args.max_batch_size, args.batch_wait_ms / 1000),
              name=APP, blocking=False, route_prefix="/")
    print(f"nerpipe serve: ready at http://{args.host}:{args.port}/invocations (Ray Serve, {args.replicas} "
          f"replica(s), {threads} CPU(s) each)", file=sys.stderr, flush=True)
    stop.wait()
    print("nerpipe serve: stopping; finishing the requests in flight", file=sys.stderr, flush=True)
    # Deleting the application first: its replicas finish their requests in flight (graceful_shutdown_timeout_s)
    # while the HTTP proxy still carries the answers back. serve.shutdown() alone closes the proxy's connections.
    serve.delete(APP)
    serve.shutdown()
    ray.shutdown()
    return 0
