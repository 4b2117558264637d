"""Data-parallel training across processes: the same entry point, launched by torchrun.

    torchrun --nproc_per_node=2 -m stages.pretrain        # 2 processes on one machine
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m stages.pretrain

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything is one process and
nothing here does anything. Each rank draws its own share of every batch, gradients are
averaged across ranks (DDP), and only rank 0 logs, tracks and writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> torch.device:
    """Join the process group if torchrun started us; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # gloo runs on any CPU; NCCL is the fast path between GPUs.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
