"""What the benchmark needs to know about a GPU: that there is one (never a silent fall-back to the CPU),
what it is, one device for every trainer, and the peak memory a run took."""

import os
import subprocess

import torch

from nerpipe.core.errors import UserError


def require_cuda(what="--device cuda"):
    """Raise a UserError that says why, unless torch sees a CUDA GPU."""
    if torch.cuda.is_available():
        return
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise UserError(f"{what}: a CUDA GPU is required, and torch {torch.__version__} ({build}) sees none "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); run it on a machine "
                    "with a GPU and a CUDA build of torch")


def one_gpu_env(env):
    """`env` with CUDA_VISIBLE_DEVICES naming one GPU, the first one visible: with several, the Trainer
    would wrap the model in DataParallel (a batch per GPU, fewer steps) while nerpipe uses one."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    return {**env, "CUDA_VISIBLE_DEVICES": "0" if visible is None else visible.split(",")[0].strip()}


def gpu_info():
    """The GPU in use: name, compute capability, memory, the CUDA torch was built for, and what
    nvidia-smi says of the driver and clocks when it is there."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    info = {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_mib": round(props.total_memory / 2**20), "multiprocessors": props.multi_processor_count,
            "torch_cuda": torch.version.cuda, "visible_gpus": torch.cuda.device_count(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader", "-i", str(torch.cuda.current_device())],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device):
    """Peak GPU memory since the last reset: allocated by tensors, and reserved by torch's allocator."""
    if device.type != "cuda":
        return None
    return {"allocated": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "reserved": round(torch.cuda.max_memory_reserved(device) / 2**20, 1)}
