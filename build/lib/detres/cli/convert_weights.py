#!/usr/bin/env python
"""Convert the weights users already have into detres checkpoints.

    python tools/convert_weights.py --src fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \\
        --out r50_fpn.pth                                      # torchvision (the default)
    python tools/convert_weights.py --from msra --src R-101.pkl --out r101_msra.pth \\
        [--cfg imagenet_resnet101.yaml]                         # the paper's ImageNet ResNets
    python tools/convert_weights.py --from detectron2 --src model_final_298dad.pkl \\
        --out r101_c4.pth --cfg coco_r101_c4_3x.yaml            # Detectron2's COCO detectors

torchvision: ``fasterrcnn_resnet50_fpn`` COCO weights -> ``coco_r50_fpn.yaml``'s detector.
msra: MSRA's ``R-50.pkl`` / ``R-101.pkl`` (Caffe2 names) -> a classifier checkpoint with
torchvision names (``fc1000`` kept as ``fc``): ``pretrain_cls.py --eval-only`` uses it as is,
and ``model.backbone.weights=OUT`` starts a detector from it. detectron2: a model-zoo
``model_final_*.pkl`` or a Detectron2 training checkpoint ``.pth`` -> a detector checkpoint
for the matching ``coco_*_3x.yaml`` config. ``.pkl`` files are read by a restricted unpickler
(numpy arrays only). Every output records the input convention the weights expect, and is
checked by loading it strictly into the configured model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detres.config import find_config, load_config
from detres.engine.launch import add_debug_flag, run_cli
from detres.modeling.weights import read_weights
from detres.modeling.weights.torchvision import (
    torchvision_frcnn_checkpoint,
)
from detres.modeling.weights.zoo import detectron2_checkpoint, msra_checkpoint
from detres.utils.errors import InputError
from detres.utils.io import atomic_save

DEFAULT_CFG = {"torchvision": "coco_r50_fpn.yaml"}


def convert(args: argparse.Namespace) -> int:
    if not args.src.is_file():
        raise InputError(f"--src {str(args.src)!r}: no such file")
    if args.source == "torchvision":
        args.cfg = args.cfg or DEFAULT_CFG["torchvision"]
        cfg = load_config(str(find_config(args.cfg)), args.overrides)
        state = read_weights(args.src).state
        try:
            ckpt = torchvision_frcnn_checkpoint(state, cfg, src_bn_eps=args.src_bn_eps)
        except (KeyError, ValueError) as e:
            raise InputError(f"--src {str(args.src)!r}: {e.args[0] if e.args else e}") from None
    elif args.source == "msra":
        name = args.src.stem.lower()  # R-50.pkl, R-101.pkl
        depth = "".join(c for c in name if c.isdigit()) or "50"
        args.cfg = args.cfg or f"imagenet_resnet{depth}_msra.yaml"
        cfg = load_config(args.cfg, args.overrides)
        ckpt = msra_checkpoint(args.src, cfg)
    else:
        if not args.cfg:
            raise InputError("--from detectron2 needs --cfg: the detres config of the same "
                             "detector (e.g. coco_r101_c4_3x.yaml, coco_r50_fpn_3x.yaml)")
        ckpt = detectron2_checkpoint(args.src, load_config(args.cfg, args.overrides))
    atomic_save(ckpt, args.out)
    print(f"wrote {args.out} ({len(ckpt['model'])} tensors, from {args.source}, "
          f"config {args.cfg})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--from", dest="source", default="torchvision",
                   choices=["torchvision", "msra", "detectron2"], help="the file's zoo")
    p.add_argument("--src", type=Path, required=True, help="the weight file")
    p.add_argument("--out", type=Path, required=True, help="detres checkpoint to write")
    p.add_argument("--cfg", default=None, help="the detres config the weights are for")
    p.add_argument("--src-bn-eps", type=float, default=0.0,
                   help="torchvision: BatchNorm eps the weights expect (0.0 for COCO_V1)")
    add_debug_flag(p)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_intermixed_args(argv)
    return run_cli("convert_weights.py", lambda: convert(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
