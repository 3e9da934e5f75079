"""Detection training and evaluation on the shared loop (tools/train_det.py, tools/eval.py).

Scoring runs the model on ``data.test[0]`` through the test loader, maps boxes back to
original-image pixels and labels to the data set's category ids, and hands them to the
evaluator of the set's format: COCO (pycocotools) or VOC (the devkit rules).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from detres.config import Config
from detres.data.catalog import safe_name
from detres.data.det_loader import build_det_sources, build_det_test_loader, build_det_train_loader
from detres.data.det_source import DetSource, concat_sources
from detres.data.image_io import load_image
from detres.engine.checkpoint import unwrap
from detres.engine.launch import Run
from detres.engine.trainer import Trainer
from detres.evaluation import (
    EVALUATORS,
    DetectionEvaluator,
    describe_report,
    write_metrics,
    write_report,
)
from detres.export import OnnxDetector
from detres.modeling import FasterRCNN, build_detector, load_pretrained
from detres.modeling.test_time import TestTimeDetector, with_test_time
from detres.utils.device import autocast_context
from detres.utils.dist import get_world_size, is_main_process
from detres.utils.errors import InputError
from detres.utils.logging import LOG, plot_curves
from detres.utils.visualizer import draw_boxes, grid, palette, side_by_side, write_image


def build_det_evaluator(src: DetSource, *, out_dir: Path | None = None,
                        coco_backend: str = "auto") -> DetectionEvaluator:
    """The official scorer of a data set's format (``EVALUATORS``): pycocotools for COCO,
    the devkit rules for VOC."""
    if src.format in ("coco", "yolo"):  # a YOLO set carries a COCO ground truth
        results = (out_dir / f"coco_results_{safe_name(src.name)}.json"
                   if out_dir is not None else None)
        return EVALUATORS.build("coco", gt=src.coco, results_file=results, backend=coco_backend)
    if src.format == "voc":
        gt = {}
        for r in src.records:
            boxes = r["boxes"].clone()
            boxes[:, :2] += 1  # back to the XML's 1-based pixel indices
            gt[r["image_id"]] = {"boxes": boxes.numpy(), "difficult": r["difficult"].numpy(),
                                 "labels": src.to_category_ids(r["classes"]).numpy()}
        year = int(src.year) if src.year.isdigit() else None
        return EVALUATORS.build("voc", gt=gt, class_names=src.class_names,
                                category_ids=src.category_ids, year=year,
                                boxes_zero_based=True)
    raise InputError(f"data set {src.name!r}: no evaluator for format {src.format!r}")


Scorable = FasterRCNN | OnnxDetector | TestTimeDetector


def _log_test_time(model: Scorable) -> Scorable:
    if isinstance(model, TestTimeDetector):
        LOG.info("%s", model.describe())
    return model


def build_scoring_loader(cfg: Config, model: Scorable, src: DetSource) -> DataLoader:
    """The test loader for ``model``: at the test scale, or the images as they are (no
    resize) for a :class:`TestTimeDetector`, which resizes them itself."""
    if isinstance(model, TestTimeDetector):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, input=dataclasses.replace(cfg.model.input, min_size_test=0)))
    return build_det_test_loader(cfg, 0, sources=[src])


def _raw_images(images: Tensor, targets: list[dict[str, Any]]) -> list[Tensor]:
    """The unresized images of a raw-scale loader batch as uint8 (the loader's float is the
    uint8 value / 255, so this is exact): resizing uint8 is what Detectron2's rule does."""
    out = []
    for img, t in zip(images, targets, strict=True):
        h, w = (int(v) for v in t["image_size"])
        out.append(img[:, :h, :w].mul(255).round_().to(torch.uint8))
    return out


