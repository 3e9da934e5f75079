"""Detection data loaders: sources from the config, the per-image dataset, and the train and
test DataLoaders.

Training is iteration-based (as in Detectron2): the train loader never ends. Its index stream
is :class:`~detres.data.sampling.InfiniteSampler` (a fresh permutation per epoch from
``train.seed``, sharded across torchrun ranks), grouped into single-orientation batches by
:class:`~detres.data.samplers.GroupedBatchSampler`. Each draw carries its own seed, which
seeds that image's augmentation, so the batches do not depend on ``data.num_workers`` and
``start_iter`` resumes exactly.

The test loader is sequential; under torchrun each rank gets a contiguous, unpadded shard
(:class:`~detres.data.samplers.InferenceSampler`), so gathering every rank's predictions
scores each image once. ``loader.dataset.source`` is the :class:`DetSource` to score against.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from detres.config import Config, data_root
from detres.data.catalog import DETECTION_FORMATS, build_source, format_of
from detres.data.collate import make_collate
from detres.data.det_source import DetSource, Record, concat_sources, training_records
from detres.data.det_transforms import DetTransform, apply_det_transform, build_det_transform
from detres.data.image_check import apply_image_check
from detres.data.image_io import load_image
from detres.data.record_store import RecordStore, freeze_inherited_objects
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, aspect_groups
from detres.data.sampling import InfiniteSampler, SeededDataset, repeat_factors
from detres.utils.dist import get_rank, get_world_size
from detres.utils.errors import InputError

LOG = logging.getLogger("detres")


class DetDataset(Dataset):
    """Records -> samples: decode (cv2), transform, and the target fields of
    :mod:`detres.data.collate`. Boxes and classes are used as they are: filter the records
    first (:func:`~detres.data.det_source.training_records`)."""

    def __init__(self, records: Sequence[Record], transform: DetTransform,
                 source: DetSource | None = None) -> None:
        self.records = RecordStore(records)  # one buffer: workers read it without copying
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        image = load_image(r["file"], (r["height"], r["width"]))
        out = apply_det_transform(self.transform, image, r["boxes"], r["classes"])
        return {
            "image": out["image"],
            "gt_boxes": out["boxes"],
            "gt_classes": out["classes"],
            "image_id": r["image_id"],
            "orig_size": (r["height"], r["width"]),
            "image_size": (out["image"].shape[1], out["image"].shape[2]),
            "scale": out["scale"],
        }


def build_det_sources(cfg: Config, train: bool) -> list[DetSource]:
    """The sources of ``data.train`` (``train=True``) or ``data.test``, in config order, each
    image checked once (:mod:`detres.data.image_check`). Catalog generators (the demo set) run
    here on first use."""
    sets = cfg.data.train if train else cfg.data.test
    key = "data.train" if train else "data.test"
    if not sets:
        raise InputError(f"{key}: no data sets configured")
    root = data_root(cfg)
    out = []
    for i, ds in enumerate(sets):
        fmt = format_of(ds)
        if fmt not in DETECTION_FORMATS:
            raise InputError(f"{key}[{i}] ({ds.name or ds.path!r}) is a {fmt!r} set, not a "
                             f"detection set ({' or '.join(DETECTION_FORMATS)})")
        src = build_source(ds, root, strict_boxes=cfg.data.strict_boxes)
        out.append(apply_image_check(src, ds, policy=cfg.data.bad_images, key=f"{key}[{i}]"))
    return out


def worker_init(worker_id: int) -> None:
    """Per-worker set-up: what the worker inherited kept out of the garbage collector's walks
    (:func:`~detres.data.record_store.freeze_inherited_objects`), RNGs seeded from the
    worker's seed (per-sample seeds, when present, take over afterwards). cv2's thread count
    is set once in the parent (detres.data): calling cv2.setNumThreads in a forked worker can
    deadlock on the parent's thread pool."""
    freeze_inherited_objects()
    info = get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**31
    random.seed(seed)
    np.random.seed(seed)
    ds = info.dataset if info is not None else None
    tf = getattr(ds, "transform", None)
    if tf is not None and hasattr(tf, "set_random_seed"):
        tf.set_random_seed(seed)


