"""Evaluation: COCO (pycocotools), PASCAL VOC (devkit rules) and top-1/top-5 accuracy.

Evaluators are chosen by name: ``EVALUATORS.build("voc", gt=..., class_names=...)``.
Each has ``reset()``, ``process(...)`` per batch and ``evaluate() -> dict`` (rank 0 under
torchrun; ``{}`` elsewhere). Detection results hold ``"mAP@.5"``, ``"mAP@[.5,.95]"`` and
``"per_class"`` as fractions in [0, 1]; :func:`write_metrics` writes them as JSON and
:func:`format_table` prints them.
"""

from detres.evaluation.base import DetectionEvaluator, Evaluator
from detres.evaluation.classification import ClassificationEvaluator
from detres.evaluation.coco import COCOEvaluator, evaluate_coco_results
from detres.evaluation.report import (
    describe_report,
    format_table,
    metrics_dict,
    write_metrics,
    write_report,
)
from detres.evaluation.voc import VOC_CLASSES, VOCEvaluator, voc_ap, voc_average_precisions
from detres.evaluation.voc_io import load_voc_annotations, load_voc_results
from detres.registry import Registry

EVALUATORS = Registry("evaluator")
EVALUATORS.add("coco", COCOEvaluator)
EVALUATORS.add("voc", VOCEvaluator)
EVALUATORS.add("classification", ClassificationEvaluator)

__all__ = [
    "EVALUATORS", "VOC_CLASSES", "ClassificationEvaluator", "COCOEvaluator",
    "DetectionEvaluator", "Evaluator", "VOCEvaluator", "describe_report",
    "evaluate_coco_results", "format_table", "load_voc_annotations", "load_voc_results",
    "metrics_dict", "voc_ap", "voc_average_precisions", "write_metrics", "write_report",
]
