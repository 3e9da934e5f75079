"""Deterministic, resumable sample streams.

:class:`InfiniteSampler` yields ``(index, seed)`` pairs forever: a fresh permutation per
epoch from ``seed + epoch``, sharded across ranks, starting at any position. The per-sample
seed drives that sample's augmentation (see :class:`SeededDataset`), so a run gives the same
batches whatever the number of workers, and a resumed run continues exactly where the
uninterrupted one would have been.

Repeat-factor sampling (LVIS, Gupta et al. 2019; Detectron2's
``RepeatFactorTrainingSampler``) for imbalanced sets: :func:`repeat_factors` gives each image
``r(I) = max over its classes c of max(1, sqrt(t / f(c)))``, ``f(c)`` the fraction of
training images that hold class ``c``; each epoch of :class:`InfiniteSampler` then draws
every image ``floor(r)`` times plus once more with probability ``r - floor(r)``, from the
epoch's own seeded generator, so a resumed run draws exactly what the uninterrupted one did.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from detres.utils.dist import get_rank, get_world_size


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 31-bit seed for one draw, mixed so neighbouring draws are unrelated."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0]) & 0x7FFFFFFF


def repeat_factors(classes: Sequence[Tensor], threshold: float) -> Tensor:
    """Each image's repeat factor from the classes it holds (see the module docstring);
    images without objects get 1."""
    if not classes:
        return torch.ones(0)
    k = max((int(c.max()) for c in classes if len(c)), default=0)
    present = torch.zeros(len(classes), k + 1, dtype=torch.bool)  # (N images, K + 1)
    for i, c in enumerate(classes):
        present[i, c.long()] = True
    freq = present.float().mean(0)  # fraction of images holding each class
    per_class = torch.clamp(torch.sqrt(threshold / freq.clamp_min(1e-12)), min=1.0)
    per_image = (present.float() * per_class).amax(1)
    return torch.clamp(per_image, min=1.0)


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless ``(index, seed)`` stream for this rank, skipping ``start`` draws; with
    ``repeat_factors``, each epoch draws image ``i`` about ``repeat_factors[i]`` times."""

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        repeat_factors: Tensor | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError("InfiniteSampler: the data set is empty")
        if repeat_factors is not None and len(repeat_factors) != size:
            raise ValueError(f"{len(repeat_factors)} repeat factors for {size} images")
        self.repeat_factors = repeat_factors
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def _global(self) -> Iterator[tuple[int, int, int]]:
        for epoch in itertools.count():
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.arange(self.size)
            if self.repeat_factors is not None:  # stochastic rounding of the factors
                r = self.repeat_factors
                reps = r.floor() + (torch.rand(self.size, generator=g) < r - r.floor()).float()
                order = torch.repeat_interleave(order, reps.long())
            if self.shuffle:
                order = order[torch.randperm(len(order), generator=g)]
            order = order.tolist()
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