@torch.inference_mode()
def run_detector(model: Scorable, loader: DataLoader, src: DetSource,
                 evaluator: DetectionEvaluator, device: torch.device, amp: str = "auto",
                 channels_last: bool = False) -> dict[str, Any]:
    """Predictions for this rank's shard of the test set, scored on rank 0."""
    evaluator.reset()
    n = 0
    t0 = time.perf_counter()
    with autocast_context(device, amp):
        for images, targets in tqdm(loader, desc="eval", disable=not is_main_process(),
                                    dynamic_ncols=True, leave=False):
            images = images.to(device, non_blocking=True)
            if isinstance(model, TestTimeDetector):  # original pixels already
                dets = model.detect_original(_raw_images(images, targets))
            else:
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                dets = model.inference(images, [t["image_size"] for t in targets])
            preds = []
            for d, t in zip(dets, targets, strict=True):
                d = {k: v.cpu() for k, v in d.items()}
                if not isinstance(model, TestTimeDetector):
                    d = model.to_original(d, tuple(t["image_size"]), tuple(t["orig_size"]))
                preds.append({"image_id": t["image_id"], "boxes": d["boxes"],
                              "scores": d["scores"].float(),
                              "labels": src.to_category_ids(d["labels"])})
            evaluator.process(preds)
            n += len(dets)
    elapsed = time.perf_counter() - t0
    metrics = evaluator.evaluate()
    if metrics:
        metrics["inference_s_per_image"] = elapsed * get_world_size() / max(n, 1)
    return metrics


def _summary(metrics: dict[str, Any]) -> str:
    return (f"mAP@.5 {100 * metrics.get('mAP@.5', float('nan')):.2f}  "
            f"mAP@[.5,.95] {100 * metrics.get('mAP@[.5,.95]', float('nan')):.2f}")


def evaluate_config(cfg: Config, device: torch.device, *, out_dir: Path | None = None
                    ) -> dict[str, Any]:
    """Build the detector of ``cfg`` (weights from ``model.weights``) and score it on
    ``data.test[0]``."""
    if not cfg.model.weights:
        raise InputError("evaluation needs weights: --weights CKPT (or model.weights=CKPT)")
    model = build_detector(cfg)
    load_pretrained(model, cfg.model)  # strict: the whole detector
    model = model.to(device).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return _score_on_test_set(_log_test_time(with_test_time(model, cfg.evaluation)), cfg,
                              device, out_dir, cfg.evaluation.amp, cfg.train.channels_last)


def _score_on_test_set(model: Scorable, cfg: Config, device: torch.device,
                       out_dir: Path | None, amp: str, channels_last: bool) -> dict[str, Any]:
    src = build_det_sources(cfg, train=False)[0]
    LOG.info("test set %s", src.summary())
    _check_model_classes(model, src)
    loader = build_scoring_loader(cfg, model, src)
    evaluator = build_det_evaluator(src, out_dir=out_dir,
                                    coco_backend=cfg.evaluation.coco_backend)
    metrics = run_detector(model, loader, src, evaluator, device, amp, channels_last)
    if metrics and out_dir is not None:  # rank 0
        save_report(evaluator, out_dir / "report", src)
    return metrics


def save_report(evaluator: DetectionEvaluator, out_dir: Path, src: DetSource | None = None,
                examples: int = 8) -> list[Path]:
    """The evaluation report of the evaluator's last scoring (PR and F1 curves, confusion
    matrix: :mod:`detres.evaluation.analysis`) into ``out_dir``, and with ``src`` its first
    ``examples`` images with the ground truth beside the detections kept at the report's best
    threshold (``val_examples.jpg``); logged in one line; returns the pictures written."""
    report = evaluator.report()  # type: ignore[attr-defined]
    written = [p for p in write_report(report, out_dir) if p.suffix == ".png"]
    if src is not None and examples:
        names, gt, det = evaluator.last_pairs  # type: ignore[attr-defined]
        pics = val_examples(src, names, gt, det, report["f1"]["best_score_thresh"], examples)
        if pics:
            written.append(write_image(out_dir / "val_examples.jpg",
                                       grid(pics, cell=(800, 340), cols=2)))
    LOG.info("%s -> %s", describe_report(report), out_dir)
    return written


