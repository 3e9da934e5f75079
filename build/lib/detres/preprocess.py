"""The one preprocessing path of a detector: resize, pad, and mapping boxes back.

Everything that feeds a detector uses these functions: the training and test loaders (in
their workers), ``FasterRCNN.predict`` (``tools/predict.py``), the benchmark and the export,
so that ``tools/eval.py`` and ``tools/predict.py`` give the network the same tensor for the
same image. Normalization (``(x - mean) / std``) happens inside the model, after padding.

Resize rules (``model.input.resize_rule``):

* ``"torchvision"`` (the default; ``GeneralizedRCNNTransform``): ``scale = min(short / min(h,
  w), max_size / max(h, w))``, output ``floor(h * scale) x floor(w * scale)``, bilinear
  interpolation (``align_corners=False``, no antialiasing) of the float image
  (480x640 at 800/1333 -> 800x1066).
* ``"detectron2"`` (``ResizeShortestEdge``): the shorter side to ``short``, then both scaled
  down if the longer exceeds ``max_size``, sizes rounded half up (480x640 -> 800x1067); a
  uint8 image is resized by PIL's bilinear filter (which low-pass filters when shrinking),
  a float image by ``F.interpolate``, exactly as Detectron2's ``ResizeTransform``.

Images are ``(3, H, W)`` tensors: uint8 in 0..255 or float in [0, 1]; the result is float
in [0, 1] (uint8 images are divided by 255 first for the torchvision rule, after PIL's
resize for the detectron2 rule).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

RESIZE_RULES = ("torchvision", "detectron2")


def resized_hw(h: int, w: int, *, short: int, max_size: int,
               rule: str = "torchvision") -> tuple[int, int]:
    """The size an ``h x w`` image is resized to (``short <= 0`` keeps it)."""
    if short <= 0:
        return h, w
    if rule == "torchvision":  # eager GeneralizedRCNNTransform + F.interpolate's output size
        scale = min(short / min(h, w), max_size / max(h, w))
        return max(1, int(h * scale)), max(1, int(w * scale))
    if rule == "detectron2":
        size = float(short)
        scale = size / min(h, w)
        nh, nw = (size, scale * w) if h < w else (scale * h, size)
        if max_size > 0 and max(nh, nw) > max_size:
            scale = max_size / max(nh, nw)
            nh, nw = nh * scale, nw * scale
        return max(1, int(nh + 0.5)), max(1, int(nw + 0.5))
    raise ValueError(f"model.input.resize_rule: {rule!r} is not one of {list(RESIZE_RULES)}")


def to_float(image: Tensor) -> Tensor:
    """uint8 0..255 -> float32 [0, 1]; float images pass through."""
    return image.float().div_(255.0) if image.dtype == torch.uint8 else image


def resize_image(image: Tensor, hw: tuple[int, int], rule: str = "torchvision") -> Tensor:
    """``(3, H, W)`` uint8 or float image -> float ``(3, h, w)`` in [0, 1] at size ``hw``."""
    if image.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(image.shape)}")
    if rule not in RESIZE_RULES:
        raise ValueError(f"model.input.resize_rule: {rule!r} is not one of {list(RESIZE_RULES)}")
    if tuple(image.shape[-2:]) == tuple(hw):
        return to_float(image)
    if rule == "detectron2" and image.dtype == torch.uint8:
        hwc = image.permute(1, 2, 0).cpu().numpy()
        pil = Image.fromarray(hwc).resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
        out = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
        return to_float(out.to(image.device))
    x = to_float(image)
    with _one_cpu_thread(x):
        return F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False)[0]


@contextlib.contextmanager
def _one_cpu_thread(x: Tensor) -> Iterator[None]:
    """On the CPU, run the resize on one thread, whatever the process uses: the bilinear
    kernel's result depends on how its output is split over threads (vectorized FMA body vs
    scalar tails; ~40% of the pixels of an 800x1066 image differ by 1 ulp between 1 and 2
    threads). DataLoader workers run one thread, ``predict`` and the benchmark the process's
    count, so without this the test loader and ``predict`` fed the network different images;
    bf16 autocast turned that 1e-7 into different detections (0 of 100 alike on R50-FPN)."""
    n = torch.get_num_threads()
    if x.device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def resize_for_model(image: Tensor, *, short: int, max_size: int,
                     rule: str = "torchvision") -> Tensor:
    """``image`` resized by ``rule`` to shorter side ``short`` (longer at most ``max_size``)."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    return resize_image(image, resized_hw(h, w, short=short, max_size=max_size, rule=rule), rule)


def padded_hw(sizes: Sequence[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """The batch size: the largest h and w, rounded up to a multiple of ``size_divisibility``."""
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    d = max(int(size_divisibility), 1)
    return -(-h // d) * d, -(-w // d) * d


def pad_batch(images: Sequence[Tensor], size_divisibility: int = 32) -> Tensor:
    """Stack ``(C, h_i, w_i)`` images into ``(N, C, Hp, Wp)``, zero-padded at the bottom and
    right to :func:`padded_hw`."""
    if not images:
        raise ValueError("pad_batch: no images")
    c = images[0].shape[0]
    if any(im.dim() != 3 or im.shape[0] != c for im in images):
        raise ValueError(f"pad_batch: expected (C, H, W) images with one C, got "
                         f"{[tuple(im.shape) for im in images]}")
    ph, pw = padded_hw([(im.shape[1], im.shape[2]) for im in images], size_divisibility)
    out = images[0].new_zeros((len(images), c, ph, pw))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]].copy_(im)
    return out


def preprocess_images(images: Sequence[Tensor], *, short: int, max_size: int, rule: str,
                      size_divisibility: int, device: torch.device | None = None
                      ) -> tuple[Tensor, list[tuple[int, int]]]:
    """Raw RGB ``(3, H, W)`` images (uint8, or float in [0, 1]) -> the padded batch a detector
    takes and the resized sizes: :func:`resize_for_model`, then :func:`pad_batch` (the PyTorch
    detector's ``predict`` and an exported one's alike)."""
    resized = []
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != 3 or not (
            img.is_floating_point() or img.dtype == torch.uint8
        ):
            raise ValueError(
                f"images[{i}] must be an RGB (3, H, W) tensor, uint8 or float in [0, 1], "
                f"got {img.dtype} {tuple(img.shape)}")
        img = img if device is None else img.to(device)
        resized.append(resize_for_model(img, short=short, max_size=max_size, rule=rule))
    sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in resized]
    return pad_batch(resized, size_divisibility), sizes


def boxes_to_original(boxes: Tensor, resized: tuple[int, int],
                      original: tuple[int, int]) -> Tensor:
    """Boxes in resized-image pixels -> original-image pixels (torchvision's ``resize_boxes``
    arithmetic: times ``original / resized`` per axis), clipped to the original image."""
    (rh, rw), (h, w) = resized, original
    # torchvision: float32 ratios of float32 sizes
    ratio = (torch.tensor([w, h, w, h], dtype=torch.float32)
             / torch.tensor([rw, rh, rw, rh], dtype=torch.float32)).to(boxes.device)
    out = boxes.float() * ratio
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out


def boxes_to_resized(boxes: Tensor, original: tuple[int, int],
                     resized: tuple[int, int]) -> Tensor:
    """Boxes in original-image pixels -> resized-image pixels (for training targets)."""
    (h, w), (rh, rw) = original, resized
    scale = torch.tensor([rw / w, rh / h, rw / w, rh / h], dtype=torch.float32)
    return boxes.float() * scale
