"""Embedded synthetic classification sets, generated deterministically on first use.

Two sets, written under the data root as ImageFolder trees plus a ``manifest.json``::

    <root>/synthetic_cls/{train,val}/<NN_shape-texture>/<iiiii>.png
    <root>/synthetic_cls_hard/...

- ``synthetic_cls`` (the demo): 10 classes of 32x32 images -- seven solid shapes and a
  square filled with horizontal stripes, vertical stripes or a checkerboard -- with random
  position, size, small rotation, colours, a colour-gradient background, clutter strokes
  and pixel noise. 500 train / 100 val images per class.
- ``synthetic_cls_hard``: 32 fine-grained classes (8 shapes x 4 fill textures) at 32x32,
  smaller objects, lower contrast, more noise and two distractor objects per image; meant
  for CIFAR-style 6n+2 nets and the paper's depth (degradation) experiment.

Rendering is numpy only (vectorized over images, one ``default_rng`` per split with a fixed
seed) and takes a few seconds. Writing goes to a temporary directory that is renamed into
place, under a file lock, so two processes (torchrun ranks) starting at once generate the
set once. A set whose manifest does not match the current spec, or with missing files, is
regenerated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detres.data.catalog import DATASET_FORMATS, GENERATORS
from detres.data.imagefolder import ImageFolderSource

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
SHAPES = ("disc", "ring", "square", "triangle", "plus", "star", "crescent", "diamond",
          "triangle_down")
TEXTURES = ("solid", "hstripes", "vstripes", "checker")


@dataclass(frozen=True)
class SynthClsSpec:
    """Everything that determines the generated images (stored in the manifest)."""

    name: str
    classes: tuple[tuple[str, str], ...]  # (shape, texture) per class
    train_per_class: int
    val_per_class: int
    seed: int
    image_size: int = 32
    radius: tuple[float, float] = (0.22, 0.40)  # object radius / image size
    max_rotation: float = 15.0  # degrees, either way
    contrast: float = 90.0  # least RGB distance between object and background colour
    opacity: tuple[float, float] = (0.75, 1.0)
    noise: tuple[float, float] = (4.0, 16.0)  # std of Gaussian pixel noise, 0..255 units
    clutter: int = 3  # thin random strokes per image
    distractors: int = 0  # smaller, fainter shapes of random classes per image
    distractor_radius: tuple[float, float] = (0.10, 0.16)
    period: tuple[float, float] = (3.0, 5.0)  # stripe period / checker cell * 2, in px

    def class_names(self) -> list[str]:
        return [f"{i:02d}_{s}-{t}" for i, (s, t) in enumerate(self.classes)]

    def to_json(self) -> dict[str, object]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


_DEMO_CLASSES = tuple((s, "solid") for s in SHAPES[:7]) + tuple(
    ("square", t) for t in TEXTURES[1:]
)
_HARD_SHAPES = ("disc", "square", "triangle", "triangle_down", "plus", "star", "crescent",
                "diamond")

SPECS: dict[str, SynthClsSpec] = {
    "synthetic_cls": SynthClsSpec(
        name="synthetic_cls", classes=_DEMO_CLASSES, train_per_class=500, val_per_class=100,
        seed=20151210,
    ),
    "synthetic_cls_hard": SynthClsSpec(
        name="synthetic_cls_hard",
        classes=tuple((s, t) for s in _HARD_SHAPES for t in TEXTURES),
        train_per_class=500, val_per_class=100, seed=20151211,
        radius=(0.18, 0.32), contrast=60.0, opacity=(0.6, 1.0), noise=(8.0, 24.0),
        clutter=4, distractors=2,
    ),
}


# ---------------------------------------------------------------------------- rendering


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in object radii, < 0 inside) in object coordinates (u right, v down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72) - 0.28
    if shape == "square":
        return np.maximum(au, av) - 0.8
    if shape == "diamond":
        return (au + av - 1.0) / np.sqrt(2.0)
    if shape in ("triangle", "triangle_down"):
        w = v if shape == "triangle" else -v  # "triangle" points up (image v grows down)
        return np.maximum(np.maximum(w, 0.866 * u - 0.5 * w), -0.866 * u - 0.5 * w) - 0.5
    if shape == "plus":
        return np.minimum(np.maximum(au - 0.32, av - 1.0), np.maximum(au - 1.0, av - 0.32))
    if shape == "star":
        rho, phi = np.hypot(u, v), np.arctan2(v, u)
        return (rho - (0.62 + 0.38 * np.cos(5.0 * phi + np.pi / 2))) * 0.7
    if shape == "crescent":
        return np.maximum(np.hypot(u, v) - 1.0, 0.75 - np.hypot(u - 0.55, v))
    raise ValueError(f"unknown synthetic shape {shape!r}; known: {', '.join(SHAPES)}")


def _texture(tex: str, x: np.ndarray, y: np.ndarray, period: np.ndarray,
             phase: np.ndarray) -> np.ndarray:
    """1 where the object shows its main colour, 0 for its second colour (x, y in px)."""
    if tex == "solid":
        return np.ones_like(x)
    if tex == "hstripes":
        return (np.mod(y + phase, period) < period / 2).astype(np.float32)
    if tex == "vstripes":
        return (np.mod(x + phase, period) < period / 2).astype(np.float32)
    if tex == "checker":
        c = period / 2
        return (np.mod(np.floor((x + phase) / c) + np.floor((y + phase) / c), 2) == 0).astype(
            np.float32)
    raise ValueError(f"unknown synthetic texture {tex!r}; known: {', '.join(TEXTURES)}")


def _colours_far_from(base: np.ndarray, min_dist: float, rng: np.random.Generator) -> np.ndarray:
    """Random RGB colours at least ``min_dist`` from ``base`` (N, 3), where one exists."""
    out = rng.uniform(0, 255, base.shape).astype(np.float32)
    for _ in range(20):
        bad = np.linalg.norm(out - base, axis=1) < min_dist
        if not bad.any():
            break
        out[bad] = rng.uniform(0, 255, (int(bad.sum()), 3))
    return out


def _draw_objects(img: np.ndarray, pairs: list[tuple[str, str]], radius: tuple[float, float],
                  spec: SynthClsSpec, opacity: tuple[float, float],
                  rng: np.random.Generator) -> None:
    """Composite one object per image (``pairs[i]`` = (shape, texture)) onto img in place."""
    n, s = img.shape[0], spec.image_size
    r = (rng.uniform(*radius, n) * s).astype(np.float32)[:, None, None]
    cx = rng.uniform(0, 1, n).astype(np.float32)[:, None, None] * (s - 1.6 * r) + 0.8 * r
    cy = rng.uniform(0, 1, n).astype(np.float32)[:, None, None] * (s - 1.6 * r) + 0.8 * r
    th = np.deg2rad(rng.uniform(-spec.max_rotation, spec.max_rotation, n)).astype(np.float32)
    cos, sin = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
    period = rng.uniform(*spec.period, n).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 1, n).astype(np.float32)[:, None, None] * period
    alpha = rng.uniform(*opacity, n).astype(np.float32)[:, None, None]
    bg_mean = img.reshape(n, -1, 3).mean(axis=1)
    col_a = _colours_far_from(bg_mean, spec.contrast, rng)
    col_b = _colours_far_from(col_a, spec.contrast, rng)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    dx, dy = xx[None] - cx, yy[None] - cy
    x, y = dx * cos + dy * sin, -dx * sin + dy * cos  # object frame, px
    mask = np.zeros((n, s, s), np.float32)
    tex = np.zeros((n, s, s), np.float32)
    for key in sorted(set(pairs)):
        sel = np.array([p == key for p in pairs])
        d = _sdf(key[0], x[sel] / r[sel], y[sel] / r[sel]) * r[sel]  # px
        mask[sel] = np.clip(0.5 - d, 0.0, 1.0)  # ~1 px anti-aliased edge
        tex[sel] = _texture(key[1], x[sel], y[sel], period[sel], phase[sel])
    colour = tex[..., None] * col_a[:, None, None] + (1 - tex[..., None]) * col_b[:, None, None]
    a = (mask * alpha)[..., None]
    img *= 1 - a
    img += a * colour


def _draw_strokes(img: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Thin, semi-transparent random line segments (background clutter), in place."""
    n, s = img.shape[:2]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    for _ in range(count):
        p0 = rng.uniform(0, s, (n, 2)).astype(np.float32)
        p1 = p0 + rng.normal(0, s / 3, (n, 2)).astype(np.float32)
        width = rng.uniform(0.4, 1.2, n).astype(np.float32)[:, None, None]
        alpha = rng.uniform(0.25, 0.6, n).astype(np.float32)[:, None, None]
        col = rng.uniform(0, 255, (n, 3)).astype(np.float32)
        d = p1 - p0
        px, py = xx[None] - p0[:, 0, None, None], yy[None] - p0[:, 1, None, None]
        t = (px * d[:, 0, None, None] + py * d[:, 1, None, None]) / np.maximum(
            (d**2).sum(1), 1e-6)[:, None, None]
        t = np.clip(t, 0, 1)
        dist = np.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None])
        a = (np.clip(width + 0.5 - dist, 0, 1) * alpha)[..., None]
        img *= 1 - a
        img += a * col[:, None, None]


