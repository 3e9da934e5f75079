"""Embedded synthetic classification sets, generated deterministically on first use.

Two sets, written under the data root as ImageFolder trees plus a ``manifest.json``::

    <root>/synthetic_cls/{train,val}/<NN_shape-texture>/<iiiii>.png
    <root>/synthetic_cls_hard/...

- ``synthetic_cls`` (the demo): 10 classes of 32x32 images -- seven solid shapes and a
  square filled with horizontal stripes, vertical stripes or a checkerboard -- with random
  position, size, small rotation, colours, a colour-gradient background, clutter strokes
  and pixel noise. 500 train / 100 val images per class.
- ``synthetic_cls_hard``: 32 fine-grained classes (8 shapes x 4 fill textures) at 32x32,
  smaller objects, lower contrast, more noise and two distractor objects per image
  (400 train / 60 val per class); for CIFAR-style 6n+2 nets and the paper's depth
  (degradation) experiment.

Every class is invariant under horizontal flips (flip augmentation keeps labels), not under
vertical flips or large rotations (triangle vs triangle_down, stripe orientation).

Rendering is numpy only (vectorized over images, one ``default_rng`` per split with a fixed
seed) and takes a few seconds. Writing goes to a temporary directory that is renamed into
place, under a file lock, so two processes (torchrun ranks) starting at once generate the
set once. A set whose manifest does not match the current spec, or with missing files, is
regenerated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detres.data.catalog import DATASET_FORMATS, GENERATORS
from detres.data.imagefolder import ImageFolderSource
from detres.utils.io import build_directory_once

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
SHAPES = tuple("disc ring square triangle plus star crescent diamond triangle_down".split())
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


_DEMO_CLASSES = tuple((s, "solid") for s in SHAPES[:7]) + tuple(("square", t) for t in TEXTURES[1:])
_HARD_SHAPES = tuple("disc square triangle triangle_down plus star crescent diamond".split())

SPECS: dict[str, SynthClsSpec] = {
    "synthetic_cls": SynthClsSpec(
        name="synthetic_cls",
        classes=_DEMO_CLASSES,
        train_per_class=500,
        val_per_class=100,
        seed=20151210,
    ),
    "synthetic_cls_hard": SynthClsSpec(
        name="synthetic_cls_hard",
        classes=tuple((s, t) for s in _HARD_SHAPES for t in TEXTURES),
        train_per_class=400,
        val_per_class=60,
        seed=20151211,
        radius=(0.18, 0.32),
        contrast=60.0,
        opacity=(0.6, 1.0),
        noise=(8.0, 24.0),
        clutter=4,
        distractors=2,
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


def _texture(
    tex: str, x: np.ndarray, y: np.ndarray, period: np.ndarray, phase: np.ndarray
) -> np.ndarray:
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
            np.float32
        )
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


def _windows(
    img: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable (n, 3, W, W) window views of ``img`` and their corners ``x0``, ``y0``: per
    image a square of side W covering ``[c - half, c + half]``, clipped to the image."""
    n, s = img.shape[:2]
    w = min(s, int(np.ceil(2 * half)) + 2)
    x0 = np.clip(np.floor(cx - half).astype(np.int64), 0, s - w)
    y0 = np.clip(np.floor(cy - half).astype(np.int64), 0, s - w)
    # (n, s-W+1, s-W+1, 3, W, W) view; each image is indexed once, so writes do not overlap
    view = np.lib.stride_tricks.sliding_window_view(img, (w, w), axis=(1, 2), writeable=True)
    return view, x0, y0


def _blend(
    view: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    patch: np.ndarray,
    alpha: np.ndarray,
    colour: np.ndarray,
) -> None:
    """window = patch + alpha * (colour - patch), with patch (n,W,W,3) and alpha (n,W,W)."""
    out = patch + alpha[..., None] * (colour - patch)
    view[np.arange(len(x0)), y0, x0] = out.transpose(0, 3, 1, 2)


