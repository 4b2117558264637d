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

from bardlet.defaults import UserError


def choose_device(wanted: str = "auto") -> str:
    """params.yaml's `device`: auto picks CUDA, then Apple's MPS, then the CPU; a named one
    that is not there is an error that says so, not a silent fall back to the CPU."""
    present = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if wanted == "auto":
        return next(kind for kind, here in present.items() if here)
    if wanted not in present:
        raise UserError(f"device {wanted!r} is not one of auto, cuda, mps, cpu")
    if not present[wanted]:
        raise UserError(
            f"device is {wanted} but this machine has no {wanted.upper()} device that PyTorch "
            "can use: set `device: auto` (or cpu) in params.yaml"
        )
    return wanted


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The lower precision training runs its forward pass in, or None for fp32: bf16 on a
    CUDA GPU that has it; fp32 on MPS and the CPU (bf16 there is slower or unsupported)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def init(wanted: str = "auto") -> torch.device:
    """Join the process group if torchrun started us; returns this rank's device."""
    kind = choose_device(wanted)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # gloo runs on any CPU; NCCL is the fast path between GPUs.
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    if kind == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device(kind)


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
