"""The model zoos users already have: MSRA's ImageNet ResNets (the paper's own, Caffe2 names,
``ImageNetPretrained/MSRA/R-50.pkl``) and Detectron2's detectors (``model_final_*.pkl``, or
its training checkpoints ``.pth``), as detres checkpoints.

* Reading: ``.pkl`` files are pickles, read by :class:`detres.utils.io.RestrictedUnpickler`
  (numpy arrays and plain containers only; a pickle naming anything else is refused before
  any of it runs); ``.pth`` files with ``torch.load(..., weights_only=True)``.
* Names, MSRA -> torchvision's (what detres' classifiers use): ``conv1_w`` -> ``conv1.weight``,
  ``res_conv1_bn_{s,b}`` -> ``bn1.{weight,bias}``, ``res{R}_{B}_branch2{a,b,c}_{w,bn_s,bn_b}``
  -> ``layer{R-1}.{B}.{conv,bn}{1,2,3}``, ``..._branch1_*`` -> ``downsample.{0,1}``,
  ``fc1000_{w,b}`` -> ``fc``. The MSRA batch norms are affine only; as Detectron2 does, their
  statistics are mean 0 and variance 1.
* Names, Detectron2 -> detres: ``backbone[.bottom_up].stem.conv1`` / ``res{R}.{B}.conv{N}`` /
  ``.shortcut`` / ``.norm`` -> the ResNet's torchvision names, placed by the detector's
  ``trunk_keys`` (so C4's ``roi_heads.res5`` lands in ``roi_heads.box_head.res5``);
  ``backbone.fpn_lateral{L}`` / ``fpn_output{L}`` -> ``neck.inner_blocks`` / ``layer_blocks``;
  ``proposal_generator.rpn_head.*`` -> ``rpn.head.*`` (anchor channels permuted from
  Detectron2's size-major order to torchvision's ratio-major one when a level has several
  sizes); ``roi_heads.box_head.fc{1,2}`` -> ``fc6``/``fc7``; ``roi_heads.box_predictor``: the
  background logit moves from Detectron2's last row to detres' first, the class-specific
  deltas (no background) keep their layout.
* A key that maps nowhere, or a model key no file key fills, is an error listing them.
* The checkpoint records what the network expects of its input (``meta["input"]``: BGR,
  0..255, MSRA's mean, std 1), so that loading it into a config that normalizes differently
  is an error naming both.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detres.config import Config, to_dict
from detres.modeling.backbones import build_backbone
from detres.modeling.faster_rcnn import FasterRCNN, build_detector
from detres.modeling.weights.core import (
    WeightsError,
    describe_input,
    input_spec,
    load_weights,
    same_input,
    weights_from_dict,
)
from detres.modeling.weights.torchvision import coco_layout
from detres.utils.io import load_restricted_pickle, read_checkpoint

#: what MSRA's ResNets and Detectron2's detectors expect: BGR pixels in 0..255, MSRA's mean
MSRA_INPUT = {"format": "BGR", "pixel_range": 255.0,
              "pixel_mean": [103.530, 116.280, 123.675], "pixel_std": [1.0, 1.0, 1.0]}
_SHOW = 8


def read_zoo_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a model-zoo file: a ``.pkl`` (``{"model": ...}``, ``{"blobs": ...}`` or a
    flat dict of numpy arrays) or a Detectron2 training checkpoint ``.pth``."""
    path = Path(path)
    if path.suffix == ".pkl":
        obj = load_restricted_pickle(path, encoding="latin1")
    else:
        obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    for key in ("model", "blobs"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, Tensor):
            continue  # "__author__", "matching_heuristics", ...
        out[str(k)] = v.float() if v.is_floating_point() else v
    if not out:
        raise WeightsError(f"{path}: no arrays found (is it a model-zoo file?)")
    return out


def _fail(path: str | Path, what: str, keys: list[str]) -> WeightsError:
    shown = ", ".join(keys[:_SHOW]) + (f" ... ({len(keys)} in all)" if len(keys) > _SHOW else "")
    return WeightsError(f"{path}: {what}: {shown}")


# ----------------------------------------------------------------------------- MSRA

_MSRA_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(2a|2b|2c|1)_(w|bn_s|bn_b)$")
_BRANCH = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3"),
           "1": ("downsample.0", "downsample.1")}
_AFFINE = {"bn_s": "weight", "bn_b": "bias"}


