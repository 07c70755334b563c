"""Where the benchmark's data and model come from: a flag, else an environment variable, else the
offline copies of this development setup, found relative to the repository (nothing hard-coded).

    --data DIR    or NERPIPE_BENCH_DATA   CoNLL-2003 as train.txt, valid.txt, test.txt;
                                          default ../shared/data/conll2003 beside the repository
    --model DIR   or NERPIPE_BENCH_MODEL  a local model directory (safetensors + fast tokenizer);
                                          default: what ../shared/scripts/offline-model prints
"""

import os
import subprocess
from pathlib import Path

from nerpipe.core.errors import UserError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "conll2003"
OFFLINE_MODEL_SCRIPT = REPO.parent / "shared" / "scripts" / "offline-model"
DATA_ENV, MODEL_ENV = "NERPIPE_BENCH_DATA", "NERPIPE_BENCH_MODEL"
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


def data_dir(flag=None):
    """The CoNLL directory: `flag`, $NERPIPE_BENCH_DATA or DEFAULT_DATA; it must hold all three splits."""
    chosen = flag or os.environ.get(DATA_ENV) or DEFAULT_DATA
    missing = [name for name in SPLIT_FILES if not (Path(chosen) / name).is_file()]
    if missing:
        raise UserError(f"benchmark data {chosen}: {', '.join(missing)} not found; pass --data DIR (or set "
                        f"{DATA_ENV}) with a CoNLL-2003 copy holding {', '.join(SPLIT_FILES)}")
    return Path(chosen)


def model_dir(flag=None):
    """The model directory: `flag`, $NERPIPE_BENCH_MODEL, or the offline MiniLM-L6 that
    ../shared/scripts/offline-model installs once and prints."""
    chosen = flag or os.environ.get(MODEL_ENV)
    if chosen:
        return str(chosen)
    if not OFFLINE_MODEL_SCRIPT.is_file():
        raise UserError(f"no model given and {OFFLINE_MODEL_SCRIPT} does not exist; pass --model DIR (or set "
                        f"{MODEL_ENV}) with a local model directory")
    try:
        return subprocess.check_output([str(OFFLINE_MODEL_SCRIPT)], text=True).strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise UserError(f"{OFFLINE_MODEL_SCRIPT} failed ({err}); pass --model DIR (or set {MODEL_ENV}) "
                        "with a local model directory") from None
