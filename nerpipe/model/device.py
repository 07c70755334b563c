"""Where the model runs and in which precision: the device, bf16 autocast and its `auto` rule."""

from contextlib import nullcontext

import torch


def pick_device():
    """CUDA when present (with TF32 for the matmuls that stay fp32 under bf16 autocast), else CPU."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    return torch.device("cpu")


def use_bf16(setting, device):
    """'auto': on CUDA, and on CPUs with native bf16 dot products (avx512_bf16 or AMX), where oneDNN's
    bf16 matmuls run at about twice the fp32 rate (bench/NOTES_bf16.md); elsewhere bf16 is emulated."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return device.type == "cuda"


def autocast(device, enabled):
    """bf16 autocast where asked for; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()
