"""Detection data: COCO/VOC readers, transforms, batching, grouped sampling, the demo set and
the loaders."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from detres.config import Config, DatasetCfg, InputCfg
from detres.data import CATALOG, GENERATORS, build_source
from detres.data import demo_det as demo
from detres.data.coco import CocoFormatError, load_coco_json
from detres.data.collate import collate_detection
from detres.data.det_loader import build_det_test_loader, build_det_train_loader
from detres.data.det_source import DetSource, concat_sources, training_records
from detres.data.det_transforms import apply_det_transform, build_det_transform
from detres.data.image_io import load_image
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, aspect_groups
from detres.data.sampling import InfiniteSampler
from detres.data.voc import VOC_CLASSES, VocFormatError, load_voc, to_voc_boxes
from detres.preprocess import pad_batch, resized_hw

# ------------------------------------------------------------------------------ COCO


def _coco(tmp_path: Path, anns: list[dict[str, Any]] | None = None,
          images: list[dict[str, Any]] | None = None, write_images: bool = False) -> Path:
    images = images if images is not None else [
        {"id": 10, "file_name": "a.jpg", "height": 40, "width": 60},
        {"id": 11, "file_name": "b.jpg", "height": 50, "width": 30},
        {"id": 12, "file_name": "c.jpg", "height": 30, "width": 30},
    ]
    anns = anns if anns is not None else [
        {"id": 1, "image_id": 10, "category_id": 42, "bbox": [1, 2, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5.5, 0, 30, 10]},
        {"id": 3, "image_id": 11, "category_id": 2, "bbox": [0, 0, 30, 50], "iscrowd": 1},
        {"id": 4, "image_id": 11, "category_id": 2, "bbox": [3, 4, 5, 6], "iscrowd": 0},
    ]  # image 12 has no objects
    cats = [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 42, "name": "x"}]
    f = tmp_path / "instances.json"
    f.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    if write_images:
        rng = np.random.default_rng(0)
        for im in images:
            cv2.imwrite(str(tmp_path / im["file_name"]),
                        rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8))
    return f


def test_coco_mapping_boxes_crowd_and_empty(tmp_path: Path) -> None:
    src = load_coco_json(_coco(tmp_path), tmp_path)
    assert src.category_ids == [2, 7, 42] and src.class_names == ["two", "seven", "x"]
    r10, r11, r12 = src.records
    assert r10["image_id"] == 10 and r10["file"] == str(tmp_path / "a.jpg")
    assert r10["classes"].tolist() == [3, 2] and r11["classes"].tolist() == [1, 1]
    assert torch.equal(r10["boxes"], torch.tensor([[1, 2, 11, 22], [5.5, 0, 35.5, 10]]))
    assert r10["boxes"].dtype == torch.float32 and r10["classes"].dtype == torch.int64
    assert r11["iscrowd"].tolist() == [True, False] and not r10["iscrowd"].any()
    assert len(r12["boxes"]) == 0 and r12["boxes"].shape == (0, 4)  # kept for evaluation
    labels = torch.tensor([1, 2, 3, 2])
    assert src.to_category_ids(labels).tolist() == [2, 7, 42, 7]
    assert torch.equal(src.to_labels(src.to_category_ids(labels)), labels)
    with pytest.raises(ValueError, match="unknown category id 5"):
        src.to_labels(torch.tensor([5]))
    assert sorted(src.coco.getImgIds()) == [10, 11, 12]
    assert sorted(src.coco.getCatIds()) == [2, 7, 42]
    train = training_records(src.records, filter_empty=True)
    assert [r["image_id"] for r in train] == [10, 11]
    assert train[1]["boxes"].tolist() == [[3, 4, 8, 10]] and not train[1]["iscrowd"].any()
    assert len(training_records(src.records, filter_empty=False)) == 3
    assert len(r11["boxes"]) == 2  # the source records are untouched


def test_coco_only_crowd_image_dropped_for_training(tmp_path: Path) -> None:
    anns = [{"id": 1, "image_id": 10, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1}]
    src = load_coco_json(_coco(tmp_path, anns=anns), tmp_path)
    assert training_records(src.records) == []


def test_coco_zero_area_dropped_with_warning(tmp_path: Path) -> None:
    anns = [{"id": 77, "image_id": 10, "category_id": 2, "bbox": [3, 3, 0, 5]},
            {"id": 78, "image_id": 10, "category_id": 2, "bbox": [3, 3, 4, 5]}]
    with pytest.warns(UserWarning, match=r"instances.json: dropped 1 zero-area.*77"):
        src = load_coco_json(_coco(tmp_path, anns=anns), tmp_path)
    assert src.records[0]["boxes"].tolist() == [[3, 3, 7, 8]]


def test_coco_clips_within_one_pixel(tmp_path: Path) -> None:
    anns = [{"id": 5, "image_id": 10, "category_id": 2, "bbox": [-0.5, 0, 60.8, 40.5]}]
    src = load_coco_json(_coco(tmp_path, anns=anns), tmp_path)
    assert src.records[0]["boxes"].tolist() == [[0, 0, 60, 40]]


@pytest.mark.parametrize("ann, msg", [
    ({"bbox": [1, 2, 3]}, r"annotation id 9: bbox must be 4 numbers"),
    ({"bbox": [1, 2, "3", 4]}, r"annotation id 9: bbox must be 4 numbers"),
    ({"bbox": [1, 2, -3, 4]}, r"annotation id 9 .*negative width"),
    ({"bbox": [50, 2, 15, 4]}, r"annotation id 9 .*outside the image"),
    ({"bbox": [1, 2, 3, float("nan")]}, r"annotation id 9 .*non-finite"),
    ({"category_id": 3}, r"annotation id 9: unknown category_id 3"),
    ({"image_id": 99}, r"annotation id 9: unknown image_id 99"),
    ({"bbox": None}, r"annotation id 9: bbox must be"),
])
def test_coco_malformed_annotation_names_file_and_id(tmp_path: Path, ann: dict[str, Any],
                                                     msg: str) -> None:
    a = {"id": 9, "image_id": 10, "category_id": 2, "bbox": [1, 2, 3, 4], **ann}
    with pytest.raises(CocoFormatError, match=r"instances\.json: " + msg):  # strict: outside too
        load_coco_json(_coco(tmp_path, anns=[a]), tmp_path, strict_boxes=True)


def test_coco_malformed_image_and_missing_key(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match=r"instances\.json: image id 3 has no 'file_name'"):
        load_coco_json(_coco(tmp_path, images=[{"id": 3, "height": 5, "width": 5}], anns=[]))
    with pytest.raises(CocoFormatError, match=r"annotation id 4 has no 'bbox'"):
        load_coco_json(_coco(tmp_path, anns=[{"id": 4, "image_id": 10, "category_id": 2}]))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CocoFormatError, match=r"bad\.json: not valid JSON"):
        load_coco_json(bad)


def test_coco_registered_format(tmp_path: Path) -> None:
    f = _coco(tmp_path)
    src = build_source(DatasetCfg(format="coco", path=str(f), images="."), tmp_path)
    assert isinstance(src, DetSource) and src.format == "coco" and len(src.records) == 3


# ------------------------------------------------------------------------------- VOC


def _voc_xml(w: int, h: int, objects: list[tuple[str, int, list[int]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects)
    return (f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth>"
            f"</size>{objs}</annotation>")


def _voc(tmp_path: Path, year: str = "2007", extra: dict[str, str] | None = None) -> Path:
    root = tmp_path / "VOCdevkit" / f"VOC{year}"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    xmls = {
        "000001": _voc_xml(50, 40, [("dog", 0, [1, 1, 50, 40]), ("person", 1, [10, 5, 20, 30])]),
        "000002": _voc_xml(30, 20, [("tvmonitor", 1, [3, 4, 5, 6])]),
        "000003": _voc_xml(30, 20, []),
        **(extra or {}),
    }
    for k, x in xmls.items():
        (root / "Annotations" / f"{k}.xml").write_text(x)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(xmls) + "\n")
    return root


def test_voc_classes_difficult_and_one_based(tmp_path: Path) -> None:
    src = load_voc(_voc(tmp_path), "trainval")
    assert src.class_names == list(VOC_CLASSES) and src.year == "2007"
    assert src.category_ids == list(range(1, 21))
    r1, r2, r3 = src.records
    assert r1["image_id"] == "000001" and r1["file"].endswith("VOC2007/JPEGImages/000001.jpg")
    assert (r1["height"], r1["width"]) == (40, 50)
    assert r1["classes"].tolist() == [12, 15]  # dog, person in the standard order
    # VOC 1-based inclusive -> (xmin - 1, ymin - 1, xmax, ymax); the whole image is 0..W
    assert r1["boxes"].tolist() == [[0, 0, 50, 40], [9, 4, 20, 30]]
    assert torch.equal(to_voc_boxes(r1["boxes"]), torch.tensor([[1., 1, 50, 40], [10, 5, 20, 30]]))
    assert r1["difficult"].tolist() == [False, True] and not r1["iscrowd"].any()
    assert len(r3["boxes"]) == 0
    train = training_records(src.records)
    assert [r["image_id"] for r in train] == ["000001"] and train[0]["classes"].tolist() == [12]
    keep = training_records(src.records, use_difficult=True)
    assert [len(r["boxes"]) for r in keep] == [2, 1]


@pytest.mark.parametrize("xml, msg", [
    ("<annotation><size>", "malformed XML"),
    (_voc_xml(30, 20, [("unicorn", 0, [1, 1, 2, 2])]), "unknown class 'unicorn'"),
    (_voc_xml(30, 20, [("dog", 0, [5, 1, 2, 2])]), "xmax < xmin"),
    (_voc_xml(30, 20, [("dog", 0, [1, 1, 40, 2])]), "outside the 30x20 image"),
    ("<annotation><size><width>3</width></size></annotation>", "<size> has no <height>"),
])
def test_voc_malformed_names_file(tmp_path: Path, xml: str, msg: str) -> None:
    root = _voc(tmp_path, extra={"bad_one": xml})
    with pytest.raises(VocFormatError, match=r"bad_one\.xml: .*" + msg):  # strict: outside too
        load_voc(root, "trainval", strict_boxes=True)


def test_voc_0712_concat_and_class_mismatch(tmp_path: Path) -> None:
    a = build_source(DatasetCfg(format="voc", path=str(_voc(tmp_path / "a")), split="trainval"),
                     tmp_path)
    b = load_voc(_voc(tmp_path / "b", "2012"), "trainval")
    both = concat_sources([a, b])
    assert len(both.records) == 6 and both.class_names == list(VOC_CLASSES)
    assert b.year == "2012"
    c = load_voc(_voc(tmp_path / "c"), "trainval", class_names=["dog", "person", "tvmonitor"])
    with pytest.raises(ValueError, match="different class lists"):
        concat_sources([a, c])


# ------------------------------------------------------------------------ transforms


def test_shortest_edge_size_detectron2_semantics() -> None:
    def d2(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
        return resized_hw(h, w, short=short, max_size=max_size, rule="detectron2")

    assert d2(480, 640, 800, 1333) == (800, 1067)
    assert d2(100, 1000, 800, 1333) == (133, 1333)  # capped by max size
    assert d2(640, 480, 600, 1000) == (800, 600)
    assert d2(33, 44, 0, 1000) == (33, 44)


def test_resize_torchvision_semantics() -> None:
    """torchvision's GeneralizedRCNNTransform sizes: scale by the tighter bound, then floor."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    for (h, w), short, max_size in (((480, 640), 800, 1333), ((100, 1000), 800, 1333),
                                    ((640, 480), 600, 1000), ((20, 50), 40, 70),
                                    ((333, 500), 600, 1000)):
        tv = GeneralizedRCNNTransform(short, max_size, [0.0] * 3, [1.0] * 3)
        out = tv([torch.rand(3, h, w)])[0].image_sizes[0]
        assert resized_hw(h, w, short=short, max_size=max_size) == tuple(out), (h, w)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_transform_resize_and_flip_boxes(flip: float) -> None:
    cfg = InputCfg(min_size_train=[100], max_size_train=1000, hflip_prob=flip)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 75, 3), dtype=np.uint8)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 75.0, 50.0], [60, 40, 61.5, 41]])
    out = apply_det_transform(build_det_transform(cfg, train=True, seed=0), img, boxes,
                              torch.tensor([3, 1, 2]))
    assert out["image"].shape == (3, 100, 150) and out["image"].dtype == torch.float32
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["scale"].tolist() == [2.0, 2.0]
    expect = boxes * 2
    if flip:
        expect = torch.stack([150 - expect[:, 2], expect[:, 1], 150 - expect[:, 0],
                              expect[:, 3]], 1)
    torch.testing.assert_close(out["boxes"], expect, atol=1e-3, rtol=0)
    assert out["classes"].tolist() == [3, 1, 2]
    # the one resize of detres.preprocess: bilinear on the float image (torchvision's rule)
    src = torch.from_numpy((img[:, ::-1] if flip else img).copy()).permute(2, 0, 1) / 255
    ref = torch.nn.functional.interpolate(src[None], size=(100, 150), mode="bilinear",
                                          align_corners=False)[0]
    torch.testing.assert_close(out["image"], ref)