def msra_to_torchvision(state: Mapping[str, Tensor], *, source: str = "MSRA file"
                        ) -> dict[str, Tensor]:
    """MSRA / Caffe2 ResNet names -> torchvision's; BN statistics mean 0, variance 1."""
    out: dict[str, Tensor] = {}
    unknown = []
    for k, v in state.items():
        if k.endswith("_momentum"):  # Caffe2 optimizer state
            continue
        m = _MSRA_BLOCK.match(k)
        if k == "conv1_w":
            out["conv1.weight"] = v
        elif k in ("res_conv1_bn_s", "res_conv1_bn_b"):
            out["bn1." + _AFFINE[k[-4:]]] = v
        elif k in ("fc1000_w", "fc1000_b"):
            out["fc.weight" if k.endswith("_w") else "fc.bias"] = v
        elif m:
            stage, block, branch, kind = m.groups()
            conv, bn = _BRANCH[branch]
            prefix = f"layer{int(stage) - 1}.{block}."
            out[prefix + (f"{conv}.weight" if kind == "w" else f"{bn}.{_AFFINE[kind]}")] = v
        else:
            unknown.append(k)
    if unknown:
        raise _fail(source, "keys that are not MSRA ResNet names", unknown)
    for k in [k for k in out if k.endswith(".weight") and (k.startswith("bn1") or ".bn" in k
                                                           or "downsample.1" in k)]:
        base = k[: -len("weight")]
        out[base + "running_mean"] = torch.zeros_like(out[k])
        out[base + "running_var"] = torch.ones_like(out[k])
    return out


# ------------------------------------------------------------------------ Detectron2

_D2_RESNET = re.compile(
    r"^(?:backbone\.(?:bottom_up\.)?|roi_heads\.)"
    r"(?:(stem)\.conv1\.(weight|norm\.\w+)|res(\d)\.(\d+)\.(conv\d|shortcut)\.(weight|norm\.\w+))$")
_D2_FPN = re.compile(r"^backbone\.fpn_(lateral|output)(\d)\.(weight|bias)$")
_DROP = re.compile(r"(^pixel_(mean|std)$|anchor_generator\.)")


def _resnet_name(m: re.Match[str]) -> str:
    stem, stem_part, stage, block, conv, part = m.groups()
    if stem:
        return "conv1.weight" if stem_part == "weight" else "bn1." + stem_part[len("norm."):]
    prefix = f"layer{int(stage) - 1}.{block}."
    if conv == "shortcut":
        return prefix + ("downsample.0.weight" if part == "weight"
                         else "downsample.1." + part[len("norm."):])
    n = conv[-1]
    return prefix + (f"conv{n}.weight" if part == "weight" else f"bn{n}." + part[len("norm."):])