def _check_classes(cfg: Config, src: DetSource) -> None:
    if cfg.model.num_classes != src.num_classes:
        raise InputError(f"model.num_classes is {cfg.model.num_classes} but the training data "
                         f"{src.name!r} has {src.num_classes} classes: {src.class_names}")


def describe_repeat_factors(records: list[Record], factors: torch.Tensor,
                            class_names: list[str], threshold: float) -> str:
    """One line: what repeat-factor sampling draws per epoch, in all and per class (images
    holding the class, without and with the factors)."""
    k = len(class_names)
    present = torch.zeros(len(records), k + 1)
    for i, r in enumerate(records):
        present[i, r["classes"].long()] = 1
    before, after = present.sum(0)[1:], (present * factors[:, None]).sum(0)[1:]
    per_class = ", ".join(f"{n} {int(b)} -> {a:.0f}" for n, b, a in
                          zip(class_names, before.tolist(), after.tolist(), strict=True))
    return (f"repeat-factor sampling (data.repeat_threshold={threshold:g}): about "
            f"{float(factors.sum()):.0f} draws per epoch instead of {len(records)} "
            f"({int((factors > 1).sum())} images repeated, factors up to "
            f"{float(factors.max()):.2f}); images per class and epoch: {per_class}")


def build_det_train_loader(cfg: Config, batch_size_per_process: int, *, start_iter: int = 0,
                           sources: list[DetSource] | None = None) -> DataLoader:
    """An endless loader of ``(images Tensor[N, 3, H, W], targets list[dict])`` over the
    concatenated ``data.train`` sets (crowd boxes, and VOC difficult objects unless
    ``data.use_difficult``, left out; images left empty dropped when ``data.filter_empty``).
    ``start_iter`` skips that many batches exactly (for ``--resume``)."""
    src = concat_sources(sources if sources is not None else build_det_sources(cfg, True))
    _check_classes(cfg, src)
    records = training_records(src.records, use_difficult=cfg.data.use_difficult,
                               filter_empty=cfg.data.filter_empty)
    if not records:
        raise InputError(f"training data {src.name!r} has no usable images "
                         f"({len(src.records)} records before filtering)")
    rank, world = get_rank(), get_world_size()
    seed = cfg.train.seed
    transform = build_det_transform(cfg.model.input, train=True, seed=seed + rank)
    dataset = SeededDataset(DetDataset(records, transform, src))
    factors = None
    if cfg.data.sampler == "repeat_factor":
        factors = repeat_factors([r["classes"] for r in records], cfg.data.repeat_threshold)
        if rank == 0 and start_iter == 0:
            LOG.info("%s", describe_repeat_factors(records, factors, src.class_names,
                                                   cfg.data.repeat_threshold))
    stream = InfiniteSampler(len(records), seed=seed, shuffle=True, rank=rank, world_size=world,
                             repeat_factors=factors)
    groups = aspect_groups(records) if cfg.data.aspect_ratio_grouping else None
    batches = GroupedBatchSampler(stream, groups, batch_size_per_process, start_iter=start_iter)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        collate_fn=make_collate(cfg.model.input.size_divisibility),
        worker_init_fn=worker_init,
        generator=torch.Generator().manual_seed(seed + rank),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def build_det_test_loader(cfg: Config, dataset_index: int = 0, *, batch_size: int = 1,
                          sources: list[DetSource] | None = None) -> DataLoader:
    """A sequential loader over ``data.test[dataset_index]`` (every image, test transform);
    targets hold the boxes training would use (for a validation loss). Under torchrun each
    rank gets a contiguous shard with no duplicates."""
    srcs = sources if sources is not None else build_det_sources(cfg, False)
    if not 0 <= dataset_index < len(srcs):
        raise IndexError(f"data.test has {len(srcs)} set(s); no index {dataset_index}")
    src = srcs[dataset_index]
    records = training_records(src.records, use_difficult=cfg.data.use_difficult,
                               filter_empty=False)
    transform = build_det_transform(cfg.model.input, train=False, seed=cfg.train.seed)
    dataset = DetDataset(records, transform, src)
    sampler = InferenceSampler(len(records), rank=get_rank(), world_size=get_world_size())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=make_collate(cfg.model.input.size_divisibility),
        worker_init_fn=worker_init,
        pin_memory=torch.cuda.is_available(),
    )
