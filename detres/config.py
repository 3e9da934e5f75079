"""Typed configuration: dataclasses are the schema and the defaults, YAML files only override.

``load_config("coco_r101.yaml", ["solver.base_lr=0.01"])`` finds the file (a path, or the name
of a config shipped in the package, ``detres/configs``, from any folder), follows ``_base_``
inheritance, merges through OmegaConf's structured configs (so an unknown key or a wrong type
fails with the full key path), applies ``key=value`` overrides and returns a :class:`Config`
dataclass.

Defaults follow the published references (Detectron2's C4 settings, torchvision's Faster
R-CNN, the paper's ImageNet recipe) so experiment files stay short.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detres.utils.errors import InputError

#: the configs shipped with the package (a checkout's top-level ``configs/`` links here)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(InputError):
    """A config file or override that does not fit the schema."""


# ----------------------------------------------------------------------------- model


@dataclass
class BackboneCfg:
    name: str = "resnet50"  # a name in detres.modeling.backbones.BACKBONES
    # Variant switches; None keeps the registry entry's own default.
    stride_in_1x1: bool | None = None  # True: paper (MSRA) ResNet; False: torchvision v1.5
    shortcut: str | None = None  # "A" zero-pad identity | "B" projection on change | "C" all
    zero_init_residual: bool = False
    # Base width; None keeps the entry's default (64 ImageNet nets, 16 CIFAR nets).
    width_per_group: int | None = None
    # Weights: "" (random init), a torchvision weight file, or a pretrain_cls.py checkpoint.
    weights: str = ""
    norm: str = "BN"  # "BN" | "FrozenBN" (detection fine-tuning of a pretrained trunk)
    freeze_at: int = 0  # 0: nothing frozen; 1: stem; 2: stem + res2; ... (detection uses 2)


@dataclass
class AnchorCfg:
    sizes: list[list[int]] = field(default_factory=lambda: [[32, 64, 128, 256, 512]])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])


@dataclass
class RPNCfg:
    pre_nms_topk_train: int = 12000
    post_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 6000
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    bbox_reg_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    smooth_l1_beta: float = 0.0  # 0 -> L1 (Detectron2); 1/9 in torchvision's RPN
    loss_weight: float = 1.0


@dataclass
class ROIHeadsCfg:
    pooler: str = "ROIAlign"  # "ROIAlign" | "ROIPool" (the paper)
    pooler_resolution: int = 14  # 14 for C4 (res5 halves it to 7), 7 for VGG and FPN
    sampling_ratio: int = 0
    # RoIAlign's half-pixel offset: None keeps the family's reference (C4 and VGG: True,
    # Detectron2's ROIAlignV2; FPN: False, torchvision's MultiScaleRoIAlign)
    pooler_aligned: bool | None = None
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5  # RoIs with IoU in [bg_iou_thresh_lo, bg_iou_thresh) are bg
    bg_iou_thresh_lo: float = 0.0
    bbox_reg_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    smooth_l1_beta: float = 0.0
    fc_dim: int = 1024  # FPN box head
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100
    # The paper's COCO appendix (A), off by default. Box refinement (iterative localization,
    # test time only): each RoI's regressed box is pooled again for a new score and box, the
    # union NMSed at refine_nms_thresh, then box voting over boxes with IoU >= voting thresh.
    box_refinement: bool = False
    refine_nms_thresh: float = 0.3
    box_voting_thresh: float = 0.5
    # Global context (trained): the whole image box pooled and run through the box head, its
    # feature beside each region's before the predictor (new layers roi_heads.context_predictor).
    global_context: bool = False


@dataclass
class FPNCfg:
    out_channels: int = 256
    in_features: list[str] = field(default_factory=lambda: ["res2", "res3", "res4", "res5"])


@dataclass
class InputCfg:
    # Shorter side at train time: one value, or several for multi-scale training.
    min_size_train: list[int] = field(default_factory=lambda: [800])
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    # How the test image (and each training image) is resized: "torchvision"
    # (GeneralizedRCNNTransform) or "detectron2" (ResizeShortestEdge); see detres/preprocess.py.
    resize_rule: str = "torchvision"
    # What the network's first convolution expects: channel order "RGB" | "BGR", pixel
    # values scaled to [0, pixel_range] (1.0: torchvision's [0, 1]; 255.0: the MSRA / Caffe2 /
    # Detectron2 convention), then (x - pixel_mean) / pixel_std in those units.
    format: str = "RGB"
    pixel_range: float = 1.0
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    size_divisibility: int = 32
    hflip_prob: float = 0.5


@dataclass
class ModelCfg:
    # "classifier" (pretraining) or a detector: "faster_rcnn_c4" | "faster_rcnn_vgg" |
    # "faster_rcnn_fpn".
    arch: str = "classifier"
    # Where torchvision and Detectron2 differ in the detector's arithmetic: "torchvision" |
    # "detectron2" (anchors unrounded, at the levels' nominal strides; proposals and
    # detections kept when w, h > 0 instead of torchvision's minimum sizes; FPN level
    # assignment with Detectron2's epsilon; empty boxes dropped after the final rescale).
    rules: str = "torchvision"
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    num_classes: int = 1000  # classifier: classes; detector: foreground classes (K)
    anchors: AnchorCfg = field(default_factory=AnchorCfg)
    rpn: RPNCfg = field(default_factory=RPNCfg)
    roi_heads: ROIHeadsCfg = field(default_factory=ROIHeadsCfg)
    fpn: FPNCfg = field(default_factory=FPNCfg)
    input: InputCfg = field(default_factory=InputCfg)
    weights: str = ""  # whole-model checkpoint to start from (detres format)


# ------------------------------------------------------------------------------ data


@dataclass
class DatasetCfg:
    """A data set: a catalog name, or a custom COCO/VOC/ImageFolder/CIFAR set by path."""

    name: str = ""  # catalog name, e.g. "coco_2017_val"; or a label for a custom set
    format: str = ""  # "" (catalog) | coco | voc | yolo | imagefolder | cifar10 | cifar100 | ...
    path: str = ""  # COCO json / VOC year dir / ImageFolder split dir / CIFAR dir
    images: str = ""  # COCO image dir; a VOC folder's images when not found by themselves
    split: str = ""  # VOC image set (trainval, test), CIFAR train/test
    # A VOC folder without ImageSets/ (as LabelImg, CVAT, Roboflow write it): split "train" /
    # "val" holds out val_fraction of the images, drawn with split_seed (the same files
    # always give the same split); "" or "all": every image
    val_fraction: float = 0.0
    split_seed: int = 0
    # VOC class names in label order; [] reads classes.txt, else the names used in the
    # annotations (sorted), recorded here in OUT/config.yaml by the trainer
    classes: list[str] = field(default_factory=list)
    # image files left out of this set (data.bad_images=skip records the ones it left out here,
    # in OUT/config.yaml, so that evaluating that config leaves out the same files)
    exclude: list[str] = field(default_factory=list)


@dataclass
class ClsAugCfg:
    # "imagenet": scale aug (shorter side in [scale_min, scale_max]) + crop + flip;
    # "cifar": pad + crop + flip; "none": resize/center-crop only.
    kind: str = "imagenet"
    crop_size: int = 224
    scale_min: int = 256
    scale_max: int = 480
    test_resize: int = 256  # shorter side before the center crop at test time
    pad: int = 4  # CIFAR
    hflip: bool = True


@dataclass
class DataCfg:
    root: str = ""  # data root; "" -> $DETRES_DATA, else ./data in the current folder
    train: list[DatasetCfg] = field(
        default_factory=lambda: [DatasetCfg(name="synthetic_cls_train")]
    )
    test: list[DatasetCfg] = field(default_factory=lambda: [DatasetCfg(name="synthetic_cls_val")])
    num_workers: int = 2
    aspect_ratio_grouping: bool = True
    # Detection training order: "uniform" (every image once per epoch) | "repeat_factor"
    # (LVIS's repeat-factor sampling for imbalanced sets: an image whose rarest class is in
    # a fraction f < repeat_threshold of the images is drawn about sqrt(threshold / f) times
    # per epoch; LVIS and Detectron2 use 0.001 on ~100k images, a small set wants more)
    sampler: str = "uniform"
    repeat_threshold: float = 0.001
    filter_empty: bool = True  # detection: drop training images without objects
    use_difficult: bool = False  # VOC: keep difficult objects for training
    # Detection: a box partly outside its image is clipped (with a warning); true: an error.
    strict_boxes: bool = False
    # Detection: image files that cannot be used (missing, empty, undecodable, another size
    # than the annotation's), found by the check before iteration 0: "error" (one message
    # naming all of them, exit code 2) | "skip" (left out, logged, recorded in .exclude)
    bad_images: str = "error"
    cls_aug: ClsAugCfg = field(default_factory=ClsAugCfg)


# ---------------------------------------------------------------------------- solver


@dataclass
class SolverCfg:
    optimizer: str = "sgd"  # "sgd" | "adamw"
    base_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # weight decay on norm layers' parameters
    batch_size: int = 256  # images per iteration over all processes
    # Linear scaling rule: lr = base_lr * batch_size / reference_batch_size (0: no scaling).
    reference_batch_size: int = 0
    max_iter: int = 600_000
    schedule: str = "multistep"  # "multistep" | "plateau" | "cosine"
    steps: list[int] = field(default_factory=list)  # multistep: iterations of lr *= gamma
    gamma: float = 0.1
    plateau_patience: int = 3  # plateau: evaluations without improvement before decay
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    warmup_method: str = "linear"  # "linear" | "constant" (the paper's 0.01 for resnet110)
    clip_grad_norm: float = 0.0  # 0: off


# ----------------------------------------------------------------------------- train


@dataclass
class TrainCfg:
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    # "auto" (bf16 where the hardware runs it natively, else fp32 on CPU / fp16 on older GPUs;
    # see detres/utils/device.py) | "none" (fp32) | "bf16" | "fp16" (GPU, with a GradScaler)
    amp: str = "auto"
    seed: int = 0
    log_period: int = 20
    eval_period: int = 0  # iterations between evaluations; 0: only at the end
    checkpoint_period: int = 0  # iterations between checkpoints; 0: only at the end
    # TensorBoard event files in OUT/tensorboard beside metrics.jsonl: null (when the
    # tensorboard package is installed: the [tensorboard] extra) | true (required) | false
    tensorboard: bool | None = None
    # Early stopping: stop (exit 0) after this many evaluations without a better primary
    # metric (mAP@.5 for detection, top-1 error for classification); 0: off. The best
    # evaluation's weights are kept as model_best.pth either way.
    patience: int = 0
    channels_last: bool = True  # NHWC: faster convolutions on CPU (oneDNN) and tensor cores
    deterministic: bool = False
    # Signals that stop a run cleanly (every rank ends its step, rank 0 writes
    # checkpoint_last.pth, exit code 3): what SLURM / Kubernetes send before a kill, and
    # SLURM's --signal=USR1@<seconds> warning. [] keeps the default handlers (death).
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    # Seconds a collective may wait for the other ranks before the run ends with a message
    # (exit code 5) instead of hanging on a dead or stuck peer; torch's gloo default.
    dist_timeout_s: float = 1800.0


@dataclass
class TTACfg:
    """Test-time augmentation as Detectron2's ``GeneralizedRCNNWithTTA`` (boxes): each shorter
    side in ``min_sizes`` (and its horizontal flip), detections merged, NMSed per class."""

    enabled: bool = False
    min_sizes: list[int] = field(default_factory=lambda: [400, 500, 600, 700, 800, 900, 1000,
                                                          1100, 1200])  # Detectron2's TEST.AUG
    max_size: int = 4000
    flip: bool = True


@dataclass
class MultiScaleCfg:
    """The paper's multi-scale testing (appendix A, after SPPnet / Fast R-CNN): features on an
    image pyramid; each RoI pooled at the two adjacent scales around ``target_size`` and the
    two box-head features merged by maxout. Proposals at ``model.input.min_size_test``, or
    from every scale (``pyramid_proposals``), merged by NMS."""

    enabled: bool = False
    scales: list[int] = field(default_factory=lambda: [200, 400, 600, 800, 1000])
    max_size: int = 2000
    target_size: int = 224  # the RoI side (sqrt of its area) the scale pair brackets
    pyramid_proposals: bool = False


@dataclass
class EvaluationCfg:
    # COCO scoring: "auto" (faster-coco-eval when importable, else pycocotools) |
    # "faster_coco_eval" | "pycocotools" (the reference)
    coco_backend: str = "auto"
    # Precision of scoring and prediction (tools/eval.py, the trainer's evaluations,
    # tools/predict.py): "none" (fp32, the default: reproduces the published numbers; bf16
    # autocast moves a trained detector's mAP in the printed digits, see the README) |
    # "auto" | "bf16" | "fp16" as for train.amp. Training keeps train.amp.
    amp: str = "none"
    # Test-time switches of tools/eval.py, tools/predict.py and the trainer's evaluations
    tta: TTACfg = field(default_factory=TTACfg)
    multiscale: MultiScaleCfg = field(default_factory=MultiScaleCfg)


@dataclass
class Config:
    task: str = "cls"  # "cls" | "det"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    solver: SolverCfg = field(default_factory=SolverCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    evaluation: EvaluationCfg = field(default_factory=EvaluationCfg)
    # Figures the config reproduces, as published (printed beside ours by tools/eval.py and
    # train_det.py), only when the evaluated set (data.test[0]) is the catalog entry
    # ``published_on`` they were measured on.
    published: dict[str, float] = field(default_factory=dict)
    published_source: str = ""
    published_on: str = ""


# --------------------------------------------------------------------------- loading


def find_config(name_or_path: str | os.PathLike[str]) -> Path:
    """A path as given (relative to the current folder), else a config shipped with the package
    by name (with or without ``.yaml``; ``configs/`` in front is allowed, as a checkout spells
    it), so that ``--cfg coco_r101.yaml`` works from any folder."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.parts and p.parts[0] == "configs" and not p.is_absolute():
        p = Path(*p.parts[1:]) if len(p.parts) > 1 else p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    hits = sorted(CONFIG_DIR.rglob(p.name if p.suffix else f"{p.name}.yaml"))
    if len(hits) == 1:
        return hits[0]
    known = ", ".join(sorted(x.name for x in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} not found as a path or in {CONFIG_DIR}; known: {known}"
    )


