"""What every tool does first: arguments, config, output directory, seeds, device, DDP."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detres.config import Config, load_config, save_config
from detres.utils.device import resolve_device
from detres.utils.dist import get_rank, get_world_size, init_distributed, is_main_process
from detres.utils.logging import LOG, setup_logging


def train_argparser(description: str, default_cfg: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--cfg",
        default=default_cfg,
        help=f"config path or name under configs/ (default: {default_cfg})",
    )
    p.add_argument("--out-dir", default="", help="output directory (default: output/<cfg name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/checkpoint_last.pth (a fresh start if none)")
    p.add_argument("--resume-from", default=None, metavar="CKPT",
                   help="continue from this checkpoint")
    p.add_argument("--eval-only", action="store_true", help="evaluate cfg model.weights and exit")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return p


def resume_arg(args: argparse.Namespace) -> str | None:
    """``"last"``, a checkpoint path, or None (from ``--resume`` / ``--resume-from``)."""
    return args.resume_from or ("last" if args.resume else None)


@dataclass
class Run:
    cfg: Config
    out_dir: Path
    device: torch.device
    distributed: bool


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(args: argparse.Namespace) -> Run:
    """Load and save the config, start logging, seed, pick the device, join torchrun's group."""
    cfg = load_config(args.cfg, args.overrides)
    out_dir = Path(args.out_dir or Path("output") / Path(args.cfg).stem)
    device = resolve_device(cfg.train.device)  # CUDA: this process's local rank
    distributed = init_distributed(device.type)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    setup_logging(out_dir)
    if is_main_process():
        save_config(cfg, out_dir)
    seed_all(cfg.train.seed + get_rank())
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.solver.batch_size % get_world_size():
        raise ValueError(
            f"solver.batch_size={cfg.solver.batch_size} is not divisible by the "
            f"world size {get_world_size()}"
        )
    LOG.info(
        "config %s -> %s | device %s | world size %d", args.cfg, out_dir, device, get_world_size()
    )
    return Run(cfg=cfg, out_dir=out_dir, device=device, distributed=distributed)
