"""Every shell block of the README and the docs, run as written, in document order, in one scratch copy of
the repository on the tiny fixtures (tools/docs_blocks.py says which blocks and how they are marked).

What a reader would fill in is filled in here: the data and model paths become the test fixtures and the
tiny model, `<run_id>` the train stage's MLflow run. Each block runs in a process group of its own, which
is stopped after it, so a server a block leaves running does not outlive it."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline_repo import PROJECT, PipelineRepo, tiny_overrides

sys.path.insert(0, str(PROJECT / "tools"))
import docs_blocks  # noqa: E402  (tools/ is no package)

BLOCKS = docs_blocks.all_blocks()
RUN = [block for block in BLOCKS if block.marker != "not run"]
# What the scratch repository needs beyond the pipeline PipelineRepo copies: make's targets, the benchmarks.
EXTRA = ["Makefile", "pyproject.toml", "requirements.lock", "requirements-torch.lock", "bench", "tools"]
BLOCK_TIMEOUT_S = 600
# `mlflow ui` starts four uvicorn workers: under a full load on two cores it took 160 s to answer.
SERVER_START_S = 300


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, fixture_dir, fixture_sha256, tiny_model_dir):
    repo = PipelineRepo.create(tmp_path_factory.mktemp("docs-blocks"),
                               tiny_overrides(fixture_dir, fixture_sha256, tiny_model_dir))
    for name in EXTRA:
        src = PROJECT / name
        if src.is_dir():
            shutil.copytree(src, repo.root / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy(src, repo.root / name)
    # The environment the tests run in is the scratch repository's .venv: older than what it was installed
    # from, so that `make` targets find it current and install nothing.
    (repo.root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    for name in ("pyproject.toml", "requirements.lock", "requirements-torch.lock"):
        os.utime(repo.root / name, (0, 0))
    (repo.root / "news.txt").write_text("John Smith flew to Paris.\nReuters reported it.\n", encoding="utf-8")
    with (repo.root / ".gitignore").open("a") as ignore:
        ignore.write(".venv\nnews.txt\nentities.jsonl\n")
    repo.run("git", "branch", "-m", "main")
    repo.commit("the scratch repository of the docs' blocks")
    repo.substitutions = {"/path/to/conll2003": str(fixture_dir), "/path/to/all-MiniLM-L6-v2": str(tiny_model_dir),
                          "/path/to/model": str(tiny_model_dir), "/path/to/wnut17": str(fixture_dir / "wnut_like")}
    return repo


def filled_in(text, repo):
    for placeholder, value in repo.substitutions.items():
        text = text.replace(placeholder, value)
    run = repo.root / "reports" / "train" / "run.json"
    if "<run_id>" in text:
        text = text.replace("<run_id>", json.loads(run.read_text(encoding="utf-8"))["run_id"])
    return text


def start(script, repo):
    return subprocess.Popen(["bash", "-c", script], cwd=repo.root, env=repo.env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop(process):
    """SIGTERM to the block's process group (what it left running too); SIGKILL to what is left after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        process.wait()
        return
    end = time.monotonic() + 30
    while time.monotonic() < end:
        process.poll()  # reaps the block's shell once it has exited, so that only the living count
        if not group_alive(process.pid):
            break
        time.sleep(0.5)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_script(script, repo):
    process = start(script, repo)
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
    finally:
        stop(process)
    return process.returncode, output


def answers(url, deadline_s):
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except OSError:
            if time.monotonic() >= end:
                return None
            time.sleep(1)


@pytest.mark.parametrize("block", RUN, ids=[f"{b.page}:{b.line}" for b in RUN])
def test_block_runs(block, scratch):
    # Without curl a block's `until curl ...; do sleep 1; done` waits forever (a minimal Debian has none).
    if "curl " in block.text:
        assert shutil.which("curl"), "the block runs curl, which is not installed: apt-get install curl"
    text = filled_in(block.text, scratch)
    if block.marker == "serves":
        # What answers must be the block's server, not one that was there before it.
        assert answers(block.value, 0.1) is None, f"{block.value} answers before the block runs: free that port"
        process = start(text, scratch)
        try:
            assert answers(block.value, SERVER_START_S) == 200, f"{block.value} did not answer in {SERVER_START_S} s"
        finally:
            stop(process)
    elif block.transcript:
        for command, fails in block.commands():
            returncode, output = run_script(command, scratch)
            assert (returncode != 0) == fails, f"$ {command}\n(exit {returncode})\n{output}"
    else:
        returncode, output = run_script("set -eo pipefail\n" + text, scratch)
        assert returncode == 0, f"{block.page}:{block.line} exited {returncode}\n{output}"


def test_every_block_not_run_says_why():
    assert [f"{b.page}:{b.line}" for b in BLOCKS if b.marker == "not run" and len(b.value.split()) < 2] == []
    assert len(RUN) >= 10


def test_the_blocks_and_their_markers_are_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("""
```bash
dvc repro
```

<!-- not run: a GPU -->
```bash
bench/gpu_check.sh
```

- A list:

  <!-- serves: http://127.0.0.1:5000/ -->
  ```sh
  mlflow ui
  ```

```
$ dvc exp run -S lrr=3e-5
ERROR: Invalid `--set-param` value
$ dvc exp run -S \\
    lr=3e-5
```

```text
$ not a shell block
```

```
check_params -> download
```
""", encoding="utf-8")
    blocks = docs_blocks.page_blocks(page)
    assert [(b.line, b.marker, b.value, b.first_command()) for b in blocks] == [
        (2, "", "", "dvc repro"), (7, "not run", "a GPU", "bench/gpu_check.sh"),
        (14, "serves", "http://127.0.0.1:5000/", "mlflow ui"), (18, "", "", "dvc exp run -S lrr=3e-5")]
    assert blocks[3].commands() == [("dvc exp run -S lrr=3e-5", True), ("dvc exp run -S lr=3e-5", False)]
