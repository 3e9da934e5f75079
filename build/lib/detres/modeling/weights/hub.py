"""Weights by name: a config's ``model.weights`` / ``model.backbone.weights`` as a name or URL.

:func:`resolve_weights` turns what a user writes into a local detres-readable file; it is the
one place that downloads, and :func:`load_pretrained` (the one step that puts a config's
weights into a built model) calls it. Builders never download.

=====================================================  ========================================
spelling                                               what it is
=====================================================  ========================================
``torchvision://resnet50``                             a torchvision model's ``DEFAULT`` weights
``torchvision://ResNet50_Weights.IMAGENET1K_V1``,      one of torchvision's weight enums (the
``ResNet50_Weights.IMAGENET1K_V1``                     ImageNet classifiers; the detector
                                                       ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``)
``detectron2://ImageNetPretrained/MSRA/R-101.pkl``     Detectron2's paths: MSRA's ImageNet ResNets
``detectron2://COCO-Detection/.../model_final_*.pkl``  and its model-zoo detectors
``https://...``, ``http://...``, ``file://...``        any file in a format detres reads
a path                                                 a file on disk (``.pkl``: converted)
=====================================================  ========================================

Downloads go once into torch's hub cache, ``$TORCH_HOME/hub/checkpoints`` (where torchvision
keeps the same files, so weights torchvision already fetched are not fetched again),
Detectron2's under ``detectron2/<path>``, with a progress bar, checked against the SHA-256
prefix in the file name where the source publishes one (:mod:`detres.utils.download`).
Files in another toolkit's format are converted by the converters of this package
(:mod:`~detres.modeling.weights.zoo`, :mod:`~detres.modeling.weights.torchvision`) and the
converted copy is cached beside the download as ``<name>.detres-<key>.pth``, ``key`` a hash
of the model config it was converted for. ``$DETRES_TORCHVISION_URL`` and
``$DETRES_DETECTRON2_URL`` point the two prefixes at a mirror.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model_weights, get_weight

from detres.config import Config, ModelCfg, to_dict
from detres.modeling.weights.core import LoadReport, WeightsError, input_spec, load_weights
from detres.modeling.weights.torchvision import torchvision_frcnn_checkpoint
from detres.modeling.weights.zoo import detectron2_checkpoint, msra_checkpoint, read_zoo_file
from detres.utils.download import DownloadError, download, hash_from_name
from detres.utils.io import atomic_save, read_checkpoint

TORCHVISION_URL = "https://download.pytorch.org/models/"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
_ENUM = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
#: torchvision detector weights detres can convert, with the BN eps they were trained with
_TV_DETECTORS = {"FasterRCNN_ResNet50_FPN_Weights": 0.0}


def cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch.hub's and torchvision's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_name(spec: str) -> bool:
    """Whether ``spec`` is a name or URL rather than a path."""
    return spec.startswith(("torchvision://", "detectron2://", "https://", "http://",
                            "file://")) or bool(_ENUM.match(spec))


def _torchvision_weights(name: str) -> tuple[str, str]:
    """(URL, the enum's class name) of a torchvision model name or weight enum."""
    try:
        w = get_weight(name) if "." in name else get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError) as e:
        raise WeightsError(f"weights {name!r}: not a torchvision model or weight name "
                           f"({e}); e.g. resnet50, ResNet50_Weights.IMAGENET1K_V1") from None
    url = str(w.url)
    mirror = os.environ.get("DETRES_TORCHVISION_URL", TORCHVISION_URL)
    if url.startswith(TORCHVISION_URL):
        url = mirror.rstrip("/") + "/" + url[len(TORCHVISION_URL):]
    return url, type(w).__name__


def locate(spec: str) -> tuple[str, Path, str | None, str]:
    """A name -> (URL, cache path, SHA-256 prefix or None, kind); ``kind`` is ``auto``
    (decided by the file's contents) or a torchvision enum class name."""
    kind = "auto"
    if spec.startswith("torchvision://") or _ENUM.match(spec):
        url, kind = _torchvision_weights(spec.removeprefix("torchvision://"))
        dst = cache_dir() / url.rsplit("/", 1)[-1]
    elif spec.startswith("detectron2://"):
        path = spec.removeprefix("detectron2://").lstrip("/")
        base = os.environ.get("DETRES_DETECTRON2_URL", DETECTRON2_URL)
        url = base.rstrip("/") + "/" + path
        dst = cache_dir() / "detectron2" / path
    else:
        url = spec
        dst = cache_dir() / url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return url, dst, hash_from_name(url), kind


