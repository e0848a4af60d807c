"""Multi-process training through ``torch.distributed`` (torchrun environment variables).

``torchrun --nproc_per_node N -m agrepa.cli train ...``
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`setup` joins
the process group (gloo on CPU, nccl on GPU). The trained modules are wrapped in torch's
``DistributedDataParallel`` (:func:`wrap`): gradient buckets all-reduced (averaged) while the
backward still runs, the gradients views of the buckets (``gradient_as_bucket_view``), a static
graph without accumulation (every parameter receives a gradient on every micro-step: :func:`touch`). Every rank trains
on its slices of the same global batch (:func:`micro_slices`), so the averaged gradient is the
global-batch gradient. Without those variables everything is a no-op (one process, no wrapper).
:func:`all_reduce_grads` is the flat all-reduce DDP replaced (issue 24), kept for
``benchmarks/bench_step.py``'s comparison only.
"""
from __future__ import annotations

import logging
import os
import contextlib
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


def micro_slices(batch_size: int, accumulate: int, rank: int, world_size: int) -> list[slice]:
    """The slices of a global batch of ``batch_size`` that ``rank`` trains on, one per micro-step of
    ``accumulate``: micro-step k trains the k-th contiguous ``batch_size / accumulate`` of the global
    batch (the same rows at every world size), split into contiguous per-rank shards. A micro-step's
    rows gathered over the ranks are therefore independent of the process count (what seed 003's RR
    similarities are computed over)."""
    if accumulate < 1:
        raise ValueError(f"train.accumulate: must be >= 1, got {accumulate}")
    if batch_size % (world_size * accumulate):
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the world size {world_size} "
                         f"(processes: resources.train.gpu) x train.accumulate {accumulate}: the per-process "
                         f"micro-batch is train.batch_size / (world size x train.accumulate)")
    micro = batch_size // accumulate
    m = micro // world_size
    return [slice(k * micro + rank * m, k * micro + (rank + 1) * m) for k in range(accumulate)]


def wrap(d: Dist, module: nn.Module, device: torch.device, accumulate: int = 1) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when there are several processes, else itself.

    ``gradient_as_bucket_view``: the gradients are views of the all-reduce buckets (no copy, one
    copy of the gradients in memory). Every parameter receives a gradient on every micro-step (the
    caller guarantees it with :func:`touch`), so DDP never searches for unused parameters
    (``find_unused_parameters=False``), and without accumulation it runs with ``static_graph``
    (buckets reordered to the backward's order after the first iteration). Not with
    ``accumulate`` > 1: in torch <= 2.11 ``static_graph`` with ``no_sync()`` fails its first
    backward (``expect_autograd_hooks_`` INTERNAL ASSERT, pytorch/pytorch#143580) and, patched past
    that, stops all-reducing after the first step (pytorch/pytorch#187732, open). The buckets are
    then in reverse parameter order, about the backward's. ``broadcast_buffers=False``: no buffer
    changes in training (no batch norm). The parameters were broadcast from rank 0 already
    (:func:`broadcast_parameters`). ``train.compile``: a compiled backbone called inside DDP's
    forward is split at the bucket boundaries by dynamo's DDPOptimizer (dynamo looks for the active
    DDP module), so the all-reduces still overlap its backward."""
    if not d.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(module, device_ids=[d.local_rank] if device.type == "cuda" else None,
                                  gradient_as_bucket_view=True, static_graph=accumulate == 1,
                                  broadcast_buffers=False, init_sync=False)
    if d.is_main:
        log.info("DistributedDataParallel over %d processes: %d parameters, buckets of %d MiB, %s, gradients as "
                 "bucket views", d.world_size, sum(p.numel() for p in module.parameters()),
                 ddp.bucket_bytes_cap // 2 ** 20, "static graph" if accumulate == 1 else
                 f"{accumulate} micro-steps with no_sync (no static graph: pytorch/pytorch#143580)")
    return ddp


def no_sync(module: nn.Module, sync: bool):
    """The context of one micro-step's forward and backward: DDP's ``no_sync()`` (gradients
    accumulate locally, no all-reduce) unless ``sync`` (the last micro-step of an optimiser step);
    nothing for an unwrapped module."""
    if sync or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def touch(d: Dist, loss: torch.Tensor, modules: list[nn.Module]) -> torch.Tensor:
    """``loss`` plus 0 x the sum of every parameter of ``modules`` under DDP (unchanged in one process):
    a head of a domain absent from this process's micro-batch (BiT-C, REPA) then still receives its
    (zero) gradient, so every rank reduces the same parameters every step (DDP's static graph)."""
    if not d.enabled:
        return loss
    return loss + 0.0 * sum(p.sum() for m in modules for p in m.parameters() if p.requires_grad)


@torch.no_grad()
def all_reduce_grads(d: Dist, params: list[nn.Parameter]) -> None:
    """Average ``p.grad`` over ranks (every param must have a grad tensor): the flat all-reduce after
    the whole backward that :func:`wrap` replaced (``benchmarks/bench_step.py`` times the two)."""
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
    every rank computes identically on the (micro-step's) global batch, followed by DDP's gradient
    averaging, gives the one-process gradient."""
    if not d.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))
