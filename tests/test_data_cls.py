"""Classification data: ImageFolder, CIFAR pickles, synthetic sets, transforms, loaders."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist

from detres.config import ClsAugCfg, Config, DatasetCfg
from detres.data import DATASET_FORMATS, GENERATORS, build_source
from detres.data import synthetic_cls as syn
from detres.data.cifar import CifarSource
from detres.data.cls_loader import (
    ClsDataset,
    build_cls_dataset,
    build_cls_test_loader,
    build_cls_train_loader,
)
from detres.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD, build_cls_transform
from detres.data.cls_transforms import geometric_transforms as geo
from detres.data.imagefolder import ImageFolderSource, read_image_rgb
from detres.data.samplers import InferenceSampler
from detres.data.sampling import InfiniteSampler
from detres.utils.io import RestrictedUnpickler

RNG = np.random.default_rng(0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _rand_img(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------- ImageFolder


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """root/{cat,dog,ant}/... with png (lossless) files, a nested dir and a stray .txt."""
    root = tmp_path / "train"
    written = {}
    for cls, n in (("dog", 2), ("cat", 3), ("ant", 1)):
        for i in range(n):
            img = _rand_img(5 + i, 7 + 2 * i)
            p = root / cls / f"{cls}_{i}.PNG" if i == 0 else root / cls / f"{cls}_{i}.png"
            _write_png(p, img)
            written[str(p)] = img
    nested = root / "cat" / "sub" / "z.bmp"
    written[str(nested)] = _rand_img(4, 4)
    _write_png(nested, written[str(nested)])
    (root / "dog" / "notes.txt").write_text("not an image")
    return root, written


def test_imagefolder_matches_torchvision(folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    torchvision = pytest.importorskip("torchvision")
    root, written = folder
    src = build_source(DatasetCfg(format="imagefolder", path=str(root)), root.parent)
    ref = torchvision.datasets.ImageFolder(str(root))
    assert src.classes == ref.classes == ["ant", "cat", "dog"]
    assert [(p, t) for p, t in src.samples] == [(p, t) for p, t in ref.samples]
    assert list(src.targets) == ref.targets and len(src) == 7
    for i in range(len(src)):
        img, label = src.load(i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        np.testing.assert_array_equal(img, written[src.samples[i][0]])
        np.testing.assert_array_equal(img, np.asarray(ref[i][0]))  # PIL decodes the same
        assert label == ref.targets[i]


def test_imagefolder_split_subdir_and_grey(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    (tmp_path / "set" / "val" / "a").mkdir(parents=True)
    os.replace(tmp_path / "g.png", tmp_path / "set" / "val" / "a" / "g.png")
    src = DATASET_FORMATS.get("imagefolder")(
        path=tmp_path / "set", images=None, split="val", name="x"
    )
    img, label = src.load(0)
    assert label == 0 and img.shape == (6, 5, 3)
    np.testing.assert_array_equal(img, np.repeat(grey[..., None], 3, axis=2))


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        ImageFolderSource(tmp_path / "missing_dir")
    (tmp_path / "noclass").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-directories"):
        ImageFolderSource(tmp_path / "noclass")
    root = tmp_path / "r"
    _write_png(root / "full" / "a.png", _rand_img(3, 3))
    (root / "emptycls").mkdir()
    (root / "emptycls" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="emptycls"):
        ImageFolderSource(root)


def test_broken_image_error_names_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _write_png(root / "a" / "good.png", _rand_img(3, 3))
    bad = root / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    src = ImageFolderSource(root)
    i = [p for p, _ in src.samples].index(str(bad))
    with pytest.raises(OSError, match="broken.jpg"):
        src.load(i)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image_rgb(root / "a" / "gone.png")
    (root / "a" / "empty.png").write_bytes(b"")
    with pytest.raises(OSError, match="empty.png"):
        read_image_rgb(root / "a" / "empty.png")


# ------------------------------------------------------------------------------- CIFAR


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` (BINSTRING), like the published cPickle files."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _dump(obj: object, path: Path, py2: bool = False) -> None:
    if not py2:
        path.write_bytes(pickle.dumps(obj))
        return
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x names, as in the published files
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def _cifar_batch(n: int, n_classes: int, key: bytes) -> tuple[dict[bytes, object], np.ndarray]:
    imgs = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    data = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane, row-major
    labels = RNG.integers(0, n_classes, n).tolist()
    return {b"batch_label": b"fake", key: labels, b"data": data}, imgs


def _fake_cifar10(root: Path, py2: bool = False) -> dict[str, tuple[np.ndarray, list[int]]]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _dump({b"label_names": names, b"num_cases_per_batch": 2}, d / "batches.meta", py2)
    out: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch, imgs = _cifar_batch(2, 10, b"labels")
        _dump(batch, d / fname, py2)
        split = "test" if fname == "test_batch" else "train"
        out[split][0].append(imgs)
        out[split][1].extend(batch[b"labels"])  # type: ignore[arg-type]
    return {k: (np.concatenate(v[0]), v[1]) for k, v in out.items()}


@pytest.mark.parametrize("py2", [False, True])
def test_cifar10_published_layout(tmp_path: Path, py2: bool) -> None:
    truth = _fake_cifar10(tmp_path, py2)
    for split in ("train", "test"):
        src = build_source(DatasetCfg(name=f"cifar10_{split}"), tmp_path)
        assert isinstance(src, CifarSource)
        assert src.classes[:2] == ["airplane", "automobile"] and len(src.classes) == 10
        imgs, labels = truth[split]
        assert len(src) == len(labels) == (10 if split == "train" else 2)
        assert list(src.targets) == labels
        for i in range(len(src)):
            img, lab = src.load(i)
            assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and lab == labels[i]
            np.testing.assert_array_equal(img, imgs[i])


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [f"class{i:03d}".encode() for i in range(100)]
    _dump({b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20}, d / "meta")
    for split, n in (("train", 4), ("test", 3)):
        batch, imgs = _cifar_batch(n, 100, b"fine_labels")
        batch[b"coarse_labels"] = [0] * n
        _dump(batch, d / split)
        src = DATASET_FORMATS.get("cifar100")(path=d, images=None, split=split, name="c100")
        assert src.classes == [f.decode() for f in fine]
        assert list(src.targets) == batch[b"fine_labels"]
        for i in range(n):
            np.testing.assert_array_equal(src.load(i)[0], imgs[i])


def test_cifar_errors(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    with pytest.raises(ValueError, match="unknown split 'val'"):
        CifarSource(d, variant="cifar10", split="val")
    os.remove(d / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CifarSource(d, variant="cifar10", split="train")

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="test_batch.*refusing"):
        CifarSource(d, variant="cifar10", split="test")
    (d / "test_batch").write_bytes(b"\x80\x04truncated")
    with pytest.raises(OSError, match="test_batch"):
        CifarSource(d, variant="cifar10", split="test")
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(
        RestrictedUnpickler(io.BytesIO(pickle.dumps(arr, protocol=5))).load(), arr
    )


# -------------------------------------------------------------------------- transforms


def test_scale_augmentation_shorter_side_range() -> None:
    """The paper's scale augmentation: shorter side uniform over the integers [min, max]."""
    img = _rand_img(10, 15)
    resize = A.Compose(geo(ClsAugCfg(scale_min=16, scale_max=24, crop_size=12), True)[:1], seed=0)
    sides = [resize(image=img)["image"].shape for _ in range(600)]
    short = np.array([min(s[:2]) for s in sides])
    assert set(short.tolist()) == set(range(16, 25))  # every size, nothing else
    assert all(abs(s[1] - 1.5 * s[0]) <= 1 for s in sides)  # aspect ratio kept
    assert abs(short.mean() - 20) < 0.5
    paper = A.Compose(geo(ClsAugCfg(), True)[:1], seed=1)  # 256..480 (defaults)
    short = np.array([min(paper(image=img)["image"].shape[:2]) for _ in range(300)])
    assert short.min() >= 256 and short.max() <= 480 and short.min() < 290 and short.max() > 445


