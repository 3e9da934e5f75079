"""Training that survives the cluster: each fault with gloo on CPU, two processes under
torchrun, the tiny classification run of the DDP tests (or a linear model for the NaN case).

- preemption: SIGTERM to torchrun (what Kubernetes sends) -> every rank ends its step, rank 0
  writes a checkpoint, both exit 3 with one line; ``--resume`` ends with the weights of the
  uninterrupted run;
- a lost rank under elastic torchrun (``--max-restarts 1``): kill -9 of rank 1 -> the group
  restarts, resumes by itself, ends with the uninterrupted run's weights;
- a stuck rank (SIGSTOP): the other ends after ``train.dist_timeout_s`` with a message;
- NaN on one rank: both stop at the same step with the same line (exit 4);
- two "nodes" (two torchrun agents, c10d rendezvous on 127.0.0.1) = one node with two
  processes, to the bit;
- a full disk while writing a checkpoint: the previous one stays, names path and cause;
- a corrupt image met by rank 1's DataLoader worker: the same line on both ranks, exit 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from types import ModuleType

import pytest
import torch

from detres.config import load_config
from detres.data.cls_loader import build_cls_dataset
from detres.data.sampling import InfiniteSampler
from detres.data.synthetic_cls import generate_synthetic_cls
from detres.utils.io import read_checkpoint
from detres.utils.logging import read_jsonl

REPO = Path(__file__).resolve().parents[1]
ITERS = 120  # long enough to be interrupted mid-run (~20 it/s here)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or sys.platform != "linux",
                                reason="needs torch.distributed and Linux's /proc")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class Launch:
    """One torchrun agent in the background, its output in files."""

    def __init__(self, script: Path, args: list[str], log: Path, *, nproc: int = 2,
                 launcher: list[str] | None = None) -> None:
        port = _free_port()
        launcher = launcher or ["--nnodes", "1", "--master-addr", "127.0.0.1",
                                "--master-port", str(port)]
        self.stdout, self.stderr = log.with_suffix(".out"), log.with_suffix(".err")
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher,
               "--nproc-per-node", str(nproc), str(script), *args]
        with open(self.stdout, "w") as o, open(self.stderr, "w") as e:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=o, stderr=e)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"hung past {timeout} s:\n{self.err()[-4000:]}") from None

    def kill(self) -> None:
        for pid in self.workers().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()

    def err(self) -> str:
        return self.stderr.read_text()

    def workers(self) -> dict[int, int]:
        """rank -> pid of the agent's live worker processes (from /proc)."""
        out = {}
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for pid in (task / "children").read_text().split():
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    ranks = [v[5:] for v in env if v.startswith(b"RANK=")]
                    if ranks:
                        out[int(ranks[0])] = int(pid)
        return out


def train_cls(data: Path, out: Path, *extra: str, tool: str = "pretrain_cls") -> list[str]:
    """Arguments of the tiny run (the conftest's TINY_R18 with a longer schedule)."""
    return [str(REPO / "tools" / f"{tool}.py"), "--cfg", "imagenet_resnet18.yaml",
            "--out-dir", str(out), f"data.root={data}",
            "data.train=[{name: tiny_train, format: synthetic_cls, path: synthetic_cls, "
            "split: train}]",
            "data.test=[{name: tiny_val, format: synthetic_cls, path: synthetic_cls, "
            "split: val}]",
            "model.backbone.width_per_group=8", "data.cls_aug.crop_size=32",
            "data.cls_aug.scale_min=32", "data.cls_aug.scale_max=40",
            "data.cls_aug.test_resize=32", "solver.batch_size=8",
            "solver.reference_batch_size=0", "solver.base_lr=0.05", "solver.schedule=multistep",
            "solver.steps=[60]", "solver.warmup_iters=2", "train.log_period=1",
            "train.checkpoint_period=3", "train.eval_period=0", "train.device=cpu",
            "data.num_workers=0", f"solver.max_iter={ITERS}", *extra]


def launch(args: list[str], log: Path, **kw: object) -> Launch:
    return Launch(Path(args[0]), args[1:], log, **kw)  # type: ignore[arg-type]


def last_iteration(out: Path) -> int:
    try:
        rows = read_jsonl(out / "metrics.jsonl")
    except (OSError, json.JSONDecodeError):
        return 0
    return max((r["iteration"] for r in rows), default=0)


def checkpoint_iteration(out: Path) -> int:
    try:
        return int(read_checkpoint(out / "checkpoint_last.pth")["iteration"])
    except Exception:  # not there yet
        return 0


