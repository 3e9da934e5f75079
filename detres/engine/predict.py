"""Running a trained detector on image files (tools/predict.py): finding and reading the
images, batched ``FasterRCNN.predict``, drawing the detections, and JSON records.

Boxes are ``(x1, y1, x2, y2)`` in the input image's pixels and labels are the data set's
category ids (what ``predict`` returns); names come from the model's class list, which a
checkpoint written by the trainer sets (``load_detector_weights``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detres.config import Config
from detres.data.det_transforms import image_tensor
from detres.data.image_io import load_image
from detres.export import OnnxDetector
from detres.modeling import FasterRCNN, build_detector, load_weights, resolve_weights
from detres.modeling.test_time import TestTimeDetector, with_test_time
from detres.utils.device import autocast_context
from detres.utils.visualizer import draw_boxes, palette

#: what runs on image files: a detector, an exported one, or one with a test-time switch
Detector = FasterRCNN | OnnxDetector | TestTimeDetector

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from paths that are files or directories (a directory's images with a
    known suffix, sorted, not recursive); a missing path or an empty directory is an error."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file()
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"input directory {p} has no image files "
                                        f"({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return files


def read_image(path: str | Path) -> Tensor:
    """An image file as a uint8 RGB ``(3, H, W)`` tensor, decoded as the loaders do (cv2; a
    missing or broken file is an error naming it)."""
    return image_tensor(load_image(path))


def keep_scores(det: dict[str, Tensor], score_thresh: float) -> dict[str, Tensor]:
    """The detections scoring at least ``score_thresh``, on the CPU."""
    keep = det["scores"] >= score_thresh
    return {k: v[keep].cpu() for k, v in det.items()}


def predict_files(model: Detector, files: Sequence[Path], *, batch_size: int = 4,
                  score_thresh: float = 0.0, amp: str = "auto"
                  ) -> Iterator[tuple[Path, Tensor, dict[str, Tensor]]]:
    """``(file, image (3, H, W) uint8, detections)`` per file, running ``model.predict`` on
    batches of ``batch_size`` images read as they are needed, under ``amp`` autocast (the
    precision the evaluation uses: ``evaluation.amp``, fp32 by default)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = model.device
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        images = [read_image(f) for f in chunk]
        with torch.inference_mode(), autocast_context(device, amp):
            dets = model.predict(images)
        for f, img, det in zip(chunk, images, dets, strict=True):
            yield f, img, keep_scores(det, score_thresh)


def class_names_by_id(model: Detector) -> dict[int, str]:
    return dict(zip(model.category_ids, model.class_names, strict=True))


def draw_detections(image: Tensor, det: dict[str, Tensor], model: Detector,
                    width: int | None = None) -> Tensor:
    """``image`` (float in [0, 1] or uint8, ``(3, H, W)``) with its boxes drawn in their class
    colours, each labelled ``"name score"`` (:func:`detres.utils.visualizer.draw_boxes`);
    returns uint8 ``(3, H, W)``."""
    names = class_names_by_id(model)
    colours = dict(zip(model.category_ids, palette(len(model.category_ids)), strict=True))
    labels = [int(c) for c in det["labels"].tolist()]
    canvas = draw_boxes(image, det["boxes"].float().tolist(),
                        [f"{names.get(c, str(c))} {float(s):.2f}"
                         for c, s in zip(labels, det["scores"].tolist(), strict=True)],
                        [colours.get(c, (255, 255, 255)) for c in labels], width=width)
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def detection_record(file: str | Path, image: Tensor, det: dict[str, Tensor],
                     model: Detector) -> dict[str, Any]:
    """One image's entry of ``predictions.json``."""
    names = class_names_by_id(model)
    labels = [int(c) for c in det["labels"]]
    return {
        "file": str(file),
        "height": int(image.shape[-2]),
        "width": int(image.shape[-1]),
        "boxes": [[round(float(v), 4) for v in b] for b in det["boxes"].tolist()],
        "scores": [round(float(s), 6) for s in det["scores"].tolist()],
        "labels": labels,
        "class_names": [names.get(c, str(c)) for c in labels],
    }


def output_name(file: Path) -> str:
    """The drawn image's file name: the input's, as PNG unless it is a JPEG or PNG."""
    return file.name if file.suffix.lower() in (".jpg", ".jpeg", ".png") else f"{file.stem}.png"


def build_predictor(cfg: Config, weights: str | Path, device: torch.device
                    ) -> FasterRCNN | TestTimeDetector:
    """The detector of ``cfg`` with all its weights (strictly) and class names from
    ``weights``; wrapped for TTA or multi-scale testing when ``evaluation`` switches one on."""
    model = build_detector(cfg)
    load_weights(model, resolve_weights(str(weights), cfg.model), policy="strict")
    model = model.to(device).eval()
    if cfg.train.channels_last:  # NHWC convolutions: faster on CPU (oneDNN) and tensor cores
        model = model.to(memory_format=torch.channels_last)
    return with_test_time(model, cfg.evaluation)
