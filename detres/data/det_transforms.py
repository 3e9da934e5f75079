"""Detection input pipelines (albumentations), built from :class:`~detres.config.InputCfg`.

- train: :class:`ResizeShortestEdge` to one of ``min_size_train`` (a random choice per image
  when several are given: multi-scale training), capped so the longer side is at most
  ``max_size_train``; then a horizontal flip with probability ``hflip_prob``.
- test: the same resize to ``min_size_test`` / ``max_size_test``, no flip (0 disables it).

Boxes go through albumentations (``BboxParams(format="pascal_voc")``: absolute x1, y1, x2,
y2), so they follow every geometric step. :func:`apply_det_transform` returns a float
``Tensor[3, H, W]`` RGB in [0, 1] (normalization with ``pixel_mean/std`` happens inside the
model), boxes in resized-image pixels and the per-axis ``scale`` (sx, sy) = resized / original
size, so predictions map back with ``boxes / scale.repeat(2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from detres.config import InputCfg


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): shorter side ``short``, longer side capped at ``max_size`` (Detectron2's
    ``ResizeShortestEdge.get_output_shape``; ``short <= 0`` keeps the size)."""
    if short <= 0:
        return h, w
    scale = short / min(h, w)
    nh, nw = h * scale, w * scale
    if max_size > 0 and max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return max(1, int(nh + 0.5)), max(1, int(nw + 0.5))


class ResizeShortestEdge(A.DualTransform):
    """Resize so the shorter side is one of ``min_sizes`` (chosen at random per call) and the
    longer side at most ``max_size``. Boxes are kept in albumentations' normalized form, which
    a resize leaves unchanged; the image is resized with bilinear interpolation."""

    def __init__(self, min_sizes: Sequence[int], max_size: int,
                 interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(p=p)
        if not min_sizes:
            raise ValueError("ResizeShortestEdge: min_sizes must not be empty")
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict[str, Any],
                                     data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        short = self.min_sizes[0] if len(self.min_sizes) == 1 else \
            self.py_random.choice(self.min_sizes)
        return {"out_hw": shortest_edge_size(h, w, short, self.max_size)}

    def apply(self, img: np.ndarray, out_hw: tuple[int, int] = (0, 0),
              **params: Any) -> np.ndarray:
        if img.shape[:2] == tuple(out_hw):
            return img
        return cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, out_hw: tuple[int, int] = (0, 0),
                      **params: Any) -> np.ndarray:
        return cv2.resize(mask, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # normalized coordinates do not change under a resize

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_sizes", "max_size", "interpolation")


def build_det_transform(input_cfg: InputCfg, *, train: bool,
                        seed: int | None = None) -> A.Compose:
    """The train or test pipeline for ``model.input``."""
    if train:
        sizes, max_size = list(input_cfg.min_size_train), input_cfg.max_size_train
        if not sizes:
            raise ValueError("model.input.min_size_train: give at least one size")
    else:
        sizes, max_size = [input_cfg.min_size_test], input_cfg.max_size_test
    if not 0.0 <= input_cfg.hflip_prob <= 1.0:
        raise ValueError(f"model.input.hflip_prob: must be in [0, 1], got {input_cfg.hflip_prob}")
    steps: list[A.BasicTransform] = [ResizeShortestEdge(sizes, max_size)]
    if train and input_cfg.hflip_prob > 0:
        steps.append(A.HorizontalFlip(p=input_cfg.hflip_prob))
    return A.Compose(steps, bbox_params=A.BboxParams(format="pascal_voc",
                                                     label_fields=["box_index"]), seed=seed)


def load_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file with cv2 as ``HxWx3`` uint8 RGB; a missing or undecodable file, or
    one whose size differs from the annotation's, is an error naming the file."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)  # unlike imread, non-ASCII paths work
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"image file {path} does not exist") from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise ValueError(f"image file {path} could not be decoded (empty or broken)")
    if expected_hw is not None and img.shape[:2] != tuple(expected_hw):
        raise ValueError(f"image file {path} is {img.shape[1]}x{img.shape[0]} (w x h) but its "
                         f"annotation says {expected_hw[1]}x{expected_hw[0]}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def apply_det_transform(transform: A.Compose, image: np.ndarray, boxes: torch.Tensor,
                        classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the pipeline on an ``HxWx3`` uint8 RGB image and its (x1, y1, x2, y2) boxes.

    Returns ``image`` float ``Tensor[3, H', W']`` in [0, 1], ``boxes`` ``Tensor[M', 4]`` in
    resized pixels, ``classes`` ``Tensor[M']`` and ``scale`` ``Tensor[2]`` = (sx, sy). Boxes
    albumentations drops (none, for resize and flip of valid boxes) drop their classes too.
    """
    h, w = image.shape[:2]
    out = transform(image=image, bboxes=boxes.numpy().reshape(-1, 4),
                    box_index=np.arange(len(boxes)))
    img = out["image"]
    nh, nw = img.shape[:2]
    keep = torch.as_tensor(np.asarray(out["box_index"], dtype=np.int64))
    tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    return {
        "image": tensor,
        "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32)).reshape(-1, 4),
        "classes": classes[keep],
        "scale": torch.tensor([nw / w, nh / h], dtype=torch.float32),
    }
