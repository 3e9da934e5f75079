"""One plain, iteration-based training loop for both the classifier and the detector.

forward -> losses -> backward -> step -> schedule -> log -> checkpoint -> periodic eval.
Each evaluation that improves the primary metric writes ``model_best.pth`` (its meta and the
log name the metric, value and iteration); with ``train.patience`` the run stops cleanly
after that many evaluations without improvement. Both are part of every checkpoint, so
``--resume`` and preemption keep them.
The task supplies two functions: ``step_fn(model, batch) -> {name: Tensor}`` (keys starting
with ``loss`` are summed into the objective; others are logged) and
``eval_fn(model) -> {metric: float}``. Everything else (AMP, DDP, atomic checkpoints,
``--resume``, tqdm, JSON lines, curves) lives here once.

Faults end every rank at the same step with the same message, never a hang: each step the
ranks agree (one small all-reduce after the batch is loaded, one after the loss) on whether
any rank met a bad batch, a stop signal (preemption: rank 0 writes ``checkpoint_last.pth``,
:class:`Preempted`) or a non-finite loss (:class:`NonFiniteLossError`); a collective that
fails because a peer died or timed out is a :class:`~detres.utils.dist.PeerLostError`; a
checkpoint that cannot be written is a :class:`~detres.utils.io.CheckpointWriteError` on
every rank, the previous checkpoint untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from detres.config import Config, to_dict
from detres.engine import checkpoint as ckpt
from detres.engine.schedule import LRSchedule, build_optimizer
from detres.utils.device import autocast_context, resolve_amp
from detres.utils.dist import (
    PeerLostError,
    all_gather_object,
    broadcast_object,
    describe_peer_error,
    flagged_ranks,
    get_rank,
    get_world_size,
    is_dist,
    is_main_process,
    is_peer_error,
    reduce_mean,
)
from detres.utils.errors import InputError, error_line
from detres.utils.io import CheckpointWriteError, remove_stale_temp_files, rng_state, set_rng_state
from detres.utils.logging import LOG, build_writers
from detres.utils.signals import StopSignals, parse_signals

StepFn = Callable[[nn.Module, Any], dict[str, Tensor]]
EvalFn = Callable[[nn.Module], dict[str, float]]


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or infinite; no checkpoint is written after it."""


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGUSR1, ...) ended the run at a step boundary, after rank 0
    wrote ``checkpoint_last.pth``; relaunching with ``--resume`` continues exactly."""


@dataclass
class TrainState:
    iteration: int = 0
    last_metrics: dict[str, float] | None = None
    last_checkpoint: tuple[Path, int] | None = None  # the newest good one: (path, iteration)
    best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of model_best.pth
    evals_since_best: int = 0
    stopped_early: str = ""  # why the run stopped before max_iter (early stopping)

    def loop_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the loop itself (plain types)."""
        return {"best": self.best, "evals_since_best": self.evals_since_best,
                "stopped_early": self.stopped_early}


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        data: Callable[[int], Iterator[Any]],
        step_fn: StepFn,
        eval_fn: EvalFn | None,
        out_dir: str | Path,
        *,
        device: torch.device,
        primary_metric: str = "",
        lower_is_better: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.data_fn = data  # start iteration -> batches (so a resumed run sees the same data)
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.out_dir = Path(out_dir)
        self.device = device
        self.primary_metric = primary_metric
        self.lower_is_better = lower_is_better
        self.meta = meta or {}
        self.optimizer = build_optimizer(model, cfg.solver)
        self.schedule = LRSchedule(self.optimizer, cfg.solver)
        self.amp = resolve_amp(cfg.train.amp, device, log=LOG)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        self.writer = build_writers(self.out_dir, tensorboard=cfg.train.tensorboard)
        self.state = TrainState()

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, meta: dict[str, Any] | None = None) -> Path | None:
        """Rank 0 writes ``OUT/name`` atomically, with every rank's RNG state (so a resumed
        DDP run continues each rank's stream). Collective: a failed write is the same
        :class:`CheckpointWriteError` on every rank, and only a written checkpoint becomes
        ``state.last_checkpoint``."""
        rngs = all_gather_object(rng_state())
        written: Path | None = None
        err: str | None = None
        if is_main_process():
            try:
                written = ckpt.save_checkpoint(
                    self.out_dir / name,
                    model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.schedule,
                    scaler=self.scaler,
                    iteration=self.state.iteration,
                    config=to_dict(self.cfg),
                    meta={**self.meta, **(meta or {})},
                    rng_per_rank=rngs,
                    trainer=self.state.loop_state(),
                )
            except CheckpointWriteError as e:
                err = str(e)
        err = broadcast_object(err)
        if err is not None:
            raise CheckpointWriteError(f"{err}; {self._saved_text()}")
        self.state.last_checkpoint = (self.out_dir / name, self.state.iteration)
        return written

    def _saved_text(self) -> str:
        last = self.state.last_checkpoint
        if last:
            return f"the last good checkpoint is {last[0]} (iteration {last[1]})"
        return ("no checkpoint was written before it (train.checkpoint_period="
                f"{self.cfg.train.checkpoint_period})")

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` or the output directory's last checkpoint, if any. Under
        DDP every rank must see the same file (a shared file system) and takes its own RNG
        state from it."""
        path = Path(path) if path else self.out_dir / ckpt.LAST
        if is_main_process():
            remove_stale_temp_files(path)  # left by a writer killed mid-write
        seen = all_gather_object(path.is_file())
        if any(seen) and not all(seen):
            missing = [r for r, s in enumerate(seen) if not s]
            raise InputError(f"{path}: rank(s) {missing} cannot see the checkpoint that the "
                             "other ranks resume from; --out-dir (and --resume-from) must be "
                             "on a file system that every node shares")
        if not seen[0]:
            LOG.info("no checkpoint at %s; starting from scratch", path)
            return False
        c = ckpt.resume_from(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.schedule,
            scaler=self.scaler,
            rank=get_rank(),
            world_size=get_world_size(),
        )
        iters = all_gather_object(int(c["iteration"]))
        if len(set(iters)) > 1:
            raise InputError(f"{path}: the ranks read different checkpoints (iterations "
                             f"{iters}); was it replaced while the run started?")
        self.state.iteration = iters[0]
        loop = c.get("trainer") or {}
        self.state.best = loop.get("best")
        self.state.evals_since_best = int(loop.get("evals_since_best", 0))
        self.state.stopped_early = str(loop.get("stopped_early", ""))
        self.state.last_checkpoint = (path, self.state.iteration)
        self.writer.truncate_after(self.state.iteration)
        LOG.info("resumed from %s at iteration %d", path, self.state.iteration)
        return True

    # ------------------------------------------------------------------------- loop
    def sync_buffers(self) -> None:
        """Rank 0's buffers (BN running statistics) on every rank: DDP broadcasts them only at
        the start of a forward, so after the last step each rank holds its own batch's. All
        ranks then evaluate the model that rank 0 saves."""
        if is_dist():
            for b in ckpt.unwrap(self.model).buffers():
                torch.distributed.broadcast(b, src=0)

    def run_eval(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.sync_buffers()
        t0 = time.perf_counter()
        # Evaluation must not shift the training random stream (e.g. a DataLoader draws its
        # base seed from the global RNG): otherwise eval_period would change the training,
        # and a finished run extended with --resume would not match an uninterrupted one.
        rng = rng_state()
        try:
            # scored on rank 0; every rank gets the numbers (a plateau schedule reads them)
            metrics = broadcast_object(self.eval_fn(self.model))
        finally:
            set_rng_state(rng)
        if metrics:
            rec = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            self.writer.write(
                {"iteration": self.state.iteration, **rec, "eval_time": time.perf_counter() - t0}
            )
            if self.primary_metric in metrics:
                self.schedule.observe(
                    metrics[self.primary_metric], lower_is_better=self.lower_is_better
                )
        self.state.last_metrics = metrics
        self._track_best(metrics)
        return metrics

    def _track_best(self, metrics: dict[str, float]) -> None:
        """``model_best.pth`` when the primary metric improves; early stopping's count.
        Every rank has the same metrics (broadcast), so every rank decides alike."""
        name = self.primary_metric
        value = metrics.get(name)
        if not isinstance(value, int | float):
            return
        best = self.state.best
        better = best is None or (value < best["value"] if self.lower_is_better
                                  else value > best["value"])
        if better:
            self.state.best = {"metric": name, "value": float(value),
                               "iteration": self.state.iteration}
            self.state.evals_since_best = 0
            self.save(ckpt.BEST, meta={"best": self.state.best})
            LOG.info("best %s so far: %.4f at iteration %d -> %s", name, value,
                     self.state.iteration, self.out_dir / ckpt.BEST)
            return
        self.state.evals_since_best += 1
        patience = self.cfg.train.patience
        if patience and self.state.evals_since_best >= patience and best is not None:
            self.state.stopped_early = (
                f"early stopping: {patience} evaluation(s) without a better {name} than "
                f"{best['value']:.4f} (iteration {best['iteration']}); stopped at iteration "
                f"{self.state.iteration} of {self.cfg.solver.max_iter} (train.patience="
                f"{patience}); the best weights are {self.out_dir / ckpt.BEST}")

    # ------------------------------------------------------------------ step faults
    def _fetch(self, data: Iterator[Any]) -> tuple[Any, BaseException | None]:
        try:
            return next(data), None
        except Exception as e:  # a bad image / annotation, possibly in a DataLoader worker
            return None, e

    def _check_step_start(self, fault: BaseException | None, stop: StopSignals) -> None:
        """Before the forward (and DDP's collectives): does any rank have a bad batch or a
        stop signal? Every rank gets the same answer, so every rank stops here."""
        bad, signalled = flagged_ranks(fault is not None, stop.received is not None)
        if bad:
            if not is_dist():
                assert fault is not None
                raise fault
            src = bad[0]
            msg = broadcast_object(error_line(fault) if fault is not None else None, src=src)
            text = f"rank {src} (of {get_world_size()}) could not load a batch: {msg}"
            if isinstance(fault, (InputError, OSError)) or fault is None:
                raise InputError(text) from fault
            raise RuntimeError(text) from fault  # a bug: keep the traceback
        if signalled:
            name = broadcast_object(stop.received, src=signalled[0])
            self.save(ckpt.LAST)
            where = f"rank {signalled[0]}" if is_dist() else "the process"
            msg = (f"preempted: {where} received {name}; stopped after iteration "
                   f"{self.state.iteration} of {self.cfg.solver.max_iter}, checkpoint "
                   f"{self.out_dir / ckpt.LAST} written; relaunch with --resume to continue")
            LOG.warning(msg)
            raise Preempted(msg)

    def _check_finite(self, it: int, losses: dict[str, Tensor], total: Tensor) -> None:
        """After the forward, before the backward: a non-finite loss on any rank stops every
        rank with one message naming the rank(s) and the loss terms."""
        (bad,) = flagged_ranks(not bool(torch.isfinite(total.detach())))
        if not bad:
            return
        vals = all_gather_object({k: float(v.detach()) for k, v in losses.items()})
        if is_dist():
            where = "; ".join(f"rank {r}: {vals[r]}" for r in bad)
            where = f"on {where}"
        else:
            where = f"{vals[0]}"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {it} {where}; stopped without saving; "
            f"{self._saved_text()}. Lower solver.base_lr, add warm-up, or set "
            "solver.clip_grad_norm."
        )

    def train(self) -> dict[str, float]:
        """Run to ``solver.max_iter``; see the module docstring for how faults end it."""
        with StopSignals(parse_signals(self.cfg.train.stop_signals)) as stop:
            try:
                return self._train(stop)
            except BaseException as e:
                if is_dist():  # this worker ends now, with its own exit code
                    stop.keep()
                if isinstance(e, PeerLostError) or not is_peer_error(e):
                    raise
                raise PeerLostError(
                    f"rank {get_rank()} (of {get_world_size()}) lost the other ranks after "
                    f"iteration {self.state.iteration}: {describe_peer_error(e)}; "
                    f"{self._saved_text()}; relaunch with --resume (torchrun --max-restarts "
                    "does so by itself)") from e

    def _train(self, stop: StopSignals) -> dict[str, float]:
        cfg = self.cfg
        max_iter = cfg.solver.max_iter
        start = self.state.iteration
        if self.state.stopped_early:  # resumed after an early stop: nothing left to do
            LOG.info("%s", self.state.stopped_early)
            max_iter = start
        self.model.train()
        amp = autocast_context(self.device, self.amp)
        with tqdm(
            total=max_iter,
            initial=start,
            disable=not is_main_process(),
            desc="train",
            dynamic_ncols=True,
            unit="it",
        ) as bar:  # closed (its line ended) on any exit, so an error prints on its own line
            running: dict[str, Tensor] = {}
            n_running = 0
            t_last = time.perf_counter()
            data = self.data_fn(start)  # after the handlers: DataLoader workers inherit them
            for it in range(start, max_iter):
                self.schedule.step(it)
                batch, fault = self._fetch(data)
                self._check_step_start(fault, stop)
                with amp:
                    out = self.step_fn(self.model, batch)
                losses = {k: v for k, v in out.items() if k.startswith("loss")}
                total = sum(losses.values())
                assert isinstance(total, Tensor), "step_fn returned no loss terms"
                self._check_finite(it, losses, total)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
                if cfg.solver.clip_grad_norm > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   cfg.solver.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.state.iteration = it + 1

                for k, v in out.items():
                    running[k] = running.get(k, 0.0) + v.detach().float()
                running["loss"] = running.get("loss", 0.0) + total.detach().float()
                n_running += 1
                bar.update(1)
                last = self.state.iteration == max_iter
                if self.state.iteration % cfg.train.log_period == 0 or last:
                    avg = {k: float(reduce_mean(v / n_running)) for k, v in running.items()}
                    now = time.perf_counter()
                    rec = {
                        "iteration": self.state.iteration,
                        **avg,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "time_per_iter": (now - t_last) / n_running,
                    }
                    self.writer.write(rec)
                    bar.set_postfix(loss=f"{avg['loss']:.4f}", lr=f"{rec['lr']:.3g}")
                    running, n_running, t_last = {}, 0, now
                period = cfg.train.eval_period
                if (period and self.state.iteration % period == 0) or last:
                    self.run_eval()
                    self.model.train()
                cp = cfg.train.checkpoint_period
                if (cp and self.state.iteration % cp == 0) or last or self.state.stopped_early:
                    self.save(ckpt.LAST)
                if self.state.stopped_early:
                    LOG.info("%s", self.state.stopped_early)
                    break
        if self.state.last_metrics is None:
            self.run_eval()
        final = self.save(ckpt.FINAL)
        if final is not None:
            LOG.info("saved %s", final)
        self.writer.close()
        return self.state.last_metrics or {}