def val_examples(src: DetSource, names: list[str], gt: dict[Any, Any], det: dict[Any, Any],
                 thresh: float, n: int) -> list[np.ndarray]:
    """The first ``n`` images of ``src``: the ground truth (left) beside the detections at
    or above ``thresh`` with their scores (right), in the classes' colours."""
    colours = palette(len(names))
    out = []
    for r in list(itertools.islice(src.records, n)):
        image = load_image(r["file"])
        gc, gb = gt.get(r["image_id"], (np.zeros(0, np.int64), np.zeros((0, 4))))
        dc, ds, db = det.get(r["image_id"], (np.zeros(0, np.int64), np.zeros(0),
                                             np.zeros((0, 4))))
        keep = ds >= thresh
        left = draw_boxes(image, gb.tolist(), [names[c] for c in gc.tolist()],
                          [colours[c] for c in gc.tolist()])
        right = draw_boxes(image, db[keep].tolist(),
                           [f"{names[c]} {s:.2f}" for c, s in zip(dc[keep].tolist(),
                                                                 ds[keep].tolist(), strict=True)],
                           [colours[c] for c in dc[keep].tolist()])
        out.append(side_by_side(left, right))
    return out


def batch_mosaic(images: Tensor, targets: list[dict[str, Any]], names: list[str]
                 ) -> np.ndarray:
    """A training batch as the model sees it (after augmentation, before normalization):
    each image with its boxes and class names."""
    colours = palette(len(names))
    drawn = []
    for img, t in zip(images, targets, strict=True):
        h, w = (int(v) for v in t["image_size"])
        labels = [int(c) - 1 for c in t["gt_classes"].tolist()]
        drawn.append(draw_boxes(img[:, :h, :w], t["gt_boxes"].tolist(),
                                [names[c] for c in labels], [colours[c] for c in labels]))
    return grid(drawn, cell=320)


def with_batch_mosaics(batches: Iterator[Any], out_dir: Path, names: list[str],
                       writer: Any, n: int = 3) -> Iterator[Any]:
    """``batches`` unchanged; the first ``n`` drawn to ``OUT/train_batch<i>.jpg`` (and the
    writer's images) as they pass."""
    for i, batch in enumerate(batches):
        if i < n:
            mosaic = batch_mosaic(batch[0], batch[1], names)
            write_image(out_dir / f"train_batch{i}.jpg", mosaic)
            writer.add_image(f"train_batch{i}", mosaic, 0)
        yield batch


def evaluate_onnx(cfg: Config, path: str | Path, *, out_dir: Path | None = None
                  ) -> dict[str, Any]:
    """Score an exported detector (``tools/export.py``) with onnxruntime on ``data.test[0]``
    of ``cfg``, through the same loader, mapping and evaluator as :func:`evaluate_config`. The
    config must describe the exported network (its keys are checked against the file's)."""
    if get_world_size() > 1:
        raise InputError("--onnx runs in one process (onnxruntime on the CPU): not under "
                         "torchrun")
    model = OnnxDetector(path)
    model.check_config(dataclasses.asdict(cfg.model), where="the config")
    LOG.info("onnx %s", model.describe())
    return _score_on_test_set(model, cfg, torch.device("cpu"), out_dir, "none", False)


def _check_model_classes(model: Scorable, src: DetSource) -> None:
    """The model and the data set it is scored on must share one class list."""
    placeholder = [f"class_{i}" for i in range(1, model.num_classes + 1)]  # names never set
    names = None if model.class_names == placeholder else model.class_names
    if model.num_classes != src.num_classes or (names is not None and names != src.class_names):
        raise InputError(
            f"the model's classes ({model.num_classes}: {names or 'unnamed'}) and those of "
            f"{src.name!r} ({src.num_classes}: {src.class_names}) disagree")


def _record_inferred_classes(cfg: Config, sources: list[DetSource]) -> list[DetSource]:
    """VOC sets without a class list took theirs from their annotations: one sorted list for
    every training set, written into the config's VOC entries (train and test), so that the
    test set and ``OUT/config.yaml`` (eval.py, predict.py) use the same labels."""
    names = sorted({n for s in sources for n in s.class_names})
    for ds in [*cfg.data.train, *cfg.data.test]:
        if ds.format == "voc" and not ds.classes:
            ds.classes = list(names)
    LOG.info("classes from the training annotations (no classes.txt): %s; recorded as "
             "data.train[*].classes / data.test[*].classes in the run's config.yaml", names)
    if all(s.class_names == names for s in sources):
        return sources
    return build_det_sources(cfg, train=True)


