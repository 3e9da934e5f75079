"""Running a trained detector on image files (tools/predict.py): finding and reading the
images, batched ``FasterRCNN.predict``, drawing the detections, and JSON records.

Boxes are ``(x1, y1, x2, y2)`` in the input image's pixels and labels are the data set's
category ids (what ``predict`` returns); names come from the model's class list, which a
checkpoint written by the trainer sets (``load_detector_weights``).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import Tensor

from detres.config import Config
from detres.data.det_transforms import image_tensor
from detres.data.image_io import load_image
from detres.export import OnnxDetector
from detres.modeling import FasterRCNN, build_detector, load_weights, resolve_weights
from detres.modeling.test_time import TestTimeDetector, with_test_time
from detres.utils.device import autocast_context
from detres.utils.errors import FileReadError
from detres.utils.visualizer import draw_boxes, palette

#: what runs on image files: a detector, an exported one, or one with a test-time switch
Detector = FasterRCNN | OnnxDetector | TestTimeDetector

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def list_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """``(file, output name)`` for paths that are image or video files, folders (searched
    recursively: the output name keeps the sub-folder) or globs (``photos/**/*.jpg``); a
    missing path, an empty folder or a glob that matches nothing is an error."""
    out: list[tuple[Path, str]] = []
    media = (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in media)
            if not found:
                raise FileNotFoundError(f"input directory {p} has no image or video files "
                                        f"({', '.join(media)}), searched recursively")
            out += [(f, output_name(f.relative_to(p))) for f in found]
        elif p.is_file():
            out.append((p, output_name(Path(p.name))))
        elif glob.has_magic(str(item)):
            found = sorted(Path(f) for f in glob.glob(str(item), recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in media)
            if not found:
                raise FileNotFoundError(f"input pattern {item!r} matches no image or video file")
            out += [(f, output_name(Path(f.name))) for f in found]
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    return out


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The files of :func:`list_inputs`."""
    return [f for f, _ in list_inputs(inputs)]


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def predict_video(model: Detector, path: Path, *, batch_size: int = 4,
                  score_thresh: float = 0.0, amp: str = "auto"
                  ) -> Iterator[tuple[int, float, Tensor, dict[str, Tensor]]]:
    """``(frame index, time in s, frame (3, H, W) uint8 RGB, detections)`` per frame of a
    video (OpenCV's decoder), ``batch_size`` frames per forward pass."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileReadError(f"video file {path} cannot be opened")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    model.eval()
    index = 0
    try:
        while True:
            frames = []
            for _ in range(batch_size):
                ok, bgr = cap.read()
                if not ok:
                    break
                frames.append(torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                              .permute(2, 0, 1).contiguous())
            if not frames:
                return
            with torch.inference_mode(), autocast_context(model.device, amp):
                dets = model.predict(frames)
            for frame, det in zip(frames, dets, strict=True):
                yield index, (index / fps if fps else 0.0), frame, keep_scores(det,
                                                                                score_thresh)
                index += 1
    finally:
        cap.release()


def video_info(path: Path) -> tuple[float, int, tuple[int, int]]:
    """(frames per second, frame count as the container says, (width, height))."""
    cap = cv2.VideoCapture(str(path))
    try:
        return (cap.get(cv2.CAP_PROP_FPS) or 25.0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))))
    finally:
        cap.release()


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
    """The drawn file's name (a relative path keeps its folders): the input's, as PNG unless
    it is a JPEG or PNG; a video's as MP4."""
    if file.suffix.lower() in VIDEO_SUFFIXES:
        return str(file.with_suffix(".mp4"))
    keep = file.suffix.lower() in (".jpg", ".jpeg", ".png")
    return str(file if keep else file.with_suffix(".png"))


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
