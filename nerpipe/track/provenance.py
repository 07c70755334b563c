"""What produced a training run, as MLflow tags: git commit and dirtiness, DVC experiment, data files and
checksums, device, versions."""

import json
import os
import subprocess
from importlib.metadata import version
from pathlib import Path

from nerpipe.core.params import read_yaml


def provenance_tags(device, stats_file):
    """The tags of a training run. The data tags are what download found (data.sha256 may be "" for a
    local directory), as prepare copied them into `stats_file` (the prepared data's stats.json)."""
    import torch

    sources = json.loads(Path(stats_file).read_text())["sources"]
    tags = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            **{f"version.{p}": version(p) for p in ("torch", "transformers", "dvc", "mlflow")},
            # sha256 and the file or URL of a file source; repository, revision (or directory) and split of a
            # Hugging Face dataset (its per-file hashes stay in stats.json)
            **{f"data.{key}.{split}": value for split, source in sources.items() for key, value in source.items()
               if isinstance(value, str)}}
    for variable, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    # An experiment runs on its baseline commit (in a --temp or queued copy, HEAD is a DVC stash commit).
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git("rev-parse", "HEAD")
    if commit:
        dirty = _changed_sources(commit)
        tags |= {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}
        if dirty:
            more = f" and {len(dirty) - 20} more" if len(dirty) > 20 else ""
            tags["git.dirty_files"] = ", ".join(dirty[:20]) + more
    return tags


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _changed_sources(commit):
    """Files that differ from `commit` (or are new and not ignored), except params.yaml (logged as
    params), .gitignore files, dvc.lock and the outputs dvc.yaml declares (all written by DVC runs)."""
    changed = (_git("diff", "--name-only", commit) or "").splitlines()
    changed += (_git("ls-files", "--others", "--exclude-standard") or "").splitlines()
    produced = {"params.yaml", "dvc.lock"}
    for stage in (read_yaml("dvc.yaml") or {}).get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            produced |= {next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])}
    return sorted(p for p in set(changed) if Path(p).name != ".gitignore"
                  and not any(p == o or p.startswith(o.rstrip("/") + "/") for o in produced))
