"""Look at a detection set before training on it (tools/inspect_data.py): the numbers, a grid
of images with their boxes, and the boxes' sizes at the scales the config trains and tests
at, beside its anchor sizes.

The commonest reason a custom set scores low is objects far smaller than the smallest anchor
once the image is resized: an object of side ``s`` centred on an anchor of side ``a > s``
overlaps it by ``(s / a)^2``, under the RPN's 0.3 negative threshold once ``s < 0.55 a``, so
only the "best anchor" rule ever makes it positive. :func:`anchor_warnings` says when that
concerns a sizeable share of the objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detres.config import Config
from detres.data.det_source import DetSource
from detres.data.det_transforms import image_tensor
from detres.data.image_io import load_image
from detres.preprocess import resized_hw
from detres.utils.visualizer import draw_boxes, grid, palette, write_image

#: share of the objects below the smallest anchor (after resizing) that draws a warning
SMALL_SHARE = 0.2


def box_sides(src: DetSource, short: int, max_size: int, rule: str) -> np.ndarray:
    """Every object's side ``sqrt(w * h)`` in pixels of the image resized to ``short``."""
    out = []
    for r in src.records:
        if len(r["boxes"]) == 0:
            continue
        h, w = int(r["height"]), int(r["width"])
        rh, rw = resized_hw(h, w, short=short, max_size=max_size, rule=rule)
        b = r["boxes"].double()
        area = (b[:, 2] - b[:, 0]) * (rw / w) * (b[:, 3] - b[:, 1]) * (rh / h)
        out.append(area.clamp(min=0).sqrt().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def set_statistics(src: DetSource, cfg: Config) -> dict[str, Any]:
    """Images, objects per class and per image, box sides at the train and test scales."""
    i = cfg.model.input
    per_image = np.array([len(r["boxes"]) for r in src.records])
    counts = torch.zeros(src.num_classes + 1, dtype=torch.int64)
    for r in src.records:
        counts += torch.bincount(r["classes"], minlength=src.num_classes + 1)
    scales = {"train": (min(i.min_size_train), i.max_size_train),
              "test": (i.min_size_test, i.max_size_test)}
    sides = {k: box_sides(src, s, m, i.resize_rule) for k, (s, m) in scales.items()}
    anchors = sorted({int(a) for level in cfg.model.anchors.sizes for a in level})

    def pct(x: np.ndarray) -> dict[str, float]:
        if len(x) == 0:
            return {}
        return {f"p{q}": round(float(np.percentile(x, q)), 1) for q in (5, 25, 50, 75, 95)}

    return {
        "name": src.name, "format": src.format, "images": len(src.records),
        "objects": int(per_image.sum()),
        "objects_per_class": dict(zip(src.class_names, counts[1:].tolist(), strict=True)),
        "images_without_objects": int((per_image == 0).sum()),
        "objects_per_image": {"mean": round(float(per_image.mean()), 2) if len(per_image)
                              else 0.0, "max": int(per_image.max(initial=0))},
        "scales": {k: {"short": s, "max": m} for k, (s, m) in scales.items()},
        "box_side_px": {k: pct(v) for k, v in sides.items()},
        "anchor_sizes": anchors,
        "below_smallest_anchor": {k: round(float((v < anchors[0]).mean()), 3) if len(v)
                                  else 0.0 for k, v in sides.items()},
        "_sides": sides,
    }


def anchor_warnings(stats: dict[str, Any]) -> list[str]:
    """One line per scale at which many objects are smaller than the smallest anchor."""
    out = []
    a = stats["anchor_sizes"][0]
    for k, share in stats["below_smallest_anchor"].items():
        if share >= SMALL_SHARE:
            s = stats["scales"][k]
            med = stats["box_side_px"][k].get("p50", float("nan"))
            out.append(
                f"{stats['name']}: {100 * share:.0f}% of the objects are smaller than the "
                f"smallest anchor ({a} px) at the {k} scale (shorter side {s['short']}, median "
                f"object side {med} px): raise model.input.min_size_{k} or lower "
                "model.anchors.sizes")
    return out


def draw_ground_truth(image: Tensor, boxes: Tensor, labels: list[str],
                      colours: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """``(H, W, 3)`` RGB uint8 with each box and its class name."""
    return draw_boxes(image, boxes.tolist(), labels, [colours[n] for n in labels])


def image_grid(src: DetSource, path: Path, *, n: int = 16, cell: int = 320,
               seed: int = 0) -> Path:
    """A PNG of ``n`` images of the set (a fixed random draw), each fitted into a ``cell``
    square with its boxes and class names."""

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(src.records), size=min(n, len(src.records)), replace=False)
    colours = dict(zip(src.class_names, palette(src.num_classes), strict=True))
    drawn = []
    for j in picks:
        r = src.records[int(j)]
        names = [src.class_names[c - 1] for c in r["classes"].tolist()]
        drawn.append(draw_ground_truth(image_tensor(load_image(r["file"])), r["boxes"], names,
                                       colours))
    return write_image(path, grid(drawn, cell=cell))


def size_histogram(stats: dict[str, Any], path: Path) -> Path:
    """Histograms of the object sides at the train and test scales (log axis), the anchor
    sizes as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    sides = stats["_sides"]
    both = np.concatenate([v for v in sides.values() if len(v)] or [np.ones(1)])
    lo = max(1.0, float(both.min()) / 1.5)
    hi = max(float(both.max()) * 1.5, max(stats["anchor_sizes"]) * 1.5)
    bins = np.geomspace(lo, hi, 40)
    for k, colour in (("train", "tab:blue"), ("test", "tab:orange")):
        s = stats["scales"][k]
        ax.hist(sides[k], bins=bins, alpha=0.55, color=colour,
                label=f"{k} scale (shorter side {s['short']})")
    for a in stats["anchor_sizes"]:
        ax.axvline(a, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("object side sqrt(w*h), px of the resized image; dashed: anchor sizes")
    ax.set_ylabel("objects")
    ax.set_title(f"{stats['name']}: {stats['objects']} objects in {stats['images']} images")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
