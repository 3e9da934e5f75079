#!/usr/bin/env python
"""Train a Faster R-CNN detector and score it (with no --cfg: the demo on the demo set).

    python tools/train_det.py                                     # demo, ~10 min on a CPU
    python tools/train_det.py --cfg coco_r101.yaml model.backbone.weights=resnet101.pth
    torchrun --nproc-per-node 8 tools/train_det.py --cfg voc0712_r101.yaml
    python tools/train_det.py --cfg demo.yaml --out-dir output/demo --resume

Bad input (a config key, a file, an annotation, an image, a checkpoint) is one line on
stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse

from detres.engine.det import evaluate_config, train_detector
from detres.engine.launch import resume_arg, run_cli, setup_run, train_argparser
from detres.evaluation import format_table, write_metrics
from detres.utils.dist import cleanup, is_main_process
from detres.utils.errors import InputError


def run(args: argparse.Namespace) -> int:
    run = setup_run(args)
    rank0 = is_main_process()  # asked now: cleanup() below ends the process group
    if run.cfg.task != "det":
        raise InputError(f"{args.cfg}: task is {run.cfg.task!r}; use tools/pretrain_cls.py")
    try:
        if args.eval_only:
            run.save_config()
            metrics = evaluate_config(run.cfg, run.device, out_dir=run.out_dir)
            if is_main_process():
                write_metrics(metrics, run.out_dir / "metrics.json")
        else:
            metrics = train_detector(run, resume=resume_arg(args))
    finally:
        cleanup()
    if rank0:
        print(format_table(metrics, **run.published()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = train_argparser(__doc__.splitlines()[0], "demo.yaml").parse_intermixed_args(argv)
    return run_cli("train_det.py", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
