"""Talking to an MLflow tracking server that may be away: a reachability check that fails in seconds,
short HTTP retries, and waiting for a server that restarts (docs/mlflow.md has the design).

MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) keep one call retrying a refused
connection for about four minutes. Here a call only rides out a blip (HTTP_SETTINGS: retries after 0
and 2 s, plus up to 0.5 s of jitter each); a server that is away for longer is waited for by nerpipe
(wait_for_server), with a message, where a run can afford to wait. A request that gets no answer fails
after 60 s: long enough for the server to store a model upload of a few hundred MB in S3 before it answers.
"""

import os
import re
import sys
import time
from contextlib import contextmanager

from mlflow.exceptions import MlflowException, RestException
from tqdm import tqdm

from nerpipe.core.errors import UserError

REACH_TIMEOUT_S = 5
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
# During training a metric is sent once, without retries and with a short timeout: a failure costs the
# loop at most that long, once; after that the server is probed every PROBE_EVERY_S (nerpipe.track.held).
TRAINING_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SERVER_WAIT_S = 600  # NERPIPE_MLFLOW_SERVER_WAIT_S overrides


def is_server(uri):
    return uri.startswith(("http://", "https://"))


def check_reachable(uri, hint):
    """A UserError within seconds if `uri` is a tracking server that does not answer (MLflow's own
    client would retry for minutes), or refuses our credentials. `hint` says what to do about it."""
    if not is_server(uri):
        return
    response = _get(uri, "/health", hint)
    if response.status_code >= 500 or response.status_code in (401, 403):
        raise UserError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) answered HTTP "
                        f"{response.status_code} {response.reason}; {hint}")
    # /health needs no sign-in: ask something that does, so that missing or wrong credentials say so.
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    signed = _get(uri, "/api/2.0/mlflow/experiments/search", hint, params={"max_results": 1},
                  auth=(user, password) if user and password else None,
                  headers={"Authorization": f"Bearer {token}"} if token else None)
    if signed.status_code in (401, 403):
        raise UserError(f"MLflow tracking server {uri} refused {f'user {user!r}' if user else 'a request without a user'}"
                        f" (HTTP {signed.status_code}): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                        "to the user and password the server's admin gave you (make tracking-user)")


def _get(uri, path, hint, **kwargs):
    """requests.get of `path` on the server; a UserError naming the reason where no answer comes (the
    server can go away between the two requests of check_reachable)."""
    import requests

    try:
        return requests.get(f"{uri.rstrip('/')}{path}", timeout=REACH_TIMEOUT_S, **kwargs)
    except requests.RequestException as err:
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(err))
        why = (f"no answer within {REACH_TIMEOUT_S} s" if isinstance(err, requests.Timeout)
               else errno.group(0) if errno else type(err).__name__)
        raise UserError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) cannot be reached: {why}; "
                        f"{hint}") from None


def answers(uri):
    import requests

    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def server_wait_s():
    return int(os.environ.get("NERPIPE_MLFLOW_SERVER_WAIT_S", SERVER_WAIT_S))


def wait_for_server(uri, left_undone=None):
    """Return once the server at `uri` answers: True if it had to wait. After server_wait_s() raise
    UserError, saying what is `left_undone`. Nothing for a store that is not a server."""
    if not is_server(uri) or answers(uri):
        return False
    seconds = server_wait_s()
    say(f"MLflow tracking server {uri} does not answer; waiting up to {seconds} s for it to come back "
        "(NERPIPE_MLFLOW_SERVER_WAIT_S sets how long)")
    deadline = time.monotonic() + seconds
    while not answers(uri):
        if time.monotonic() > deadline:
            raise UserError(f"MLflow tracking server {uri} has not answered for {seconds} s; "
                            f"{left_undone or 'the stage stops here: run it again once the server is back'}")
        time.sleep(2)
    return True


def say(message):
    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def configure_http():
    """HTTP_SETTINGS, where the environment does not set them already."""
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)


@contextmanager
def environment(values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_is_away(err):
    """True for a failure of the connection or of the server (5xx, or no MLflow answer at all), which
    waiting can cure; False for a request the server refused (4xx; or 401, 403 from MLflow's auth app,
    which answers in plain text), which it cannot."""
    if isinstance(err, RestException):
        return err.get_http_status_code() >= 500
    return not (isinstance(err, MlflowException) and err.get_http_status_code() in (401, 403))


def reason(err):
    """'[Errno 111] Connection refused', 'Read timed out' or the error's first line: what went wrong."""
    text = str(err)
    found = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection aborted|Connection reset", text)
    return found.group(0) if found else text.splitlines()[0][:200]