def _read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping with its ``_base_`` files merged underneath (later wins)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ cycle through {[str(p) for p in _seen]}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for b in bases:
        bp = (path.parent / b) if not Path(b).is_absolute() else Path(b)
        if not bp.is_file():
            raise ConfigError(f"{path}: _base_ {b!r} not found (looked at {bp})")
        merged = _deep_merge(merged, _read_yaml(bp, _seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
    return f"key {key!r}: {msg}" if key else msg


def load_config(
    name_or_path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> Config:
    """Schema defaults <- YAML (with ``_base_``) <- ``key=value`` overrides, validated."""
    schema = OmegaConf.structured(Config)
    src = "defaults"
    try:
        if name_or_path is not None:
            path = find_config(name_or_path)
            src = str(path)
            schema = OmegaConf.merge(schema, OmegaConf.create(_read_yaml(path)))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            src = f"override {overrides}"
            schema = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(schema)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{src}: {_describe(e)}") from None
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


_CHOICES = {
    "task": ("cls", "det"),
    "model.arch": ("classifier", "faster_rcnn_c4", "faster_rcnn_vgg", "faster_rcnn_fpn"),
    "model.backbone.norm": ("BN", "FrozenBN"),
    "model.roi_heads.pooler": ("ROIAlign", "ROIPool"),
    "model.input.resize_rule": ("torchvision", "detectron2"),
    "model.input.format": ("RGB", "BGR"),
    "model.rules": ("torchvision", "detectron2"),
    "solver.optimizer": ("sgd", "adamw"),
    "solver.schedule": ("multistep", "plateau", "cosine"),
    "solver.warmup_method": ("linear", "constant"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "data.cls_aug.kind": ("imagenet", "cifar", "none"),
    "data.bad_images": ("error", "skip"),
    "data.sampler": ("uniform", "repeat_factor"),
    "evaluation.coco_backend": ("auto", "faster_coco_eval", "pycocotools"),
    "evaluation.amp": ("none", "auto", "bf16", "fp16"),
}


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express; errors name the key."""
    for key, choices in _CHOICES.items():
        v: Any = cfg
        for part in key.split("."):
            v = getattr(v, part)
        if v not in choices:
            raise ConfigError(f"key {key!r}: {v!r} is not one of {list(choices)}")
    sc = cfg.model.backbone.shortcut
    if sc is not None and sc not in ("A", "B", "C"):
        raise ConfigError(f"key 'model.backbone.shortcut': {sc!r} is not one of A, B, C")
    if not 0 < cfg.data.repeat_threshold <= 1:
        raise ConfigError(f"key 'data.repeat_threshold': must be in (0, 1], got "
                          f"{cfg.data.repeat_threshold}")
    if cfg.train.patience < 0:
        raise ConfigError(f"key 'train.patience': must be >= 0, got {cfg.train.patience}")
    if cfg.solver.batch_size <= 0:
        raise ConfigError("key 'solver.batch_size': must be positive")
    if cfg.solver.steps != sorted(cfg.solver.steps):
        raise ConfigError(f"key 'solver.steps': must be increasing, got {cfg.solver.steps}")
    if cfg.task == "det" and cfg.model.arch == "classifier":
        raise ConfigError("key 'model.arch': task 'det' needs a faster_rcnn_* arch")


def published_figures(cfg: Config) -> dict[str, Any]:
    """``{"published": {...}, "source": "..."}`` for :func:`detres.evaluation.format_table`
    when ``data.test[0]`` is the set the config's published figures were measured on, else
    empty (a recipe copied onto another data set prints no one else's targets)."""
    test = cfg.data.test[0] if cfg.data.test else None
    if not cfg.published or test is None or test.format or test.name != cfg.published_on:
        return {}
    return {"published": dict(cfg.published), "source": cfg.published_source}


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain types only, for checkpoints and the output directory."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict`, validated against the schema."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))
    except OmegaConfBaseException as e:
        raise ConfigError(f"stored config: {_describe(e)}") from None
    assert isinstance(cfg, Config)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, out_dir: str | os.PathLike[str]) -> Path:
    """Write the resolved config as ``config.yaml`` in the output directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(dump_yaml(cfg))
    os.replace(tmp, path)
    return path


def config_summary(path: str | os.PathLike[str], width: int = 72) -> str:
    """The first line of a config file's opening comment, cut to ``width`` (``detres configs``)."""
    first = Path(path).read_text().split("\n", 1)[0]
    text = first.lstrip("#").strip() if first.startswith("#") else ""
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def data_root(cfg: Config | None = None) -> Path:
    """Where data sets are found (and the demo sets generated): ``data.root``, else
    ``$DETRES_DATA``, else ``./data`` under the folder the command runs in; never inside the
    installed package."""
    if cfg is not None and cfg.data.root:
        return Path(cfg.data.root)
    env = os.environ.get("DETRES_DATA")
    return Path(env) if env else Path.cwd() / "data"
