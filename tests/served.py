"""What the serving tests share: the entities the `nerpipe predict` command prints for texts."""

import json
import subprocess
import tempfile
from pathlib import Path

from tests.server_process import BIN


def nerpipe_predict(model, texts, *flags, env=None):
    """The entities `nerpipe predict --format jsonl` gives for each text (one text per line of a file)."""
    assert not any("\n" in text or "\r" in text for text in texts), "one text per line"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
        out = subprocess.run([str(BIN / "nerpipe"), "predict", "--model", str(model), "--input", str(path),
                              "--format", "jsonl", *flags], capture_output=True, text=True, env=env, cwd=tmp)
    if out.returncode != 0:
        raise RuntimeError(f"nerpipe predict exited {out.returncode}:\n{out.stderr[-3000:]}")
    return [json.loads(line)["entities"] for line in out.stdout.splitlines()]
