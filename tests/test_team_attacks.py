"""The team server (tools/team_server.py) attacked as a new user would attack it: as a signed-in READ
user over HTTP, and as another unprivileged login on the same machine (`runuser -u nobody`, with the
system's Python: the attacker has no access to this virtual environment's). One server for the module;
each test performs one attack of issue 33 and asserts that it fails.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import botocore.exceptions
import psycopg2
import pytest
import requests

from tools import team_server

NAME = "team.example"  # the name clients use, given to `start --name`
USERS = {"reader": "READ", "editor": "EDIT"}
ATTACKER_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
NOT_ROOT = "the attacks need another local account: run the tests as root (runuser -u nobody)"


@pytest.fixture(scope="module")
def team():
    why = team_server.unavailable()
    if why:
        pytest.skip(f"the team's servers cannot run here: {why}")
    directory = Path(tempfile.mkdtemp(prefix="nerpipe-attacks-"))
    directory.chmod(0o755)  # the services' account passes through to DIR
    server = directory / "server"
    try:
        team_server.start(server, port=0, s3_port=0, name=NAME)
        for user, permission in USERS.items():
            team_server.add_user(server, user, permission)
        yield server
    finally:
        if (server / team_server.STATE).exists():
            team_server.stop(server)
        shutil.rmtree(directory, ignore_errors=True)


def state(server):
    return json.loads((server / team_server.STATE).read_text())


def api(server, method, path, user=None, **kwargs):
    found = state(server)
    password = found["users"][user]["password"] if user else found["mlflow_admin"]["password"]
    return requests.request(method, f"{team_server.urls(found)['mlflow']}/{path}", timeout=30,
                            auth=(user or team_server.ADMIN, password), **kwargs)


def as_nobody(script, *args, **kwargs):
    """`script` run by the system's Python as `nobody`."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    return subprocess.run(["runuser", "-u", "nobody", "--", ATTACKER_PYTHON, "-c", script, *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kwargs)


def editors_run(server):
    experiment = api(server, "POST", "api/2.0/mlflow/experiments/create", "editor",
                     json={"name": f"editors-{time.monotonic_ns()}"}).json()["experiment_id"]
    run = api(server, "POST", "api/2.0/mlflow/runs/create", "editor", json={"experiment_id": experiment}).json()
    return experiment, run["run"]["info"]["run_id"]


# 1. Any file root can read --------------------------------------------------------------------------

SYMLINK = """
import os, sys, tempfile
base = tempfile.mkdtemp(prefix="attacker-")
os.chmod(base, 0o755)
print(base)
"""


def test_a_read_user_cannot_read_the_servers_files_through_an_artifact_location(team):
    """READ user: an experiment whose artifacts are a local directory; nobody: a symlink from a run's
    artifacts there to DIR; then /get-artifact for the state file. The services run unprivileged, too."""
    attacker_dir = as_nobody(SYMLINK).stdout.strip()
    try:
        created = api(team, "POST", "api/2.0/mlflow/experiments/create", "reader",
                      json={"name": "mine", "artifact_location": f"file://{attacker_dir}"})
        assert created.status_code == 403, created.text
        assert "artifact_location" in created.text and "refused" in created.text
        # The rest of the attack, had the experiment been created, reads nothing either: no experiment.
        assert api(team, "GET", "api/2.0/mlflow/experiments/get-by-name", "reader",
                   params={"experiment_name": "mine"}).status_code == 404
    finally:
        as_nobody("import shutil, sys; shutil.rmtree(sys.argv[1])", attacker_dir)
    # Not even the admin may choose a location; an experiment without one lands in the proxied store.
    assert api(team, "POST", "api/2.0/mlflow/experiments/create",
               json={"name": "x", "artifact_location": "/etc"}).status_code == 403
    fine = api(team, "POST", "api/2.0/mlflow/experiments/create", "reader", json={"name": "default-location"})
    location = api(team, "GET", "api/2.0/mlflow/experiments/get", "reader",
                   params={"experiment_id": fine.json()["experiment_id"]}).json()["experiment"]["artifact_location"]
    assert location.startswith("mlflow-artifacts:/")
    # Every service runs as the services' account, which cannot read the state file.
    uids = {name: int(Path(f"/proc/{record['pid']}/status").read_text().split("Uid:")[1].split()[0])
            for name, record in state(team)["pids"].items()}
    account = team_server.service_account()
    assert set(uids.values()) == {account[0]} and account[0] != 0, uids
    assert (team / team_server.STATE).stat().st_uid == 0 and (team / team_server.STATE).stat().st_mode & 0o777 == 0o600


