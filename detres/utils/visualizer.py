"""Every picture detres draws, in one place: boxes with labels (``predict.py``,
``inspect_data.py``, the training-batch mosaics, the validation examples), image grids, and
the plots of an evaluation (precision-recall curves, F1 against the score threshold, the
confusion matrix; their numbers come from :mod:`detres.evaluation.analysis`, this module
only draws). Images are ``H x W x 3`` uint8 RGB numpy arrays; OpenCV draws boxes, matplotlib
(Agg backend, imported when a plot is drawn) the plots."""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

Colour = tuple[int, int, int]


def palette(n: int) -> list[Colour]:
    """``n`` well-separated RGB colours (evenly spaced hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0)
        out.append((int(255 * r), int(255 * g), int(255 * b)))
    return out


def label_style(h: int, w: int) -> tuple[float, int, int]:
    """(font scale, text thickness, box line width) for an ``h x w`` image: readable on a
    thumbnail and on a 4K photograph alike."""
    side = min(h, w)
    scale = max(0.35, side / 700)
    return scale, max(1, round(scale * 1.6)), max(1, round(side / 250))


def to_hwc(image: Any) -> np.ndarray:
    """A ``(3, H, W)`` tensor (float in [0, 1] or uint8) or an ``H x W x 3`` array as a
    contiguous ``H x W x 3`` uint8 array (a copy: drawing never touches the input)."""
    if hasattr(image, "detach"):  # a tensor: channels first
        a = image.detach().cpu().numpy().transpose(1, 2, 0)
    else:
        a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a).copy()


def draw_boxes(image: Any, boxes: Sequence[Sequence[float]], texts: Sequence[str],
               colours: Sequence[Colour], *, width: int | None = None) -> np.ndarray:
    """``image`` with each box drawn in its colour and labelled by its text in a filled label
    on its top edge (inside it where there is no room above), as Detectron2's Visualizer
    does; lines and text sized to the image. Returns a new ``H x W x 3`` uint8 array."""
    canvas = to_hwc(image)
    h, w = canvas.shape[:2]
    scale, thick, line = label_style(h, w)
    line = width or line
    font = cv2.FONT_HERSHEY_SIMPLEX
    for box, text, colour in zip(boxes, texts, colours, strict=True):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, line)
        if not text:
            continue
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        pad = max(1, thick)
        top = y1 - th - base - 2 * pad
        if top < 0:  # no room above the box: inside its top edge
            top = y1
        bottom = top + th + base + 2 * pad
        cv2.rectangle(canvas, (x1, top), (min(x1 + tw + 2 * pad, w - 1), bottom), colour, -1)
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
        cv2.putText(canvas, text, (x1 + pad, bottom - base - pad), font, scale, ink, thick,
                    cv2.LINE_AA)
    return canvas


def fit(image: np.ndarray, cell: int | tuple[int, int]) -> np.ndarray:
    """``image`` scaled to fit a ``cell`` (a side, or ``(width, height)``), aspect kept."""
    cw, ch = (cell, cell) if isinstance(cell, int) else cell
    s = min(cw / image.shape[1], ch / image.shape[0])
    size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def grid(images: Sequence[np.ndarray], *, cell: int | tuple[int, int] = 320,
         cols: int | None = None, background: int = 32) -> np.ndarray:
    """Images fitted into cells (a side, or ``(width, height)``), row by row (``cols`` per
    row, else a square)."""
    cw, ch = (cell, cell) if isinstance(cell, int) else cell
    cols = cols or max(1, math.ceil(math.sqrt(len(images))))
    rows = max(1, math.ceil(len(images) / cols))
    out = np.full((rows * ch, cols * cw, 3), background, np.uint8)
    for k, img in enumerate(images):
        small = fit(img, (cw, ch))
        y, x = (k // cols) * ch, (k % cols) * cw
        out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out


def write_image(path: str | os.PathLike[str], image: Any) -> Path:
    """Write an image (any form :func:`to_hwc` takes); the suffix picks the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(to_hwc(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix, bgr)
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r} for {path}")
    buf.tofile(str(path))  # unlike imwrite, non-ASCII paths work
    return path

