"""Aspect-ratio grouped batches (Detectron2's ``AspectRatioGroupedDataset`` idea as a batch
sampler): indices from any sampler are put in one bucket per group (landscape ``w >= h`` or
portrait ``w < h``) and a bucket is yielded as a batch when it is full, so a batch never
mixes orientations and padding wastes little.

The index stream is endless (:class:`detres.data.sampling.InfiniteSampler`, sharded over
torchrun ranks), its ``(index, seed)`` items pass through unchanged. The batches are a
deterministic function of that stream, so ``start_iter`` skips ahead exactly (a resumed run
sees the batches the uninterrupted run would have seen).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import Sampler


def aspect_groups(records: Sequence[dict[str, Any]]) -> list[int]:
    """0 for landscape (``width >= height``), 1 for portrait images."""
    return [0 if r["width"] >= r["height"] else 1 for r in records]


def _index(item: Any) -> int:
    return int(item[0]) if isinstance(item, tuple) else int(item)


class GroupedBatchSampler(Sampler[list[Any]]):
    """Endless batches of ``batch_size`` items of one group from an endless ``sampler``
    (:class:`detres.data.sampling.InfiniteSampler`); ``group_ids=None`` puts everything in
    one group (plain batching). ``start_iter`` skips that many batches."""

    def __init__(self, sampler: Iterable[Any], group_ids: Sequence[int] | None,
                 batch_size: int, *, start_iter: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.batch_size = batch_size
        self.start_iter = start_iter

    def _group(self, item: Any) -> int:
        return 0 if self.group_ids is None else self.group_ids[_index(item)]

    def _batches(self) -> Iterator[list[Any]]:
        buckets: dict[int, list[Any]] = {}
        for item in self.sampler:
            b = buckets.setdefault(self._group(item), [])
            b.append(item)
            if len(b) == self.batch_size:
                yield b
                buckets[self._group(item)] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return itertools.islice(self._batches(), self.start_iter, None)


class InferenceSampler(Sampler[int]):
    """Contiguous, unpadded shards of ``range(size)`` for test time (Detectron2's): rank r
    gets one block, shard sizes differ by at most one and every index appears exactly once
    over all ranks, so gathered results need no de-duplication."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        base, extra = divmod(size, world_size)
        sizes = [base + int(r < extra) for r in range(world_size)]
        self.begin = sum(sizes[:rank])
        self.end = self.begin + sizes[rank]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
