"""A tiny training run on the real loop and launch code, for ``tests/test_faults.py``: a
linear model under DDP (gloo) whose loss turns non-finite on one rank at one iteration.

    torchrun --nproc-per-node 2 tests/fault_worker.py OUT_DIR NAN_RANK NAN_ITER
"""

from __future__ import annotations

import itertools
import sys

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detres.config import load_config
from detres.engine.launch import run_cli, seed_all
from detres.engine.trainer import Trainer
from detres.utils.dist import cleanup, get_rank, init_distributed
from detres.utils.logging import setup_logging


def main(argv: list[str]) -> int:
    out, nan_rank, nan_iter = argv[0], int(argv[1]), int(argv[2])
    cfg = load_config(None, ["solver.max_iter=8", "train.checkpoint_period=2",
                             "solver.batch_size=4", "train.log_period=1",
                             "train.dist_timeout_s=60"])

    def body() -> int:
        init_distributed("cpu", cfg.train.dist_timeout_s)
        setup_logging(out)
        seed_all(0)
        model = DistributedDataParallel(nn.Linear(2, 1))
        calls = itertools.count()

        def step(m: nn.Module, batch: Tensor) -> dict[str, Tensor]:
            loss = m(batch).pow(2).mean()
            if next(calls) == nan_iter and get_rank() == nan_rank:
                loss = loss * float("nan")
            return {"loss_l2": loss}

        trainer = Trainer(cfg, model, lambda start: itertools.repeat(torch.ones(4, 2)), step,
                          None, out, device=torch.device("cpu"))
        try:
            trainer.train()
        finally:
            cleanup()
        return 0

    return run_cli("fault_worker.py", body)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