def wait_until(cond: Callable[[], bool], run: Launch, what: str, timeout: float = 90) -> None:
    t0 = time.monotonic()
    while not cond():
        if run.proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{run.err()[-4000:]}")
        if time.monotonic() - t0 > timeout:
            run.kill()
            raise AssertionError(f"no {what} after {timeout} s:\n{run.err()[-4000:]}")
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{len(diff)} of {len(wa)} tensors differ, e.g. {diff[:3]}"


def exit_codes(err: str) -> list[int]:
    """The workers' exit codes in torchrun's failure report, in rank order."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)", err)
    return [int(c) for _, c in sorted(found)]


def lines(text: str, prefix: str) -> list[str]:
    """Each line that ``prefix`` starts; two ranks share one stderr, so a line may begin in
    the middle of the other rank's progress bar."""
    return [prefix + m for m in re.findall(re.escape(prefix) + r"([^\r\n]*)", text)]


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults_data")
    generate_synthetic_cls(root, spec="synthetic_cls", train_per_class=8, val_per_class=2)
    return root


@pytest.fixture(scope="module")
def reference(cls_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted two-process run: its final weights."""
    out = tmp_path_factory.mktemp("faults_ref") / "out"
    run = launch(train_cls(cls_data, out), out.parent / "ref")
    assert run.wait() == 0, run.err()[-4000:]
    return out / "model_final.pth"


def test_preemption_checkpoints_and_resumes_exactly(cls_data: Path, reference: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = launch(train_cls(cls_data, out), tmp_path / "a")
    wait_until(lambda: last_iteration(out) >= 10, run, "iteration 10")
    run.proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to its workers
    run.wait()
    err = run.err()
    stopped = lines(err, "pretrain_cls.py: stopped: preempted")
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-4000:]  # one line per rank
    k = checkpoint_iteration(out)
    assert 10 <= k < ITERS and f"after iteration {k} of {ITERS}" in stopped[0]
    assert last_iteration(out) == k and not (out / "model_final.pth").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]

    again = launch(train_cls(cls_data, out, "--resume"), tmp_path / "b")
    assert again.wait() == 0, again.err()[-4000:]
    assert f"at iteration {k}" in (out / "log.txt").read_text()
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1))  # one record each
    same_weights(out / "model_final.pth", reference)


def test_signal_to_one_rank_stops_both(cls_data: Path, tmp_path: Path) -> None:
    """SLURM's --signal=USR1@90 reaching one worker: both stop at the same step, exit 3."""
    out = tmp_path / "out"
    run = launch(train_cls(cls_data, out), tmp_path / "a")
    wait_until(lambda: last_iteration(out) >= 5, run, "iteration 5")
    os.kill(run.workers()[1], signal.SIGUSR1)
    run.wait()
    err = run.err()
    stopped = lines(err, "pretrain_cls.py: stopped: preempted: rank 1 received SIGUSR1")
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-4000:]
    assert exit_codes(err) == [3, 3], err[-3000:]  # torchrun's report of both workers
    assert f"after iteration {checkpoint_iteration(out)} of" in stopped[0]


