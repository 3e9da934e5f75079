#!/usr/bin/env python
"""Regenerate tests/goldens/detectron2/ from Detectron2's own code (not run by the tests).

    git clone https://github.com/facebookresearch/detectron2 /tmp/d2src
    pip install --target /tmp/d2deps --no-deps termcolor yacs tabulate cloudpickle \\
        "fvcore==0.1.5.post20221221" "iopath==0.1.9" portalocker
    PYTHONPATH=/tmp/d2src:/tmp/d2deps python tools/dev/d2_goldens.py --d2 /tmp/d2src

Detectron2 runs from source on the CPU (its compiled ``_C`` is only needed for deformable
convolutions). For R101-C4 and R50-FPN at reduced width (stem 4, bottleneck 4, res2 16; FPN
16 channels, fc 32) it builds the model from the model zoo's own YAML, gives it random weights
that behave like trained ones (each frozen BN's statistics measured on a synthetic image,
layer by layer; class scores and RPN logits spread), rounds every tensor to float16 (so the
``.pkl`` stored as float16 holds exactly what Detectron2 ran), writes it in the model zoo's
``.pkl`` format, loads it back through Detectron2's ``DetectionCheckpointer`` and records
``DefaultPredictor``'s detections on an image that needs no resize. The same trunks, renamed
to Caffe2 names with an ``fc1000``, are the MSRA-format files, loaded by Detectron2's Caffe2
name conversion, whose res2..res5 features are recorded. Last, Detectron2's
``ResizeShortestEdge`` on an image that does need a resize.

``--only train`` writes ``train_step.npz``: one training step of each model-zoo detector on
the committed ``.pkl`` weights, with sampler sizes of 10**6 so that every candidate anchor and
RoI is sampled (deterministic), on a batch of three images of different sizes (one without
objects): the inputs, Detectron2's four loss terms and every parameter's gradient
(``tests/test_train_parity.py`` puts detres's step beside it).

``--only recipes`` writes ``recipes.json``: the training recipe of each model-zoo config as
Detectron2's own config loader resolves it (``get_cfg`` + ``merge_from_file``: schedule,
optimizer, data, frozen stages, BN, sampling, proposal counts), which
``tests/test_recipes.py`` checks the ``coco_*_3x.yaml`` configs against.

``--only tta`` leaves every other golden as it is: it loads the committed ``.pkl`` files into
the model-zoo configs and records ``GeneralizedRCNNWithTTA``'s detections (``TTA_MIN_SIZES``,
``TTA_MAX_SIZE``, horizontal flip; a batch of two, so each batch is one scale and its flip,
as detres batches them) under ``golden["tta"]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "goldens" / "detectron2"
WIDTH = 4
MODELS = {
    "r101_c4": "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml",
    "r50_fpn": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
}
DET_IMAGE_HW = (160, 224)  # min_size_test 160: no resize
FEATURE_IMAGE_HW = (96, 128)
TTA_MIN_SIZES = (128, 160, 208)  # 160x224 -> 128x179, 160x224, 208x291
TTA_MAX_SIZE = 400


def image(hw: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth synthetic BGR uint8 image (blobs, not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (hw[0] // 16 + 2, hw[1] // 16 + 2, 3)).astype(np.float32)
    img = cv2.resize(coarse, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def d2_cfg(d2: Path, name: str):  # noqa: ANN201
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(d2 / "configs" / MODELS[name]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = WIDTH
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = WIDTH
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 4 * WIDTH
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.INPUT.MIN_SIZE_TEST = DET_IMAGE_HW[0]
    cfg.INPUT.MAX_SIZE_TEST = 256
    return cfg


@torch.no_grad()
def randomize(model: torch.nn.Module, img: np.ndarray, seed: int) -> None:
    """Calibrated random weights: frozen-BN statistics of their inputs on ``img``, residual
    branches scaled down (a random deep net is otherwise chaotic: float32 rounding alone
    moves its boxes), spread RPN logits and class scores; every tensor rounded to float16."""
    from detectron2.layers import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    for name, m in model.named_modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.2)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            if name.endswith("conv3.norm"):  # small residual branches: a well-conditioned
                m.weight.mul_(0.25)  # deep net, as trained ones are (not chaotic in float32)
    head = model.proposal_generator.rpn_head
    head.objectness_logits.weight.mul_(3.0)
    head.anchor_deltas.weight.mul_(0.3)
    pred = model.roi_heads.box_predictor
    pred.cls_score.weight.copy_(torch.randn(pred.cls_score.weight.shape, generator=g) * 0.3)
    pred.cls_score.bias.copy_(torch.randn(pred.cls_score.bias.shape, generator=g))
    pred.bbox_pred.weight.mul_(0.1)

    def stats(mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].float()
        mod.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        mod.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)

    hooks = [m.register_forward_pre_hook(stats) for m in model.modules()
             if isinstance(m, FrozenBatchNorm2d)]
    model.eval()
    x = torch.as_tensor(img.astype("float32").transpose(2, 0, 1))
    model([{"image": x, "height": img.shape[0], "width": img.shape[1]}])
    for h in hooks:
        h.remove()
    for t in list(model.state_dict().values()):
        if t.is_floating_point():
            t.copy_(t.half().float())


def to_caffe2(d2_state: dict[str, torch.Tensor], fc: np.ndarray) -> dict[str, np.ndarray]:
    """A D2 ResNet's tensors under MSRA / Caffe2 names, plus ``fc1000``. MSRA's batch norms are
    affine only (Detectron2 runs them with mean 0, variance 1): the calibrated statistics are
    folded into the affine terms, so the network computes what the calibrated one does."""
    d2_state = dict(d2_state)
    eps = 1e-5
    for k in [k for k in d2_state if k.endswith("norm.running_mean")]:
        base = k[: -len("running_mean")]
        m, v = d2_state[k].double(), d2_state[base + "running_var"].double()
        w, b = d2_state[base + "weight"].double(), d2_state[base + "bias"].double()
        d2_state[base + "weight"] = (w * (1 + eps) ** 0.5 / (v + eps).sqrt()).float()
        d2_state[base + "bias"] = (b - m * w / (v + eps).sqrt()).float()
    out: dict[str, np.ndarray] = {}
    for k, v in d2_state.items():
        k = k.replace("backbone.bottom_up.", "").replace("backbone.", "").replace("roi_heads.", "")
        a = v.numpy().astype(np.float16)
        if k.startswith("stem.conv1."):
            rest = k[len("stem.conv1."):]
            name = {"weight": "conv1_w", "norm.weight": "res_conv1_bn_s",
                    "norm.bias": "res_conv1_bn_b"}.get(rest)
        elif k.startswith("res") and k[3].isdigit() and "." in k:
            stage, block, part = k.split(".", 2)
            conv, _, rest = part.partition(".")
            branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c",
                      "shortcut": "branch1"}.get(conv)
            suffix = {"weight": "_w", "norm.weight": "_bn_s", "norm.bias": "_bn_b"}.get(rest)
            name = f"{stage}_{block}_{branch}{suffix}" if branch and suffix else None
        else:
            name = None
        if name is not None:
            out[name] = a
    out["fc1000_w"] = fc.astype(np.float16)
    out["fc1000_b"] = np.zeros(fc.shape[0], np.float16)
    return out


def tta_goldens(d2: Path) -> dict[str, object]:
    """``GeneralizedRCNNWithTTA`` on the committed model-zoo files and ``det_image.png``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import GeneralizedRCNNWithTTA, build_model

    img = cv2.imread(str(OUT / "det_image.png"))  # BGR, as Detectron2 reads it
    out: dict[str, object] = {"min_sizes": list(TTA_MIN_SIZES), "max_size": TTA_MAX_SIZE,
                              "flip": True}
    for name in MODELS:
        cfg = d2_cfg(d2, name)
        cfg.TEST.AUG.ENABLED = True
        cfg.TEST.AUG.MIN_SIZES = TTA_MIN_SIZES
        cfg.TEST.AUG.MAX_SIZE = TTA_MAX_SIZE
        cfg.TEST.AUG.FLIP = True
        model = build_model(cfg).eval()
        DetectionCheckpointer(model).load(str(OUT / f"{name}.pkl"))
        tta = GeneralizedRCNNWithTTA(cfg, model, batch_size=2)
        # uint8, as Detectron2's DatasetMapper gives it (ResizeTransform: PIL on uint8)
        x = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
        with torch.no_grad():
            inst = tta([{"image": x, "height": img.shape[0], "width": img.shape[1]}])[0]
        inst = inst["instances"]
        out[name] = {"boxes": inst.pred_boxes.tensor.tolist(), "scores": inst.scores.tolist(),
                     "classes": inst.pred_classes.tolist()}
        print(f"{name} TTA: {len(inst)} detections")
    return out


