"""Training on several processes: PyTorch's own engine (`torchrun` and `DistributedDataParallel`), no other.

    torchrun --nproc_per_node=N -m ddpm_lite train --config cifar10          # N GPUs (or N CPU processes) on one node
    torchrun --nnodes=2 --node_rank=K --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m ddpm_lite train --config cifar10   # two nodes, run once on each

torchrun starts one process per device and tells each its rank in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); `init_from_env` joins them into one process group (nccl between GPUs, gloo between CPU
processes). `train` then wraps the network in DistributedDataParallel, which averages the gradients of all
processes in every backward pass, so every process holds the same weights after every step.

Data streams. A run's global batch (`TrainConfig.batch_size`) is split into equal shares, one per data stream, and
each stream draws its share's data indices, flips, timesteps t and noise eps from its own generator, seeded by
`stream_seed(seed, stream)`. Stream 0 is seeded with the config's seed itself, so a one-process run draws exactly
what it always has. By default a run has one stream per process; one process can also draw several streams
(`train(data_streams=...)`, `--data-streams`), which reproduces an N-process run's batches in a single process
(the test of this module's claim) or continues a checkpoint of N processes on fewer.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os

import torch
import torch.distributed as dist

__all__ = ["agree", "all_gather", "init_from_env", "launched", "leave", "rank", "rank_zero_first", "stream_seed", "world_size"]


def launched() -> bool:
    """True in a process that torchrun started as part of a group of more than one."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str) -> torch.device:
    """Join the process group torchrun describes in the environment and return this process's device: the GPU
    cuda:LOCAL_RANK with the nccl backend, or the CPU with gloo. Call once per process, before `train`."""
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # nccl's collectives run on the current device
    elif device_type == "cpu":
        device = torch.device("cpu")
    else:
        raise ValueError(f"distributed training runs on cuda (nccl) or cpu (gloo), got {device_type!r}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return device


def leave() -> None:
    """Leave the process group, if this process joined one (at the end of a command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def stream_seed(seed: int, stream: int, restart: int = 0) -> int:
    """The seed of data stream `stream` of a run seeded with `seed`: `seed` itself for stream 0, so one-process runs
    are unchanged; else 64 bits of a hash of (seed, stream, restart), unrelated to any other stream's. `restart`
    numbers the times a run's streams were started anew (`--reshard` passes the step it restarts at)."""
    if stream < 0:
        raise ValueError(f"stream must be >= 0, got {stream}")
    if stream == 0 and restart == 0:
        return seed
    digest = hashlib.blake2b(f"ddpm-lite stream {seed} {stream} {restart}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def all_gather(value) -> list:
    """Every process's `value` (any picklable object), in rank order; `[value]` without a group."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def agree(loss: torch.Tensor, *flags: bool) -> tuple[float, ...]:
    """The mean of every process's `loss` (a scalar tensor) and, for each flag, whether any process raised it: one
    all-reduce, so that all processes log the same loss and take the same decisions (stop, checkpoint). Without a
    group: the loss's value and the flags themselves."""
    if not dist.is_initialized():
        return (loss.item(), *flags)
    values = torch.tensor([loss.item(), *map(float, flags)], dtype=torch.float64,
                          device=loss.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(values)  # sum
    mean, *raised = values.tolist()
    return (mean / dist.get_world_size(), *(count > 0 for count in raised))


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block (a download, say) before the other processes do, so they find its files in place."""
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if dist.is_initialized() and dist.get_rank() == 0:
            dist.barrier()