def _zoo_kind(keys: list[str]) -> str | None:
    """Which converter a state dict's names call for: ``msra``, ``detectron2``,
    ``torchvision_frcnn`` or None (a detres checkpoint or a torchvision classifier)."""
    if any(k in ("conv1_w", "res_conv1_bn_s") or k.startswith("res2_0_branch") for k in keys):
        return "msra"
    if any(k.startswith(("proposal_generator.", "backbone.bottom_up.", "backbone.res2.",
                         "backbone.stem.")) for k in keys):
        return "detectron2"
    if any(k.startswith("backbone.body.") for k in keys):
        return "torchvision_frcnn"
    return None


def _peek_kind(path: Path) -> str | None:
    if path.suffix == ".pkl":
        return _zoo_kind(list(read_zoo_file(path)))
    obj = read_checkpoint(path)
    state = obj.get("model") if isinstance(obj.get("model"), dict) else obj
    return _zoo_kind([str(k) for k in state])


def _conversion_key(model_cfg: ModelCfg) -> str:
    m = copy.deepcopy(model_cfg)
    m.weights = m.backbone.weights = ""
    blob = json.dumps(to_dict(Config(model=m))["model"], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _converted(raw: Path, kind: str, model_cfg: ModelCfg) -> Path:
    """``raw`` converted for ``model_cfg`` (cached beside it in the hub cache), or ``raw``
    itself when it needs no conversion."""
    if kind.endswith("_Weights"):
        if kind not in _TV_DETECTORS:
            return raw  # a torchvision classifier: torchvision names, read as it is
        kind = "torchvision_frcnn"
    elif kind == "auto":
        kind = _peek_kind(raw) or ""
    if not kind:
        return raw
    folder = raw.parent if raw.resolve().is_relative_to(cache_dir().resolve()) else cache_dir()
    out = folder / f"{raw.stem}.detres-{_conversion_key(model_cfg)}.pth"
    if out.is_file():
        return out
    cfg = Config(task="det" if model_cfg.arch != "classifier" else "cls",
                 model=copy.deepcopy(model_cfg))
    try:
        if kind == "msra":
            ckpt = msra_checkpoint(raw, cfg)
        elif kind == "detectron2":
            ckpt = detectron2_checkpoint(raw, cfg)
        else:  # torchvision's COCO detector: the 80 COCO classes; fine-tuning re-initializes
            cfg.model.num_classes = 80
            ckpt = torchvision_frcnn_checkpoint(read_checkpoint(raw), cfg,
                                                src_bn_eps=_TV_DETECTORS[
                                                    "FasterRCNN_ResNet50_FPN_Weights"])
    except (KeyError, ValueError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{raw} ({kind} weights) does not convert into this config's "
                           f"model: {e.args[0] if e.args else e}") from None
    atomic_save(ckpt, out)
    return out


def resolve_weights(spec: str, model_cfg: ModelCfg, *, progress: bool = True) -> str:
    """A local file detres reads for ``spec`` (a name, URL or path; see the module
    docstring): downloaded and converted as needed. A path is returned as it is unless it is
    a model-zoo ``.pkl``."""
    if not spec:
        return spec
    if not is_name(spec):
        path = Path(spec)
        if path.suffix == ".pkl" and path.is_file():
            return str(_converted(path, "auto", model_cfg))
        return spec
    url, dst, sha, kind = locate(spec)
    try:
        raw = download(url, dst, hash_prefix=sha, progress=progress)
    except DownloadError as e:
        raise WeightsError(f"weights {spec!r}: {e}") from None
    return str(_converted(raw, kind, model_cfg))


def load_pretrained(model: nn.Module, model_cfg: ModelCfg, *,
                    finetune: bool = False) -> LoadReport | None:
    """The weights a config names, into a freshly built model: ``model.weights`` (the whole
    model: strict, or with the ``trunk`` policy when ``finetune``, i.e. training may change
    the class count), else ``model.backbone.weights`` (a classification trunk, ``trunk``
    policy). Names and URLs are resolved first (:func:`resolve_weights`). Nothing to load:
    None."""
    expect = input_spec(model_cfg.input)
    if model_cfg.weights:
        return load_weights(model, resolve_weights(model_cfg.weights, model_cfg),
                            policy="trunk" if finetune else "strict", expect_input=expect)
    if model_cfg.backbone.weights:
        return load_weights(model, resolve_weights(model_cfg.backbone.weights, model_cfg),
                            policy="trunk", expect_input=expect)
    return None
