"""Build gpu_payload/: what bench/gpu_check.sh needs on a GPU machine that has no network and receives only
the working tree plus ignored paths passed to it explicitly (64 MiB in all).

    PYTHONPATH=. .venv/bin/python -m bench.gpu_payload [--model DIR] [--data DIR] [--out gpu_payload]
    make gpu-payload                                    # the same, with the defaults

  model/          the offline all-MiniLM-L6-v2 with its weights cast to bf16 (45 MB instead of 91 MB),
                  its config and tokenizer; gpu_check casts the weights back to fp32 before training, so
                  the model trained there is MiniLM rounded to bf16 once, not trained in pure bf16
  conll2003/      train.txt, valid.txt, test.txt
  manifest.json   size and sha256 of every file, and where the files came from

--model and --data default as for the benchmark (bench/inputs.py): the offline copies beside the repository.
"""

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench import inputs
from nerpipe.core.atomic import atomic_path
from nerpipe.core.errors import UserError, exit_on_user_error

LIMIT_BYTES = 64 * 2**20  # what the GPU machine receives of ignored paths, all together
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build(model_dir, data_dir, out):
    """Write the payload to `out` atomically; returns the manifest."""
    model_dir, data_dir, out = Path(model_dir), Path(data_dir), Path(out)
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{model_dir}: no model.safetensors to copy")
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "model").mkdir(parents=True)
        (tmp / "conll2003").mkdir()
        tensors = load_file(weights)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
                  tmp / "model/model.safetensors", metadata={"format": "pt"})
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                shutil.copy(model_dir / name, tmp / "model" / name)
        for name in inputs.SPLIT_FILES:
            shutil.copy(data_dir / name, tmp / "conll2003" / name)
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        total = sum(f["bytes"] for f in files.values())
        if total > LIMIT_BYTES:
            raise UserError(f"the payload would be {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB a "
                            "GPU machine receives; use a smaller model")
        manifest = {"model_from": str(model_dir), "data_from": str(data_dir), "weights_dtype": "bfloat16",
                    "parameters": sum(v.numel() for v in tensors.values()), "total_bytes": total, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def verify(payload):
    """Problems with `payload` against its manifest (missing, changed files), as messages; [] when intact."""
    payload = Path(payload)
    if not (payload / "manifest.json").is_file():
        return [f"{payload}/manifest.json not found: build the payload with `make gpu-payload` where the offline "
                "model and data are, and pass gpu_payload to the GPU machine"]
    manifest = json.loads((payload / "manifest.json").read_text())
    problems = []
    for name, expected in manifest["files"].items():
        path = payload / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path) != expected["sha256"]:
            problems.append(f"{path}: sha256 differs from manifest.json")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the offline MiniLM, bench/inputs.py)")
    parser.add_argument("--data", help="CoNLL-2003 directory with train.txt, valid.txt, test.txt")
    parser.add_argument("--out", type=Path, default=Path("gpu_payload"))
    args = parser.parse_args(argv)
    with exit_on_user_error():
        manifest = build(inputs.model_dir(args.model), inputs.data_dir(args.data), args.out)
    print(f"wrote {args.out}: {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB "
          f"(limit {LIMIT_BYTES / 2**20:.0f} MiB); model weights in bf16 from {manifest['model_from']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