def test_lost_rank_elastic_restart_resumes_by_itself(cls_data: Path, reference: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    port = _free_port()
    run = launch(train_cls(cls_data, out), tmp_path / "a",
                 launcher=["--nnodes", "1", "--max-restarts", "1", "--rdzv-backend", "c10d",
                           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lost",
                           "--monitor-interval", "0.2"])
    wait_until(lambda: checkpoint_iteration(out) >= 9, run, "a checkpoint at iteration 9")
    os.kill(run.workers()[1], signal.SIGKILL)
    assert run.wait() == 0, run.err()[-4000:]
    log = (out / "log.txt").read_text()
    assert "torchrun restart 1" in log
    resumed = [ln for ln in log.splitlines() if "resumed from" in ln]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 9
    same_weights(out / "model_final.pth", reference)


def test_stuck_rank_ends_at_the_collective_timeout(cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = launch(train_cls(cls_data, out, "train.dist_timeout_s=4"), tmp_path / "a")
    wait_until(lambda: last_iteration(out) >= 5, run, "iteration 5")
    pids = run.workers()
    os.kill(pids[1], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        while Path(f"/proc/{pids[0]}").exists() and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        waited = time.monotonic() - t0
    finally:
        os.kill(pids[1], signal.SIGCONT)
    run.wait()
    err = run.err()
    (line,) = lines(err, "pretrain_cls.py: error: rank 0 (of 2) lost the other ranks")
    assert "timed out" in line and "checkpoint" in line, line
    assert 3 < waited < 30, waited  # the 4 s timeout, not torch's 30 min


def test_nan_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = Launch(REPO / "tests" / "fault_worker.py", [str(out), "1", "3"], tmp_path / "a")
    run.wait(timeout=90)  # no rank waits forever in the all-reduce
    err = run.err()
    msgs = lines(err, "fault_worker.py: error: non-finite loss")
    assert len(msgs) == 2 and msgs[0] == msgs[1], err[-4000:]
    assert "at iteration 3 on rank 1: {'loss_l2': nan}" in msgs[0]
    assert "rank 0" not in msgs[0].split("stopped")[0]
    assert "checkpoint_last.pth (iteration 2)" in msgs[0]
    assert exit_codes(err) == [4, 4], err[-3000:]  # torchrun's report of both workers
    assert checkpoint_iteration(out) == 2


def test_two_nodes_equal_one_node(cls_data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    port = _free_port()
    agents = [launch(train_cls(cls_data, out), tmp_path / f"node{n}", nproc=1,
                     launcher=["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "two"]) for n in range(2)]
    for a in agents:
        assert a.wait() == 0, a.err()[-4000:]
    assert "world size 2" in (out / "log.txt").read_text()
    same_weights(out / "model_final.pth", reference)


def test_corrupt_image_in_rank1_worker(cls_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(cls_data, data)
    args = train_cls(data, tmp_path / "out", "data.num_workers=1", "solver.max_iter=8")
    cfg = load_config("imagenet_resnet18.yaml", args[5:])
    ds = build_cls_dataset(cfg, train=True)
    per_rank = cfg.solver.batch_size // 2
    draws = InfiniteSampler(len(ds), seed=cfg.train.seed, rank=1, world_size=2)
    index, _ = next(islice(iter(draws), 3 * per_rank, None))  # rank 1's first at iteration 3
    bad = Path(ds.sources[0].samples[index][0])
    bad.write_bytes(b"\x89PNG not really")
    run = launch(args, tmp_path / "a")
    run.wait(timeout=90)
    err = run.err()
    msgs = lines(err, "pretrain_cls.py: error: rank 1 (of 2) could not load a batch")
    assert len(msgs) == 2 and msgs[0] == msgs[1], err[-4000:]
    assert str(bad) in msgs[0]
    assert "[rank0]:" not in err and "[rank1]:" not in err  # no worker traceback
    assert exit_codes(err) == [2, 2], err[-3000:]


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path`` (root on Linux); yields False where it cannot mount."""
    path.mkdir(parents=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0 if shutil.which("mount") else False
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_keeps_the_previous_checkpoint(cls_data: Path, tmp_path: Path,
                                                 tool: Callable[[str], ModuleType],
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    main = tool("pretrain_cls").main
    short = ["solver.max_iter=9", "solver.steps=[6]"]
    ref = tmp_path / "ref"
    assert main([*train_cls(cls_data, ref, *short)[1:]]) == 0
    # a checkpoint is ~1.5 MB: the disk holds the first, not a second beside it (atomic
    # writes need both while the new one is written)
    with small_disk(tmp_path / "disk", "2600k") as mounted:
        if not mounted:  # no tmpfs here: the write fails the same way, by hand
            import detres.utils.io as io_mod

            real = io_mod.torch.save
            calls = {"n": 0}

            def save(obj: object, f: object) -> None:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise OSError(28, "No space left on device")
                real(obj, f)  # type: ignore[arg-type]

            monkeypatch.setattr(io_mod.torch, "save", save)
        out = tmp_path / "disk" / "out"
        capsys.readouterr()
        assert main([*train_cls(cls_data, out, *short)[1:]]) == 2
        err = capsys.readouterr().err
        assert f"could not write checkpoint {out / 'checkpoint_last.pth'}: No space left on " \
               "device" in err and "the last good checkpoint is" in err, err
        assert checkpoint_iteration(out) == 3  # the previous one, readable
        assert not [p for p in out.iterdir() if ".tmp" in p.name]
        monkeypatch.undo()
        moved = tmp_path / "moved"
        shutil.copytree(out, moved)
    assert main([*train_cls(cls_data, moved, *short, "--resume")[1:]]) == 0
    same_weights(moved / "model_final.pth", ref / "model_final.pth")