TRAIN_SIZES = ((160, 224), (128, 192), (160, 160))
TRAIN_BOXES = (4, 3, 0)


def train_batch(seed: int = 7) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(BGR uint8 image, boxes (M, 4) xyxy float32, classes (M,) 0-based) per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ((h, w), n) in enumerate(zip(TRAIN_SIZES, TRAIN_BOXES, strict=True)):
        xy = rng.uniform(0, 0.6, (n, 2)) * [w, h]
        wh = 20 + rng.uniform(0, 0.35, (n, 2)) * [w, h]
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        out.append((image((h, w), seed + i), boxes, rng.integers(0, 80, n).astype(np.int64)))
    return out


def train_goldens(d2: Path) -> None:
    """``train_step.npz``: see the module docstring."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    d2_nms = importlib.import_module("detectron2.layers.nms")  # the module, not the function
    batch = train_batch()
    arrays: dict[str, np.ndarray] = {}
    for i, (img, boxes, classes) in enumerate(batch):
        arrays[f"input/{i}/image"], arrays[f"input/{i}/boxes"] = img, boxes
        arrays[f"input/{i}/classes"] = classes
    for name in MODELS:
        cfg = d2_cfg(d2, name)
        cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 10**6
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 10**6
        model = build_model(cfg)
        DetectionCheckpointer(model).load(str(OUT / f"{name}.pkl"))
        model.train()
        inputs = []
        for img, boxes, classes in batch:
            inst = Instances(img.shape[:2], gt_boxes=Boxes(torch.from_numpy(boxes)),
                             gt_classes=torch.from_numpy(classes))
            inputs.append({"image": torch.from_numpy(np.ascontiguousarray(
                img.transpose(2, 0, 1))), "instances": inst})
        # fp32, then the same step under CPU bf16 autocast (what `amp: auto` runs on a CPU
        # with native bf16): how far Detectron2's own bf16 step is from its fp32 one is the
        # yardstick for detres's bf16 step (tests/test_train_parity.py)
        # Last, the model in float64: the exact step, free of fp32's rounding,
        # which sends a ReLU input within ~1e-6 of zero to either side (each such flip moves
        # the gradients below it by ~1/sqrt(activations of the layer): 0.5% at this width)
        for tag, amp, dtype in (("", False, torch.float32), ("bf16/", True, torch.float32),
                                ("f64/", False, torch.float64)):
            model.to(dtype).zero_grad(set_to_none=True)
            # Detectron2's boxes are float32 by design (`Boxes`, `apply_deltas`), as detres's
            # are: in the float64 pass its NMS gets the scores as float32 too, as detres's does
            keep = d2_nms.box_ops
            if dtype == torch.float64:
                nms = keep.batched_nms
                d2_nms.box_ops = SimpleNamespace(
                    batched_nms=lambda b, s, i, t, nms=nms: nms(b, s.to(b.dtype), i, t))
            try:
                with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    losses = model(inputs)
            finally:
                d2_nms.box_ops = keep
            sum(losses.values()).backward()
            for k, v in losses.items():
                arrays[f"{name}/{tag}loss/{k}"] = np.float64(v.item())
            for k, p in model.named_parameters():
                if p.grad is not None:
                    # float32 files, float64's too: its rounding (6e-8) is far below the test's
                    arrays[f"{name}/{tag}grad/{k}"] = p.grad.detach().float().numpy()
            print(f"{name} {tag or 'fp32 '}: "
                  + ", ".join(f"{k} {v.item():.6g}" for k, v in losses.items()))
    from detres.utils.device import cpu_line
    arrays["cpu"] = np.array(cpu_line())
    np.savez_compressed(OUT / "train_step.npz", **arrays)
    print(f"wrote {OUT / 'train_step.npz'}")


RECIPE_MODELS = {
    "coco_r50_c4_3x": "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "coco_r101_c4_3x": "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml",
    "coco_r50_fpn_3x": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "coco_r101_fpn": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
}
RECIPE_KEYS = (
    "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.GAMMA", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH",
    "SOLVER.MOMENTUM", "SOLVER.NESTEROV", "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM",
    "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_FACTOR",
    "SOLVER.WARMUP_METHOD", "SOLVER.CLIP_GRADIENTS.ENABLED", "SOLVER.REFERENCE_WORLD_SIZE",
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN",
    "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.RANDOM_FLIP", "INPUT.FORMAT",
    "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.DEPTH",
    "MODEL.RESNETS.NORM", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "MODEL.RPN.POSITIVE_FRACTION", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.RPN.NMS_THRESH",
    "MODEL.RPN.IOU_THRESHOLDS", "MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.RPN.SMOOTH_L1_BETA",
    "MODEL.RPN.BBOX_REG_WEIGHTS", "MODEL.RPN.LOSS_WEIGHT", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.IOU_THRESHOLDS",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    "TEST.DETECTIONS_PER_IMAGE", "DATASETS.TRAIN", "DATASETS.TEST",
)


def recipe_goldens(d2: Path) -> None:
    """``recipes.json``: see the module docstring."""
    from detectron2.config import get_cfg

    out = {"detectron2": "facebookresearch/detectron2 (model zoo YAMLs)", "models": {}}
    for ours, yaml_name in RECIPE_MODELS.items():
        cfg = get_cfg()
        cfg.merge_from_file(str(d2 / "configs" / yaml_name))
        values = {}
        for key in RECIPE_KEYS:
            v = cfg
            for part in key.split("."):
                v = getattr(v, part)
            values[key] = list(v) if isinstance(v, tuple | list) else v
        out["models"][ours] = {"yaml": yaml_name, "values": values}
    (OUT / "recipes.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT / 'recipes.json'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d2", type=Path, required=True,
                   help="the Detectron2 source tree (for its configs; import it via PYTHONPATH)")
    p.add_argument("--only", choices=["tta", "train", "recipes"],
                   help="regenerate only these goldens")
    a = p.parse_args()
    if a.only == "recipes":
        recipe_goldens(a.d2)
        return 0
    if a.only == "train":
        train_goldens(a.d2)
        return 0
    if a.only == "tta":
        golden = json.loads((OUT / "golden.json").read_text())
        golden["tta"] = tta_goldens(a.d2)
        (OUT / "golden.json").write_text(json.dumps(golden, indent=1))
        print(f"wrote {OUT / 'golden.json'}")
        return 0
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import transforms as T
    from detectron2.engine import DefaultPredictor
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone import build_resnet_backbone

    OUT.mkdir(parents=True, exist_ok=True)
    det_img = image(DET_IMAGE_HW, seed=1)
    feat_img = image(FEATURE_IMAGE_HW, seed=2)
    cv2.imwrite(str(OUT / "det_image.png"), det_img)
    cv2.imwrite(str(OUT / "feature_image.png"), feat_img)
    golden: dict[str, object] = {"width": WIDTH, "det_image_hw": DET_IMAGE_HW}
    features: dict[str, np.ndarray] = {}
    for i, (name, zoo_yaml) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        cfg = d2_cfg(a.d2, name)
        model = build_model(cfg)
        randomize(model, det_img, seed=10 + i)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        pkl = OUT / f"{name}.pkl"
        with open(pkl, "wb") as f:
            pickle.dump({"model": {k: v.numpy().astype(np.float16) for k, v in state.items()},
                         "__author__": "detres goldens (random, calibrated)"}, f, protocol=4)
        cfg.MODEL.WEIGHTS = str(pkl)
        predictor = DefaultPredictor(cfg)  # Detectron2's own loading and preprocessing
        inst = predictor(det_img)["instances"]
        golden[name] = {"zoo_config": zoo_yaml, "boxes": inst.pred_boxes.tensor.tolist(),
                        "scores": inst.scores.tolist(), "classes": inst.pred_classes.tolist()}
        print(f"{name}: {len(inst)} detections")
        # the same trunk as an MSRA ImageNet file, loaded by Detectron2's Caffe2 conversion
        fc = np.random.default_rng(i).normal(0, 0.05, (1000, 32 * WIDTH))  # res5: 32w channels
        trunk = {k: v for k, v in state.items() if "stem" in k or ".res" in k or
                 k.startswith("roi_heads.res5")}
        msra = to_caffe2(trunk, fc)
        depth = "101" if "101" in name else "50"
        with open(OUT / f"msra_R-{depth}.pkl", "wb") as f:
            pickle.dump(msra, f, protocol=4)
        bcfg = d2_cfg(a.d2, name)
        bcfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        backbone = build_resnet_backbone(bcfg, ShapeSpec(channels=3)).eval()
        DetectionCheckpointer(backbone).load(str(OUT / f"msra_R-{depth}.pkl"))
        mean = torch.tensor(bcfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
        std = torch.tensor(bcfg.MODEL.PIXEL_STD).view(3, 1, 1)
        x = (torch.as_tensor(feat_img.astype("float32").transpose(2, 0, 1)) - mean) / std
        with torch.no_grad():
            out = backbone(x[None])
        for k, v in out.items():
            features[f"R-{depth}/{k}"] = v[0].numpy()
    # Detectron2's ResizeShortestEdge on an image that needs a resize (PIL on uint8)
    big = image((240, 352), seed=3)
    aug = T.ResizeShortestEdge([160, 160], 256)
    resized = aug.get_transform(big).apply_image(big)
    cv2.imwrite(str(OUT / "resize_input.png"), big)
    cv2.imwrite(str(OUT / "resize_output.png"), resized)
    golden["resize"] = {"short": 160, "max_size": 256, "out_hw": list(resized.shape[:2])}
    np.savez_compressed(OUT / "msra_features.npz", **features)
    golden["tta"] = tta_goldens(a.d2)
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
