"""Metrics as JSON lines in the output directory, and curves a person would rather look at.

Only rank 0 writes. ``metrics.jsonl`` holds one object per line, each with ``iteration``
and either training scalars (losses, lr, time) or evaluation results (prefixed ``val/``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detres.utils.dist import is_main_process
from detres.utils.errors import InputError
from detres.utils.io import atomic_write_text

LOG = logging.getLogger("detres")


def setup_logging(out_dir: str | os.PathLike[str] | None = None) -> logging.Logger:
    """Console (rank 0) and ``log.txt`` in the output directory."""
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    if LOG.handlers:
        LOG.handlers.clear()
    if not is_main_process():
        LOG.addHandler(logging.NullHandler())
        return LOG
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    LOG.addHandler(h)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(out_dir) / "log.txt")
        fh.setFormatter(fmt)
        LOG.addHandler(fh)
    warnings.showwarning = _log_warning  # a warning is one log line, in log.txt too
    return LOG


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    LOG.warning("%s: %s", category.__name__, message)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricWriter(ABC):
    """Where the training loop's records go. ``write(record)`` takes one record with its
    ``iteration`` and scalars; ``add_image`` one picture; ``truncate_after`` drops what a
    resumed run will write again. Rank 0 writes; other ranks' calls do nothing. Another
    backend (MLflow, W&B) is one more subclass in :func:`build_writers`; the trainer does
    not change."""

    @abstractmethod
    def write(self, record: dict[str, Any]) -> None:
        """One record: ``iteration`` and named values."""

    def add_image(self, tag: str, image: Any, iteration: int) -> None:  # noqa: B027
        """An ``H x W x 3`` uint8 RGB picture (ignored by writers without pictures)."""

    def truncate_after(self, iteration: int) -> None:  # noqa: B027
        """On resume: forget records past ``iteration`` (the checkpoint's)."""

    def close(self) -> None:  # noqa: B027
        """Flush and let go of files."""


class JSONLWriter(MetricWriter):
    """Appends records to ``<out_dir>/metrics.jsonl`` (rank 0 only)."""

    def __init__(self, out_dir: str | os.PathLike[str], name: str = "metrics.jsonl") -> None:
        self.path = Path(out_dir) / name
        if is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def truncate_after(self, iteration: int) -> None:
        """On resume: drop records past the checkpoint's iteration, so the log is one run."""
        if not is_main_process() or not self.path.exists():
            return
        keep = []
        for ln in self.path.read_text().splitlines():
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:  # a line cut short by a killed process
                continue
            if rec.get("iteration", 0) <= iteration:
                keep.append(ln)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))


class TensorBoardWriter(MetricWriter):
    """TensorBoard event files in ``<out_dir>/tensorboard`` (``torch.utils.tensorboard``,
    which needs the ``tensorboard`` package: the ``[tensorboard]`` extra): every numeric
    field of a record as a scalar at its iteration, pictures as images. A resumed run purges
    the events past its checkpoint (``purge_step``)."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(out_dir) / "tensorboard"
        self._writer: Any = None
        self._purge: int | None = None

    def _get(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge)
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        if not is_main_process():
            return
        step = int(record.get("iteration", 0))
        w = self._get()
        for k, v in record.items():
            if k != "iteration" and isinstance(v, int | float) and not isinstance(v, bool):
                w.add_scalar(k, v, step)
        w.flush()

    def add_image(self, tag: str, image: Any, iteration: int) -> None:
        if is_main_process():
            self._get().add_image(tag, image, iteration, dataformats="HWC")
            self._get().flush()

    def truncate_after(self, iteration: int) -> None:
        self._purge = iteration + 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Writers(MetricWriter):
    """Several writers as one."""

    def __init__(self, writers: Sequence[MetricWriter]) -> None:
        self.writers = list(writers)

    def write(self, record: dict[str, Any]) -> None:
        for w in self.writers:
            w.write(record)

    def add_image(self, tag: str, image: Any, iteration: int) -> None:
        for w in self.writers:
            w.add_image(tag, image, iteration)

    def truncate_after(self, iteration: int) -> None:
        for w in self.writers:
            w.truncate_after(iteration)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def build_writers(out_dir: str | os.PathLike[str], *, tensorboard: bool | None = None
                  ) -> Writers:
    """``metrics.jsonl`` always; TensorBoard events with ``tensorboard=True`` (the package
    must be installed), ``None`` (when it is) or not at all (``False``)."""
    writers: list[MetricWriter] = [JSONLWriter(out_dir)]
    if tensorboard and not tensorboard_available():
        raise InputError("train.tensorboard=true needs the tensorboard package: "
                         "pip install 'detres[tensorboard]' (or train.tensorboard=false)")
    if tensorboard or (tensorboard is None and tensorboard_available()):
        writers.append(TensorBoardWriter(out_dir))
    return Writers(writers)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def plot_curves(
    jsonl: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    train_keys: Sequence[str],
    val_keys: Sequence[str],
    title: str = "",
    val_ylabel: str = "metric",
) -> Path | None:
    """Two panels against iterations: training losses (log scale) and validation metrics."""
    if not is_main_process():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(jsonl)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, keys, ylabel in ((axes[0], train_keys, "training"), (axes[1], val_keys, val_ylabel)):
        for k in keys:
            pts = [
                (r["iteration"], r[k])
                for r in rows
                if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=k)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if any(ln.get_ydata().min() > 0 for ln in axes[0].lines):
        axes[0].set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
