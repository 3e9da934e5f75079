"""Shared test helpers: tiny run configs, the command-line tools as modules, and data sets in
published layouts (as fixtures; test files do not import each other)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

from detres.config import load_config
from detres.modeling import FasterRCNN, build_detector, load_pretrained

REPO = Path(__file__).resolve().parents[1]
CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                 b"horse", b"ship", b"truck"]


TINY_FAMILIES = {  # detector families at tiny widths (build_tiny_detector)
    "c4": [
        "model.arch=faster_rcnn_c4",
        "model.backbone.name=resnet50",
        "model.backbone.width_per_group=8",
    ],
    "vgg": [
        "model.arch=faster_rcnn_vgg",
        "model.backbone.name=vgg16",
        "model.backbone.width_per_group=4",
        "model.roi_heads.pooler_resolution=7",
    ],
    "fpn": [
        "model.arch=faster_rcnn_fpn",
        "model.backbone.name=resnet50",
        "model.backbone.width_per_group=8",
        "model.backbone.stride_in_1x1=false",
        "model.anchors.sizes=[[16],[32],[64],[128],[256]]",
        "model.fpn.out_channels=32",
        "model.roi_heads.pooler_resolution=7",
        "model.roi_heads.sampling_ratio=2",
        "model.roi_heads.fc_dim=64",
    ],
}
TINY_FAMILY_COMMON = [
    "task=det",
    "model.num_classes=3",
    "model.input.min_size_test=96",
    "model.input.max_size_test=128",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=100",
    "model.rpn.pre_nms_topk_train=600",
    "model.rpn.post_nms_topk_train=200",
    "model.roi_heads.batch_size_per_image=64",
]


def build_tiny_detector(family: str, *extra: str) -> FasterRCNN:
    """Built, then the weights the config names loaded (the explicit step)."""
    torch.manual_seed(0)
    cfg = load_config(None, TINY_FAMILY_COMMON + TINY_FAMILIES[family] + list(extra))
    model = build_detector(cfg)
    load_pretrained(model, cfg.model)
    return model


# A ~0.2M-parameter ResNet-18-FPN on 128-192 px images: a few seconds per run on 2 cores.
TINY_DET = [
    "model.backbone.width_per_group=8", "model.fpn.out_channels=16", "model.roi_heads.fc_dim=32",
    "model.input.min_size_train=[128]", "model.input.max_size_train=192",
    "model.input.min_size_test=128", "model.input.max_size_test=192",
    "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
    "model.rpn.batch_size_per_image=64", "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.detections_per_image=20",
    "solver.batch_size=2", "solver.base_lr=0.01", "solver.steps=[4]", "solver.warmup_iters=2",
    "train.log_period=1", "train.checkpoint_period=3", "train.device=cpu",
    "data.num_workers=0",
]


def demo_data_overrides(root: Path) -> list[str]:
    """The generated set as custom COCO sets by path (the catalog's ``demo_coco_*`` entries
    would regenerate it at the default size)."""
    ann, img = "demo_det/annotations", "demo_det/images"
    return [
        f"data.root={root}",
        f"data.train=[{{name: tiny_train, format: coco, path: {ann}/instances_train.json, "
        f"images: {img}}}]",
        f"data.test=[{{name: tiny_val, format: coco, path: {ann}/instances_val.json, "
        f"images: {img}}}]",
    ]


# A narrow ImageNet-style ResNet-18 on the synthetic 32x32 set with ImageNet-style scale
# augmentation scaled down (shorter side 32..40, 32 crops).
TINY_R18 = [
    "model.backbone.width_per_group=8",
    "data.cls_aug.crop_size=32", "data.cls_aug.scale_min=32", "data.cls_aug.scale_max=40",
    "data.cls_aug.test_resize=32",
    "solver.batch_size=8", "solver.reference_batch_size=0", "solver.base_lr=0.05",
    "solver.schedule=multistep", "solver.steps=[4]", "solver.warmup_iters=2",
    "train.log_period=1", "train.checkpoint_period=3", "train.eval_period=0",
    "train.device=cpu", "data.num_workers=0",
]


def synthetic_cls_overrides(root: Path) -> list[str]:
    """The generated small set by path (the catalog names would regenerate the full size)."""
    return [
        f"data.root={root}",
        "data.train=[{name: tiny_train, format: synthetic_cls, path: synthetic_cls, "
        "split: train}]",
        "data.test=[{name: tiny_val, format: synthetic_cls, path: synthetic_cls, split: val}]",
    ]


def load_tool(name: str) -> ModuleType:
    """The tool ``tools/<name>.py`` / ``detres <command>``: the module :mod:`detres.cli.<name>`
    (its ``main(argv)`` runs in-process)."""
    return importlib.import_module(f"detres.cli.{name}")


def write_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> Path:
    """Fake CIFAR-10 in the published python layout: ``root/cifar-10-batches-py`` with
    ``batches.meta`` and ``data_batch_1..5`` / ``test_batch`` dicts keyed by bytes, images as
    uint8 ``[N, 3072]`` (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    meta = {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": per_batch}
    (d / "batches.meta").write_bytes(pickle.dumps(meta))
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": fname.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{fname}_{i}.png".encode() for i in range(per_batch)]}
        (d / fname).write_bytes(pickle.dumps(batch))
    return d


