"""Pictures of an evaluation: precision-recall curves, F1 against the score threshold, the
confusion matrix (the numbers come from :mod:`detres.evaluation.analysis`; this module only
draws). matplotlib with the Agg backend, imported when a picture is drawn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

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
