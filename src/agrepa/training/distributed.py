"""Multi-process training through ``torch.distributed`` (torchrun environment variables).

``torchrun --nproc_per_node N -m agrepa.cli train ...``
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`setup` joins
the process group (gloo on CPU, nccl on GPU). Gradients are averaged by
:func:`all_reduce_grads` (one flat buffer per dtype); every rank trains on its
contiguous shard of the same global batch, so the averaged gradient is the
global-batch gradient. Without those variables everything is a no-op (one process).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_kind: str) -> Dist:
    """Join the process group described by torchrun's environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return Dist(rank, world, local)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


@torch.no_grad()
def broadcast_parameters(d: Dist, modules: list[nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not d.enabled:
        return
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


@torch.no_grad()
def all_reduce_grads(d: Dist, params: list[nn.Parameter]) -> None:
    """Average ``p.grad`` over ranks (every param must have a grad tensor)."""
    if not d.enabled:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= d.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def all_reduce_mean(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor)."""
    x = x.detach().clone()
    if d.enabled:
        dist.all_reduce(x)
        x /= d.world_size
    return x


def all_reduce_mean_dict(d: Dist, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over ranks of named scalar tensors (one all-reduce for all), as Python floats."""
    names = list(values)
    mean = all_reduce_mean(d, torch.stack([values[k] for k in names])).cpu().tolist()
    return dict(zip(names, mean))


def all_gather_object(d: Dist, obj) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_cat(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order (no gradient; equal shapes)."""
    if not d.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_with_grad(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """As :func:`all_gather_cat`, differentiable: the backward sums every rank's gradient of the
    gathered rows into their owner (``torch.distributed.nn.functional.all_gather``), so a loss that
    every rank computes identically on the global batch, followed by :func:`all_reduce_grads`,
    gives the one-process gradient."""
    if not d.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))