def train_detector(run: Run, resume: str | None = None) -> dict[str, Any]:
    cfg, device = run.cfg, run.device
    train_sources = build_det_sources(cfg, train=True)
    if any(s.classes_inferred for s in train_sources):
        train_sources = _record_inferred_classes(cfg, train_sources)
    for s in train_sources:
        LOG.info("train set %s", s.summary())
    train_src = concat_sources(train_sources)
    if cfg.model.num_classes != train_src.num_classes:
        LOG.info("model.num_classes=%d -> %d (from %s)", cfg.model.num_classes,
                 train_src.num_classes, train_src.name)
        cfg.model.num_classes = train_src.num_classes
    test_src = build_det_sources(cfg, train=False)[0]
    # after the data set the class count and the image check its exclusions: OUT/config.yaml
    # builds this model on these images
    run.save_config()
    model = build_detector(cfg)
    load_pretrained(model, cfg.model, finetune=True)
    model.set_classes(train_src.class_names, train_src.category_ids)
    model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = (DistributedDataParallel(model, find_unused_parameters=False)
                      if run.distributed else model)
    LOG.info("test set %s", test_src.summary())
    _check_model_classes(model, test_src)
    # evaluations with the config's test-time switch, if any
    test_loader = build_scoring_loader(cfg, _log_test_time(with_test_time(model, cfg.evaluation)),
                                       test_src)
    evaluator = build_det_evaluator(test_src, out_dir=run.out_dir,
                                    coco_backend=cfg.evaluation.coco_backend)
    per_rank = cfg.solver.batch_size // get_world_size()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    LOG.info("%s/%s: %d train images (%s), %d test images (%s), %d classes, %.2fM trainable "
             "parameters", cfg.model.arch, cfg.model.backbone.name, len(train_src.records),
             train_src.name, len(test_src.records), test_src.name, train_src.num_classes,
             n_params / 1e6)

    def step(m: nn.Module, batch: tuple[Tensor, list[dict[str, Any]]]) -> dict[str, Tensor]:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return m(images, targets)

    def evaluate(m: nn.Module) -> dict[str, Any]:
        metrics = run_detector(with_test_time(unwrap(m), cfg.evaluation),
                               test_loader, test_src, evaluator, device,
                               cfg.evaluation.amp, cfg.train.channels_last)
        if metrics:
            LOG.info("eval on %s: %s", test_src.name, _summary(metrics))
        return metrics

    def batches(start: int) -> Any:
        it = iter(build_det_train_loader(cfg, per_rank, start_iter=start,
                                         sources=train_sources))
        if start == 0 and is_main_process():  # the data as the model sees it, once
            return with_batch_mosaics(it, run.out_dir, train_src.class_names, trainer.writer)
        return it

    trainer = Trainer(cfg, net, batches, step, evaluate, run.out_dir, device=device,
                      primary_metric="mAP@.5", lower_is_better=False,
                      meta={"task": "det", "class_names": train_src.class_names,
                            "category_ids": train_src.category_ids,
                            "input": model.input_spec()})
    if resume is not None:
        trainer.resume(None if resume == "last" else resume)
    metrics = trainer.train()
    if is_main_process() and metrics:
        write_metrics(metrics, run.out_dir / "metrics.json")
        for png in save_report(evaluator, run.out_dir / "report", test_src):  # also as images
            trainer.writer.add_image(f"report/{png.stem}", load_image(png),
                                     trainer.state.iteration)
        trainer.writer.close()
        plot_curves(run.out_dir / "metrics.jsonl", run.out_dir / "curves.png",
                    train_keys=["loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"],
                    val_keys=["val/mAP@.5", "val/mAP@[.5,.95]"],
                    title=f"{cfg.model.arch} {cfg.model.backbone.name}: losses and mAP",
                    val_ylabel="mAP on " + test_src.name)
        LOG.info("final: %s -> %s", _summary(metrics), run.out_dir / "metrics.json")
    return metrics
