"""Albumentations pipelines for classification, built from :class:`~detres.config.ClsAugCfg`.

- ``imagenet`` (He et al. 2015, Sec. 3.4): train resizes the shorter side to a length drawn
  uniformly from the integers in ``[scale_min, scale_max]`` (256..480), takes a random
  ``crop_size`` crop (224) and flips it horizontally with probability 0.5; test resizes the
  shorter side to ``test_resize`` (256) and takes the center ``crop_size`` crop.
- ``cifar`` (Sec. 4.2): train zero-pads ``pad`` (4) pixels on each side, takes a random
  ``crop_size`` (32) crop and flips; test uses the image as it is (a center crop / zero pad
  to ``crop_size`` only when the image has another size).
- ``none``: train and test both resize the shorter side to ``test_resize`` and center-crop.

Every pipeline ends with ``Normalize(mean, std)`` (RGB, in [0, 1] units) and ``ToTensorV2``:
input ``HxWx3`` uint8 RGB, output ``float32 Tensor[3, crop_size, crop_size]``.

The paper's PCA colour augmentation (AlexNet's "lighting") is not part of these pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from detres.config import ClsAugCfg
from detres.utils.errors import InputError

#: ImageNet statistics (torchvision's), RGB in [0, 1] units
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CIFAR training-set statistics, RGB in [0, 1] units
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

AUG_KINDS = ("imagenet", "cifar", "none")


def _check(aug: ClsAugCfg) -> None:
    if aug.kind not in AUG_KINDS:
        raise InputError(f"data.cls_aug.kind: {aug.kind!r} is not one of {list(AUG_KINDS)}")
    for key in ("crop_size", "scale_min", "scale_max", "test_resize"):
        if getattr(aug, key) <= 0:
            raise InputError(f"data.cls_aug.{key}: must be positive, got {getattr(aug, key)}")
    if aug.pad < 0:
        raise InputError(f"data.cls_aug.pad: must be >= 0, got {aug.pad}")
    if aug.kind == "imagenet" and aug.scale_min > aug.scale_max:
        raise InputError(f"data.cls_aug: scale_min ({aug.scale_min}) > scale_max ({aug.scale_max})")


def geometric_transforms(aug: ClsAugCfg, train: bool) -> list[A.BasicTransform]:
    """The resize / pad / crop / flip part of the pipeline, without normalization."""
    _check(aug)
    c = aug.crop_size
    # pad_if_needed: an image smaller than the crop is zero-padded instead of failing
    crop = {
        "height": c,
        "width": c,
        "pad_if_needed": True,
        "border_mode": cv2.BORDER_CONSTANT,
        "fill": 0,
    }
    ops: list[A.BasicTransform]
    if aug.kind == "imagenet" and train:
        # A list makes SmallestMaxSize draw the shorter side uniformly from its entries.
        sizes = list(range(aug.scale_min, aug.scale_max + 1))
        ops = [
            A.SmallestMaxSize(
                max_size=sizes if len(sizes) > 1 else sizes[0],
                interpolation=cv2.INTER_LINEAR,
                area_for_downscale="image",
            ),
            A.RandomCrop(**crop),
        ]
    elif aug.kind == "cifar" and train:
        ops = [
            A.Pad(padding=aug.pad, fill=0, border_mode=cv2.BORDER_CONSTANT),
            A.RandomCrop(**crop),
        ]
    elif aug.kind == "cifar":
        ops = [A.CenterCrop(**crop)]  # the identity on crop_size x crop_size images
    else:  # imagenet test, or "none"
        ops = [
            A.SmallestMaxSize(
                max_size=aug.test_resize, interpolation=cv2.INTER_LINEAR, area_for_downscale="image"
            ),
            A.CenterCrop(**crop),
        ]
    if train and aug.hflip and aug.kind != "none":
        ops.append(A.HorizontalFlip(p=0.5))
    return ops


class ToBGR(A.ImageOnlyTransform):
    """Reverse the channel order (RGB -> BGR) for networks trained on BGR input (MSRA)."""

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        return np.ascontiguousarray(img[..., ::-1])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def build_cls_transform(
    aug: ClsAugCfg,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
    *,
    input_format: str = "RGB",
    pixel_range: float = 1.0,
) -> A.Compose:
    """uint8 ``HxWx3`` RGB -> normalized ``float32 Tensor[3, crop, crop]``.

    ``mean``/``std`` are per channel, in the network's channel order (``input_format``) and
    in units of ``pixel_range`` (1.0: [0, 1]; 255.0: the MSRA / Caffe2 convention); ``seed``
    seeds the pipeline's own random state (albumentations 2 ignores the global seeds).
    """
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise InputError(f"mean/std must be 3 values with std > 0, got {mean} / {std}")
    ops = geometric_transforms(aug, train)
    if input_format == "BGR":
        ops.append(ToBGR())
    ops += [A.Normalize(mean=tuple(m / pixel_range for m in mean),
                        std=tuple(s / pixel_range for s in std), max_pixel_value=255.0),
            ToTensorV2()]
    return A.Compose(ops, seed=seed)


class ClsTransform:
    """Callable wrapper: ``(image uint8 HxWx3 RGB) -> Tensor[3, H', W']``, reseedable."""

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.compose(image=image)["image"]

    def reseed(self, seed: int) -> None:
        """Give the pipeline a fresh random state (called once per DataLoader worker)."""
        self.compose.set_random_seed(seed)

    # albumentations' name, which SeededDataset calls to seed each sample's augmentation
    set_random_seed = reseed

    def __repr__(self) -> str:
        return f"ClsTransform({self.compose!r})"
