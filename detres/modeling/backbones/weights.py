"""Loading trunk weights: torchvision weight files and ``pretrain_cls.py`` checkpoints.

Parameter names follow torchvision, so both load with no renaming. The classification head
(``fc`` for ResNets, ``classifier.6`` for VGG-16) is dropped when the model has none or a
different number of classes; everything else must match exactly (names and shapes) unless
``strict_backbone=False``, in which case whatever matches is loaded.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

log = logging.getLogger(__name__)

_SHOW = 5  # how many offending keys an error names
# torchvision's ResNet files, e.g. resnet50-0676ba61.pth / resnet50-11ad3fa6.pth.
_TORCHVISION_RESNET = re.compile(r"^(resnet|resnext|wide_resnet)\d+.*-[0-9a-f]{8}\.pth$")


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """``(state_dict, config or None)`` from a plain state dict file or a detres checkpoint
    ``{"model": state_dict, "config": {...}, ...}``; a DDP ``module.`` prefix is removed."""
    from detres.engine.checkpoint import load_file  # late: the engine imports modeling

    obj = load_file(path)  # weights_only=True; errors name the file
    config: dict[str, Any] | None = None
    if isinstance(obj.get("model"), Mapping):
        state, cfg = obj["model"], obj.get("config")
        config = cfg if isinstance(cfg, dict) else None
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad or not state:
        raise ValueError(
            f"weights file {str(path)!r} is neither a state dict nor a detres checkpoint "
            f"(top-level keys: {sorted(obj)[:_SHOW]}{' ...' if len(obj) > _SHOW else ''})"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state), config


def load_weights(model: nn.Module, path: str | Path, *, strict_backbone: bool = True) -> None:
    """Load a torchvision weight file or a detres checkpoint into ``model`` (in place).

    The head (``model.head_name``, default ``fc``) is loaded only when its shapes match;
    ``num_batches_tracked`` counters are optional. With ``strict_backbone`` every other key
    must match by name and shape, else a ``ValueError`` names the file and the first
    missing, unexpected and mismatched keys."""
    state, config = read_state_dict(path)
    where = f"weights file {str(path)!r}"
    target = model.state_dict()
    head = getattr(model, "head_name", "fc") + "."

    def optional(k: str) -> bool:
        return k.endswith("num_batches_tracked")

    def is_head(k: str) -> bool:
        return k.startswith(head)

    file_head = {k for k in state if is_head(k)}
    model_head = {k for k in target if is_head(k)}
    head_fits = file_head == model_head and all(
        state[k].shape == target[k].shape for k in model_head
    )
    if file_head and not head_fits:
        log.info("%s: head %s not loaded (model: %s)", where, sorted(file_head), sorted(model_head))

    # Keys in forward order (the state dicts' own order), so "the first" means the earliest.
    body_file = [k for k in state if not is_head(k) and not optional(k)]
    body_model = [k for k in target if not is_head(k) and not optional(k)]
    missing = [k for k in body_model if k not in state]
    unexpected = [k for k in body_file if k not in target]
    mismatched = [k for k in body_model if k in state and state[k].shape != target[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {missing[:_SHOW]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {unexpected[:_SHOW]}")
    if mismatched:
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
            for k in mismatched[:_SHOW]
        ]
        problems.append(f"{len(mismatched)} shape mismatches [{'; '.join(shapes)}]")
    if problems and strict_backbone:
        raise ValueError(
            f"{where} does not fit {type(model).__name__}{_trained_as(config)}: "
            + "; ".join(problems)
        )
    _check_variant(model, path, config, strict_backbone)

    keep = {
        k: v
        for k, v in state.items()
        if k in target and v.shape == target[k].shape and (not is_head(k) or head_fits)
    }
    if not any(k in target and not is_head(k) for k in keep):
        raise ValueError(f"{where}: no key fits {type(model).__name__}: " + "; ".join(problems))
    if problems:
        log.warning("%s loaded partially into %s: %s", where, type(model).__name__, problems)
    model.load_state_dict(keep, strict=False)


def _trained_as(config: dict[str, Any] | None) -> str:
    name = _stored_backbone(config).get("name")
    return f" (the checkpoint is a {name!r})" if name else ""


def _stored_backbone(config: dict[str, Any] | None) -> dict[str, Any]:
    try:
        bb = config["model"]["backbone"]  # type: ignore[index]
    except (KeyError, TypeError):
        return {}
    return bb if isinstance(bb, dict) else {}


def _check_variant(
    model: nn.Module, path: str | Path, config: dict[str, Any] | None, strict: bool
) -> None:
    """Same-shaped but different networks: the ResNet ``stride_in_1x1`` variants."""
    ours = getattr(model, "stride_in_1x1", None)
    if ours is None:
        return
    stored = _stored_backbone(config)
    if stored:
        theirs = stored.get("stride_in_1x1")
        if theirs is None and stored.get("name"):
            from detres.modeling.backbones import BACKBONES, builder_options

            if stored["name"] in BACKBONES:
                theirs = builder_options(stored["name"]).get("stride_in_1x1")
        if theirs is not None and theirs != ours:
            msg = (
                f"weights file {str(path)!r} was trained with stride_in_1x1={theirs}, "
                f"the model has stride_in_1x1={ours}"
            )
            if strict:
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=3)
    elif ours and _TORCHVISION_RESNET.match(Path(path).name):
        warnings.warn(
            f"{Path(path).name} looks like a torchvision ResNet file (stride in the 3x3, v1.5) "
            "but the model has stride_in_1x1=True (the paper's variant); build it with "
            "stride_in_1x1=False to reproduce torchvision's network",
            stacklevel=3,
        )
