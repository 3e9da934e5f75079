#!/usr/bin/env python
"""Convert torchvision's ``fasterrcnn_resnet50_fpn`` COCO weights into a detres checkpoint.

python tools/convert_weights.py --src fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \\
    --out detres_r50_fpn.pth [--cfg coco_r50_fpn.yaml] [--src-bn-eps 0.0]

The checkpoint holds ``{"model", "config", "class_names", "category_ids"}`` (80 COCO classes
as labels 1..80, mapped back to COCO ids) and is checked by loading it strictly into the
configured detector. Use it with ``tools/eval.py --cfg coco_r50_fpn.yaml --weights OUT``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from detres.config import find_config, load_config
from detres.modeling.weights.torchvision import (
    TORCHVISION_R50_FPN_OVERRIDES,
    torchvision_frcnn_checkpoint,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", type=Path, required=True, help="torchvision state dict (.pth)")
    p.add_argument("--out", type=Path, required=True, help="detres checkpoint to write")
    p.add_argument(
        "--cfg",
        default=None,
        help="detres config (default: coco_r50_fpn.yaml if present, else torchvision's "
        "settings from detres.modeling.weights.torchvision)",
    )
    p.add_argument(
        "--src-bn-eps",
        type=float,
        default=0.0,
        help="BatchNorm eps the weights expect: 0.0 for torchvision's COCO_V1 weights",
    )
    args = p.parse_args(argv)

    if not args.src.is_file():
        raise SystemExit(f"--src {str(args.src)!r}: no such file")
    state = torch.load(args.src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise SystemExit(f"--src {str(args.src)!r}: not a state dict")
    cfg_name = args.cfg
    if cfg_name is None:
        try:
            cfg_name = str(find_config("coco_r50_fpn.yaml"))
        except FileNotFoundError:
            cfg_name = None
    cfg = load_config(cfg_name, None if cfg_name else TORCHVISION_R50_FPN_OVERRIDES)
    try:
        ckpt = torchvision_frcnn_checkpoint(state, cfg, src_bn_eps=args.src_bn_eps)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"--src {str(args.src)!r}: {e}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, args.out)
    source = cfg_name or "torchvision defaults"
    print(f"wrote {args.out} ({len(ckpt['model'])} tensors, config: {source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
