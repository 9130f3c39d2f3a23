"""Multi-process set-up for ``torchrun``: gloo on CPU, nccl on CUDA; SyncBatchNorm only when distributed."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def init_distributed(device: torch.device) -> tuple[int, int, int, torch.device]:
    rank, local_rank, world = world_info()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        dist.init_process_group(backend=backend)
    return rank, local_rank, world, device


def wrap_model(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    if world <= 1:
        return model
    from ..nn.sync_batchnorm import convert_batchnorm
    model = convert_batchnorm(model, cuda=device.type == "cuda")
    ids = [device.index] if device.type == "cuda" else None
    # a model may leave parameters without gradients by design (Ren & Zemel's box phase: the decoder)
    unused = bool(getattr(model, "ddp_find_unused_parameters", False))
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
