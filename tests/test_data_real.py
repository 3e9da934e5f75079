"""Real sets as published: every image checked before iteration 0 (damaged, empty, misnamed,
CMYK, grayscale, EXIF-rotated files), the check's cache, a LabelImg folder with ``annots/``
holding a truncated and a broken image, and the one VOC XML reader's rules."""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detres.config import load_config
from detres.data.det_loader import DetDataset, build_det_sources, build_det_train_loader
from detres.data.det_transforms import build_det_transform
from detres.data.image_check import check_images
from detres.data.image_io import decode_image, load_image
from detres.data.sampling import InfiniteSampler, repeat_factors
from detres.data.voc import load_voc
from detres.data.yolo import load_yolo
from detres.evaluation.voc_io import load_voc_annotations
from detres.formats.voc_xml import VocFormatError
from detres.utils.errors import FileReadError, InputError


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def photo(path: Path, w: int = 64, h: int = 48, mode: str = "RGB", fmt: str = "JPEG",
          seed: int = 0, **save: object) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB").resize((w, h), Image.BILINEAR).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **save)
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def fixtures(d: Path) -> dict[str, Path]:
    (d / "empty.jpg").write_bytes(b"")
    (d / "garbage.jpg").write_bytes(b"\xff\xd8not a jpeg" * 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 40 wide x 20 high, upright 20 wide x 40 high
    return {
        "good": photo(d / "good.jpg"),
        "truncated": truncate(photo(d / "truncated.jpg", 200, 150, seed=1)),
        "empty": d / "empty.jpg",
        "png_as_jpg": photo(d / "png_as.jpg", fmt="PNG"),
        "cmyk": photo(d / "cmyk.jpg", mode="CMYK"),
        "gray": photo(d / "gray.jpg", mode="L"),
        "exif": photo(d / "exif.jpg", 40, 20, exif=exif.tobytes()),
        "garbage": d / "garbage.jpg",
        "missing": d / "missing.jpg",
    }


def test_each_kind_of_file_gets_its_verdict(tmp_path: Path) -> None:
    f = fixtures(tmp_path)
    report = check_images([(str(p), None) for p in f.values()])
    damaged = {Path(p).name for p, _ in report.damaged}
    bad = {Path(p).name: why for p, why in report.bad}
    assert damaged == {"truncated.jpg"}
    assert set(bad) == {"empty.jpg", "garbage.jpg", "missing.jpg"}
    assert "empty" in bad["empty.jpg"] and bad["missing.jpg"] == "missing"
    assert "cannot be decoded" in bad["garbage.jpg"]
    # what loads, loads as 3-channel RGB of the size the check saw (EXIF applied)
    for key in ("good", "truncated", "png_as_jpg", "cmyk", "gray", "exif"):
        img, how = decode_image(f[key])
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, key
        assert how == ("imread" if key == "truncated" else "imdecode"), key
    assert load_image(f["exif"]).shape == (40, 20, 3)  # upright
    assert load_image(f["truncated"]).shape == (150, 200, 3)  # as imread and PIL show it
    # the annotation's size against the upright one
    report = check_images([(str(f["exif"]), (20, 40)), (str(f["good"]), (48, 64))],
                          use_cache=False)
    assert [Path(p).name for p, _ in report.bad] == ["exif.jpg"]
    assert "is 20x40 (w x h) but its annotation says 40x20" in report.bad[0][1]


def test_second_run_reads_the_cache_and_a_changed_file_is_checked_again(tmp_path: Path) -> None:
    f = fixtures(tmp_path)
    items = [(str(p), None) for p in f.values()]
    first = check_images(items)
    assert first.cached == 0
    again = check_images(items)
    assert again.cached == len(items) - 1 and again.bad == first.bad  # the missing file: again
    photo(f["truncated"], 200, 150)  # repaired: a new size and mtime
    os.utime(f["truncated"], ns=(1, 10**18))
    third = check_images(items)
    assert third.cached == len(items) - 2 and not third.damaged


def labelimg_set(root: Path, n: int = 8) -> Path:
    """``images/`` + ``annots/`` as a public LabelImg set is published (no ImageSets)."""
    for i in range(n):
        name = f"{i:05d}.jpg"
        photo(root / "images" / name, 64, 48, seed=i)
        (root / "annots").mkdir(parents=True, exist_ok=True)
        (root / "annots" / f"{i:05d}.xml").write_text(
            f"<annotation><folder>images</folder><filename>{name}</filename>"
            "<size><width>64</width><height>48</height><depth>3</depth></size>"
            "<object><name>raccoon</name><bndbox><xmin>10</xmin><ymin>8</ymin><xmax>40</xmax>"
            "<ymax>30</ymax></bndbox></object></annotation>")
    if n > 5:
        truncate(root / "images" / "00003.jpg")  # as 00090.jpg of the real set
        (root / "images" / "00005.jpg").write_bytes(b"\x00" * 100)  # broken
    return root


def _cfg(root: Path, *extra: str):  # noqa: ANN202
    return load_config("small_real.yaml", [
        f"data.train=[{{format: voc, path: {root}, split: train, val_fraction: 0.25}}]",
        f"data.test=[{{format: voc, path: {root}, split: val, val_fraction: 0.25}}]",
        "data.num_workers=0", *extra])


def test_labelimg_folder_with_annots_and_damaged_images(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = labelimg_set(tmp_path / "raccoon")
    cfg = _cfg(root)
    both = [*load_voc(root, "train", val_fraction=0.25).records,
            *load_voc(root, "val", val_fraction=0.25).records]
    assert len(both) == 8 and all("/images/" in r["file"] for r in both)  # annots/ found
    split = {Path(r["file"]).name for r in load_voc(root, "train", val_fraction=0.25).records}
    with pytest.raises(InputError) as e:
        build_det_sources(cfg, train="00005.jpg" in split)
    msg = str(e.value)
    assert "00005.jpg: cannot be decoded" in msg and "data.bad_images=skip" in msg
    assert "1 of " in msg  # one list, every bad file in it
    cfg = _cfg(root, "data.bad_images=skip")
    with caplog.at_level(logging.WARNING, logger="detres"):
        srcs = build_det_sources(cfg, train=True) + build_det_sources(cfg, train=False)
    files = {Path(r["file"]).name for s in srcs for r in s.records}
    assert "00005.jpg" not in files and "00003.jpg" in files and len(files) == 7
    excluded = cfg.data.train[0].exclude + cfg.data.test[0].exclude
    assert [Path(p).name for p in excluded] == ["00005.jpg"]
    assert "damaged image file(s) that still decode" in caplog.text and "00003.jpg" in caplog.text
    # a config that records the exclusion leaves the file out without being told again
    cfg2 = _cfg(root)
    cfg2.data.train[0].exclude = list(excluded)
    cfg2.data.test[0].exclude = list(excluded)
    build_det_sources(cfg2, train=True)
    build_det_sources(cfg2, train=False)
    # the loader reads the truncated file as imread does
    loader = build_det_train_loader(cfg, 2)
    images, targets = next(iter(loader))
    assert images.shape[0] == 2


def test_training_run_records_what_it_left_out(tmp_path: Path, tool, tiny_det) -> None:  # noqa: ANN001
    root = labelimg_set(tmp_path / "set")
    out = tmp_path / "out"
    assert tool("train_det").main([
        "--cfg", "small_real.yaml", "--out-dir", str(out), *tiny_det,
        f"data.train=[{{format: voc, path: {root}, split: train, val_fraction: 0.25}}]",
        f"data.test=[{{format: voc, path: {root}, split: val, val_fraction: 0.25}}]",
        "data.bad_images=skip", "solver.max_iter=2", "solver.batch_size=2"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    excluded = saved["data"]["train"][0]["exclude"] + saved["data"]["test"][0]["exclude"]
    assert [Path(p).name for p in excluded] == ["00005.jpg"]
    assert saved["data"]["bad_images"] == "skip"


def test_a_file_broken_after_the_check_is_one_line_naming_it(tmp_path: Path) -> None:
    root = labelimg_set(tmp_path / "set", n=4)
    src = load_voc(root, "")
    records = src.records
    check = check_images([(r["file"], (r["height"], r["width"])) for r in records])
    assert not check.bad
    (root / "images" / "00001.jpg").write_bytes(b"broken since")
    ds = DetDataset(records, build_det_transform(load_config("small_real.yaml").model.input,
                                                 train=False))
    with pytest.raises(FileReadError, match=r"00001.jpg could not be decoded"):
        ds[1]


def _xml(objects: str, size: str = "<size><width>50</width><height>40</height></size>") -> str:
    return f"<annotation><filename>a.jpg</filename>{size}{objects}</annotation>"


def _obj(name: str, box: tuple[int, ...], difficult: str = "") -> str:
    d = f"<difficult>{difficult}</difficult>" if difficult else ""
    b = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box,
                                                   strict=True))
    return f"<object><name>{name}</name>{d}<bndbox>{b}</bndbox></object>"


def test_loader_and_scorer_read_voc_xml_by_one_set_of_rules(tmp_path: Path) -> None:
    """difficult 2 is difficult, a reversed box is left out (with a warning) by both; a
    difficult that is not an integer is an error in both."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    photo(root / "JPEGImages" / "000001.jpg", 50, 40)
    objects = _obj("dog", (1, 1, 20, 20), "2") + _obj("cat", (30, 5, 10, 20)) + _obj(
        "cat", (5, 5, 9, 9))
    (root / "Annotations" / "000001.xml").write_text(_xml(objects))
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        src = load_voc(root, "test")
        _, gt = load_voc_annotations(root, "test")
    assert len(w) == 2 and all("reversed" in str(x.message) for x in w)
    r = src.records[0]
    assert r["difficult"].tolist() == [True, False] and len(r["boxes"]) == 2
    assert gt[0]["difficult"].tolist() == [True, False] and gt[0]["labels"] == ["dog", "cat"]
    (root / "Annotations" / "000001.xml").write_text(_xml(_obj("dog", (1, 1, 20, 20), "yes")))
    for read in (lambda: load_voc(root, "test"), lambda: load_voc_annotations(root, "test")):
        with pytest.raises(VocFormatError, match=r"000001.xml: object #0 \(dog\): <difficult> "
                                                 "must be an integer"):
            read()


def test_xml_folder_of_any_name_or_a_message_that_says_where(tmp_path: Path) -> None:
    root = labelimg_set(tmp_path / "a", n=3)
    (root / "annots").rename(root / "xml")
    assert len(load_voc(root, "").records) == 3
    (root / "labels").mkdir()
    (root / "labels" / "x.xml").write_text(_xml(""))
    with pytest.raises(VocFormatError, match=r"several sub-folders: labels/ \(1 files\), xml/ "
                                             r"\(3 files\).*path: .*labels"):
        load_voc(root, "")
    yolo = tmp_path / "b" / "deep" / "labels"
    yolo.mkdir(parents=True)
    (yolo / "0.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FileNotFoundError, match=r"a YOLO set\? \{format: yolo"):
        load_voc(tmp_path / "b", "")


def roboflow_set(root: Path) -> Path:
    """A Roboflow YOLO export as published: data.yaml with ``../`` paths written for a parent
    folder, label folders named ``<split>-labels``."""
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        for i in range(n):
            photo(root / "data" / "images" / split / f"{split}{i}.jpg", 64, 48, seed=i)
            lab = root / "data" / "labels" / f"{split}-labels"
            lab.mkdir(parents=True, exist_ok=True)
            (lab / f"{split}{i}.txt").write_text(f"{i % 3} 0.5 0.5 0.25 0.5\n")
    (root / "data.yaml").write_text(
        "train: ../data/images/train\nval: ../data/images/valid\ntest: ../data/images/test\n"
        "nc: 3\nnames: ['button', 'field', 'icon']\n")
    return root


def test_roboflow_yolo_export_as_published(tmp_path: Path, tool, tiny_det) -> None:  # noqa: ANN001
    root = roboflow_set(tmp_path / "shots")
    # trains with the docs' spelling, the split named as the export names it
    assert tool("train_det").main([
        "--cfg", "small_real.yaml", "--out-dir", str(tmp_path / "out"), *tiny_det,
        f"data.train=[{{format: yolo, path: {root}, split: train}}]",
        f"data.test=[{{format: yolo, path: {root}, split: valid}}]",
        "solver.max_iter=2", "solver.batch_size=2"]) == 0
    for split, n in (("train", 3), ("valid", 2), ("val", 2), ("test", 1)):
        src = load_yolo(root, split)
        assert len(src.records) == n, split
        assert all(len(r["boxes"]) == 1 for r in src.records), split  # labels found
    # a .txt list of images and a list of entries, as Ultralytics reads them
    (root / "lists").mkdir()
    (root / "lists" / "few.txt").write_text("../data/images/train/train0.jpg\n"
                                            "../data/images/valid/valid1.jpg\n")
    (root / "data.yaml").write_text("train: [data/images/train, data/images/test]\n"
                                    "val: lists/few.txt\nnames: {0: a, 1: b, 2: c}\n")
    assert len(load_yolo(root, "train").records) == 4
    few = load_yolo(root, "val").records
    assert [Path(r["file"]).name for r in few] == ["train0.jpg", "valid1.jpg"]
    assert all(len(r["boxes"]) == 1 for r in few)
    (root / "data.yaml").write_text("names: [a, b, c]\n")
    with pytest.raises(FileNotFoundError, match=r"no images for split 'val'.*Give data.yaml a "
                                                r"'val:' entry"):
        load_yolo(root, "val")


def test_repeat_factors_follow_the_lvis_definition() -> None:
    # 10 images: class 1 in all, class 2 in 4, class 3 in 1, one image empty
    classes = [torch.tensor([1])] * 5 + [torch.tensor([1, 2])] * 3 + [
        torch.tensor([1, 2, 3]), torch.tensor([], dtype=torch.long)]
    r = repeat_factors(classes, threshold=0.5)
    # f(1) = 0.9 -> 1, f(2) = 0.4 -> sqrt(0.5 / 0.4), f(3) = 0.1 -> sqrt(5); empty -> 1
    expect = [1.0] * 5 + [(0.5 / 0.4) ** 0.5] * 3 + [5 ** 0.5, 1.0]
    assert torch.allclose(r, torch.tensor(expect))


def test_repeat_factor_sampler_draws_rare_images_more_and_resumes_exactly() -> None:
    factors = torch.tensor([1.0] * 8 + [3.5, 1.25])
    s = InfiniteSampler(10, seed=3, repeat_factors=factors, rank=0, world_size=1)
    draws = list(itertools.islice(iter(s), 20000))
    counts = torch.bincount(torch.tensor([i for i, _ in draws]), minlength=10).float()
    rate = counts / counts[:8].mean()
    assert abs(rate[8] - 3.5) < 0.2 and abs(rate[9] - 1.25) < 0.1, rate
    resumed = InfiniteSampler(10, seed=3, repeat_factors=factors, start=777, rank=0,
                              world_size=1)
    assert list(itertools.islice(iter(resumed), 300)) == draws[777:1077]
    # without factors: the same stream as before the option existed
    plain = list(itertools.islice(iter(InfiniteSampler(10, seed=3, rank=0, world_size=1)), 10))
    g = torch.Generator().manual_seed(3)
    assert [i for i, _ in plain] == torch.randperm(10, generator=g).tolist()


def test_repeat_factor_loader_logs_classes_and_resumes(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "set"
    for i in range(6):
        photo(root / "images" / f"{i}.jpg", 64, 48, seed=i)
        name = "rare" if i == 5 else "common"
        (root / "annots").mkdir(parents=True, exist_ok=True)
        (root / "annots" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>64</width><height>48"
            f"</height></size>{_obj(name, (5, 5, 30, 30))}</annotation>")
    cfg = load_config("small_real.yaml", [
        f"data.train=[{{format: voc, path: {root}}}]", f"data.test=[{{format: voc, path: {root}}}]",
        "data.num_workers=0", "data.sampler=repeat_factor", "data.repeat_threshold=0.5",
        "model.num_classes=2"])
    with caplog.at_level(logging.INFO, logger="detres"):
        loader = build_det_train_loader(cfg, 2)
    assert "images per class and epoch: common 5 -> 5, rare 1 -> 2" in caplog.text
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    resumed = next(iter(build_det_train_loader(cfg, 2, start_iter=4)))
    assert [t["image_id"] for t in resumed[1]] == [t["image_id"] for t in batches[4][1]]
    assert torch.equal(resumed[0], batches[4][0])


def test_stored_records_equal_the_plain_ones(tmp_path: Path) -> None:
    from detres.data.demo_det import generate_demo_det
    from detres.data.record_store import RecordStore

    generate_demo_det(tmp_path, num_train=12, num_val=2)
    cfg = load_config("demo.yaml", [f"data.root={tmp_path}"])
    plain = build_det_sources(cfg, train=True)[0].records
    store = RecordStore(plain)
    assert len(store) == len(plain) and store.nbytes > 0
    for a, b in zip(plain, store, strict=True):
        assert a.keys() == b.keys()
        for k, v in a.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k
            else:
                assert v == b[k], k
    assert store[-1]["image_id"] == plain[-1]["image_id"]
    with pytest.raises(IndexError):
        store[len(plain)]
    assert RecordStore(store)._obj_ends is store._obj_ends  # noqa: SLF001 (no second copy)
