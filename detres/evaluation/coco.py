"""COCO box evaluation (iouType "bbox"): faster-coco-eval by default, pycocotools as the
reference.

Predictions become the official results format (``image_id``, original ``category_id``,
``bbox`` as x, y, w, h, ``score``), optionally dumped to a JSON file. Results: the 12
standard numbers under readable keys (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
ARm, ARl; ``None`` where the scorer reports -1), the headline ``mAP@[.5,.95]`` (= AP) and
``mAP@.5`` (= AP50), and a per-category table from ``COCOeval.eval["precision"]``.

Backends (``evaluation.coco_backend``): ``faster_coco_eval`` (the C++ evaluate/accumulate of
the faster-coco-eval package, which follows pycocotools' rules; about 6x faster on a
val2017-sized case, ``tools/bench_eval.py``), ``pycocotools`` (the reference) or ``auto``
(the first when importable). Every number and per-category AP is checked equal to
pycocotools' in ``tests/test_eval_coco_backends.py``; only the default ``maxDets`` (1, 10,
100) go to faster-coco-eval, anything else to the reference. The scorers' prints are
captured and logged at DEBUG level.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detres.evaluation.analysis import build_report, coco_curves
from detres.evaluation.base import DetectionEvaluator, Prediction
from detres.utils.errors import InputError

try:  # a core dependency; pycocotools stays the reference and the fallback
    import faster_coco_eval
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster
except ImportError:  # pragma: no cover - exercised where the wheel is missing
    faster_coco_eval = None

COCO_BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
STANDARD_MAX_DETS = (1, 10, 100)

logger = logging.getLogger(__name__)

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@contextlib.contextmanager
def quiet_pycocotools() -> Iterator[None]:
    """Capture pycocotools' prints and log them at DEBUG level."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.debug("pycocotools: %s", line)


def load_coco_gt(gt: COCO | str | os.PathLike[str]) -> COCO:
    """A pycocotools ``COCO`` as given, or loaded (quietly) from an instances JSON path."""
    if isinstance(gt, COCO):
        return gt
    if not Path(gt).is_file():
        raise FileNotFoundError(f"no COCO ground-truth file {gt}")
    with quiet_pycocotools():
        return COCO(str(gt))


