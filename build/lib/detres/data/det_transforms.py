"""Detection input pipelines, built from :class:`~detres.config.InputCfg`.

decode (cv2, uint8 RGB) -> augment (albumentations on uint8: a horizontal flip with
probability ``hflip_prob`` at train time) -> resize (:mod:`detres.preprocess`, the one rule
shared with ``FasterRCNN.predict``): the shorter side to one of ``min_size_train`` (a random
choice per image when several are given: multi-scale training) or ``min_size_test``, the
longer at most ``max_size_*``.

:func:`apply_det_transform` returns a float ``Tensor[3, H, W]`` RGB in [0, 1] (normalization
with ``pixel_mean/std`` happens inside the model), boxes in resized-image pixels and the
per-axis ``scale`` (sx, sy) = resized / original size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch

from detres.config import InputCfg
from detres.preprocess import boxes_to_resized, resize_image, resized_hw
from detres.utils.errors import InputError


@dataclass
class DetTransform:
    """Augmentation (``augment``, None at test time) and the resize of one split."""

    augment: A.Compose | None
    min_sizes: list[int]
    max_size: int
    resize_rule: str

    def set_random_seed(self, seed: int) -> None:
        """Seed the augmentation's own generators (albumentations >= 2 keeps its own)."""
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        # several sizes: one drawn per image from the global RNG, which the sampler's
        # per-draw seed sets (detres.data.sampling.SeededDataset)
        short = self.min_sizes[0] if len(self.min_sizes) == 1 else random.choice(self.min_sizes)
        return resized_hw(h, w, short=short, max_size=self.max_size, rule=self.resize_rule)


def build_det_transform(input_cfg: InputCfg, *, train: bool,
                        seed: int | None = None) -> DetTransform:
    """The train or test pipeline for ``model.input``."""
    if train:
        sizes, max_size = list(input_cfg.min_size_train), input_cfg.max_size_train
        if not sizes:
            raise InputError("model.input.min_size_train: give at least one size")
    else:
        sizes, max_size = [input_cfg.min_size_test], input_cfg.max_size_test
    if not 0.0 <= input_cfg.hflip_prob <= 1.0:
        raise InputError(f"model.input.hflip_prob: must be in [0, 1], got {input_cfg.hflip_prob}")
    augment = None
    if train and input_cfg.hflip_prob > 0:
        augment = A.Compose([A.HorizontalFlip(p=input_cfg.hflip_prob)],
                            bbox_params=A.BboxParams(format="pascal_voc",
                                                     label_fields=["box_index"]), seed=seed)
    return DetTransform(augment, [int(s) for s in sizes], int(max_size), input_cfg.resize_rule)


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 -> ``(3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def apply_det_transform(transform: DetTransform, image: np.ndarray, boxes: torch.Tensor,
                        classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the pipeline on an ``HxWx3`` uint8 RGB image and its (x1, y1, x2, y2) boxes.

    Returns ``image`` float ``Tensor[3, H', W']`` in [0, 1], ``boxes`` ``Tensor[M', 4]`` in
    resized pixels, ``classes`` ``Tensor[M']`` and ``scale`` ``Tensor[2]`` = (sx, sy). Boxes
    albumentations drops (none, for a flip of valid boxes) drop their classes too.
    """
    h, w = image.shape[:2]
    keep = torch.arange(len(boxes))
    if transform.augment is not None:
        out = transform.augment(image=image, bboxes=boxes.numpy().reshape(-1, 4),
                                box_index=np.arange(len(boxes)))
        image = out["image"]
        boxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32)).reshape(-1, 4)
        keep = torch.as_tensor(np.asarray(out["box_index"], dtype=np.int64))
    nh, nw = transform.output_size(h, w)
    tensor = resize_image(image_tensor(image), (nh, nw), transform.resize_rule)
    return {
        "image": tensor,
        "boxes": boxes_to_resized(boxes, (h, w), (nh, nw)).reshape(-1, 4),
        "classes": classes[keep],
        "scale": torch.tensor([nw / w, nh / h], dtype=torch.float32),
    }