def test_transform_multiscale_max_size_and_test() -> None:
    cfg = InputCfg(min_size_train=[40, 60], max_size_train=100, min_size_test=40,
                   max_size_test=70, hflip_prob=0.5)
    img = np.zeros((20, 50, 3), np.uint8)
    box, cls = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1])
    tf = build_det_transform(cfg, train=True, seed=1)
    shapes = {tuple(apply_det_transform(tf, img, box, cls)["image"].shape) for _ in range(30)}
    assert shapes == {(3, 40, 100)}  # 60 would give 60x150 > max 100 -> capped to 40x100
    img2 = np.zeros((50, 50, 3), np.uint8)
    sizes = {apply_det_transform(tf, img2, box, cls)["image"].shape[1] for _ in range(30)}
    assert sizes == {40, 60}
    test = apply_det_transform(build_det_transform(cfg, train=False), img, box, cls)
    assert test["image"].shape == (3, 28, 70)  # 40 * 2.5 = 100 > 70 -> 70 / 2.5 = 28
    torch.testing.assert_close(test["scale"], torch.tensor([1.4, 1.4]))


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.jpg could not be decoded"):
        load_image(tmp_path / "broken.jpg")
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    assert load_image(tmp_path / "red.png")[0, 0].tolist() == [255, 0, 0]  # RGB
    with pytest.raises(ValueError, match=r"red\.png is 6x4 .* says 5x4"):
        load_image(tmp_path / "red.png", (4, 5))


