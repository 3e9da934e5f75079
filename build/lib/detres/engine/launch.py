"""What every tool does first: arguments, config, output directory, seeds, device, DDP; and
how every tool ends when it cannot finish: one line naming the file, key, value or fault, and
an exit code that says what a scheduler should do next (:data:`EXIT_CODES`)."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detres.config import Config, load_config, published_figures, save_config
from detres.engine.trainer import NonFiniteLossError, Preempted
from detres.utils.device import cpu_line, resolve_amp, resolve_device
from detres.utils.dist import (
    PeerLostError,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    restart_count,
)
from detres.utils.errors import InputError, error_line
from detres.utils.io import CheckpointWriteError
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
    add_debug_flag(p)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return p


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true",
                   help="on bad input, show the Python traceback instead of one line")


#: the user's input being wrong, not a bug: reported in one line (see :func:`run_cli`)
USER_ERRORS = (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError, CheckpointWriteError)

EXIT_BAD_INPUT = 2  # a file, key, value, image or annotation, or a disk that cannot be written
EXIT_PREEMPTED = 3  # a stop signal: checkpoint written; relaunch with --resume (requeue)
EXIT_DIVERGED = 4  # a non-finite loss: nothing saved after it; change the recipe first
EXIT_PEER_LOST = 5  # another rank died or a collective timed out; relaunch with --resume

#: what each exit code means (0: done; 1: a bug, with its traceback), in the README too
EXIT_CODES = {
    0: "finished",
    1: "a bug (Python traceback)",
    EXIT_BAD_INPUT: "bad input or an unwritable disk (the line names the file, key or value)",
    EXIT_PREEMPTED: "preempted by a stop signal; checkpoint_last.pth written: resume",
    EXIT_DIVERGED: "a non-finite loss; nothing saved after it: lower the LR or clip, then "
                   "resume",
    EXIT_PEER_LOST: "another rank died or a collective timed out: resume",
}

_FAULTS: tuple[tuple[type[BaseException], int, str], ...] = (
    (Preempted, EXIT_PREEMPTED, "stopped"),
    (NonFiniteLossError, EXIT_DIVERGED, "error"),
    (PeerLostError, EXIT_PEER_LOST, "error"),
    (USER_ERRORS, EXIT_BAD_INPUT, "error"),  # type: ignore[arg-type]
)


def run_cli(prog: str, body: Callable[[], int], *, debug: bool = False) -> int:
    """Run a tool's body: bad input (:data:`USER_ERRORS`) and the faults of a training run
    (preemption, divergence, a lost peer) print ``prog: error: <one line>`` and return their
    code in :data:`EXIT_CODES` (with ``debug``: raise, for the traceback); anything else is
    a bug and keeps its traceback."""
    try:
        return body()
    except (Preempted, NonFiniteLossError, PeerLostError, *USER_ERRORS) as e:
        if debug and not isinstance(e, Preempted):
            raise
        code, word = next((c, w) for t, c, w in _FAULTS if isinstance(e, t))
        print(f"{prog}: {word}: {error_line(e)}", file=sys.stderr, flush=True)
        return code


def resume_arg(args: argparse.Namespace) -> str | None:
    """``"last"``, a checkpoint path, or None (from ``--resume`` / ``--resume-from``). A
    worker group that torchrun's elastic agent restarted (``--max-restarts``) resumes from
    the output directory's last checkpoint by itself: the restart runs the same command, and
    starting over would repeat the work (and, without ``--resume``, overwrite it)."""
    if args.resume_from:
        return args.resume_from
    if args.resume:
        return "last"
    if restart_count() > 0:
        LOG.info("torchrun restart %d: resuming from the output directory's last checkpoint",
                 restart_count())
        return "last"
    return None


@dataclass
class Run:
    cfg: Config
    out_dir: Path
    device: torch.device
    distributed: bool

    def save_config(self) -> None:
        """Write ``OUT/config.yaml`` (rank 0): the config of the model being trained, once
        the data have settled what the config left open (the class count)."""
        if is_main_process():
            save_config(self.cfg, self.out_dir)

    def published(self) -> dict[str, Any]:
        """The config's published figures, when they belong to the evaluated set."""
        return published_figures(self.cfg)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(args: argparse.Namespace) -> Run:
    """Load and save the config, start logging, seed, pick the device, join torchrun's group."""
    cfg = load_config(args.cfg, args.overrides)
    out_dir = Path(args.out_dir or Path("output") / Path(args.cfg).stem)
    device = resolve_device(cfg.train.device)  # CUDA: this process's local rank
    distributed = init_distributed(device.type, cfg.train.dist_timeout_s)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    setup_logging(out_dir)
    seed_all(cfg.train.seed + get_rank())
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.solver.batch_size % get_world_size():
        raise InputError(
            f"solver.batch_size={cfg.solver.batch_size} is not divisible by the "
            f"world size {get_world_size()}"
        )
    LOG.info(
        "config %s -> %s | device %s | world size %d", args.cfg, out_dir, device, get_world_size()
    )
    if device.type == "cpu":
        LOG.info("CPU: %s", cpu_line())
    resolve_amp(cfg.train.amp, device, log=LOG)  # says once what `auto` picked, and why
    return Run(cfg=cfg, out_dir=out_dir, device=device, distributed=distributed)
