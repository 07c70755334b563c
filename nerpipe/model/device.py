"""Where the model runs and in which precision: the device, bf16 autocast and its `auto` rule, and TF32,
which follows bf16."""

from contextlib import nullcontext

import torch


def pick_device():
    """CUDA when present, else CPU. Precision is set apart: use_bf16, then set_tf32."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def torch_build():
    """The torch that runs, as its install names it: `torch 2.13.0+cpu`, `torch 2.13.0+cu130 (CUDA 13.0)`, or
    `torch 2.13.0 (MPS)` on a Mac. A CUDA build also runs on a machine without a GPU, and says so here."""
    accelerator = (f" (CUDA {torch.version.cuda})" if torch.version.cuda
                   else " (MPS)" if torch.backends.mps.is_available() else "")
    return f"torch {torch.__version__}{accelerator}"


def use_bf16(setting, device):
    """'auto': on CUDA GPUs and CPUs that run bf16 natively -- compute capability 8.0 and later (Ampere
    on), avx512_bf16 or AMX -- where bf16 matmuls run at about twice the fp32 rate (BENCHMARKS.md "bf16 on this CPU").
    Elsewhere (T4, V100, AVX2) bf16 is emulated, slower than fp32."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    if device.type == "cuda":
        # including_emulation=False: True only where the hardware has bf16 (torch >= 2.4 has the argument)
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def set_tf32(device, bf16):
    """TF32 follows the resolved bf16: on a GPU in bf16, the matmuls autocast leaves in fp32 may use TF32;
    with bf16 off every matmul is strict IEEE fp32, so `train.bf16: off` gives exactly the numbers of an
    fp32 transformers pipeline. Sets torch's process-wide flags on CUDA; returns whether TF32 is on."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = bool(bf16)
    torch.backends.cudnn.allow_tf32 = bool(bf16)  # torch's default is True: off means off for convolutions too
    return bool(bf16)


def pad_multiple(device):
    """Rows are padded to a multiple of 8 on CUDA, where tensor cores want it; to their own length elsewhere."""
    return 8 if device.type == "cuda" else 1


def autocast(device, enabled):
    """bf16 autocast where asked for; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()
