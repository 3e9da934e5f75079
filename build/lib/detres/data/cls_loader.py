"""Classification data sets and loaders built from a :class:`~detres.config.Config`.

``build_cls_dataset(cfg, train)`` concatenates the ``cfg.data.train`` (or ``test``) entries,
resolved through the catalog, and applies the albumentations pipeline of
``cfg.data.cls_aug`` normalized with ``cfg.model.input.pixel_mean/std``; items are
``(float Tensor[3, crop, crop], int label)``. The loaders are iteration-based as the
detection ones: ``build_cls_train_loader`` never ends and resumes exactly at any iteration;
``build_cls_test_loader`` shards the test set over ranks without padding or duplicates, so
gathered metrics count every image exactly once.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detres.config import Config, data_root
from detres.data.catalog import build_source
from detres.data.cls_transforms import ClsTransform, build_cls_transform
from detres.data.samplers import InferenceSampler
from detres.data.sampling import InfiniteSampler, SeededDataset
from detres.utils.dist import get_rank, get_world_size
from detres.utils.errors import InputError


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
            raise InputError("no classification data sets given")
        first = sources[0]
        for s in sources[1:]:
            if list(s.classes) != list(first.classes):
                raise InputError(
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


def build_cls_dataset(cfg: Config, train: bool) -> ClsDataset:
    """The ``cfg.data.train`` (or ``test``) sets, concatenated, with the cls_aug pipeline."""
    entries = cfg.data.train if train else cfg.data.test
    if not entries:
        raise InputError(f"config key 'data.{'train' if train else 'test'}' lists no data sets")
    root = data_root(cfg)
    sources = [build_source(ds, root) for ds in entries]
    for ds, src in zip(entries, sources, strict=True):
        if not hasattr(src, "classes") or not hasattr(src, "load"):
            raise TypeError(
                f"data set {ds.name or ds.path!r} ({ds.format or 'catalog'}) is not a "
                f"classification set (got {type(src).__name__})"
            )
    i = cfg.model.input
    compose = build_cls_transform(cfg.data.cls_aug, train, mean=i.pixel_mean, std=i.pixel_std,
                                  input_format=i.format, pixel_range=i.pixel_range)
    ds = ClsDataset(sources, ClsTransform(compose))
    if cfg.model.num_classes < len(ds.classes):
        raise InputError(
            f"config key 'model.num_classes' is {cfg.model.num_classes} but the data has "
            f"{len(ds.classes)} classes"
        )
    return ds


def build_cls_train_loader(cfg: Config, *, start_iter: int = 0,
                           ds: ClsDataset | None = None) -> DataLoader:
    """Endless batches of this process's share of ``solver.batch_size`` from the ``data.train``
    sets, from iteration ``start_iter`` on (the batches an uninterrupted run would have
    drawn): :class:`~detres.data.sampling.InfiniteSampler` indices sharded over ranks, each
    draw seeding its own augmentation, so the batches do not depend on the worker count."""
    ds = ds if ds is not None else build_cls_dataset(cfg, train=True)
    per_rank = cfg.solver.batch_size // get_world_size()
    sampler = InfiniteSampler(len(ds), seed=cfg.train.seed, start=start_iter * per_rank)
    return DataLoader(SeededDataset(ds), batch_size=per_rank, sampler=sampler, drop_last=True,
                      **_loader_kwargs(cfg))


def build_cls_test_loader(cfg: Config, ds: ClsDataset | None = None, *,
                          batch_size: int = 256) -> DataLoader:
    """The ``data.test`` sets in order, nothing dropped; under torchrun each rank gets a
    contiguous shard without duplicates (:class:`~detres.data.samplers.InferenceSampler`)."""
    ds = ds if ds is not None else build_cls_dataset(cfg, train=False)
    sampler = InferenceSampler(len(ds), rank=get_rank(), world_size=get_world_size())
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, **_loader_kwargs(cfg))


def _loader_kwargs(cfg: Config) -> dict[str, Any]:
    w = cfg.data.num_workers
    return {"num_workers": w, "pin_memory": torch.cuda.is_available(),
            "persistent_workers": w > 0}
