"""The shared training loop: schedule, atomic checkpoints, exact resume, NaN guard, stop
signals, exit codes (the multi-process faults are in test_faults.py)."""

from __future__ import annotations

import json
import os
import pickle
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from detres.config import load_config
from detres.data.sampling import InfiniteSampler, SeededDataset
from detres.engine import checkpoint as ckpt
from detres.engine.launch import (
    EXIT_BAD_INPUT,
    EXIT_CODES,
    EXIT_DIVERGED,
    EXIT_PEER_LOST,
    EXIT_PREEMPTED,
    run_cli,
)
from detres.engine.schedule import LRSchedule, build_optimizer
from detres.engine.trainer import NonFiniteLossError, Preempted, Trainer
from detres.modeling.weights import WeightsError, load_model_state
from detres.utils.dist import PeerLostError
from detres.utils.errors import InputError
from detres.utils.io import CheckpointWriteError, read_checkpoint, remove_stale_temp_files
from detres.utils.signals import parse_signals


class NoisyPoints(Dataset):
    """Points whose item adds augmentation noise drawn from the global torch RNG."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i] + 0.1 * torch.randn(4), self.y[i]


def _batches(start: int, bs: int = 8) -> Iterator[tuple[Tensor, Tensor]]:
    ds = NoisyPoints()
    sampler = InfiniteSampler(len(ds), seed=1, start=start * bs, rank=0, world_size=1)
    return iter(DataLoader(SeededDataset(ds), batch_size=bs, sampler=sampler))


def _step(m: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    x, y = batch
    return {"loss_ce": nn.functional.cross_entropy(m(x), y)}


def _trainer(out: Path, max_iter: int, step=_step, *extra: str) -> Trainer:
    cfg = load_config(
        None,
        [
            f"solver.max_iter={max_iter}",
            "solver.base_lr=0.1",
            "solver.batch_size=8",
            "train.log_period=2",
            "solver.steps=[6]",
            "solver.warmup_iters=3",
            *extra,
        ],
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    return Trainer(
        cfg, model, _batches, step, lambda m: {"acc": 0.5}, out, device=torch.device("cpu")
    )


def test_schedule_warmup_and_steps() -> None:
    cfg = load_config(
        None,
        [
            "solver.base_lr=1.0",
            "solver.warmup_iters=10",
            "solver.warmup_factor=0.1",
            "solver.steps=[20,30]",
        ],
    )
    opt = build_optimizer(nn.Linear(2, 2), cfg.solver)
    s = LRSchedule(opt, cfg.solver)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(5) == pytest.approx(0.55)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(25) == pytest.approx(0.1)
    assert s.lr_at(35) == pytest.approx(0.01)


def test_plateau_schedule_decays_after_patience() -> None:
    cfg = load_config(None, ["solver.schedule=plateau", "solver.plateau_patience=2"])
    s = LRSchedule(build_optimizer(nn.Linear(2, 2), cfg.solver), cfg.solver)
    for err in (0.5, 0.4, 0.41, 0.42):
        s.observe(err)
    assert s.lr_at(100) == pytest.approx(0.01)


def test_batchnorm_params_get_norm_weight_decay() -> None:
    cfg = load_config(None, ["solver.weight_decay=1e-4", "solver.weight_decay_norm=0"])
    opt = build_optimizer(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), cfg.solver)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_sampler_shards_and_resumes() -> None:
    a = InfiniteSampler(10, seed=3, rank=0, world_size=1)
    seq = [x for _, x in zip(range(25), a, strict=False)]
    b = InfiniteSampler(10, seed=3, rank=0, world_size=1, start=7)
    assert [x for _, x in zip(range(18), b, strict=False)] == seq[7:]
    assert sorted(i for i, _ in seq[:10]) == list(range(10))  # one epoch is a permutation
    r0 = [
        x for _, x in zip(range(5), InfiniteSampler(10, seed=3, rank=0, world_size=2), strict=False)
    ]
    r1 = [
        x for _, x in zip(range(5), InfiniteSampler(10, seed=3, rank=1, world_size=2), strict=False)
    ]
    assert r0 + r1 != seq[:10] and sorted(r0 + r1) == sorted(seq[:10])


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full", 10)
    full.train()
    first = _trainer(tmp_path / "part", 4)
    first.train()
    # Continue the stopped run to 10 iterations from its last checkpoint.
    second = _trainer(tmp_path / "part", 10)
    assert second.resume()
    assert second.state.iteration == 4
    second.train()
    a, b = full.model.state_dict(), second.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    rows_full = [
        json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    loss = [r["loss"] for r in rows if "loss" in r]
    loss_full = [r["loss"] for r in rows_full if "loss" in r]
    assert loss[-1] == pytest.approx(loss_full[-1], rel=1e-6)


def test_nan_loss_stops_without_checkpoint(tmp_path: Path) -> None:
    def bad_step(m: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        out = _step(m, batch)
        return {"loss_ce": out["loss_ce"] * float("nan")}

    t = _trainer(tmp_path, 5, step=bad_step)
    with pytest.raises(NonFiniteLossError, match="iteration 0"):
        t.train()
    assert not (tmp_path / ckpt.LAST).exists()


def test_checkpoint_is_atomic_and_safe(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    p = ckpt.save_checkpoint(tmp_path / "c.pth", model=model, iteration=7, config={"a": 1})
    assert [f.name for f in tmp_path.iterdir()] == ["c.pth"]  # no temp file left behind
    loaded = read_checkpoint(p)
    assert loaded["iteration"] == 7 and loaded["config"] == {"a": 1}
    # A checkpoint from another model is refused with the file and keys named.
    with pytest.raises(WeightsError, match=r"c\.pth.*(missing|shape)"):
        load_model_state(nn.Linear(4, 2), loaded["model"], source=str(p))
    # A pickle that would run code is not loaded.
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": print}, f, protocol=2)
    with pytest.raises(ValueError, match="evil.pth"):
        read_checkpoint(evil)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


def test_stop_signal_checkpoints_at_a_step_boundary_and_resumes_exactly(tmp_path: Path) -> None:
    """SIGUSR1 (SLURM's --signal warning) during step 3: the step finishes, the loop stops at
    the next boundary with checkpoint_last.pth, and a resumed run ends as the uninterrupted
    one. The previous handler is back afterwards."""
    full = _trainer(tmp_path / "full", 10)
    full.train()

    def step(m: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        if part.state.iteration == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return _step(m, batch)

    before = signal.getsignal(signal.SIGUSR1)
    part = _trainer(tmp_path / "part", 10, step=step)
    with pytest.raises(Preempted, match=r"received SIGUSR1; stopped after iteration 4 of 10"):
        part.train()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert read_checkpoint(tmp_path / "part" / ckpt.LAST)["iteration"] == 4
    again = _trainer(tmp_path / "part", 10)
    assert again.resume() and again.state.iteration == 4
    again.train()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_fault_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """One line each, and a code a scheduler can act on (the README's table)."""
    def raising(e: BaseException) -> Callable[[], int]:
        def body() -> int:
            raise e
        return body

    cases = [(Preempted("preempted: x"), EXIT_PREEMPTED, "stopped: preempted: x"),
             (NonFiniteLossError("non-finite loss"), EXIT_DIVERGED, "error: non-finite loss"),
             (PeerLostError("rank 1 lost"), EXIT_PEER_LOST, "error: rank 1 lost"),
             (CheckpointWriteError("could not write"), EXIT_BAD_INPUT, "error: could not write"),
             (InputError("bad key"), EXIT_BAD_INPUT, "error: bad key")]
    for e, code, line in cases:
        assert run_cli("t.py", raising(e)) == code
        assert capsys.readouterr().err == f"t.py: {line}\n"
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5}
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        run_cli("t.py", raising(RuntimeError("bug")))


def test_stop_signal_names_are_checked() -> None:
    assert parse_signals(["SIGTERM", "usr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(InputError, match="train.stop_signals: 'SIGKILL'"):
        parse_signals(["SIGKILL"])
    with pytest.raises(InputError, match="'SIGNOPE'"):
        parse_signals(["SIGNOPE"])


def test_failed_checkpoint_write_keeps_the_old_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(3, 2)
    p = ckpt.save_checkpoint(tmp_path / "c.pth", model=model, iteration=1)
    import detres.utils.io as io_mod

    def broken(obj: object, f: Any) -> None:
        f.write(b"half a file")
        raise RuntimeError("PytorchStreamWriter failed writing file") from OSError(5, "EIO")

    monkeypatch.setattr(io_mod.torch, "save", broken)
    with pytest.raises(CheckpointWriteError, match=r"c\.pth: Input/output error"):
        ckpt.save_checkpoint(p, model=model, iteration=2)
    monkeypatch.undo()
    assert read_checkpoint(p)["iteration"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["c.pth"]
    (tmp_path / ".c.pth.tmp.999999999").write_bytes(b"left by a killed writer")
    assert [f.name for f in remove_stale_temp_files(p)] == [".c.pth.tmp.999999999"]


#: a scripted validation metric by iteration: best at 4, then worse
_ACC = {2: 0.5, 4: 0.6, 6: 0.55, 8: 0.54, 10: 0.58, 12: 0.7, 14: 0.7, 16: 0.7, 18: 0.7, 20: 0.7}


def _scored(out: Path, max_iter: int, *extra: str) -> Trainer:
    t = _trainer(out, max_iter, _step, "train.eval_period=2", *extra)
    t.primary_metric, t.lower_is_better = "acc", False
    t.eval_fn = lambda m: {"acc": _ACC[t.state.iteration]}
    return t


def test_best_checkpoint_and_early_stopping_survive_resume(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """model_best.pth at the best evaluation (its meta names metric, value, iteration);
    train.patience=2 stops cleanly two evaluations later; a run stopped in between and
    resumed stops at the same iteration with the same weights."""
    with caplog.at_level("INFO", logger="detres"):
        full = _scored(tmp_path / "full", 20, "train.patience=2")
        metrics = full.train()
    assert full.state.iteration == 8 and metrics == {"acc": 0.54}
    assert "early stopping: 2 evaluation(s) without a better acc than 0.6000 (iteration 4); " \
           "stopped at iteration 8 of 20" in caplog.text
    assert "best acc so far: 0.6000 at iteration 4" in caplog.text
    best = read_checkpoint(tmp_path / "full" / ckpt.BEST)
    assert best["meta"]["best"] == {"metric": "acc", "value": 0.6, "iteration": 4}
    assert best["iteration"] == 4
    assert read_checkpoint(tmp_path / "full" / ckpt.LAST)["iteration"] == 8
    assert read_checkpoint(tmp_path / "full" / ckpt.FINAL)["iteration"] == 8
    at4 = _trainer(tmp_path / "at4", 4)  # the same run to iteration 4: the best weights
    at4.train()
    for k, v in at4.model.state_dict().items():
        torch.testing.assert_close(best["model"][k], v, rtol=0, atol=0, msg=k)
    # stopped at 6 (one evaluation without improvement), resumed: stops at 8, same weights
    _scored(tmp_path / "part", 6, "train.patience=2").train()
    resumed = _scored(tmp_path / "part", 20, "train.patience=2")
    assert resumed.resume() and resumed.state.best["iteration"] == 4
    assert resumed.state.evals_since_best == 1
    resumed.train()
    assert resumed.state.iteration == 8
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert read_checkpoint(tmp_path / "part" / ckpt.BEST)["meta"]["best"]["iteration"] == 4
    # without patience the run goes on, and a later best replaces model_best.pth
    _scored(tmp_path / "nopatience", 20).train()
    assert read_checkpoint(tmp_path / "nopatience" / ckpt.BEST)["meta"]["best"] == {
        "metric": "acc", "value": 0.7, "iteration": 12}


def test_tensorboard_events_hold_the_records_and_a_resume_purges(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(tag: str) -> list[tuple[int, float]]:
        acc = EventAccumulator(str(tmp_path / "tensorboard"))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    t = _trainer(tmp_path, 6, _step, "train.tensorboard=true", "train.eval_period=3")
    t.train()
    t.writer.add_image("picture", np.zeros((8, 12, 3), np.uint8), 6)
    t.writer.close()
    jsonl = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss = [(r["iteration"], r["loss"]) for r in jsonl if "loss" in r]
    assert [s for s, _ in scalars("loss")] == [s for s, _ in loss] == [2, 4, 6]
    assert [v for _, v in scalars("loss")] == pytest.approx([v for _, v in loss])
    assert [s for s, _ in scalars("val/acc")] == [3, 6]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["images"] == ["picture"]
    # a run resumed from iteration 4 writes 6 again: one value per step remains
    ckpt_path = tmp_path / "at4.pth"
    part = _trainer(tmp_path / "p", 4, _step, "train.tensorboard=true")
    part.train()
    (tmp_path / "p" / ckpt.LAST).rename(ckpt_path)
    resumed = _trainer(tmp_path, 6, _step, "train.tensorboard=true", "train.eval_period=3")
    assert resumed.resume(ckpt_path)
    resumed.train()
    assert [s for s, _ in scalars("loss")] == [2, 4, 6]
