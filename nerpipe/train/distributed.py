"""Several training processes under torchrun (torch.distributed): which one this is, its share of each
optimizer step, and the few collectives the loop needs.

    torchrun --standalone --nproc-per-node 2 stages/train.py ...      # what train.processes: 2 runs

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process; without them this is one process and
every function here is a no-op. The model is wrapped in DistributedDataParallel (NCCL on CUDA, gloo
on CPU), but the batches stay nerpipe's own: every process builds the same batch list from (seed,
epoch) and takes every size-th sentence of each micro-batch, so the global batch, the number of
steps and the learning-rate schedule do not depend on the number of processes.
"""

import datetime
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nerpipe.core.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def share(self, indices):
        """This process's sentences of one micro-batch: every size-th, from its rank on. Empty when the
        micro-batch has fewer sentences than there are processes."""
        return indices[self.rank::self.size]

    def any(self, flag):
        """True in every process if it is true in any: a stop request reaches all of them."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, value):
        """The sum over processes of a float (or 0-dim tensor): one step's loss from its shares."""
        if not self.distributed:
            return value
        # a copy: all_reduce works in place, and `value` may be the caller's running sum
        total = torch.as_tensor(value, dtype=torch.float64).detach().reshape(1).to(_collective_device(), copy=True)
        dist.all_reduce(total)
        return total[0]

    def from_main(self, obj):
        """The main process's `obj` in every process (any picklable value)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    def gather_to_main(self, obj):
        """[obj of rank 0, obj of rank 1, ...] in the main process; None elsewhere."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def wrap(self, model):
        """The model as the training step sees it: DistributedDataParallel over all processes."""
        if not self.distributed:
            return model
        device_ids = [self.local_rank] if next(model.parameters()).device.type == "cuda" else None
        # broadcast_buffers=False: DDP would otherwise send the main's buffers to every process before each
        # forward; a BERT-family encoder's buffers (position_ids, token_type_ids) are constants, equal everywhere
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    def no_sync(self, model, last):
        """DDP's no_sync for every micro-batch of a step but the last: gradients are all-reduced once."""
        return model.no_sync() if self.distributed and not last else nullcontext()


def seed_rank(world, seed):
    """With several processes, each draws its own dropout masks: its CPU and CUDA generators are seeded with
    seed + rank (with one seed, every process would drop the same positions of its own sentences). The
    weights need no seed of their own: DDP starts every process from the main's. One process: untouched."""
    if world.distributed:
        torch.manual_seed(seed + world.rank)  # the CPU generator and every CUDA device's


def rng_state(device):
    """This process's random-number state: the CPU generator's, and that of its GPU when it trains on one."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None}


def set_rng_state(saved, device):
    """Put back what rng_state saved (the CUDA part only on a GPU: the device type is in the checkpoint's settings)."""
    torch.set_rng_state(saved["cpu"])
    if saved["cuda"] is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"], device)


def _collective_device():
    # gloo reduces CPU tensors, NCCL CUDA tensors
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launch(processes):
    """Make this script run as `processes` processes: under torchrun, check that it started that many;
    otherwise, for more than one, replace this process by `torchrun --standalone` running the same
    command line (exec: the process DVC waits for becomes torchrun, which forwards Ctrl-C and SIGTERM
    to the workers and exits non-zero when any of them fails)."""
    if "LOCAL_RANK" in os.environ:  # started by torchrun
        started = int(os.environ["WORLD_SIZE"])
        if started != processes:
            raise UserError(f"train.processes is {processes}, but torchrun started {started} processes in all "
                            f"(WORLD_SIZE); set train.processes={started}, so that dvc.lock and the checkpoints "
                            "record how the model was trained")
        return
    if processes > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc-per-node={processes}", *sys.argv])


def init_world(device):
    """The World torchrun describes, with its process group started (NCCL for CUDA, gloo for CPU);
    World() for one process. On CUDA each process uses the GPU of its LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    # A rank that dies is noticed by torchrun, which stops the others; the timeout only bounds a
    # collective that a live but stuck process never joins.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return world, device


def close_world(world):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
