"""What a training run cost in parameters and memory, for reports/train/metrics.json and MLflow."""

import resource

import torch

from nerpipe.model.loading import count_parameters
from nerpipe.model.methods import adapter_bytes


def footprint(model, device, model_dir):
    """Trainable and total parameters of `model` as it trained, the saved adapter's size, and this
    process's peak memory: resident set size on the CPU (which includes the data and Python), and
    on a GPU also the peak of tensors allocated there."""
    trainable, total = count_parameters(model)
    out = {"trainable_parameters": trainable, "total_parameters": total,
           "trainable_percent": round(100 * trainable / total, 4),
           "adapter_mib": round(adapter_bytes(model_dir) / 2**20, 3),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KiB
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