def _anchor_permutation(model: FasterRCNN) -> Tensor | None:
    """detres anchor index -> Detectron2 anchor index, when a level has several sizes."""
    gen = model.rpn.anchor_generator
    sizes, ratios = len(gen.sizes[0]), len(gen.aspect_ratios)
    if sizes == 1:
        return None
    # detres (torchvision): a = r * sizes + s; Detectron2: a' = s * ratios + r
    return torch.tensor([(a % sizes) * ratios + a // sizes for a in range(sizes * ratios)])


def detectron2_to_detres(state: Mapping[str, Tensor], model: FasterRCNN, *,
                         source: str = "Detectron2 file") -> dict[str, Tensor]:
    """Detectron2 ``GeneralizedRCNN`` names -> the state dict of ``model`` (its arch and
    sizes must be the file's: see the ``coco_*_3x.yaml`` configs)."""
    out: dict[str, Tensor] = {}
    unknown = []
    fpn_index = ({f: i for i, f in enumerate(model.neck.in_features)}
                 if model.neck is not None else {})
    perm = _anchor_permutation(model)
    for k, v in state.items():
        if _DROP.search(k):
            continue
        m = _D2_RESNET.match(k)
        f = _D2_FPN.match(k)
        if m:
            name = _resnet_name(m)
            if name not in model.trunk_keys:
                unknown.append(k)
                continue
            out[model.trunk_keys[name]] = v
        elif f and f"res{f.group(2)}" in fpn_index:
            blocks = "inner_blocks" if f.group(1) == "lateral" else "layer_blocks"
            out[f"neck.{blocks}.{fpn_index['res' + f.group(2)]}.0.{f.group(3)}"] = v
        elif k.startswith("proposal_generator.rpn_head."):
            rest = k[len("proposal_generator.rpn_head."):]
            if perm is not None and rest.startswith("objectness_logits."):
                v = v[perm]
            elif perm is not None and rest.startswith("anchor_deltas."):
                v = v.reshape(len(perm), 4, *v.shape[1:])[perm].reshape(v.shape)
            out["rpn.head." + rest] = v
        elif k.startswith("roi_heads.box_head.fc"):
            n = {"1": "6", "2": "7"}.get(k[len("roi_heads.box_head.fc")])
            if n is None:
                unknown.append(k)
                continue
            out[f"roi_heads.box_head.fc{n}" + k[len("roi_heads.box_head.fc1"):]] = v
        elif k.startswith("roi_heads.box_predictor.cls_score."):
            # (K + 1) rows, background last -> background first
            out[k] = torch.cat([v[-1:], v[:-1]])
        elif k.startswith("roi_heads.box_predictor.bbox_pred."):
            out[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise _fail(source, "keys with no place in the configured detector (another arch, or "
                    "a head detres does not have?)", unknown)
    return out


def file_input_spec(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """MSRA's convention, with the mean and std a Detectron2 file stores, if it does."""
    spec = copy.deepcopy(MSRA_INPUT)
    for key in ("pixel_mean", "pixel_std"):
        if key in state:
            spec[key] = [float(v) for v in state[key].flatten()]
    return spec


def _check_config_input(cfg: Config, spec: dict[str, Any], source: str) -> None:
    if not same_input(input_spec(cfg.model.input), spec):
        raise WeightsError(
            f"{source} expects input {describe_input(spec)} but the config gives "
            f"{describe_input(input_spec(cfg.model.input))}; use a config with the same "
            "model.input (e.g. configs/_base_/detectron2_input.yaml)")


def msra_checkpoint(path: str | Path, cfg: Config) -> dict[str, Any]:
    """A detres classifier checkpoint from an MSRA ``R-50.pkl`` / ``R-101.pkl``, checked by
    loading it strictly into the backbone ``cfg`` describes (with ``fc1000`` when the file has
    it and the config's ``model.num_classes`` is 1000; without it, a trunk)."""
    state = msra_to_torchvision(read_zoo_file(path), source=str(path))
    _check_config_input(cfg, MSRA_INPUT, str(path))
    cfg = copy.deepcopy(cfg)
    cfg.model.weights = cfg.model.backbone.weights = ""
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0
    cfg.model.num_classes = num_classes or cfg.model.num_classes
    model = build_backbone(cfg.model.backbone, num_classes=num_classes)
    ckpt = {"model": state, "config": to_dict(cfg),
            "meta": {"input": MSRA_INPUT, "source": f"msra:{Path(path).name}", "task": "cls"}}
    load_weights(model, weights_from_dict(ckpt, source=str(path)), policy="strict")
    return ckpt


def detectron2_checkpoint(path: str | Path, cfg: Config) -> dict[str, Any]:
    """A detres detector checkpoint from a Detectron2 COCO detector (``model_final_*.pkl`` or
    a training ``.pth``), checked by loading it strictly into the detector of ``cfg`` (a
    ``coco_*_3x.yaml`` config: the same arch, widths and input convention)."""
    raw = read_zoo_file(path)
    spec = file_input_spec(raw)
    _check_config_input(cfg, spec, str(path))
    cfg = copy.deepcopy(cfg)
    cfg.model.weights = cfg.model.backbone.weights = ""
    k = "roi_heads.box_predictor.cls_score.bias"
    if k not in raw:
        raise WeightsError(f"{path}: no {k!r}: not a Detectron2 Faster R-CNN")
    cfg.model.num_classes = int(raw[k].shape[0]) - 1
    model = build_detector(cfg)
    state = detectron2_to_detres(raw, model, source=str(path))
    meta: dict[str, Any] = {"input": spec, "source": f"detectron2:{Path(path).name}",
                            "task": "det"}
    if cfg.model.num_classes == 80:  # the COCO model zoo: contiguous ids -> COCO ids
        ids, names = coco_layout()
        meta.update(category_ids=ids, class_names=names)
    ckpt = {"model": state, "config": to_dict(cfg), "meta": meta}
    load_weights(model, weights_from_dict(ckpt, source=str(path)), policy="strict")
    return ckpt

