"""Aspect-ratio grouped batches (Detectron2's ``AspectRatioGroupedDataset`` idea as a batch
sampler): indices from any sampler are put in one bucket per group (landscape ``w >= h`` or
portrait ``w < h``) and a bucket is yielded as a batch when it is full, so a batch never
mixes orientations and padding wastes little.

The index stream may be an epoch sampler such as ``DistributedSampler`` (under torchrun each
rank batches its own shard; ``set_epoch`` is called for every pass) or an endless one such as
:class:`detres.data.sampling.InfiniteSampler`, whose ``(index, seed)`` items pass through
unchanged. The batches are a deterministic function of that stream, so ``start_iter`` skips
ahead exactly (a resumed run sees the batches the uninterrupted run would have seen).
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
    """Batches of ``batch_size`` items of one group from ``sampler``.

    ``infinite=True`` re-runs a finite sampler forever (epochs 0, 1, ...; partial buckets
    carry over between epochs). ``infinite=False`` makes one pass per ``__iter__`` and then
    yields what is left in each bucket as smaller single-group batches unless ``drop_last``.
    ``group_ids=None`` puts everything in one group (plain batching).
    """

    def __init__(self, sampler: Iterable[Any], group_ids: Sequence[int] | None,
                 batch_size: int, *, infinite: bool = True, drop_last: bool = False,
                 start_iter: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.batch_size = batch_size
        self.infinite = infinite
        self.drop_last = drop_last
        self.start_iter = start_iter
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """First epoch of the next ``__iter__`` (epoch mode, as with DistributedSampler)."""
        self.epoch = epoch

    def _group(self, item: Any) -> int:
        return 0 if self.group_ids is None else self.group_ids[_index(item)]

    def _passes(self) -> Iterator[Iterable[Any]]:
        for epoch in itertools.count(self.epoch) if self.infinite else [self.epoch]:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            yield self.sampler

    def _batches(self) -> Iterator[list[Any]]:
        buckets: dict[int, list[Any]] = {}
        for stream in self._passes():
            for item in stream:
                b = buckets.setdefault(self._group(item), [])
                b.append(item)
                if len(b) == self.batch_size:
                    yield b
                    buckets[self._group(item)] = []
        if not self.drop_last:
            for g in sorted(buckets):
                if buckets[g]:
                    yield buckets[g]

    def __iter__(self) -> Iterator[list[Any]]:
        return itertools.islice(self._batches(), self.start_iter, None)

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite GroupedBatchSampler has no length")
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        counts: dict[int, int] = {}
        for item in self.sampler:
            g = self._group(item)
            counts[g] = counts.get(g, 0) + 1
        n = sum(c // self.batch_size + (0 if self.drop_last else int(c % self.batch_size > 0))
                for c in counts.values())
        return max(0, n - self.start_iter)


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
