"""Reading weight files, mapping their keys onto a model, and the loading policy.

Every weight file detres reads goes through here: torchvision weight files, ``pretrain_cls.py``
and ``train_det.py`` checkpoints, converted detector checkpoints. Builders never read files;
:func:`~detres.modeling.weights.hub.load_pretrained` is the one explicit step that puts a
config's weights into a model.

**Reading** (:func:`read_weights`): ``torch.load(..., weights_only=True)``; a detres checkpoint
``{"model": state, "config": {...}, "meta": {...}}``, a ``{"state_dict": ...}`` file or a bare
state dict; a DDP ``module.`` prefix is removed. Class names / category ids found at the top
level (converter files) or under ``meta`` (trainer checkpoints) become ``meta``.

**Key mapping**: a classifier's state dict (torchvision names: ``conv1``, ``layer1``..,
``features.N``, ``classifier.N``, ``fc``) loads into a detector through the detector's own
``trunk_keys`` table (``FasterRCNN``: e.g. C4 maps ``layer4.*`` to
``roi_heads.box_head.res5.*``, everything else to ``backbone.*``); the classifier's head
(``fc`` / ``classifier.6``) is not part of any detector. A detector's ``backbone.*`` keys
are read through the same table, so checkpoints written before res5 / fc6-fc7 moved into
the box heads still load.

**Policies** (:func:`load_weights`):

* ``"strict"``: every model tensor comes from the file and every file tensor is used (names
  and shapes); the evaluation, prediction and ``--resume`` path.
* ``"trunk"``: the trunk must fit exactly; the parts a new task re-initializes may be missing
  or of another shape: a classifier's head (``fc`` for another class count, or none), a
  detector's box predictor (a COCO detector fine-tuned to 6 classes), global context's new
  layers (``roi_heads.context_predictor``, a detector trained without it), and everything a
  classification trunk does not have (FPN, RPN, box predictor). One log line says what was
  re-initialized and why.
* ``"partial"``: whatever fits by name and shape is loaded, the rest listed in a warning.

Errors are :class:`WeightsError` (a ``ValueError``), naming the file and the first offending
keys; a missing file is ``FileNotFoundError``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from detres.modeling.backbones import BACKBONES, builder_options
from detres.modeling.faster_rcnn import FasterRCNN
from detres.utils.errors import InputError
from detres.utils.io import CheckpointReadError, read_checkpoint

LOG = logging.getLogger("detres")

_SHOW = 5  # how many offending keys an error names
_DETECTOR_ROOTS = ("backbone.", "neck.", "rpn.", "roi_heads.")
# torchvision's ResNet files, e.g. resnet50-0676ba61.pth / resnet50-11ad3fa6.pth.
_TORCHVISION_RESNET = re.compile(r"^(resnet|resnext|wide_resnet)\d+.*-[0-9a-f]{8}\.pth$")
POLICIES = ("strict", "trunk", "partial")


class WeightsError(InputError):
    """A weight file that cannot be read or does not fit the model; names the file."""


@dataclass
class Weights:
    """A state dict and what is known about it."""

    source: str  # the file (or a label), for messages
    state: dict[str, Tensor]
    config: dict[str, Any] | None = None  # the detres config it was trained with, if stored
    meta: dict[str, Any] = field(default_factory=dict)  # class_names, category_ids, ...
    path: Path | None = None


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    source: str
    loaded: int
    reinitialized: list[str]  # model parts left at their initialization
    unused: list[str]  # file parts not loaded (a classifier's head)


def read_weights(path: str | Path) -> Weights:
    """Read a weight file safely (see the module docstring for the formats)."""
    try:
        obj = read_checkpoint(path)
    except CheckpointReadError as e:
        raise WeightsError(str(e)) from e
    w = weights_from_dict(obj, source=f"weights file {str(path)!r}")
    w.path = Path(path)
    return w


def weights_from_dict(obj: Mapping[str, Any], *, source: str) -> Weights:
    """:class:`Weights` from an in-memory checkpoint dict or state dict."""
    config: dict[str, Any] | None = None
    meta: dict[str, Any] = {}
    if isinstance(obj.get("model"), Mapping):
        state = obj["model"]
        config = obj["config"] if isinstance(obj.get("config"), dict) else None
        meta = dict(obj["meta"]) if isinstance(obj.get("meta"), dict) else {}
        for key in ("class_names", "category_ids", "input"):  # converter files: top level
            if key in obj and key not in meta:
                meta[key] = obj[key]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad or not state:
        keys = sorted(map(str, obj))
        raise WeightsError(
            f"{source} is neither a state dict nor a detres checkpoint (top-level keys: "
            f"{keys[:_SHOW]}{' ...' if len(keys) > _SHOW else ''})"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return Weights(source=source, state=dict(state), config=config, meta=meta)


# ----------------------------------------------------------------------- key mapping


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _is_detector_state(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(_DETECTOR_ROOTS) for k in state)


def _map_trunk_key(model: FasterRCNN, key: str) -> str | None:
    """A classifier key -> the detector's key (``FasterRCNN.trunk_keys``), or None for the
    classifier's own head; an unknown key stays under ``backbone.`` (reported unexpected)."""
    if key.startswith(model.trunk_head + "."):
        return None
    return model.trunk_keys.get(key, "backbone." + key)


