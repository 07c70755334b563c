"""The team server's MLflow authorization function (tools/team_server.py writes it into the auth app's
config: `authorization_function = team_auth:authenticate`, with this directory on the server's
PYTHONPATH). MLflow's own basic auth signs every request in; then two kinds of request are refused for
everyone, admin included:

- an experiment with an artifact location of its own choosing: runs would then read, list and write
  wherever that location points (a `file://` directory is the server's own disk). Every experiment
  takes the server's default, its proxied store `mlflow-artifacts:/` (s3://mlflow);
- presigned and multipart uploads: the URL the server signs with its own S3 key lets its holder write
  past the proxy's per-experiment check. Uploads go through the proxy, which checks EDIT on the run's
  experiment (MLflow's client uses them only with MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD set).
"""

from flask import Response, request
from mlflow.server.auth import authenticate_request_basic_auth

UPLOAD_ROUTES = ("/mlflow/artifacts/presigned-upload-url", "/mlflow-artifacts/mpu/")


def _refuse(message):
    return Response(message, status=403, mimetype="text/plain")


def authenticate():
    signed_in = authenticate_request_basic_auth()
    if isinstance(signed_in, Response):
        return signed_in
    if request.method == "POST" and request.path.endswith("/mlflow/experiments/create"):
        location = (request.get_json(silent=True) or {}).get("artifact_location")
        if location:
            return _refuse(f"artifact_location {location!r} refused: on this server every experiment keeps its "
                           "artifacts in the server's proxied store; create the experiment without one")
    if any(route in request.path for route in UPLOAD_ROUTES):
        return _refuse("presigned and multipart uploads are switched off on this server: upload through its "
                       "artifact proxy (leave MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD unset)")
    return signed_in
