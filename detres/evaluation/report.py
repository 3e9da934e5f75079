"""Results output: ``metrics.json`` (fractions in [0, 1]) and a readable table (AP, AR and
accuracies in percent; other numbers as they are), with published figures beside ours when a
config records them."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detres.utils.visualizer import (
    plot_confusion,
    plot_error_breakdown,
    plot_f1,
    plot_pr_curves,
)

#: Printed first, and first in metrics.json.
HEADLINE = ("mAP@.5", "mAP@[.5,.95]")


def to_jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN and inf as null."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def metrics_dict(results: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mAP@.5": x, "mAP@[.5,.95]": y, "per_class": {...}, ...extra keys}`` for JSON."""
    ordered = {k: results[k] for k in (*HEADLINE, "per_class") if k in results}
    ordered.update((k, v) for k, v in results.items() if k not in ordered)
    return to_jsonable(ordered)


def write_metrics(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`metrics_dict` as JSON (atomically: a temp file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics_dict(results), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


#: Keys whose values are fractions, shown in percent (mAP@.5, AP50, ARs, top1, top5_err, ...).
PERCENT_KEY = re.compile(r"^(mAP|AP|AR|top\d)")


def _pct(v: Any, percent: bool = True) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        return str(v)
    if isinstance(v, int | np.integer):
        return str(v)
    return f"{100.0 * float(v):.1f}" if percent else f"{float(v):.4g}"


def format_table(results: Mapping[str, Any], *, published: Mapping[str, float] | None = None,
                 title: str = "", source: str = "") -> str:
    """The results as text, values in percent. ``published`` (percent, e.g. ``{"mAP@.5": 48.4,
    "mAP@[.5,.95]": 27.2}``) adds a column and our difference from it; ``source`` names it."""
    published = dict(published or {})
    keys = [k for k in HEADLINE if k in results]
    keys += [k for k, v in results.items() if k not in keys and k != "per_class"
             and (v is None or isinstance(v, int | float | np.number))]
    keys += [k for k in published if k not in keys]
    width = max([len(k) for k in keys] + [12]) + 2
    lines = [f"== {title} =="] if title else []
    header = f"{'metric':<{width}}{'ours':>8}"
    if published:
        header += f"{'published':>11}{'diff':>8}"
    lines.append(header)
    for k in keys:
        v = results.get(k)
        row = f"{k:<{width}}{_pct(v, bool(PERCENT_KEY.match(k))):>8}"
        if published:
            pub = published.get(k)
            diff = "-"
            if pub is not None and isinstance(v, float) and math.isfinite(v):
                diff = f"{100.0 * v - pub:+.1f}"
            row += f"{'-' if pub is None else f'{pub:.1f}':>11}{diff:>8}"
        lines.append(row)
    if published and source:
        lines.append(f"published: {source}")
    per_class = results.get("per_class")
    if per_class:
        cols = list(next(iter(per_class.values())))
        cw = max(len(n) for n in per_class) + 2
        lines.append("")
        lines.append(f"{'class':<{cw}}" + "".join(f"{c:>{max(len(c), 6) + 2}}" for c in cols))
        for name, row_v in per_class.items():
            lines.append(f"{name:<{cw}}" + "".join(
                f"{_pct(row_v.get(c)):>{max(len(c), 6) + 2}}" for c in cols))
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """The evaluation report (:mod:`detres.evaluation.analysis`) as ``report.json`` and its
    pictures in ``out_dir``: ``pr_iou50.png``, ``pr_iou75.png``, ``f1.png``,
    ``confusion_matrix.png``, ``confusion_matrix_normalized.png`` and, for COCO scoring,
    ``error_breakdown.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(to_jsonable(report), allow_nan=False) + "\n")
    os.replace(tmp, out / "report.json")
    written = [out / "report.json"]
    for iou, curves in report["pr_curves"].items():
        name = f"pr_iou{round(float(iou) * 100):02d}.png"
        written.append(plot_pr_curves(curves, iou, out / name))
    written.append(plot_f1(report["f1"], report["pr_curves"]["0.5"], out / "f1.png"))
    cm = report["confusion_matrix"]
    written.append(plot_confusion(cm, out / "confusion_matrix.png"))
    written.append(plot_confusion(cm, out / "confusion_matrix_normalized.png", normalized=True))
    if report.get("error_breakdown"):
        written.append(plot_error_breakdown(report["error_breakdown"],
                                            out / "error_breakdown.png"))
    return written


def describe_report(report: Mapping[str, Any]) -> str:
    """One line for the log: the best score threshold and what it gives."""
    f1 = report["f1"]
    return (f"best score threshold {f1['best_score_thresh']:.2f} (mean F1 over classes "
            f"{f1['best_mean_f1']:.3f}); PR curves, F1 and confusion matrix at IoU .5")