# ------------------------------------------------------------------ collate, samplers


def test_collate_pads_to_multiple_of_32() -> None:
    ims = [torch.rand(3, 50, 70), torch.rand(3, 64, 33)]
    batch = [{"image": im, "gt_boxes": torch.zeros(0, 4), "image_size": tuple(im.shape[1:])}
             for im in ims]
    images, targets = collate_detection(batch, 32)
    assert images.shape == (2, 3, 64, 96)
    assert torch.equal(images[0, :, :50, :70], ims[0]) and images[0, :, 50:].abs().sum() == 0
    assert images[1, :, :, 33:].abs().sum() == 0 and torch.equal(images[1, :, :, :33], ims[1])
    assert [t["image_size"] for t in targets] == [(50, 70), (64, 33)]
    assert "image" not in targets[0]
    assert pad_batch([torch.rand(3, 64, 64)], 32).shape == (1, 3, 64, 64)


def _recs(n: int, seed: int = 0) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    return [{"height": int(h), "width": int(w)} for h, w in rng.integers(10, 20, (n, 2))]


def test_grouped_batches_never_mix_orientation_over_ranks() -> None:
    recs = _recs(53)
    groups = aspect_groups(recs)
    seen: list[int] = []
    for rank in range(2):
        def batches(rank: int = rank) -> list[list[Any]]:
            stream = InfiniteSampler(53, seed=3, rank=rank, world_size=2)
            it = iter(GroupedBatchSampler(stream, groups, 4))
            return [next(it) for _ in range(5)]  # within one epoch of each rank

        b = batches()
        assert all(len({groups[i] for i, _ in x}) == 1 and len(x) == 4 for x in b)
        assert batches() == b
        seen += [i for x in b for i, _ in x]
    assert len(seen) == len(set(seen)) == 40  # the two ranks' shards do not overlap