@pytest.mark.parametrize("kind", ["imagenet", "cifar", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_transform_output(kind: str, train: bool) -> None:
    aug = ClsAugCfg(kind=kind, crop_size=16, scale_min=18, scale_max=30, test_resize=20, pad=2)
    t = build_cls_transform(aug, train, seed=0)
    for h, w in ((16, 16), (24, 40), (9, 7)):
        out = t(image=_rand_img(h, w))["image"]
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        assert out.shape == (3, 16, 16)


def test_transform_test_is_center_crop_and_normalize() -> None:
    img = _rand_img(20, 30)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    for aug in (
        ClsAugCfg(kind="imagenet", crop_size=16, test_resize=20),
        ClsAugCfg(kind="none", crop_size=16, test_resize=20),
    ):
        for train in (False, True) if aug.kind == "none" else (False,):
            out = build_cls_transform(aug, train, mean=mean, std=std)(image=img)["image"]
            ref = (img[2:18, 7:23] / 255.0 - np.array(mean)) / np.array(std)
            np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-5)
    cifar = build_cls_transform(ClsAugCfg(kind="cifar", crop_size=32), False)
    img = _rand_img(32, 32)
    ref = (img / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(
        cifar(image=img)["image"].permute(1, 2, 0).numpy(), ref, atol=1e-5
    )  # identity + normalize


def test_cifar_pad_crop_flip() -> None:
    """Zero padding of ``pad`` px, a random crop (every offset), a flip half the time."""
    img = RNG.integers(1, 256, (8, 8, 3), dtype=np.uint8)  # no zeros in the image itself
    t = A.Compose(geo(ClsAugCfg(kind="cifar", crop_size=8, pad=2), True), seed=3)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    seen, flips = set(), 0
    for _ in range(400):
        out = t(image=img)["image"]
        hits = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (0, 1)
            if np.array_equal(out, (padded[:, ::-1] if f else padded)[dy : dy + 8, dx : dx + 8])
        ]
        assert hits, "output is not a crop of the zero-padded (possibly flipped) image"
        seen.update((dy, dx) for dy, dx, _ in hits)
        flips += any(f for *_, f in hits) and not any(not f for *_, f in hits)
    assert seen == {(dy, dx) for dy in range(5) for dx in range(5)}
    assert 140 < flips < 260
    no_flip = A.Compose(geo(ClsAugCfg(kind="cifar", crop_size=8, pad=0, hflip=False), True))
    assert all(np.array_equal(no_flip(image=img)["image"], img) for _ in range(20))


def test_transform_seed_reproducible() -> None:
    aug = ClsAugCfg(crop_size=12, scale_min=14, scale_max=30)
    img = _rand_img(20, 20)
    a, b = build_cls_transform(aug, True, seed=5), build_cls_transform(aug, True, seed=5)
    outs_a = [a(image=img)["image"] for _ in range(5)]
    assert all(torch.equal(x, b(image=img)["image"]) for x in outs_a)
    assert not all(torch.equal(outs_a[0], x) for x in outs_a[1:])


# --------------------------------------------------------------------------- synthetic


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


SMALL = {"train_per_class": 3, "val_per_class": 2}


@pytest.mark.parametrize("name", ["synthetic_cls", "synthetic_cls_hard"])
def test_synthetic_deterministic(tmp_path: Path, name: str) -> None:
    a = syn.generate_synthetic_cls(tmp_path / "a", spec=name, **SMALL)
    b = syn.generate_synthetic_cls(tmp_path / "b", spec=name, **SMALL)
    fa, fb = _files(a), _files(b)
    assert fa == fb
    spec = syn.SPECS[name]
    n_cls = len(spec.classes)
    assert sum(k.endswith(".png") for k in fa) == n_cls * 5
    manifest = json.loads(fa["manifest.json"])
    assert manifest["seed"] == spec.seed and manifest["version"] == syn.FORMAT_VERSION
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [name]  # no temp/lock left
    for split, per in (("train", 3), ("val", 2)):
        src = syn.build_synthetic_cls(path=a, images=None, split=split, name="s")
        assert src.classes == spec.class_names() and len(src) == n_cls * per
        assert np.bincount(src.targets).tolist() == [per] * n_cls
        img, _ = src.load(0)
        assert img.shape == (spec.image_size, spec.image_size, 3)


def test_synthetic_reuse_and_regenerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = syn.generate_synthetic_cls(tmp_path, **SMALL)
    first = _files(d)
    calls = []
    real_write = syn.write_set
    monkeypatch.setattr(syn, "write_set", lambda *a: (calls.append(1), real_write(*a)))
    assert syn.generate_synthetic_cls(tmp_path, **SMALL) == d and not calls  # reused
    os.remove(next((d / "val").rglob("*.png")))  # partial set
    syn.generate_synthetic_cls(tmp_path, **SMALL)
    assert len(calls) == 1 and _files(d) == first
    m = json.loads((d / "manifest.json").read_text())
    m["spec"]["seed"] = 1  # stale: made by another spec
    (d / "manifest.json").write_text(json.dumps(m))
    syn.generate_synthetic_cls(tmp_path, **SMALL)
    assert len(calls) == 2 and _files(d) == first
    syn.generate_synthetic_cls(tmp_path, train_per_class=4, val_per_class=2)  # new sizes
    assert len(calls) == 3 and len(list((d / "train").rglob("*.png"))) == 40
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_synthetic_concurrent_first_use(tmp_path: Path) -> None:
    """Two simultaneous first uses (as two torchrun ranks): one set, no leftovers. Threads
    open the locked directory separately, so flock excludes them exactly as processes."""
    with ThreadPoolExecutor(2) as ex:
        dirs = list(ex.map(lambda _: syn.generate_synthetic_cls(tmp_path, **SMALL), range(2)))
    d = tmp_path / "synthetic_cls"
    assert dirs == [d, d]
    assert syn.is_complete(d, syn.dataclasses.replace(syn.SPECS["synthetic_cls"], **SMALL))
    assert _files(d) == _files(syn.generate_synthetic_cls(tmp_path / "ref", **SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "synthetic_cls"]


def test_synthetic_catalog_entries() -> None:
    assert {"synthetic_cls", "synthetic_cls_hard"} <= set(GENERATORS.names())
    for name in ("synthetic_cls", "synthetic_cls_hard"):
        spec = syn.SPECS[name]
        assert spec.image_size == 32 and len(set(spec.classes)) == len(spec.classes)
    assert len(syn.SPECS["synthetic_cls"].classes) == 10
    assert len(syn.SPECS["synthetic_cls_hard"].classes) >= 20
    with pytest.raises(FileNotFoundError, match="manifest"):
        syn.build_synthetic_cls(path=Path("/nonexistent/synth"), images=None, split="train")


@pytest.mark.slow
def test_synthetic_default_set_via_catalog(tmp_path: Path) -> None:
    src = build_source(DatasetCfg(name="synthetic_cls_val"), tmp_path)
    assert len(src) == 1000 and len(src.classes) == 10
    train = build_source(DatasetCfg(name="synthetic_cls_train"), tmp_path)
    assert len(train) == 5000 and np.bincount(train.targets).tolist() == [500] * 10


# ----------------------------------------------------------------------------- loader


def _cfg(tmp_path: Path, workers: int = 0) -> Config:
    d = syn.generate_synthetic_cls(tmp_path, **SMALL)
    cfg = Config()
    cfg.data.root = str(tmp_path)
    cfg.data.train = [DatasetCfg(name="tr", format="synthetic_cls", path=str(d), split="train")]
    cfg.data.test = [DatasetCfg(name="va", format="synthetic_cls", path=d.name, split="val")]
    cfg.data.cls_aug = ClsAugCfg(kind="cifar", crop_size=32, pad=4)
    cfg.data.num_workers = workers
    return cfg


def _take(loader: torch.utils.data.DataLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_cls_loader_batches(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cfg.solver.batch_size = 8
    loader = build_cls_train_loader(cfg)
    assert loader.dataset.classes == syn.SPECS["synthetic_cls"].class_names()
    batches = _take(loader, 6)  # endless: past the 30 images of one epoch
    x, y = batches[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches[:3]]).tolist()) != list(range(24))
    test = build_cls_test_loader(cfg, batch_size=8)
    labels = torch.cat([b[1] for b in test]).tolist()
    assert labels == [c for c in range(10) for _ in range(2)]  # in order, nothing dropped
    again = [b[0] for b in _take(build_cls_train_loader(cfg), 6)]
    assert all(torch.equal(a[0], b) for a, b in zip(batches, again, strict=True))  # same seed
    resumed = [b[0] for b in _take(build_cls_train_loader(cfg, start_iter=2), 4)]
    assert all(torch.equal(a[0], b) for a, b in zip(batches[2:], resumed, strict=True))
    cfg.train.seed = 1
    other = next(iter(build_cls_train_loader(cfg)))[0]
    assert not torch.equal(other, batches[0][0])


def test_cls_loader_workers_reseed_augmentation(tmp_path: Path) -> None:
    """Each draw seeds its own augmentation: the same image drawn twice looks different, and
    the batches are the same whatever the number of workers (albumentations 2 keeps its own
    random state, which forked workers would otherwise copy)."""
    cfg = _cfg(tmp_path, workers=2)
    cfg.data.train = [cfg.data.train[0]] * 2  # concatenation: image i == image 30 + i
    cfg.data.cls_aug = ClsAugCfg(kind="imagenet", crop_size=24, scale_min=26, scale_max=60)
    cfg.solver.batch_size = 6
    order = [(i, 100 + i) for i in range(6)] + [(30 + i, 200 + i) for i in range(6)]

    def images(workers: int) -> torch.Tensor:
        cfg.data.num_workers = workers
        loader = build_cls_train_loader(cfg)
        loader.batch_sampler.sampler = order  # type: ignore[union-attr]
        return torch.cat([b[0] for b in loader])

    a = images(2)
    ds = build_cls_dataset(cfg, train=True)
    assert len(ds) == 60
    np.testing.assert_array_equal(ds.load(3)[0], ds.load(33)[0])
    assert a.shape == (12, 3, 24, 24) and torch.equal(a, images(2))  # reproducible
    assert torch.equal(a, images(0))  # the same batches without workers
    assert not torch.equal(a[:6], a[6:])


def test_cls_dataset_class_mismatch(tmp_path: Path) -> None:
    d = syn.generate_synthetic_cls(tmp_path, **SMALL)
    a = syn.build_synthetic_cls(path=d, split="train")
    _write_png(tmp_path / "other" / "x" / "a.png", _rand_img(4, 4))
    b = ImageFolderSource(tmp_path / "other")
    with pytest.raises(ValueError, match="different classes"):
        ClsDataset([a, b], None)
    cfg = _cfg(tmp_path)
    cfg.model.num_classes = 5
    with pytest.raises(ValueError, match="model.num_classes"):
        build_cls_dataset(cfg, train=False)


def test_inference_sampler_shards() -> None:
    for size, world in ((10, 3), (2, 4), (0, 2), (7, 1)):
        shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
        assert sum(shards, []) == list(range(size))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_cls_loader_distributed_samplers(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cfg.solver.batch_size = 4
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train = build_cls_train_loader(cfg)
        test = build_cls_test_loader(cfg, batch_size=4)
    finally:
        dist.destroy_process_group()
    assert isinstance(train.sampler, InfiniteSampler) and train.sampler.seed == cfg.train.seed
    assert isinstance(test.sampler, InferenceSampler) and len(test.sampler) == 20
    assert next(iter(train))[0].shape == (4, 3, 32, 32)
