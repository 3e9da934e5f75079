"""Deterministic, resumable sample streams.

:class:`InfiniteSampler` yields ``(index, seed)`` pairs forever: a fresh permutation per
epoch from ``seed + epoch``, sharded across ranks, starting at any position. The per-sample
seed drives that sample's augmentation (see :class:`SeededDataset`), so a run gives the same
batches whatever the number of workers, and a resumed run continues exactly where the
uninterrupted one would have been.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detres.utils.dist import get_rank, get_world_size


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 31-bit seed for one draw, mixed so neighbouring draws are unrelated."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0]) & 0x7FFFFFFF


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless ``(index, seed)`` stream for this rank, skipping ``start`` draws."""

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError("InfiniteSampler: the data set is empty")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def _global(self) -> Iterator[tuple[int, int, int]]:
        for epoch in itertools.count():
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(self.size, generator=g).tolist()
            else:
                order = list(range(self.size))
            for pos, idx in enumerate(order):
                yield epoch, pos, idx

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = itertools.islice(self._global(), self.rank, None, self.world_size)
        for epoch, pos, idx in itertools.islice(stream, self.start, None):
            yield idx, sample_seed(self.seed, epoch, pos)


def seed_sample(seed: int, transforms: Any = None) -> None:
    """Seed every RNG an augmentation may draw from, for one sample."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if transforms is not None and hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(seed)  # albumentations >= 2 keeps its own generators


class SeededDataset(Dataset):
    """Wraps a map-style data set whose items take augmentation randomness from the global
    RNGs or from an albumentations pipeline found at ``dataset.transforms``/``.transform``;
    ``ds[(index, seed)]`` seeds them first. Plain integer indices pass straight through."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        idx, seed = key
        ds = self.dataset
        # Seed for this sample, then put the caller's RNG streams back: with num_workers=0
        # this runs in the training process, whose own draws must not depend on the data.
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            seed_sample(seed, getattr(ds, "transforms", None) or getattr(ds, "transform", None))
            return ds[idx]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