# 2. Storage without keys --------------------------------------------------------------------------

STORAGE = """
import sys, urllib.request
def ask(method, url, data=None):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10).status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return type(err).__name__
master, filer, key = sys.argv[1:4]
print("filer-put", ask("PUT", f"http://127.0.0.1:{filer}/buckets/mlflow/{key}", b"evil"))
print("filer-get", ask("GET", f"http://127.0.0.1:{filer}/buckets/dvc/{key}"))
print("master-col-delete", ask("GET", f"http://127.0.0.1:{master}/col/delete?collection=dvc"))
"""


def weed_ports(server):
    """SeaweedFS's own ports, from its command line, which every local user can read."""
    args = Path(f"/proc/{state(server)['pids']['s3']['pid']}/cmdline").read_bytes().decode().split("\0")
    return {arg.split("=")[0].lstrip("-"): arg.split("=")[1] for arg in args if ".port" in arg and "=" in arg}


def test_another_local_user_cannot_reach_storage_without_keys(team):
    found = state(team)
    mlflow_s3, dvc_s3 = team_server.s3_client(found, "mlflow"), team_server.s3_client(found, "dvc")
    mlflow_s3.put_object(Bucket="mlflow", Key="attack/MLmodel", Body=b"flavors: {}")
    dvc_s3.put_object(Bucket="dvc", Key="attack/MLmodel", Body=b"data")
    ports = weed_ports(team)
    answers = dict(line.split() for line in as_nobody(STORAGE, ports["master.port"], ports["filer.port"],
                                                      "attack/MLmodel").stdout.splitlines())
    assert answers == {"filer-put": "404", "filer-get": "404", "master-col-delete": "404"}, answers
    # gRPC: SeaweedFS's own shell, as nobody, with the ports it reads off the command line. Without the
    # certificate it gets no connection, and keeps trying: 10 s show it.
    # Its own session, so that the whole group goes at the end: killing runuser alone left `weed shell` running.
    shell = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", team_server._weed(), "shell",
         f"-master=127.0.0.1:{ports['master.port']}.{ports['master.port.grpc']}",
         f"-filer=127.0.0.1:{ports['filer.port']}.{ports['filer.port.grpc']}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        start_new_session=True)
    try:
        heard, _ = shell.communicate("fs.cat /buckets/dvc/attack/MLmodel\n", timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        heard, _ = shell.communicate()
    assert "data" not in heard, heard
    assert mlflow_s3.get_object(Bucket="mlflow", Key="attack/MLmodel")["Body"].read() == b"flavors: {}"
    assert dvc_s3.get_object(Bucket="dvc", Key="attack/MLmodel")["Body"].read() == b"data"


# 3. The admin password goes to whoever answers --------------------------------------------------------

FAKE = """
import http.server, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def reply(self):
        print("AUTH", self.headers.get("Authorization"), flush=True)
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b"{}")
    do_GET = do_POST = do_PATCH = reply
    def log_message(self, *args): pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer)
print("LISTENING", flush=True)
server.serve_forever()
"""


def test_no_password_goes_to_a_stranger_holding_the_port(team):
    """nobody holds MLflow's port while it is down: start fails naming mlflow and its log, add-user
    records no one, and the stranger never sees an Authorization header."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    port = state(team)["mlflow_port"]
    team_server.stop(team, ["mlflow"])
    fake = subprocess.Popen(["runuser", "-u", "nobody", "--", ATTACKER_PYTHON, "-c", FAKE, str(port)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert fake.stdout.readline().strip() == "LISTENING"
        taken = rf"mlflow cannot start: port {port} is taken .*logs/mlflow.log"
        with pytest.raises(team_server.ServiceError, match=taken):
            team_server.start(team)
        with pytest.raises(team_server.ServiceError, match=f"port {port} is held by another process"):
            team_server.add_user(team, "mallory", "EDIT")
        assert "mallory" not in state(team)["users"]
    finally:
        os.killpg(fake.pid, signal.SIGTERM)
        heard = fake.communicate(timeout=30)[0]
    # MLflow stays down: the next test, a stranger on its PID, starts it (one restart for both, ~30 s).
    assert "AUTH" not in heard, heard


# 7. Liveness by a substring of a command line -------------------------------------------------------

def test_a_stranger_with_a_recycled_pid_is_neither_trusted_nor_signalled(team):
    """MLflow is down and its recorded PID now belongs to nobody's process whose command line says
    "mlflow": start starts MLflow, and stop leaves the stranger alone."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    team_server.stop(team, ["mlflow"])  # (down already after the test before)
    stranger = subprocess.Popen(["runuser", "-u", "nobody", "--", ATTACKER_PYTHON, "-c",
                                 "import time; time.sleep(600)", "mlflow", "server"], start_new_session=True)
    try:
        found = state(team)
        found["pids"]["mlflow"] = {"pid": stranger.pid, "start": 1}  # the PID of a server long gone, reused
        team_server._write_state(team, found)
        assert not team_server._alive(found["pids"]["mlflow"])
        started = team_server.start(team)
        assert started["pids"]["mlflow"]["pid"] != stranger.pid
        assert api(team, "GET", "api/2.0/mlflow/experiments/search", params={"max_results": 1}).status_code == 200
        found = state(team)
        found["pids"]["mlflow"], real = {"pid": stranger.pid, "start": 1}, found["pids"]["mlflow"]
        team_server._write_state(team, found)
        team_server.stop(team, ["mlflow"])
        assert stranger.poll() is None, "stop signalled a process it did not start"
        found["pids"]["mlflow"] = real
        team_server._write_state(team, found)
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


# 4. MLflow's database role is a superuser -----------------------------------------------------------

def test_mlflows_database_role_owns_its_database_and_nothing_more(team):
    connection = psycopg2.connect(team_server.postgres_uri(state(team), driver="postgresql"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False, False, False)
        cursor.execute("SELECT pg_get_userbyid(datdba) = current_user FROM pg_database WHERE datname = 'mlflow'")
        assert cursor.fetchone() == (True,)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cursor.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    connection.close()


# 5. A damaged state file loses keys -----------------------------------------------------------------

def test_a_damaged_or_missing_state_file_is_never_regenerated(team):
    path = team / team_server.STATE
    kept, identities = path.read_bytes(), (team / "s3-identities.json").read_bytes()
    try:
        for damage in (b"{not json", b""):
            path.write_bytes(damage)
            with pytest.raises(team_server.ServiceError, match="is damaged .*restore it from your backup"):
                team_server.start(team)
        path.unlink()
        with pytest.raises(team_server.ServiceError, match="is missing, but .* holds a server's data"):
            team_server.start(team)
        assert not path.exists()
        assert (team / "s3-identities.json").read_bytes() == identities
    finally:
        path.write_bytes(kept)
    # The running services kept their keys: the old state still opens them, and stop still finds them.
    assert api(team, "GET", "api/2.0/mlflow/experiments/search", params={"max_results": 1}).status_code == 200


# 6. A READ user writes under another user's run -----------------------------------------------------

def test_a_read_user_gets_no_upload_url_for_another_users_run(team):
    """The READ user's own experiment, its artifact location inside the editor's run: presigned upload
    URLs for the READ user's own run there would be signed with the server's S3 key, which may write
    anywhere in s3://mlflow. Refused twice: no such location, and no presigned or multipart uploads."""
    experiment, run_id = editors_run(team)
    inside = api(team, "POST", "api/2.0/mlflow/experiments/create", "reader",
                 json={"name": "inside", "artifact_location": f"s3://mlflow/{experiment}/{run_id}/artifacts"})
    assert inside.status_code == 403, inside.text
    own = api(team, "POST", "api/2.0/mlflow/experiments/create", "reader", json={"name": "readers-own"}).json()
    own_run = api(team, "POST", "api/2.0/mlflow/runs/create", "reader", json=own).json()["run"]["info"]["run_id"]
    asked = {
        "own run": api(team, "POST", "api/2.0/mlflow/artifacts/presigned-upload-url", "reader",
                       json={"run_id": own_run, "path": "MLmodel"}),
        "editor's run": api(team, "POST", "api/2.0/mlflow/artifacts/presigned-upload-url", "reader",
                            json={"run_id": run_id, "path": "MLmodel"}),
        "multipart": api(team, "POST", f"api/2.0/mlflow-artifacts/mpu/create/{experiment}/{run_id}/artifacts/MLmodel",
                         "reader", json={"path": "MLmodel", "num_parts": 1}),
        "editor, own run": api(team, "POST", "api/2.0/mlflow/artifacts/presigned-upload-url", "editor",
                               json={"run_id": run_id, "path": "x"}),
    }
    assert {name: answer.status_code for name, answer in asked.items()} == dict.fromkeys(asked, 403)
    assert "switched off" in asked["own run"].text
    # Uploads go through the proxy, which checks EDIT on the run's experiment.
    path = f"api/2.0/mlflow-artifacts/artifacts/{experiment}/{run_id}/artifacts/note.txt"
    assert api(team, "PUT", path, "reader", data=b"evil").status_code == 403
    assert api(team, "PUT", path, "editor", data=b"fine").status_code == 200
    assert api(team, "GET", path, "reader").content == b"fine"


# 8. World-readable logs ------------------------------------------------------------------------------

def test_logs_are_private(team):
    logs = team / "logs"
    assert logs.stat().st_mode & 0o777 == 0o700
    files = [*logs.iterdir(), team / "postgres" / "postgres.log"]
    assert {f.name for f in files} >= {"mlflow.log", "s3.log", "postgres.log"}
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
    read = as_nobody("import sys\nfor p in sys.argv[1:]:\n  try: open(p).read(); print('READ', p)\n"
                     "  except OSError as e: print(type(e).__name__)", *files)
    assert "READ" not in read.stdout and read.stdout.split() == ["PermissionError"] * len(files)


# 9. The remote recipe ---------------------------------------------------------------------------------

def test_plain_http_off_loopback_needs_the_flag(tmp_path):
    with pytest.raises(team_server.ServiceError, match="--host 0.0.0.0 would let the team's passwords cross"):
        team_server.settings(tmp_path, host="0.0.0.0", port=0, s3_port=0)
    assert not (tmp_path / team_server.STATE).exists()
    assert team_server.settings(tmp_path, host="0.0.0.0", port=0, s3_port=0, plain_http=True)["plain_http"]


def test_the_name_clients_use_is_an_allowed_host(team):
    port = state(team)["mlflow_port"]
    for host, expected in ((f"{NAME}:{port}", 200), (NAME, 200), (f"evil.example:{port}", 403)):
        answer = api(team, "GET", "api/2.0/mlflow/experiments/search", params={"max_results": 1},
                     headers={"Host": host})
        assert answer.status_code == expected, (host, answer.text)


def nginx_config(server, directory):
    """tools/nginx-team.conf with this server's ports, a self-signed certificate for NAME, and free ports."""
    found = state(server)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", "team.key", "-out", "team.crt", "-days", "1", "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}"], cwd=directory, check=True, capture_output=True)
    mlflow_tls, s3_tls = team_server.free_port(), team_server.free_port()
    recipe = (Path(team_server.TOOLS) / "nginx-team.conf").read_text()
    for old, new in (("listen 5443", f"listen 127.0.0.1:{mlflow_tls}"), ("listen 8443", f"listen 127.0.0.1:{s3_tls}"),
                     ("127.0.0.1:5000", f"127.0.0.1:{found['mlflow_port']}"),
                     ("127.0.0.1:8333", f"127.0.0.1:{found['s3_port']}"),
                     ("/etc/nginx/tls/team.crt", str(directory / "team.crt")),
                     ("/etc/nginx/tls/team.key", str(directory / "team.key"))):
        assert old in recipe, old
        recipe = recipe.replace(old, new)
    (directory / "team.conf").write_text(recipe)
    (directory / "nginx.conf").write_text(
        f"daemon off;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n client_body_temp_path {directory}/body;\n proxy_temp_path {directory}/proxy;\n"
        f" include {directory}/team.conf;\n}}\n")
    return mlflow_tls, s3_tls


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # self-signed, for NAME
def test_the_tls_proxy_recipe_serves_a_browser_and_s3(team, tmp_path):
    """nginx with tools/nginx-team.conf: a browser's write (Host and Origin the server's name) and an S3
    client's signed request pass; basic auth never travels in clear."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not nginx:
        pytest.skip("nginx is not installed (make nginx, or apt-get install nginx)")
    mlflow_tls, s3_tls = nginx_config(team, tmp_path)
    process = subprocess.Popen([nginx, "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")],
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not team_server._listeners(mlflow_tls) and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.1)
        found = state(team)
        origin = f"https://{NAME}:{mlflow_tls}"
        answer = requests.post(f"https://127.0.0.1:{mlflow_tls}/api/2.0/mlflow/experiments/create",
                               json={"name": "through-tls"}, verify=False, timeout=30,
                               auth=("editor", found["users"]["editor"]["password"]),
                               headers={"Host": f"{NAME}:{mlflow_tls}", "Origin": origin})
        assert answer.status_code == 200, answer.text
        assert answer.headers.get("Access-Control-Allow-Origin") == origin
        refused = requests.post(f"https://127.0.0.1:{mlflow_tls}/api/2.0/mlflow/experiments/create",
                                json={"name": "from-elsewhere"}, verify=False, timeout=30,
                                auth=("editor", found["users"]["editor"]["password"]),
                                headers={"Host": f"{NAME}:{mlflow_tls}", "Origin": "https://evil.example"})
        assert refused.status_code == 403
        import boto3

        keys = found["s3"]["dvc"]
        s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{s3_tls}", region_name="us-east-1", verify=False,
                          aws_access_key_id=keys["access_key"], aws_secret_access_key=keys["secret_key"])
        s3.put_object(Bucket="dvc", Key="through-tls", Body=b"tls")
        assert s3.get_object(Bucket="dvc", Key="through-tls")["Body"].read() == b"tls"
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            s3.put_object(Bucket="mlflow", Key="through-tls", Body=b"tls")
    finally:
        os.killpg(process.pid, signal.SIGQUIT)
        process.wait(timeout=30)


# 5 (cont.). Rotation: last, since it changes every secret ---------------------------------------------

def test_rotate_replaces_every_secret_and_the_old_ones_stop_working(team):
    old = state(team)
    team_server.rotate(team)
    new = state(team)
    assert all(new["s3"][k]["secret_key"] != old["s3"][k]["secret_key"] for k in old["s3"])
    assert new["mlflow_admin"]["password"] != old["mlflow_admin"]["password"]
    search = f"{team_server.urls(new)['mlflow']}/api/2.0/mlflow/experiments/search"
    admin = new["mlflow_admin"]["username"]
    one = {"max_results": 1}
    for password, expected in ((old["mlflow_admin"]["password"], 401), (new["mlflow_admin"]["password"], 200)):
        assert requests.get(search, params=one, auth=(admin, password), timeout=10).status_code == expected
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidAccessKeyId"):
        team_server.s3_client(old, "dvc").list_objects_v2(Bucket="dvc", MaxKeys=1)
    team_server.s3_client(new, "dvc").list_objects_v2(Bucket="dvc", MaxKeys=1)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(team_server.postgres_uri(old, driver="postgresql")).close()
    psycopg2.connect(team_server.postgres_uri(new, driver="postgresql")).close()
    # Teammates keep their passwords; MLflow works with its new database password and S3 key.
    reader = new["users"]["reader"]["password"]
    assert requests.get(search, params=one, auth=("reader", reader), timeout=10).status_code == 200
    _, run_id = editors_run(team)
    assert api(team, "GET", "api/2.0/mlflow/runs/get", "reader", params={"run_id": run_id}).status_code == 200