def _patch(view: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
    return view[np.arange(len(x0)), y0, x0].transpose(0, 2, 3, 1)  # (n, W, W, 3) copy


def _draw_objects(
    img: np.ndarray,
    cls_idx: np.ndarray,
    spec: SynthClsSpec,
    radius: tuple[float, float],
    opacity: tuple[float, float],
    rng: np.random.Generator,
) -> None:
    """Composite one object of class ``cls_idx[i]`` onto each image, in place."""
    n, s = img.shape[0], spec.image_size
    r = rng.uniform(*radius, n) * s
    cx = rng.uniform(0, 1, n) * (s - 1.6 * r) + 0.8 * r
    cy = rng.uniform(0, 1, n) * (s - 1.6 * r) + 0.8 * r
    th = np.deg2rad(rng.uniform(-spec.max_rotation, spec.max_rotation, n))
    period = rng.uniform(*spec.period, n)
    phase = rng.uniform(0, 1, n) * period
    alpha = rng.uniform(*opacity, n)
    # Every shape lies within 1.14 radii of its centre (the square's corners), + 1 px of edge.
    view, x0, y0 = _windows(img, cx, cy, 1.14 * radius[1] * s + 1)
    patch = _patch(view, x0, y0)
    w = patch.shape[1]
    col_a = _colours_far_from(patch.mean(axis=(1, 2)), spec.contrast, rng)  # vs surroundings
    col_b = _colours_far_from(col_a, spec.contrast, rng)
    f32 = np.float32
    grid = np.arange(w, dtype=f32) + 0.5
    dx = (x0[:, None] + grid - cx[:, None]).astype(f32)[:, None, :]  # (n, 1, W)
    dy = (y0[:, None] + grid - cy[:, None]).astype(f32)[:, :, None]  # (n, W, 1)
    cos, sin = np.cos(th).astype(f32)[:, None, None], np.sin(th).astype(f32)[:, None, None]
    x, y = dx * cos + dy * sin, -dx * sin + dy * cos  # object frame, px, (n, W, W)
    r3 = r.astype(f32)[:, None, None]
    mask = np.empty((n, w, w), f32)
    tex = np.empty((n, w, w), f32)
    for k in np.unique(cls_idx):
        shape, texture = spec.classes[k]
        sel = cls_idx == k
        d = _sdf(shape, x[sel] / r3[sel], y[sel] / r3[sel]) * r3[sel]  # px
        mask[sel] = np.clip(0.5 - d, 0.0, 1.0)  # ~1 px anti-aliased edge
        tex[sel] = _texture(
            texture,
            x[sel],
            y[sel],
            period[sel, None, None].astype(f32),
            phase[sel, None, None].astype(f32),
        )
    t = tex[..., None]
    colour = col_b[:, None, None] + t * (col_a - col_b)[:, None, None]
    _blend(view, x0, y0, patch, mask * alpha.astype(f32)[:, None, None], colour)


def _draw_strokes(img: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Short, thin, semi-transparent random line segments (background clutter), in place."""
    n, s = img.shape[:2]
    f32 = np.float32
    for _ in range(count):
        p0 = rng.uniform(0, s, (n, 2))
        ang = rng.uniform(0, 2 * np.pi, n)
        length = rng.uniform(s / 8, s / 3, n)
        d = np.stack([np.cos(ang), np.sin(ang)], 1) * length[:, None]
        width = rng.uniform(0.4, 1.2, n).astype(f32)[:, None, None]
        alpha = rng.uniform(0.25, 0.6, n).astype(f32)[:, None, None]
        col = rng.uniform(0, 255, (n, 3)).astype(f32)[:, None, None]
        mid = p0 + d / 2
        view, x0, y0 = _windows(img, mid[:, 0], mid[:, 1], s / 6 + 2)
        grid = np.arange(view.shape[-1], dtype=f32) + 0.5
        px = (x0[:, None] + grid - p0[:, :1]).astype(f32)[:, None, :]  # (n, 1, W)
        py = (y0[:, None] + grid - p0[:, 1:]).astype(f32)[:, :, None]  # (n, W, 1)
        ux, uy = (d[:, 0] / length).astype(f32), (d[:, 1] / length).astype(f32)
        ux, uy = ux[:, None, None], uy[:, None, None]
        along = np.clip(px * ux + py * uy, 0, length.astype(f32)[:, None, None])
        dist = np.hypot(px - along * ux, py - along * uy)
        _blend(view, x0, y0, _patch(view, x0, y0), np.clip(width + 0.5 - dist, 0, 1) * alpha, col)


def render(spec: SynthClsSpec, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images ``[N, S, S, 3]`` uint8 RGB for class indices ``labels``."""
    n, s = len(labels), spec.image_size
    # background: a linear gradient between two random colours
    c0 = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 50, (n, 3)), 0, 255).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s - 0.5
    t = (xx[None] * np.cos(ang)[:, None, None] + yy[None] * np.sin(ang)[:, None, None]) + 0.5
    img = c0[:, None, None] + t[..., None] * (c1 - c0)[:, None, None]
    _draw_strokes(img, spec.clutter, rng)
    for _ in range(spec.distractors):
        _draw_objects(
            img,
            rng.integers(0, len(spec.classes), n),
            spec,
            spec.distractor_radius,
            (0.35, 0.7),
            rng,
        )
    _draw_objects(img, labels, spec, spec.radius, spec.opacity, rng)
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
            if (
                not d.is_dir()
                or sum(1 for e in os.scandir(d) if e.name.endswith(".png")) != (counts[split])
            ):
                return False
    return True


def write_set(spec: SynthClsSpec, out: Path) -> None:
    """Render both splits of ``spec`` into ``out`` (an ImageFolder tree + manifest)."""
    names = spec.class_names()
    for split in SPLITS:
        images, labels = render_split(spec, split)
        bgr = np.ascontiguousarray(images[..., ::-1])  # OpenCV writes BGR
        dirs = [str(out / split / cls) for cls in names]
        for d in dirs:
            os.makedirs(d, exist_ok=True)
        for i, lab in enumerate(labels.tolist()):
            path = os.path.join(dirs[lab], f"{i:05d}.png")
            ok, buf = cv2.imencode(".png", bgr[i])
            if not ok:
                raise OSError(f"cannot encode synthetic image {path}")
            with open(path, "wb") as f:
                f.write(buf)
    manifest = {
        "generator": spec.name,
        "version": FORMAT_VERSION,
        "seed": spec.seed,
        "classes": names,
        "counts": _expected_counts(spec),
        "spec": spec.to_json(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


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
    changes = {
        k: v
        for k, v in (("train_per_class", train_per_class), ("val_per_class", val_per_class))
        if v is not None
    }
    if any(v <= 0 for v in changes.values()):
        raise ValueError(f"synthetic set {spec.name!r}: per-class counts must be > 0: {changes}")
    spec = dataclasses.replace(spec, **changes)
    target = Path(root) / spec.name
    if force and target.exists():
        shutil.rmtree(target)
    return build_directory_once(target, is_current=lambda d: is_complete(d, spec),
                                write=lambda tmp: write_set(spec, tmp))


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