def write_imagefolder(root: Path, classes: list[str], per_class: int, size: int = 40,
                      seed: int = 0, suffix: str = ".jpg") -> Path:
    """An ImageFolder tree ``root/<class>/<i><suffix>`` of random ``size x size`` images, each
    class with its own mean colour (so a classifier can learn something)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = np.array([60 + 60 * c, 200 - 50 * c, 40 + 90 * (c % 2)], np.float64)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            assert cv2.imwrite(str(root / name / f"{i:03d}{suffix}"), img)
    return root


SHAPES = ["rectangle", "circle", "triangle", "ellipse"]


def write_shapes_coco(root: Path, *, num_train: int = 12, num_val: int = 6, seed: int = 0,
                      size: tuple[int, int] = (192, 256), overhang: int = 7) -> Path:
    """A custom COCO set like ``skimage.draw.random_shapes`` makes: 4 classes (category ids
    1..4), 1-3 filled shapes per 192x256 image on white, and, as random_shapes does, boxes
    that may extend up to ``overhang`` pixels past the border. Writes ``root/train.json``,
    ``root/val.json`` and the images under ``root/train/`` and ``root/val/``."""
    rng = np.random.default_rng(seed)
    h, w = size
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]
    ann_id = 0
    for split, n in (("train", num_train), ("val", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img = np.full((h, w, 3), 255, np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, 4))
                bw, bh = (int(v) for v in rng.integers(24, 90, 2))
                x1 = int(rng.integers(-overhang, w - bw + overhang + 1))
                y1 = int(rng.integers(-overhang, h - bh + overhang + 1))
                colour = tuple(int(v) for v in rng.integers(0, 200, 3))
                if SHAPES[c] == "rectangle":
                    cv2.rectangle(img, (x1, y1), (x1 + bw, y1 + bh), colour, -1)
                elif SHAPES[c] == "circle":
                    cv2.circle(img, (x1 + bw // 2, y1 + bw // 2), bw // 2, colour, -1)
                    bh = bw
                elif SHAPES[c] == "triangle":
                    pts = np.array([[x1 + bw // 2, y1], [x1, y1 + bh], [x1 + bw, y1 + bh]])
                    cv2.fillPoly(img, [pts.astype(np.int32)], colour)
                else:
                    cv2.ellipse(img, (x1 + bw // 2, y1 + bh // 2), (bw // 2, bh // 2), 0, 0,
                                360, colour, -1)
                ann_id += 1
                anns.append({"id": ann_id, "image_id": i + 1, "category_id": c + 1,
                             "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
            name = f"{split}_{i:03d}.png"
            assert cv2.imwrite(str(root / split / name), img)
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                        "categories": cats}))
    return root


@pytest.fixture(scope="session", autouse=True)
def own_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """detres's caches (image checks, parsed COCO files) in a folder of the session, not in
    the home folder; subprocesses inherit it."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def shapes_writer() -> Callable[..., Path]:
    """:func:`write_shapes_coco`."""
    return write_shapes_coco


@pytest.fixture(scope="session")
def tool() -> Callable[[str], ModuleType]:
    """``tool("train_det").main([...])``."""
    return load_tool


