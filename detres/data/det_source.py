"""The detection source: per-image records plus the class list, shared by COCO, VOC and the
demo set, and the filtering that turns evaluation records into training records.

A record is ``{"image_id": int | str, "file": str (absolute path), "height": int,
"width": int, "boxes": Tensor[M, 4] float32 (x1, y1, x2, y2, absolute pixels of the original
image), "classes": Tensor[M] int64 (contiguous 1..K), "iscrowd": Tensor[M] bool,
"difficult": Tensor[M] bool}``. Class ``k`` is ``class_names[k - 1]`` and maps back to the
data set's own category id ``category_ids[k - 1]``; 0 is background inside the heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detres.utils.errors import InputError

Record = dict[str, Any]


@dataclass
class DetSource:
    """One detection data set as loaded from disk (before transforms)."""

    name: str
    format: str  # "coco" | "voc" | "yolo"
    records: list[Record]
    class_names: list[str]
    category_ids: list[int]  # contiguous k (1..K) -> the data set's id, at index k - 1
    path: Path | None = None  # COCO: the json file; VOC: the year directory (VOC2007)
    split: str = ""  # VOC image set
    year: str = ""  # VOC: "2007" / "2012" from the directory name ("" for custom sets)
    # COCO and YOLO: builds the pycocotools ground truth of the current records, on first use
    # of ``coco`` (only sets that are scored build one: a training set keeps no COCO object)
    coco_factory: Callable[[DetSource], Any] | None = None
    clipped: int = 0  # boxes clipped to their image when loading
    dropped: int = 0  # boxes dropped when loading (zero area after clipping)
    classes_inferred: bool = False  # VOC: class names taken from the annotations
    _coco: Any = field(default=None, repr=False)

    @property
    def coco(self) -> Any:
        """The pycocotools ``COCO`` ground truth of this set's records (COCO and YOLO sets;
        else None), built on first use."""
        if self._coco is None and self.coco_factory is not None:
            self._coco = self.coco_factory(self)
        return self._coco

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        """One line: images, objects per class, images without objects, crowd and difficult
        boxes, and what loading clipped or dropped."""
        counts = torch.zeros(self.num_classes + 1, dtype=torch.int64)
        empty = crowd = difficult = 0
        for r in self.records:
            counts += torch.bincount(r["classes"], minlength=self.num_classes + 1)
            empty += int(len(r["classes"]) == 0)
            crowd += int(r["iscrowd"].sum())
            difficult += int(r["difficult"].sum())
        per_class = ", ".join(f"{n} {int(c)}" for n, c in zip(self.class_names, counts[1:],
                                                              strict=True))
        extra = [f"{v} {k}" for k, v in (("crowd", crowd), ("difficult", difficult)) if v]
        return (f"{self.name} ({self.format}): {len(self.records)} images, {int(counts.sum())} "
                f"objects ({per_class}){''.join(', ' + e for e in extra)}; {empty} images "
                f"without objects; {self.clipped} boxes clipped to their image, "
                f"{self.dropped} dropped as empty")

    def to_category_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Contiguous labels 1..K -> the data set's category ids."""
        table = torch.tensor([0, *self.category_ids], dtype=torch.int64, device=labels.device)
        if len(labels) and (labels.min() < 1 or labels.max() > self.num_classes):
            raise InputError(f"{self.name}: labels must be in 1..{self.num_classes}, "
                             f"got {labels.min().item()}..{labels.max().item()}")
        return table[labels.long()]

    def to_labels(self, category_ids: torch.Tensor) -> torch.Tensor:
        """The data set's category ids -> contiguous labels 1..K."""
        ids = torch.tensor(self.category_ids, dtype=torch.int64, device=category_ids.device)
        hit = category_ids.long()[:, None] == ids[None, :]  # (N, K)
        bad = ~hit.any(1)
        if bad.any():
            raise InputError(f"{self.name}: unknown category id "
                             f"{category_ids[bad][0].item()}; known: {self.category_ids}")
        return hit.int().argmax(1) + 1


def concat_sources(sources: Sequence[DetSource]) -> DetSource:
    """One source from several (e.g. VOC 07+12) that share one class list."""
    if not sources:
        raise InputError("no detection sources to concatenate")
    first = sources[0]
    for s in sources[1:]:
        if s.class_names != first.class_names or s.category_ids != first.category_ids:
            raise InputError(
                f"cannot concatenate {first.name!r} and {s.name!r}: different class lists "
                f"({first.class_names} / {first.category_ids} vs "
                f"{s.class_names} / {s.category_ids})")
    if len(sources) == 1:
        return first
    return DetSource(
        name="+".join(s.name for s in sources),
        format=first.format if all(s.format == first.format for s in sources) else "mixed",
        records=[r for s in sources for r in s.records],
        class_names=list(first.class_names),
        category_ids=list(first.category_ids),
    )


def training_records(
    records: Sequence[Record], *, use_difficult: bool = False, filter_empty: bool = True
) -> list[Record]:
    """Records with the boxes training learns from: crowd boxes removed (as in Detectron2 and
    torchvision), VOC difficult objects removed unless ``use_difficult``; images left with no
    box are dropped when ``filter_empty``. The input records are not modified."""
    if not records:
        return []
    # one vectorized pass over every object, then Python ints per record
    crowd = torch.cat([r["iscrowd"] for r in records])
    keep_all = ~crowd if use_difficult else ~crowd & ~torch.cat([r["difficult"] for r in records])
    counts = torch.tensor([len(r["classes"]) for r in records])
    owner = torch.repeat_interleave(torch.arange(len(records)), counts)
    kept = torch.bincount(owner[keep_all], minlength=len(records)).tolist()
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    out: list[Record] = []
    for r, n, k, s0 in zip(records, counts.tolist(), kept, starts, strict=True):
        if filter_empty and k == 0:
            continue
        if k == n:
            out.append(r)
            continue
        keep = keep_all[s0:s0 + n]
        r2 = dict(r)
        for key in ("boxes", "classes", "iscrowd", "difficult"):
            r2[key] = r[key][keep]
        out.append(r2)
    return out


def empty_record_fields(m: int = 0) -> dict[str, torch.Tensor]:
    """Box fields of a record with ``m`` zero entries (used for images without objects)."""
    return {
        "boxes": torch.zeros((m, 4), dtype=torch.float32),
        "classes": torch.zeros((m,), dtype=torch.int64),
        "iscrowd": torch.zeros((m,), dtype=torch.bool),
        "difficult": torch.zeros((m,), dtype=torch.bool),
    }