#: at most this many classes get their own line; the rest are drawn thin and grey
_LABELED = 10


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_pr_curves(curves: dict[str, Any], iou: str, path: str | os.PathLike[str],
                   title: str = "") -> Path:
    """One line per class (recall, precision) with its AP in the legend, and their mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    valid = {n: c for n, c in curves.items() if c is not None}
    ranked = sorted(valid, key=lambda n: -valid[n]["ap"])
    for i, name in enumerate(ranked):
        c = valid[name]
        if i < _LABELED:
            ax.plot(c["recall"], c["precision"], lw=1.2, label=f"{name} {100 * c['ap']:.1f}")
        else:
            ax.plot(c["recall"], c["precision"], lw=0.6, color="0.7")
    if len(valid) > 1:  # mean precision on a common recall grid
        grid = np.linspace(0, 1, 101)
        mean = np.mean([np.interp(grid, v["recall"], v["precision"], right=0)
                        for v in valid.values()], axis=0)
        m_ap = np.mean([v["ap"] for v in valid.values()])
        ax.plot(grid, mean, lw=2.5, color="k", label=f"all classes {100 * m_ap:.1f} mAP")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=title or f"precision-recall at IoU {iou}")
    ax.grid(alpha=0.3)
    if valid:
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_f1(f1: dict[str, Any], curves: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """F1 against the score threshold per class, the mean, and the best threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    valid = {n: c for n, c in curves.items() if c is not None}
    for i, (name, c) in enumerate(sorted(valid.items())):
        p, r = np.asarray(c["precision"]), np.asarray(c["recall"])
        f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
        kw = {"lw": 1.0, "label": name} if i < _LABELED else {"lw": 0.6, "color": "0.7"}
        ax.plot(c["scores"], f, **kw)
    t, best = f1["best_score_thresh"], f1["best_mean_f1"]
    ax.plot(f1["grid"], f1["mean_f1"], lw=2.5, color="k",
            label=f"all classes: best {best:.2f} at score {t:.2f}")
    ax.axvline(t, color="k", ls="--", lw=0.8)
    ax.set(xlabel="score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02),
           title="F1 against the score threshold (IoU .5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_confusion(cm: dict[str, Any], path: str | os.PathLike[str], *,
                   normalized: bool = False) -> Path:
    """The matrix as an image, row predicted, column true, counts (or column fractions)
    written in the cells when there are few enough classes."""
    plt = _pyplot()
    m = np.asarray(cm["normalized" if normalized else "counts"], np.float64)
    labels = cm["labels"]
    n = len(labels)
    size = min(4 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalized else max(m.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(n)
    ax.set_xticks(ticks, labels, rotation=90 if n > 8 else 45, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set(xlabel="true", ylabel="predicted",
           title=f"confusion matrix{' (each column sums to 1)' if normalized else ''}, IoU "
                 f"{cm['iou']:g}, score >= {cm['score_thresh']:.2f}")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                if v:
                    text = f"{v:.2f}" if normalized else f"{int(v)}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 * (m.max() or 1) else "black")
    return _save(fig, path)


def plot_error_breakdown(eb: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """The COCO error analysis per area range: the cumulative AP after each error type is
    forgiven (C75, C50, Loc, Sim, Oth, BG, FN), the gain of each step written on its bar."""
    plt = _pyplot()
    areas = list(eb["by_area"])
    fig, axes = plt.subplots(1, len(areas), figsize=(3.2 * len(areas), 3.6), sharey=True)
    colours = ["#ffffff", "#d9d9d9", "#5b9bd5", "#70ad47", "#ffc000", "#ed7d31", "#c00000"]
    for ax, area in zip(np.atleast_1d(axes), areas, strict=True):
        vals = eb["by_area"][area]
        ys = [vals[t] for t in eb["types"]]
        if ys[0] is None:
            ax.set_title(f"{area}: no objects")
            ax.axis("off")
            continue
        prev = 0.0
        for i, y in enumerate(ys):
            ax.bar(i, y - prev, bottom=prev, color=colours[i], edgecolor="k", lw=0.5)
            ax.text(i, y + 0.01, f"{100 * y:.1f}", ha="center", va="bottom", fontsize=7)
            prev = y
        ax.set_xticks(range(len(ys)), eb["types"], fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_title(f"{area} objects", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("AP after forgiving the errors up to here")
    fig.suptitle("COCO error breakdown (each step: the AP the error type costs)", fontsize=10)
    return _save(fig, path)