def _map_keys(model: nn.Module, w: Weights) -> tuple[dict[str, Tensor], list[str], bool]:
    """The file's tensors under the model's names, the file's parts no detector has (a
    classifier's head), and whether the file is a classification trunk for a detector."""
    if not isinstance(model, FasterRCNN):
        return dict(w.state), [], False
    trunk_only = not _is_detector_state(w.state)
    out: dict[str, Tensor] = {}
    dropped: set[str] = set()
    for k, v in w.state.items():
        if trunk_only or k.startswith("backbone."):
            name = _map_trunk_key(model, k if trunk_only else k.removeprefix("backbone."))
            if name is None:
                dropped.add(model.trunk_head)
                continue
            out[name] = v
        else:
            out[k] = v
    return out, sorted(dropped), trunk_only


def _head_name(model: nn.Module) -> str:
    return str(getattr(model, "head_name", "fc"))


def _group(model: nn.Module, key: str) -> str:
    """The part a key belongs to: a classifier's head, else its first two name levels
    (``roi_heads.box_predictor``, ``neck.inner_blocks``, ``layer1.0``)."""
    head = _head_name(model)
    if not isinstance(model, FasterRCNN) and key.startswith(head + "."):
        return head
    return ".".join(key.split(".")[:2])


def _free(model: nn.Module, key: str, trunk_only: bool) -> bool:
    """Whether the ``trunk`` policy may leave model key ``key`` at its initialization (or
    leave a file's ``key`` unused)."""
    if isinstance(model, FasterRCNN):
        if trunk_only:  # everything that is not the classification trunk
            return key not in model.trunk_keys.values()
        # the box predictor (another class count) and global context's new layers
        return key.startswith(("roi_heads.box_predictor.", "roi_heads.context_predictor."))
    return key.startswith(_head_name(model) + ".")


# ------------------------------------------------------------------ input convention


def input_spec(i: Any) -> dict[str, Any]:
    """The input convention of a :class:`~detres.config.InputCfg`."""
    return {"format": i.format, "pixel_range": float(i.pixel_range),
            "pixel_mean": [float(v) for v in i.pixel_mean],
            "pixel_std": [float(v) for v in i.pixel_std]}


def same_input(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two input conventions are the same (format, range, mean and std to 1e-4)."""
    if a.get("format") != b.get("format"):
        return False
    if abs(float(a.get("pixel_range", 1.0)) - float(b.get("pixel_range", 1.0))) > 1e-6:
        return False
    return all(np.allclose(a.get(k, []), b.get(k, []), rtol=0, atol=1e-4)
               for k in ("pixel_mean", "pixel_std"))


def describe_input(spec: Mapping[str, Any]) -> str:
    rng = spec.get("pixel_range", 1.0)
    return (f"{spec.get('format')} in [0, {rng:g}], mean {list(spec.get('pixel_mean', []))}, "
            f"std {list(spec.get('pixel_std', []))}")


# --------------------------------------------------------------------------- loading


def load_weights(model: nn.Module, src: str | Path | Weights, *, policy: str = "trunk",
                 expect_input: Mapping[str, Any] | None = None) -> LoadReport:
    """Load ``src`` (a path or :class:`Weights`) into ``model`` in place, by ``policy``.

    When the file records its input convention (``meta["input"]``), it must equal the
    model's: ``expect_input`` (a classifier's config) or, for a detector, its own
    normalization; else a :class:`WeightsError` names both."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {POLICIES}")
    w = src if isinstance(src, Weights) else read_weights(src)
    m = _unwrap(model)
    expect = expect_input or (m.input_spec() if isinstance(m, FasterRCNN) else None)
    stored = w.meta.get("input")
    if expect is not None and isinstance(stored, Mapping) and not same_input(stored, expect):
        raise WeightsError(f"{w.source} was trained on input {describe_input(stored)} but the "
                           f"model is set up for {describe_input(expect)} (model.input); "
                           "give the config the checkpoint's convention")
    state, dropped, trunk_only = _map_keys(m, w)
    target = m.state_dict()

    def optional(k: str) -> bool:
        return k.endswith("num_batches_tracked")

    def free(k: str) -> bool:
        return policy == "trunk" and _free(m, k, trunk_only)

    # Keys in forward order (the state dicts' own order), so "the first" means the earliest.
    missing = [k for k in target if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in target and not optional(k)]
    mismatched = [k for k in target if k in state and state[k].shape != target[k].shape]
    problems = []
    hard = [k for k in missing if not free(k)]
    if hard:
        problems.append(f"{len(hard)} missing keys {hard[:_SHOW]}")
    hard = [k for k in unexpected if not free(k)]
    if hard:
        problems.append(f"{len(hard)} unexpected keys {hard[:_SHOW]}")
    hard = [k for k in mismatched if not free(k)]
    if hard:
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in hard[:_SHOW]]
        problems.append(f"{len(hard)} shape mismatches [{'; '.join(shapes)}]")
    name = type(m).__name__
    if problems and policy != "partial":
        raise WeightsError(f"{w.source} does not fit {name}{_trained_as(w.config)}: "
                           + "; ".join(problems) + ". Is it from another model or config?")
    # a re-initialized part keeps its whole initialization: no half-loaded predictor
    reinit = sorted({_group(m, k) for k in missing + mismatched if free(k)})
    unused = sorted({_group(m, k) for k in unexpected if free(k)} | set(dropped))
    keep = {k: v for k, v in state.items()
            if k in target and v.shape == target[k].shape and _group(m, k) not in reinit}
    if policy == "partial":
        if not any(not optional(k) for k in keep):
            raise WeightsError(f"{w.source}: no key fits {name}: " + "; ".join(problems))
        if problems:
            warnings.warn(f"{w.source} loaded partially into {name}: {problems}", stacklevel=2)
    _check_variant(m, w, strict=policy != "partial")
    m.load_state_dict(keep, strict=False)
    report = LoadReport(source=w.source, loaded=len(keep), reinitialized=reinit, unused=unused)
    _set_classes(m, w, reinit)
    LOG.info("%s", _describe(report, m, state, target, trunk_only))
    return report