def render(spec: SynthClsSpec, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images ``[N, S, S, 3]`` uint8 RGB for class indices ``labels``."""
    n, s = len(labels), spec.image_size
    # background: a linear gradient between two random colours
    c0 = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 50, (n, 3)), 0, 255).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s - 0.5
    t = (xx[None] * np.cos(ang)[:, None, None] + yy[None] * np.sin(ang)[:, None, None]) + 0.5
    img = c0[:, None, None] * (1 - t[..., None]) + c1[:, None, None] * t[..., None]
    _draw_strokes(img, spec.clutter, rng)
    for _ in range(spec.distractors):
        idx = rng.integers(0, len(spec.classes), n)
        _draw_objects(img, [spec.classes[i] for i in idx], spec.distractor_radius, spec,
                      (0.35, 0.7), rng)
    _draw_objects(img, [spec.classes[i] for i in labels], spec.radius, spec, spec.opacity, rng)
    sigma = rng.uniform(*spec.noise, n).astype(np.float32)[:, None, None, None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_split(
    spec: SynthClsSpec, split: str, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, S, S, 3] uint8 RGB, labels [N]) of one split, class by class in order."""
    if split not in SPLITS:
        raise ValueError(f"synthetic split {split!r} is not one of {SPLITS}")
    per_class = spec.train_per_class if split == "train" else spec.val_per_class
    labels = np.repeat(np.arange(len(spec.classes)), per_class)
    rng = np.random.default_rng([spec.seed, SPLITS.index(split)])
    out = np.empty((len(labels), spec.image_size, spec.image_size, 3), np.uint8)
    for i in range(0, len(labels), chunk):
        out[i : i + chunk] = render(spec, labels[i : i + chunk], rng)
    return out, labels


# ----------------------------------------------------------------------------- on disk


def _expected_counts(spec: SynthClsSpec) -> dict[str, int]:
    return {"train": spec.train_per_class, "val": spec.val_per_class}


def is_complete(target: Path, spec: SynthClsSpec) -> bool:
    """Whether ``target`` holds the set of ``spec``: same manifest, every file present."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("version") != FORMAT_VERSION or manifest.get("spec") != spec.to_json():
        return False
    counts = _expected_counts(spec)
    for split in SPLITS:
        for cls in spec.class_names():
            d = target / split / cls
            if not d.is_dir() or sum(1 for e in os.scandir(d) if e.name.endswith(".png")) != (
                counts[split]
            ):
                return False
    return True


def write_set(spec: SynthClsSpec, out: Path) -> None:
    """Render both splits of ``spec`` into ``out`` (an ImageFolder tree + manifest)."""
    names = spec.class_names()
    for split in SPLITS:
        images, labels = render_split(spec, split)
        for cls in names:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            path = out / split / names[lab] / f"{i:05d}.png"
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"cannot encode synthetic image {path}")
            path.write_bytes(buf.tobytes())
    manifest = {"generator": spec.name, "version": FORMAT_VERSION, "seed": spec.seed,
                "classes": names, "counts": _expected_counts(spec), "spec": spec.to_json()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the atomic rename alone
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def generate_synthetic_cls(
    root: str | os.PathLike[str],
    *,
    spec: SynthClsSpec | str = "synthetic_cls",
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    force: bool = False,
) -> Path:
    """Make sure ``<root>/<spec.name>`` holds the set; generate it when missing or stale.

    ``spec`` is a name in :data:`SPECS` or a spec; ``train_per_class`` / ``val_per_class``
    override its sizes (tests use small ones). Returns the set's directory. Safe when several
    processes call it at once: one generates, the others wait and reuse its result.
    """
    if isinstance(spec, str):
        if spec not in SPECS:
            raise KeyError(f"unknown synthetic set {spec!r}; known: {', '.join(SPECS)}")
        spec = SPECS[spec]
    changes = {k: v for k, v in (("train_per_class", train_per_class),
                                 ("val_per_class", val_per_class)) if v is not None}
    if any(v <= 0 for v in changes.values()):
        raise ValueError(f"synthetic set {spec.name!r}: per-class counts must be > 0: {changes}")
    spec = dataclasses.replace(spec, **changes)
    root = Path(root)
    target = root / spec.name
    if not force and is_complete(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{spec.name}.lock"):
        if not force and is_complete(target, spec):  # another process made it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=root))
        try:
            write_set(spec, tmp)
            if target.exists():  # stale or partial: move aside, then swap in the new set
                old = Path(tempfile.mkdtemp(prefix=f".{spec.name}.old-", dir=root))
                os.replace(target, old / "set")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not is_complete(target, spec):  # lost a lock-free race to a bad set
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@GENERATORS.register("synthetic_cls")
def generate_default(root: Path) -> None:
    """Catalog generator ``synthetic_cls``: the demo set under ``root/synthetic_cls``."""
    generate_synthetic_cls(root, spec="synthetic_cls")


@GENERATORS.register("synthetic_cls_hard")
def generate_hard(root: Path) -> None:
    """Catalog generator ``synthetic_cls_hard``: under ``root/synthetic_cls_hard``."""
    generate_synthetic_cls(root, spec="synthetic_cls_hard")


@DATASET_FORMATS.register("synthetic_cls")
def build_synthetic_cls(
    *, path: Path, images: Path | None = None, split: str = "train", name: str = ""
) -> ImageFolderSource:
    """Catalog builder: split ``train`` or ``val`` of a generated set at ``path``."""
    del images
    split = split or "train"
    if split not in SPLITS:
        raise ValueError(f"synthetic set {path}: unknown split {split!r}; choose train or val")
    if not (Path(path) / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{path}: no generated synthetic set here (missing {MANIFEST}); use the catalog "
            "names synthetic_cls_train/val (generated on first use) or "
            "detres.data.synthetic_cls.generate_synthetic_cls"
        )
    return ImageFolderSource(Path(path) / split, name=name)
