"""Evaluators under a 2-process gloo group give rank 0 the single-process numbers."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detres.evaluation import EVALUATORS, VOCEvaluator

CLASSES = ["a", "b", "c"]


def make_case() -> tuple[dict, list[dict], dict, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    gt, preds = {}, []
    images, anns = [], []
    for i in range(12):
        n = int(rng.integers(1, 4))
        xy = rng.integers(1, 60, (n, 2)).astype(float)
        boxes = np.concatenate([xy, xy + rng.integers(8, 40, (n, 2))], 1)
        labels = rng.integers(1, 4, n)
        gt[f"{i:06d}"] = {"boxes": boxes, "labels": labels, "difficult": rng.random(n) < 0.2}
        images.append({"id": i, "width": 128, "height": 128})
        anns += [{"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                  "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                 for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist(), strict=True)]
        det = np.concatenate([boxes + rng.normal(0, 2, boxes.shape), boxes + 15])
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        preds.append({"image_id": i, "boxes": torch.tensor(det),
                      "scores": torch.tensor(rng.random(len(det))),
                      "labels": torch.tensor(np.concatenate([labels, rng.integers(1, 4, n)]))})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": c} for k, c in enumerate(CLASSES, 1)]}
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    return gt, preds, coco, logits, labels


def evaluate_share(tmp: Path, rank: int, world: int) -> dict:
    gt, preds, _, logits, labels = make_case()
    voc = VOCEvaluator(gt=gt, class_names=CLASSES)
    coco = EVALUATORS.build("coco", gt=str(tmp / "gt.json"))
    cls = EVALUATORS.build("classification")
    share = list(range(rank, len(preds), world))
    if world > 1 and rank == 1:
        share.append(0)  # a padded repeat, as a DistributedSampler makes: must count once
    for ev in (voc, coco):
        ev.process([{**preds[i], "image_id": f"{i:06d}"} if ev is voc else preds[i]
                    for i in share])
    idx = torch.arange(rank, 50, world)
    cls.process(logits[idx], labels[idx], ids=idx)
    return {"voc": voc.evaluate(), "coco": coco.evaluate(), "cls": cls.evaluate()}


def worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        out = evaluate_share(Path(tmp), rank, 2)
        (Path(tmp) / f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    finally:
        dist.destroy_process_group()


def test_two_process_gather_matches_single_process(tmp_path: Path) -> None:
    _, _, coco, _, _ = make_case()
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    single = evaluate_share(tmp_path, 0, 1)
    # fork: no re-import of torch in the children, which keeps this test to a few seconds
    mp.start_processes(worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    rank0 = pickle.loads((tmp_path / "rank0.pkl").read_bytes())
    rank1 = pickle.loads((tmp_path / "rank1.pkl").read_bytes())
    assert rank1 == {"voc": {}, "coco": {}, "cls": {}}
    assert rank0 == single
    assert 0 < single["voc"]["mAP@.5"] < 1 and 0 < single["coco"]["AP"] < 1
    assert single["cls"]["num_samples"] == 50