def _describe(report: LoadReport, model: nn.Module, state: dict[str, Tensor],
              target: dict[str, Tensor], trunk_only: bool) -> str:
    """One line: what was loaded, and what was re-initialized or left unused, and why."""
    line = f"{report.source}: loaded {report.loaded} tensors into {type(model).__name__}"
    if isinstance(model, FasterRCNN):
        k = "roi_heads.box_predictor.cls_score.bias"
        if trunk_only:
            why = "not part of a classification trunk"
        elif k in state:
            why = (f"{state[k].shape[0] - 1} classes in the file, {model.num_classes} in the "
                   "model")
        else:
            why = "not in the file"
    else:
        k = _head_name(model) + ".bias"
        n_model = f"{target[k].shape[0]} in the model" if k in target else "the model has none"
        why = f"{state[k].shape[0]} classes in the file, {n_model}" if k in state else (
            "not in the file")
    if report.reinitialized == ["roi_heads.context_predictor"] and not trunk_only:
        why = "global context: new layers, zero-initialized, not in the file"
    if report.reinitialized:
        line += f"; re-initialized {', '.join(report.reinitialized)} ({why})"
    if report.unused:
        line += f"; not used from the file: {', '.join(report.unused)}"
        if not report.reinitialized and not isinstance(model, FasterRCNN):
            line += f" ({why})"
    return line


def _set_classes(model: nn.Module, w: Weights, reinit: list[str]) -> None:
    """A detector takes the file's class names and category ids with its predictor."""
    if not isinstance(model, FasterRCNN) or "roi_heads.box_predictor" in reinit:
        return
    names, ids = w.meta.get("class_names"), w.meta.get("category_ids")
    if names is not None and ids is not None and len(names) == model.num_classes:
        model.set_classes(names, ids)


def load_model_state(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Strictly load an in-memory state dict (the ``--resume`` path); errors name ``source``."""
    load_weights(model, Weights(source=f"checkpoint {source!r}", state=dict(state)),
                 policy="strict")


# ---------------------------------------------------------------------- variant check


def _stored_backbone(config: dict[str, Any] | None) -> dict[str, Any]:
    try:
        bb = config["model"]["backbone"]  # type: ignore[index]
    except (KeyError, TypeError):
        return {}
    return bb if isinstance(bb, dict) else {}


def _trained_as(config: dict[str, Any] | None) -> str:
    name = _stored_backbone(config).get("name")
    return f" (the checkpoint is a {name!r})" if name else ""


def _check_variant(model: nn.Module, w: Weights, *, strict: bool) -> None:
    """Same-shaped but different networks: the ResNet ``stride_in_1x1`` variants."""
    net = model.backbone if isinstance(model, FasterRCNN) else model
    ours = getattr(net, "stride_in_1x1", None)
    if ours is None:
        return
    stored = _stored_backbone(w.config)
    if stored:
        theirs = stored.get("stride_in_1x1")
        if theirs is None and stored.get("name") in BACKBONES:
            theirs = builder_options(stored["name"]).get("stride_in_1x1")
        if theirs is not None and theirs != ours:
            msg = (f"{w.source} was trained with stride_in_1x1={theirs}, the model has "
                   f"stride_in_1x1={ours}")
            if strict:
                raise WeightsError(msg)
            warnings.warn(msg, stacklevel=3)
    elif ours and w.path is not None and _TORCHVISION_RESNET.match(w.path.name):
        warnings.warn(
            f"{w.source} looks like a torchvision ResNet file (stride in the 3x3, v1.5) "
            "but the model has stride_in_1x1=True (the paper's variant); build it with "
            "stride_in_1x1=False to reproduce torchvision's network",
            stacklevel=3,
        )
