"""The training batches, read ahead by ``torch.utils.data.DataLoader`` workers.

:class:`StepBatches` yields this process's shard of the global batch of every step
``start, start + 1, ..., total - 1``, read from the stores by
:meth:`agrepa.training.dataset.TrainingData.collate`. The batch of a step depends only on
(run seed, stream, step, sampler state at ``start``): each worker builds its own
:class:`~agrepa.training.dataset.BalancedSampler` from that state, walks it through every
step (indices only: cheap) and reads the steps ``start + w, start + w + W, ...`` of worker
``w`` of ``W``; the DataLoader returns them round-robin, i.e. in step order. So batches
with ``train.num_workers`` > 0 equal those of ``num_workers: 0`` bitwise.

The training loop keeps the *consumed* position: it advances its own sampler by one batch
per step and checks the loader's indices against it (:func:`next_batch`), so the sampler
state a checkpoint saves is that of the last batch trained on, never of one prefetched.

The crop and prompt uniforms are the first two draws of the step's generator
(:func:`positions`), shared with :func:`agrepa.training.train.draw_step`.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .dataset import BalancedSampler, TrainingData, generator

CONFIG_KEYS = ("train",)  # config sections this module reads


def step_generator(seed: int, stream: str, step: int) -> torch.Generator:
    """The generator of a step's draws (crops, prompts, flow times, noise, dropout)."""
    return generator(seed, stream, "batch", step)


def positions(g: torch.Generator, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop and prompt uniforms ``[G]``: the first draws of a step's generator."""
    return torch.rand(G, generator=g), torch.rand(G, generator=g)


class StepBatches(IterableDataset):
    """Local batches of the steps ``[start, total)`` (see module doc); each item is the batch dict
    with ``step`` and ``indices`` (the global batch's clip indices) added. ``local`` a list of
    slices (the micro-steps of gradient accumulation, :func:`agrepa.training.distributed.micro_slices`):
    the item holds ``micro``, one batch dict per slice, each padded to its own longest clip."""

    def __init__(self, clips: TrainingData, sampler_state: dict, *, batch_size: int, seed: int, stream: str,
                 local: slice | list[slice], start: int, total: int, draw_offset: int = 0):
        self.clips, self.sampler_state = clips, dict(sampler_state)
        self.batch_size, self.seed, self.stream, self.local = int(batch_size), int(seed), str(stream), local
        self.start, self.total, self.draw_offset = int(start), int(total), int(draw_offset)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        w, W = (0, 1) if info is None else (info.id, info.num_workers)
        sampler = BalancedSampler(self.clips.domain, self.batch_size, self.seed, tag=self.stream)
        sampler.load_state_dict(self.sampler_state)
        j = self.local
        for step in range(self.start, self.total):
            idx = sampler.next_batch()
            if (step - self.start) % W != w:
                continue
            crop, prompt = positions(step_generator(self.seed, self.stream, self.draw_offset + step), self.batch_size)
            if isinstance(j, slice):
                yield {**self.clips.collate(idx[j], crop[j], prompt[j]), "step": step, "indices": idx}
            else:
                yield {"micro": [self.clips.collate(idx[k], crop[k], prompt[k]) for k in j], "step": step,
                       "indices": idx}


def loader(cfg: dict, batches: StepBatches, pin_memory: bool) -> DataLoader:
    """The DataLoader over ``batches`` (``train.num_workers``, ``train.prefetch_factor``)."""
    tc = cfg["train"]
    workers, prefetch = int(tc["num_workers"]), int(tc["prefetch_factor"])
    if workers < 0 or prefetch < 1:
        raise ValueError(f"train.num_workers / train.prefetch_factor: must be >= 0 / >= 1, got {workers} / {prefetch}")
    # its own generator: a DataLoader iterator otherwise draws its base seed from torch's global RNG,
    # which would shift the dropout stream of the run (and break exact resume)
    g = generator(batches.seed, batches.stream, "loader", batches.start)
    return DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=prefetch if workers else None,
                      pin_memory=pin_memory, persistent_workers=False, generator=g)


def next_batch(it: Iterator[dict], sampler: BalancedSampler, step: int) -> dict:
    """The loader's batch of ``step``; advances the consumed ``sampler`` and checks the two agree."""
    item = next(it)
    idx = sampler.next_batch()
    if item["step"] != step or item["indices"] != idx:
        raise RuntimeError(f"data loader out of step: got step {item['step']} (clips {item['indices'][:4]}...), "
                           f"the loop is at step {step} (clips {idx[:4]}...)")
    return {k: v for k, v in item.items() if k not in ("step", "indices")}