def predictions_to_coco_results(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Per-image xyxy predictions -> COCO results (bbox x, y, w, h; plain Python types)."""
    out: list[dict[str, Any]] = []
    for p in predictions:
        b = np.asarray(p["boxes"], np.float64).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
        image_id = p["image_id"]
        out.extend({"image_id": image_id, "category_id": c, "bbox": box, "score": s}
                   for c, box, s in zip(np.asarray(p["labels"]).tolist(), xywh,
                                        np.asarray(p["scores"]).tolist(), strict=True))
    return out


def check_coco_results(results: list[Any], coco_gt: COCO, source: str = "results") -> None:
    """Raise a ``ValueError`` naming ``source[index]`` and the id for an entry of a results list
    that pycocotools would reject or silently mis-score."""
    if not isinstance(results, list):
        raise InputError(f"{source}: expected a list of detections, got {type(results).__name__}")
    keys = ("image_id", "category_id", "bbox", "score")
    for n, r in enumerate(results):  # cheap key check first, for a precise message
        if not isinstance(r, dict) or any(k not in r for k in keys):
            raise InputError(f"{source}[{n}]: expected an object with keys {', '.join(keys)}, "
                             f"got {r!r:.200}")
    for key, known in (("image_id", coco_gt.getImgIds()), ("category_id", coco_gt.getCatIds())):
        values, known_set = [r[key] for r in results], set(known)
        ok = np.asarray([v in known_set for v in values], bool)
        if not ok.all():
            n = int(np.flatnonzero(~ok)[0])
            raise InputError(f"{source}[{n}]: unknown {key} {values[n]!r} "
                             "(not in the ground truth)")
    try:
        boxes = np.asarray([r["bbox"] for r in results], np.float64).reshape(len(results), 4)
        scores = np.asarray([r["score"] for r in results], np.float64).reshape(len(results))
    except (ValueError, TypeError):
        for n, r in enumerate(results):
            if np.asarray(r["bbox"]).shape != (4,) or not isinstance(r["score"], int | float):
                raise InputError(f"{source}[{n}]: bbox must be 4 numbers [x, y, w, h] and score "
                                 f"a number, got {r!r:.200}") from None
        raise
    bad = np.flatnonzero((boxes[:, 2:] < 0).any(axis=1) | ~np.isfinite(boxes).all(axis=1)
                         | ~np.isfinite(scores))
    if len(bad):
        n = int(bad[0])
        raise InputError(f"{source}[{n}] (image_id {results[n]['image_id']}): bad bbox "
                         f"{results[n]['bbox']} or score (negative width/height, i.e. x2 < x1, "
                         "or not finite)")


def _empty_dataset(coco_gt: COCO) -> dict[str, Any]:
    return {"images": list(coco_gt.dataset["images"]), "annotations": [],
            "categories": copy.deepcopy(coco_gt.dataset["categories"])}


def _empty_results(coco_gt: COCO) -> COCO:
    """A results ``COCO`` with no detections (``loadRes`` crashes on an empty list)."""
    res = COCO()
    res.dataset = _empty_dataset(coco_gt)
    with quiet_pycocotools():
        res.createIndex()
    return res


def summarize_cocoeval(ev: COCOeval, coco_gt: COCO) -> dict[str, Any]:
    """Our results dict from an accumulated and summarized ``COCOeval``."""
    stats = [None if s == -1 else float(s) for s in list(ev.stats)[: len(COCO_STAT_NAMES)]]
    out: dict[str, Any] = {"mAP@.5": stats[1], "mAP@[.5,.95]": stats[0], "mAP@.75": stats[2]}
    precision = ev.eval["precision"]  # (T iou, R recall, K category, A area, M maxDets)
    a = ev.params.areaRngLbl.index("all")
    m = len(ev.params.maxDets) - 1  # the largest (100), as in summarize()
    t50 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.75))[0])

    def mean_valid(p: np.ndarray) -> float | None:
        p = p[p > -1]
        return float(p.mean()) if p.size else None

    per_class: dict[str, dict[str, float | None]] = {}
    for k, cid in enumerate(ev.params.catIds):
        name = coco_gt.cats[cid]["name"]
        name = f"{name} ({cid})" if name in per_class else name
        per_class[name] = {"AP@.5": mean_valid(precision[t50, :, k, a, m]),
                           "AP@.75": mean_valid(precision[t75, :, k, a, m]),
                           "AP@[.5,.95]": mean_valid(precision[:, :, k, a, m])}
    out["per_class"] = per_class
    out.update(zip(COCO_STAT_NAMES, stats, strict=True))
    return out


def resolve_backend(backend: str, max_dets: tuple[int, ...] = STANDARD_MAX_DETS) -> str:
    """``auto`` -> ``faster_coco_eval`` when importable, else ``pycocotools``; a non-standard
    ``max_dets`` always goes to the reference (faster-coco-eval's known difference)."""
    if backend not in COCO_BACKENDS:
        raise InputError(f"evaluation.coco_backend: {backend!r} is not one of "
                         f"{list(COCO_BACKENDS)}")
    if backend == "faster_coco_eval" and faster_coco_eval is None:
        raise InputError("evaluation.coco_backend=faster_coco_eval but the faster-coco-eval "
                         "package is not installed (pip install faster-coco-eval)")
    if tuple(max_dets) != STANDARD_MAX_DETS:
        return "pycocotools"
    if backend == "auto":
        return "faster_coco_eval" if faster_coco_eval is not None else "pycocotools"
    return backend


def run_cocoeval(coco_gt: COCO, results: list[dict[str, Any]], *, backend: str = "auto",
                 source: str = "results", faster_gt: Any = None,
                 max_dets: tuple[int, ...] = STANDARD_MAX_DETS) -> Any:
    """evaluate + accumulate + summarize of ``results`` (checked, official format) against
    ``coco_gt`` with the chosen backend; returns the ``COCOeval`` object. ``faster_gt``: the
    ground truth already loaded by faster-coco-eval (a cache), else built from ``coco_gt``."""
    backend = resolve_backend(backend, max_dets)
    results = [dict(r) for r in results]  # both scorers annotate the dicts they load
    with quiet_pycocotools():
        if backend == "faster_coco_eval":
            gt = faster_gt if faster_gt is not None else faster_ground_truth(coco_gt)
            dt = gt.loadRes(results) if results else FasterCOCO(_empty_dataset(coco_gt))
            ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=logger.debug)
        else:
            if results:
                dt = coco_gt.loadRes(results)
            else:
                dt = _empty_results(coco_gt)
            ev = COCOeval(coco_gt, dt, iouType="bbox")
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if not results:
        warnings.warn(f"{source}: no detections, every AP is 0", stacklevel=2)
    return ev


def faster_ground_truth(coco_gt: COCO) -> Any:
    """faster-coco-eval's ``COCO`` of the same ground truth."""
    return FasterCOCO(coco_gt.dataset, print_function=logger.debug)


def evaluate_coco_results(coco_gt: COCO | str | os.PathLike[str],
                          results: list[dict[str, Any]] | str | os.PathLike[str], *,
                          backend: str = "auto") -> dict[str, Any]:
    """Score COCO results (a list, or a results JSON path) against ground truth."""
    coco_gt = load_coco_gt(coco_gt)
    source = "results"
    if not isinstance(results, list):
        source = str(results)
        try:
            results = json.loads(Path(results).read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{source}: not valid JSON: {e}") from None
    check_coco_results(results, coco_gt, source)
    ev = run_cocoeval(coco_gt, results, backend=backend, source=source)
    return summarize_cocoeval(ev, coco_gt)


class COCOEvaluator(DetectionEvaluator):
    """COCO scoring of per-image predictions (labels are the dataset's category ids).

    ``gt``: a pycocotools ``COCO`` or an instances JSON path. ``results_file``: where to dump
    the results in the official format (optional). Every ground-truth image is scored, so
    images without predictions count as misses.
    """

    def __init__(self, *, gt: COCO | str | os.PathLike[str],
                 results_file: str | os.PathLike[str] | None = None,
                 backend: str = "auto") -> None:
        self.coco_gt = load_coco_gt(gt)
        self.results_file = Path(results_file) if results_file else None
        self.backend = resolve_backend(backend)
        self._faster_gt: Any = None  # faster-coco-eval's index of the ground truth, built once
        super().__init__()

    def score_predictions(self, predictions: list[Prediction]) -> dict[str, Any]:
        results = predictions_to_coco_results(predictions)
        check_coco_results(results, self.coco_gt, "predictions")
        if self.results_file is not None:
            self.results_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.results_file.with_suffix(self.results_file.suffix + ".tmp")
            tmp.write_text(json.dumps(results))
            os.replace(tmp, self.results_file)
        if self.backend == "faster_coco_eval" and self._faster_gt is None:
            self._faster_gt = faster_ground_truth(self.coco_gt)
        ev = run_cocoeval(self.coco_gt, results, backend=self.backend, source="predictions",
                          faster_gt=self._faster_gt)
        self._last = (ev, results)
        return summarize_cocoeval(ev, self.coco_gt)

    def report(self) -> dict[str, Any]:
        """:func:`~detres.evaluation.analysis.build_report` of the last scoring, from its
        ``COCOeval``'s accumulated arrays (each curve's mean is the printed AP)."""
        ev, results = self._last
        cat_ids = list(ev.params.catIds)
        index = {c: i for i, c in enumerate(cat_ids)}
        names = [self.coco_gt.cats[c]["name"] for c in cat_ids]

        def xyxy(b: list[float]) -> list[float]:
            return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

        gt_rows: dict[Any, list[tuple[int, list[float]]]] = {}
        for a in self.coco_gt.dataset["annotations"]:
            if not a.get("iscrowd", 0) and a["category_id"] in index:
                gt_rows.setdefault(a["image_id"], []).append((index[a["category_id"]],
                                                              xyxy(a["bbox"])))
        det_rows: dict[Any, list[tuple[int, float, list[float]]]] = {}
        for r in results:
            det_rows.setdefault(r["image_id"], []).append((index[r["category_id"]], r["score"],
                                                           xyxy(r["bbox"])))
        gt = {i: (np.asarray([c for c, _ in v], np.int64),
                  np.asarray([b for _, b in v], np.float64).reshape(-1, 4))
              for i, v in gt_rows.items()}
        det = {i: (np.asarray([c for c, _, _ in v], np.int64),
                   np.asarray([s for _, s, _ in v], np.float64),
                   np.asarray([b for _, _, b in v], np.float64).reshape(-1, 4))
               for i, v in det_rows.items()}
        self.last_pairs = (names, gt, det)  # for pictures of examples
        report = build_report(coco_curves(ev), names, gt, det,
                              source=f"COCO ({self.backend}), area all, maxDets "
                                     f"{ev.params.maxDets[-1]}")
        report["error_breakdown"] = error_breakdown(self.coco_gt, results)
        return report


#: the COCO API's analyze() error types (Hoiem et al. 2012), in the order they accumulate
ERROR_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")


def error_breakdown(coco_gt: COCO, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The COCO API's error analysis (``analyze``, after Hoiem et al.), per area range and per
    category: AP at IoU .75 (C75) and .5 (C50); at .1 (Loc: localization errors forgiven);
    with confusions inside the supercategory forgiven (Sim), with every class confusion
    forgiven (Oth), with background false positives removed too (BG), and 1 (FN: what is left
    are missed objects). Each step's gain names the error it removes. Run with pycocotools,
    the reference, as the COCO API runs it: one evaluation at IoU .75/.5/.1, then, for each
    category, its detections against the ground truth with the other categories' boxes of the
    same supercategory (Sim) or of any (Oth) marked as ignored, and so matchable without
    cost. Categories without a ``supercategory`` are their own."""
    areas = ("all", "small", "medium", "large")
    results = [dict(r) for r in results]  # loadRes writes into the dicts
    with quiet_pycocotools():
        dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        ev = COCOeval(coco_gt, dt, iouType="bbox")
        ev.params.iouThrs = np.array([0.75, 0.5, 0.1])
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    cat_ids = list(ev.params.catIds)
    ps = np.concatenate([ev.eval["precision"][:, :, :, :, 0],
                         np.zeros((4, *ev.eval["precision"].shape[1:4]))])  # (7, R, K, A)
    sup = {c: coco_gt.cats[c].get("supercategory") or f"#{c}" for c in cat_ids}
    for k, cat in enumerate(cat_ids):
        mine = [r for r in results if r["category_id"] == cat]
        for row, same in ((3, True), (4, False)):
            ps[row, :, k, :] = _forgiven_precision(coco_gt, mine, cat, sup, same)
        ps[5, :, k, :] = ps[4, :, k, :] > 0  # background removed: precision 1 up to recall
        ps[6, :, k, :] = 1.0  # FN: only missed objects are left
    missing = ev.eval["precision"][0, :, :, :, 0] < 0  # (R, K, A): no ground truth
    ps[:, missing] = -1

    def ap(p: np.ndarray) -> float | None:
        v = p[p > -1]
        return float(v.mean()) if v.size else None

    names = [coco_gt.cats[c]["name"] for c in cat_ids]
    return {
        "types": list(ERROR_TYPES),
        "by_area": {a: {t: ap(ps[i, :, :, j]) for i, t in enumerate(ERROR_TYPES)}
                    for j, a in enumerate(areas)},
        "per_class": {n: {t: ap(ps[i, :, k, 0]) for i, t in enumerate(ERROR_TYPES)}
                      for k, n in enumerate(names)},
        "source": "pycocotools, the COCO API's analyze() (IoU .75, .5, .1; maxDets 100)",
    }


def _forgiven_precision(coco_gt: COCO, dets: list[dict[str, Any]], cat: int,
                        sup: dict[int, str], same_supercategory: bool) -> np.ndarray:
    """``(R, A)`` precision at IoU .1 of category ``cat``'s detections when the other
    categories' boxes (of its supercategory, or all) are ignored boxes of ``cat``."""
    data = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
            "annotations": []}
    for a in coco_gt.dataset["annotations"]:
        c = a["category_id"]
        if c != cat and (not same_supercategory or sup.get(c) == sup[cat]):
            a = {**a, "category_id": cat, "ignore": 1, "iscrowd": 1}
        data["annotations"].append(a)
    gt = COCO()
    gt.dataset = data
    with quiet_pycocotools():
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in dets]) if dets else _empty_results(gt)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.catIds = [cat]
        ev.params.iouThrs = np.array([0.1])
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][0, :, 0, :, 0]