def test_grouped_batches_infinite_deterministic_and_resumable() -> None:
    groups = aspect_groups(_recs(20))
    def take(start: int, n: int, seed: int = 0) -> list[list[Any]]:
        it = iter(GroupedBatchSampler(InfiniteSampler(20, seed=seed, rank=0, world_size=1),
                                      groups, 3, start_iter=start))
        return [next(it) for _ in range(n)]
    first = take(0, 30)
    assert all(len({groups[i] for i, _ in b}) == 1 and len(b) == 3 for b in first)
    assert take(0, 30) == first and take(12, 18) == first[12:]
    assert take(0, 30, seed=1) != first
    stream = iter(InfiniteSampler(20, seed=0, rank=0, world_size=1))
    plain = iter(GroupedBatchSampler(InfiniteSampler(20, seed=0, rank=0, world_size=1), None, 3))
    for _ in range(10):  # no grouping: consecutive chunks of the stream
        assert next(plain) == [next(stream) for _ in range(3)]


def test_inference_sampler_shards_once() -> None:
    parts = [list(InferenceSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


# -------------------------------------------------------------------------- demo set


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_demo_deterministic_both_layouts_agree(tmp_path: Path) -> None:
    a = demo.generate_demo_det(tmp_path / "a", num_train=6, num_val=3)
    b = demo.generate_demo_det(tmp_path / "b", num_train=6, num_val=3)
    ta, tb = _tree_bytes(a), _tree_bytes(b)
    assert ta == tb and "manifest.json" in ta
    assert "VOCdevkit/VOCdemo/JPEGImages/val_00002.jpg" in ta and "images/train_00005.jpg" in ta
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["demo_det"]  # no temp/lock left
    for split, n in (("train", 6), ("val", 3)):
        c = load_coco_json(a / "annotations" / f"instances_{split}.json", a / "images")
        v = load_voc(a / "VOCdevkit" / "VOCdemo", split)
        assert c.category_ids == [1, 3, 5, 7, 9, 11] and c.class_names == v.class_names
        assert c.class_names == list(demo.DEMO_CLASSES) and len(c.records) == n
        geo = demo.demo_annotations(split, n)
        for rc, rv, g in zip(c.records, v.records, geo, strict=True):
            assert torch.equal(rc["boxes"], rv["boxes"]) and torch.equal(rc["classes"],
                                                                          rv["classes"])
            assert rc["boxes"].tolist() == [o["box"] for o in g["objects"]]
            assert rv["difficult"].tolist() == [o["visible"] < demo.DIFFICULT_BELOW
                                                for o in g["objects"]]
            img = load_image(rc["file"], (rc["height"], rc["width"]))
            assert img.shape == (g["height"], g["width"], 3)


def test_demo_defaults_cover_sizes_and_difficult() -> None:
    geo = demo.demo_annotations("train", 120)
    objs = [o for g in geo for o in g["objects"]]
    area = np.array([(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in objs])
    assert (area < 32**2).mean() > 0.1 and (area > 96**2).mean() > 0.05
    assert ((area >= 32**2) & (area <= 96**2)).mean() > 0.3
    assert {o["label"] for o in objs} == set(range(1, 7))
    vis = np.array([o["visible"] for o in objs])
    assert vis.min() >= 1 - demo.MAX_HIDDEN - 1e-9 and 0 < (vis < demo.DIFFICULT_BELOW).mean() < 0.2
    assert (vis < 1).mean() > 0.1  # some occlusion
    sizes = {(g["width"] >= g["height"]) for g in geo}
    assert sizes == {True, False}
    assert 200 <= demo.DEFAULT_COUNTS["train"] and 50 <= demo.DEFAULT_COUNTS["val"]


def test_demo_regenerates_stale_and_is_safe_concurrently(tmp_path: Path) -> None:
    root = tmp_path / "r"
    out = demo.generate_demo_det(root, num_train=2, num_val=1)
    (out / "manifest.json").write_text("{}")  # stale / partial
    (out / "images" / "train_00000.jpg").write_bytes(b"junk")
    demo.generate_demo_det(root, num_train=2, num_val=1)
    assert load_image(out / "images" / "train_00000.jpg") is not None
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=demo.generate_demo_det, args=(tmp_path / "c",),
                         kwargs={"num_train": 4, "num_val": 2}) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert _tree_bytes(tmp_path / "c" / "demo_det") == _tree_bytes(
        demo.generate_demo_det(tmp_path / "d", num_train=4, num_val=2))


def test_demo_catalog_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert GENERATORS.get("demo_det") is demo.ensure_demo_det
    monkeypatch.setitem(demo.DEFAULT_COUNTS, "train", 4)
    monkeypatch.setitem(demo.DEFAULT_COUNTS, "val", 2)
    for name, n in (("demo_coco_train", 4), ("demo_coco_val", 2), ("demo_voc_train", 4),
                    ("demo_voc_val", 2)):
        assert CATALOG[name]["generator"] == "demo_det"
        src = build_source(DatasetCfg(name=name), tmp_path)
        assert len(src.records) == n and src.class_names == list(demo.DEMO_CLASSES)
        assert Path(src.records[0]["file"]).is_file()


# --------------------------------------------------------------------------- loaders


def _cfg(tmp_path: Path, **data: Any) -> Config:
    cfg = Config(task="det")
    cfg.model.num_classes = 3
    cfg.model.input = InputCfg(min_size_train=[32, 48], max_size_train=96, min_size_test=40,
                               max_size_test=96)
    cfg.data.root = str(tmp_path)
    cfg.data.train = [DatasetCfg(format="coco", path="instances.json", images=".")]
    cfg.data.test = list(cfg.data.train)
    cfg.data.num_workers = 0
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def test_train_loader_batches(tmp_path: Path) -> None:
    _coco(tmp_path, write_images=True)
    cfg = _cfg(tmp_path)
    it = iter(build_det_train_loader(cfg, 2))
    batches = [next(it) for _ in range(6)]  # endless: more batches than images
    for images, targets in batches:
        assert images.dim() == 4 and images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
        for t in targets:
            assert t["image_id"] in (10, 11)  # 12 is empty -> filtered
            assert not (t["image_id"] == 11 and len(t["gt_boxes"]) != 1)  # crowd left out
            h, w = t["image_size"]
            assert min(h, w) in (32, 48) and max(h, w) <= 96
            assert (t["gt_boxes"][:, 2] <= w + 1e-4).all() and t["gt_classes"].dtype == torch.int64
            sx, sy = t["scale"].tolist()
            assert abs(sx * t["orig_size"][1] - w) < 1e-3 and abs(sy * t["orig_size"][0] - h) < 1e-3
        orient = {t["image_size"][1] >= t["image_size"][0] for t in targets}
        assert len(orient) == 1
    again = iter(build_det_train_loader(cfg, 2))
    for images, targets in batches:
        im2, t2 = next(again)
        assert torch.equal(images, im2) and [t["image_id"] for t in targets] == [
            t["image_id"] for t in t2]
    resumed = next(iter(build_det_train_loader(cfg, 2, start_iter=4)))
    assert torch.equal(resumed[0], batches[4][0])
    cfg.data.num_workers = 2  # per-sample seeds: the same batches with worker processes
    it2 = iter(build_det_train_loader(cfg, 2))
    for images, _ in batches[:3]:
        assert torch.equal(images, next(it2)[0])


def test_train_loader_checks(tmp_path: Path) -> None:
    _coco(tmp_path, write_images=True)
    cfg = _cfg(tmp_path)
    cfg.model.num_classes = 80
    with pytest.raises(ValueError, match="model.num_classes is 80 .* has 3 classes"):
        build_det_train_loader(cfg, 2)
    cfg = _cfg(tmp_path)
    cfg.data.train = [DatasetCfg(format="coco", path="instances.json", images="."),
                      DatasetCfg(format="voc", path=str(_voc(tmp_path)), split="trainval")]
    cfg.data.bad_images = "skip"  # the VOC fixture has annotations only
    with pytest.raises(ValueError, match="different class lists"):
        build_det_train_loader(cfg, 2)


def test_test_loader_sequential_all_images(tmp_path: Path) -> None:
    _coco(tmp_path, write_images=True)
    loader = build_det_test_loader(_cfg(tmp_path), batch_size=2)
    got = [(t["image_id"], t["image_size"], len(t["gt_boxes"])) for _, ts in loader for t in ts]
    assert got == [(10, (40, 60), 2), (11, (66, 40), 1), (12, (40, 40), 0)]  # torchvision's floor
    assert loader.dataset.source.coco is not None and len(loader.dataset.source.records) == 3


def test_loaders_shard_across_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import detres.data.det_loader as dl

    _coco(tmp_path, write_images=True)
    cfg = _cfg(tmp_path)
    ids: dict[int, list[Any]] = {}
    train: dict[int, list[Any]] = {}
    monkeypatch.setattr(dl, "get_world_size", lambda: 2)
    for rank in range(2):
        monkeypatch.setattr(dl, "get_rank", lambda r=rank: r)
        ids[rank] = [t["image_id"] for _, ts in build_det_test_loader(cfg) for t in ts]
        it = iter(build_det_train_loader(cfg, 1))
        train[rank] = [next(it)[1][0]["image_id"] for _ in range(6)]
    assert ids == {0: [10, 11], 1: [12]}  # contiguous shards, no padding duplicates
    # each epoch's permutation is split between the ranks: never the same image at once
    assert all(a != b for a, b in zip(train[0], train[1], strict=True))
