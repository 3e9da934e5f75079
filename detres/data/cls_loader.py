"""Classification data sets and loaders built from a :class:`~detres.config.Config`.

``build_cls_dataset(cfg, train)`` concatenates the ``cfg.data.train`` (or ``test``) entries,
resolved through the catalog, and applies the albumentations pipeline of
``cfg.data.cls_aug`` normalized with ``cfg.model.input.pixel_mean/std``; items are
``(float Tensor[3, crop, crop], int label)``. ``build_cls_loader(cfg, train, batch_size)``
wraps it in a DataLoader; ``batch_size`` is per process (``cfg.solver.batch_size`` is the
total over all processes, so the caller divides it by the world size).

Under ``torch.distributed`` the training loader uses a ``DistributedSampler`` (call
``loader.sampler.set_epoch(epoch)`` each epoch) and the test loader an
:class:`InferenceSampler` that splits the set into contiguous shards without padding or
duplicates, so gathered metrics count every image exactly once.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from detres.config import Config, data_root
from detres.data.catalog import build_source
from detres.data.cls_transforms import ClsTransform, build_cls_transform
from detres.engine.distributed import get_rank, get_world_size, is_dist


class ClsSource(Protocol):
    """What a classification format builder returns (ImageFolder, CIFAR, synthetic)."""

    classes: list[str]
    targets: Sequence[int] | np.ndarray

    def __len__(self) -> int: ...

    def load(self, i: int) -> tuple[np.ndarray, int]: ...


class ClsDataset(Dataset[tuple[torch.Tensor, int]]):
    """Concatenation of sources sharing one class list, with a transform applied."""

    def __init__(self, sources: Sequence[ClsSource], transform: ClsTransform | None) -> None:
        if not sources:
            raise ValueError("no classification data sets given")
        first = sources[0]
        for s in sources[1:]:
            if list(s.classes) != list(first.classes):
                raise ValueError(
                    f"data sets {getattr(first, 'name', first)!r} and {getattr(s, 'name', s)!r} "
                    f"have different classes ({len(first.classes)} vs {len(s.classes)}: "
                    f"{list(first.classes)[:5]}... vs {list(s.classes)[:5]}...)"
                )
        self.sources = list(sources)
        self.classes: list[str] = list(first.classes)
        self.transform = transform
        self.cumulative_sizes = np.cumsum([len(s) for s in sources]).tolist()
        self.targets = np.concatenate([np.asarray(s.targets, dtype=np.int64) for s in sources])

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """The decoded image (uint8 HxWx3 RGB) and label, before the transform."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        k = bisect.bisect_right(self.cumulative_sizes, index)
        return self.sources[k].load(index - (self.cumulative_sizes[k - 1] if k else 0))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.load(index)
        if self.transform is None:
            return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label
        return self.transform(image), label

    def reseed(self, seed: int) -> None:
        if self.transform is not None:
            self.transform.reseed(seed)


def build_cls_dataset(cfg: Config, train: bool) -> ClsDataset:
    """The ``cfg.data.train`` (or ``test``) sets, concatenated, with the cls_aug pipeline."""
    entries = cfg.data.train if train else cfg.data.test
    if not entries:
        raise ValueError(f"config key 'data.{'train' if train else 'test'}' lists no data sets")
    root = data_root(cfg)
    sources = [build_source(ds, root) for ds in entries]
    for ds, src in zip(entries, sources, strict=True):
        if not hasattr(src, "classes") or not hasattr(src, "load"):
            raise TypeError(
                f"data set {ds.name or ds.path!r} ({ds.format or 'catalog'}) is not a "
                f"classification set (got {type(src).__name__})"
            )
    compose = build_cls_transform(
        cfg.data.cls_aug, train, mean=cfg.model.input.pixel_mean, std=cfg.model.input.pixel_std
    )
    ds = ClsDataset(sources, ClsTransform(compose))
    if cfg.model.num_classes < len(ds.classes):
        raise ValueError(
            f"config key 'model.num_classes' is {cfg.model.num_classes} but the data has "
            f"{len(ds.classes)} classes"
        )
    return ds


class InferenceSampler(Sampler[int]):
    """Contiguous shard ``rank`` of ``range(size)``; shards differ by at most one index."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None):
        self.size = size
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        per, extra = divmod(size, self.world_size)
        self.begin = self.rank * per + min(self.rank, extra)
        self.end = self.begin + per + (1 if self.rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


def _seed_for(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy, random and the augmentation pipeline from the worker's torch seed (which
    derives from the loader's generator). (No ``cv2.setNumThreads`` here: in a forked worker
    it can deadlock on the parent's OpenCV thread pool.)"""
    info = get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, ClsDataset):
        dataset.reseed(seed)


def build_cls_loader(cfg: Config, train: bool, batch_size: int) -> DataLoader:
    """DataLoader of ``build_cls_dataset(cfg, train)`` with ``batch_size`` images per process.

    Training: shuffled (``DistributedSampler`` seeded by ``train.seed`` under DDP), last
    incomplete batch dropped. Test: in order, nothing dropped (sharded without duplicates
    under DDP). Sample order and augmentations are reproducible from ``cfg.train.seed``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dataset = build_cls_dataset(cfg, train)
    seed, rank = cfg.train.seed, get_rank()
    generator = torch.Generator()
    generator.manual_seed(_seed_for(seed, rank))  # per-rank augmentations
    dataset.reseed(_seed_for(seed + 1, rank))  # used when num_workers == 0
    sampler: Sampler[int] | None = None
    if is_dist():
        sampler = (
            DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)
            if train
            else InferenceSampler(len(dataset))
        )
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if sampler is None else None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn,
        generator=generator,
    )
