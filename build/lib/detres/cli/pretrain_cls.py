#!/usr/bin/env python
"""Classification pretraining (He et al. 2015, Sec. 3.4 and 4.2).

python tools/pretrain_cls.py                                  # demo on the synthetic set
python tools/pretrain_cls.py --cfg cifar_resnet56.yaml        # the paper's CIFAR-10 recipe
python tools/pretrain_cls.py --cfg imagenet_resnet50.yaml data.root=/datasets
torchrun --nproc-per-node 8 tools/pretrain_cls.py --cfg imagenet_resnet50.yaml
python tools/pretrain_cls.py --cfg cls_demo.yaml --out-dir output/x --resume

Bad input is one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse

from detres.engine.cls import final_summary, pretrain
from detres.engine.launch import resume_arg, run_cli, setup_run, train_argparser
from detres.utils.dist import cleanup, is_main_process
from detres.utils.errors import InputError


def run(args: argparse.Namespace) -> int:
    run = setup_run(args)
    rank0 = is_main_process()  # asked now: cleanup() below ends the process group
    if run.cfg.task != "cls":
        raise InputError(f"{args.cfg}: task is {run.cfg.task!r}; use tools/train_det.py")
    try:
        metrics = pretrain(run, resume=resume_arg(args), eval_only=args.eval_only)
    finally:
        cleanup()
    if rank0:
        print(final_summary(metrics, run.out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = train_argparser(__doc__.splitlines()[1], "cls_demo.yaml").parse_intermixed_args(argv)
    return run_cli("pretrain_cls.py", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