@pytest.fixture(scope="session")
def cifar10_writer() -> Callable[..., Path]:
    """:func:`write_cifar10`."""
    return write_cifar10


@pytest.fixture(scope="session")
def imagefolder_writer() -> Callable[..., Path]:
    """:func:`write_imagefolder`."""
    return write_imagefolder


class D2Goldens:
    """tests/goldens/detectron2 (tools/dev/d2_goldens.py): Detectron2's reduced-width R101-C4
    and R50-FPN model-zoo files with their recorded outputs."""

    gold = REPO / "tests" / "goldens" / "detectron2"
    configs = {"r101_c4": "coco_r101_c4_3x", "r50_fpn": "coco_r50_fpn_3x"}

    def __init__(self) -> None:
        self.golden = json.loads((self.gold / "golden.json").read_text())
        self.small = [f"model.backbone.width_per_group={self.golden['width']}",
                      "model.input.min_size_test=160", "model.input.max_size_test=256",
                      "model.fpn.out_channels=16", "model.roi_heads.fc_dim=32"]

    def image(self) -> torch.Tensor:
        """``det_image.png`` as an RGB uint8 ``(3, 160, 224)`` tensor."""
        from detres.data.det_transforms import image_tensor
        from detres.data.image_io import load_image

        return image_tensor(load_image(self.gold / "det_image.png"))

    def detector(self, name: str, out: Path, *extra: str) -> tuple[FasterRCNN, object]:
        """The zoo file converted (written to ``out/<name>.pth``) and loaded strictly into the
        config with ``extra`` overrides, in eval mode; and that config."""
        from detres.modeling import load_weights
        from detres.modeling.weights.zoo import detectron2_checkpoint

        cfg = load_config(self.configs[name], [*self.small, *extra])
        path = out / f"{name}.pth"
        torch.save(detectron2_checkpoint(self.gold / f"{name}.pkl", cfg), path)
        model = build_detector(cfg)
        load_weights(model, path, policy="strict")
        return model.eval(), cfg

    def reference(self, entry: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A golden's boxes, scores and COCO category ids."""
        from detres.modeling.weights.torchvision import coco_layout

        ids = torch.tensor(coco_layout()[0])
        return (torch.tensor(entry["boxes"]), torch.tensor(entry["scores"]),
                ids[torch.tensor(entry["classes"])])

    def train_step(self) -> dict[str, np.ndarray]:
        """``train_step.npz``: the batch, Detectron2's loss terms and gradients (float32,
        ``f64/`` and ``bf16/`` entries)."""
        if not hasattr(self, "_train_step"):
            with np.load(self.gold / "train_step.npz") as z:
                self._train_step = {k: z[k] for k in z.files}
        return self._train_step

    def train_batch(self) -> tuple[torch.Tensor, list[dict]]:
        """The golden batch in the loader's form: RGB in [0, 1], padded; 1-based classes."""
        z = self.train_step()
        n = sum(1 for k in z if k.endswith("/image"))
        raw = [z[f"input/{i}/image"] for i in range(n)]
        h, w = max(r.shape[0] for r in raw), max(r.shape[1] for r in raw)
        images = torch.zeros(n, 3, h, w)
        targets = []
        for i, bgr in enumerate(raw):
            images[i, :, :bgr.shape[0], :bgr.shape[1]] = torch.from_numpy(
                bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255
            targets.append({"gt_boxes": torch.from_numpy(z[f"input/{i}/boxes"]),
                            "gt_classes": torch.from_numpy(z[f"input/{i}/classes"]) + 1,
                            "image_size": bgr.shape[:2]})
        return images, targets

    def train(self, name: str, *, fast: bool, dtype: torch.dtype, amp: str = "none",
              hook: Callable[[FasterRCNN], object] | None = None
              ) -> tuple[dict[str, float], dict[str, torch.Tensor], FasterRCNN]:
        """detres's step on the golden batch and weights, every candidate sampled (sampler
        sizes of 10**6, as the goldens): loss terms, float64 gradients, the model (``hook``
        sees it before the step)."""
        from detres.modeling import load_weights
        from detres.modeling.fastpath import reference_ops
        from detres.modeling.weights import weights_from_dict
        from detres.modeling.weights.zoo import detectron2_checkpoint
        from detres.utils.device import autocast_context

        everything = 10**6
        cfg = load_config(self.configs[name], [
            *self.small, f"model.rpn.batch_size_per_image={everything}",
            f"model.roi_heads.batch_size_per_image={everything}"])
        model = build_detector(cfg)
        load_weights(model, weights_from_dict(detectron2_checkpoint(self.gold / f"{name}.pkl",
                                                                    cfg), source=name),
                     policy="strict")
        model.to(dtype).train()
        if hook is not None:
            hook(model)
        images, targets = self.train_batch()
        with reference_ops(not fast), autocast_context(torch.device("cpu"), amp):
            losses = model.losses(images.to(dtype), targets)
        sum(losses.values()).backward()
        grads = {k: p.grad.detach().double() for k, p in model.named_parameters()
                 if p.grad is not None}
        return {k: float(v.detach()) for k, v in losses.items()}, grads, model

    def train_grads(self, name: str, tag: str, model: FasterRCNN) -> dict[str, torch.Tensor]:
        """Detectron2's gradients (``tag``: "", "f64/" or "bf16/") under detres's names: the
        weights converter's own map, run on a full Detectron2 state (the .pkl's names) holding
        the gradients; only the parameters that have one on both sides."""
        from detres.modeling.weights.zoo import detectron2_to_detres, read_zoo_file

        z = self.train_step()
        prefix = f"{name}/{tag}grad/"
        full = {k: torch.zeros_like(v, dtype=torch.float64)
                for k, v in read_zoo_file(self.gold / f"{name}.pkl").items()}
        mask = dict(full)
        for k in z:
            if k.startswith(prefix):
                full[k[len(prefix):]] = torch.from_numpy(z[k]).double()
                mask[k[len(prefix):]] = torch.ones_like(full[k[len(prefix):]])
        theirs = detectron2_to_detres(full, model)
        has = {k for k, v in detectron2_to_detres(mask, model).items() if bool(v.all())}
        mine = {k for k, p in model.named_parameters() if p.grad is not None}
        assert mine == has, sorted(mine ^ has)[:8]
        return {k: theirs[k] for k in mine}

    @staticmethod
    def matched(ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                det: dict[str, torch.Tensor]) -> float:
        """The fraction of the reference detections found: same class, IoU >= 0.99, score
        within 1e-3."""
        from torchvision.ops import box_iou

        boxes, scores, cls = ref
        if len(boxes) == 0:
            return 1.0
        iou = box_iou(boxes, det["boxes"].float())
        same = (cls[:, None] == det["labels"][None, :]) & (iou >= 0.99)
        close = (scores[:, None] - det["scores"][None, :].float()).abs() <= 1e-3
        return float((same & close).any(dim=1).float().mean())


@pytest.fixture(scope="session")
def d2() -> D2Goldens:
    """:class:`D2Goldens`: Detectron2's goldens and the converted detectors."""
    return D2Goldens()


@pytest.fixture(scope="session")
def tiny_detector() -> Callable[..., FasterRCNN]:
    """:func:`build_tiny_detector`: ``tiny_detector("c4" | "vgg" | "fpn", *overrides)``."""
    return build_tiny_detector


@pytest.fixture(scope="session")
def tiny_det() -> list[str]:
    """Overrides for a tiny ResNet-18-FPN detection run (:data:`TINY_DET`)."""
    return list(TINY_DET)


@pytest.fixture(scope="session")
def demo_data() -> Callable[[Path], list[str]]:
    """:func:`demo_data_overrides`: a generated demo set under a root as custom COCO sets."""
    return demo_data_overrides


@pytest.fixture(scope="session")
def tiny_cls() -> list[str]:
    """Overrides for a tiny ImageNet-style ResNet-18 classification run (:data:`TINY_R18`)."""
    return list(TINY_R18)


@pytest.fixture(scope="session")
def synthetic_data() -> Callable[[Path], list[str]]:
    """:func:`synthetic_cls_overrides`: a generated synthetic set under a root, by path."""
    return synthetic_cls_overrides


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster, and much faster on a shared, busy CPU (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu``-marked tests are skipped, with the reason shown, where CUDA is unavailable."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
