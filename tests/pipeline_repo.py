"""A throwaway git + DVC repository holding the real pipeline, wired to the test fixtures and the
tiny offline model, for end-to-end `dvc repro` / `dvc exp run` tests."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from nerpipe.core.set_params import set_params

PROJECT = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", "params.yaml", ".dvcignore", "stages", "nerpipe"]


def tiny_overrides(fixture_dir, fixture_sha256, model_dir):
    """KEY=VALUE settings that make the pipeline run in seconds on the fixtures."""
    return [f"data.source={fixture_dir}", f"model.name={model_dir}",
            *[f"data.sha256.{split}={digest}" for split, digest in fixture_sha256.items()],
            "prepare.max_length=24", "prepare.window_overlap=4",
            "train.epochs=2", "train.batch_size=4", "train.checkpoint_every=2", "train.warmup_ratio=0.0",
            "evaluate.batch_size=8", "lr=0.001"]


class PipelineRepo:
    def __init__(self, root, env=None):
        self.root = Path(root)
        self.env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                    "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "TQDM_DISABLE": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    # Stages import the repository's own copy of nerpipe, not the editable install.
                    "PYTHONPATH": str(self.root),
                    # On the CPU even where a GPU is visible: the tests assert byte-identical results,
                    # which CUDA does not promise. A test about CUDA passes its own value in `env`.
                    "CUDA_VISIBLE_DEVICES": "", **(env or {})}
        self.env.pop("MLFLOW_TRACKING_URI", None) if not (env and "MLFLOW_TRACKING_URI" in env) else None

    @classmethod
    def create(cls, root, overrides, env=None):
        repo = cls(root, env)
        repo.root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            src = PROJECT / name
            if src.is_dir():
                shutil.copytree(src, repo.root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, repo.root / name)
        set_params(repo.root / "params.yaml", overrides)
        (repo.root / ".gitignore").write_text("mlflow.db\nmlruns/\nmlartifacts/\n__pycache__/\n/data/checkpoints/\n")
        repo.run("git", "init", "-q")
        repo.run("dvc", "init", "-q")
        repo.run("dvc", "config", "core.autostage", "true")
        repo.commit("tiny pipeline")
        return repo

    def run(self, *cmd, check=True, timeout=600):
        result = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def commit(self, message):
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)

    def repro(self, *args, check=True):
        return self.run("dvc", "repro", *args, check=check)

    @staticmethod
    def stages_run(result):
        """Names of the stages DVC actually ran, in order, from its output."""
        return re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)
