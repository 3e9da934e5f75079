"""The tools under DDP: two CPU processes (gloo) launched by torchrun. Training succeeds, only
rank 0 writes, and the distributed evaluation (each rank scores its shard, results gathered)
covers the whole val split and equals a single-process evaluation of the same weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

# the tiny models and data sets of the single-process end-to-end tests
from detres.config import load_config
from detres.data.cls_loader import build_cls_dataset
from detres.data.demo_det import generate_demo_det
from detres.data.synthetic_cls import generate_synthetic_cls
from detres.engine.cls import build_model, evaluate_classifier
from detres.utils.logging import read_jsonl

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(tool: str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 tools/<tool>.py ARGS`` on this machine's CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(REPO / "tools" / f"{tool}.py"), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"torchrun {tool} failed:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    return proc


def check_single_writer(out: Path, iterations: int, expected: set[str]) -> None:
    """Exactly the files rank 0 writes, each record once, no leftover temp files."""
    assert expected <= {p.name for p in out.iterdir()}
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    rows = read_jsonl(out / "metrics.jsonl")
    train = Counter(r["iteration"] for r in rows if any(k.startswith("loss") for k in r))
    assert train == {i: 1 for i in range(1, iterations + 1)}
    log = (out / "log.txt").read_text().splitlines()
    starts = [ln for ln in log if "world size" in ln]
    assert len(starts) == 1 and "world size 2" in starts[0]


def test_pretrain_cls_ddp(tmp_path: Path, tiny_cls: list[str],
                          synthetic_data: Callable[[Path], list[str]]) -> None:
    generate_synthetic_cls(tmp_path / "data", spec="synthetic_cls", train_per_class=4,
                           val_per_class=3)
    out = tmp_path / "out"
    ov = [*synthetic_data(tmp_path / "data"), *tiny_cls, "solver.max_iter=3"]
    proc = torchrun("pretrain_cls", ["--cfg", "imagenet_resnet18.yaml", "--out-dir", str(out),
                                     *ov])
    assert proc.stdout.count("top-1 error") == 1  # the summary, from rank 0 only
    check_single_writer(out, 3, {"metrics.jsonl", "curves.png", "config.yaml", "log.txt",
                                 "model_final.pth", "checkpoint_last.pth"})
    (val,) = [r for r in read_jsonl(out / "metrics.jsonl") if "val/top1_err" in r]
    assert val["val/num_images"] == 30  # 10 classes x 3, an odd share per rank included

    # one process, the same weights: the same numbers (so every rank evaluated the weights
    # rank 0 saved, BN statistics included)
    cfg = load_config("imagenet_resnet18.yaml", [*ov, f"model.weights={out / 'model_final.pth'}",
                                                 "model.num_classes=10"])
    model = build_model(cfg, 10)
    single = evaluate_classifier(model, build_cls_dataset(cfg, train=False), cfg,
                                 torch.device("cpu"))
    assert single["num_images"] == 30
    assert single["top1_err"] == pytest.approx(val["val/top1_err"], abs=1e-9)
    assert single["top5_err"] == pytest.approx(val["val/top5_err"], abs=1e-9)
    assert single["loss"] == pytest.approx(val["val/loss"], rel=1e-5)


def test_train_det_ddp(tmp_path: Path, tool: Callable[[str], ModuleType], tiny_det: list[str],
                      demo_data: Callable[[Path], list[str]]) -> None:
    generate_demo_det(tmp_path / "data", num_train=12, num_val=7)
    out = tmp_path / "out"
    ov = [*demo_data(tmp_path / "data"), *tiny_det, "solver.max_iter=2"]
    torchrun("train_det", ["--cfg", "demo.yaml", "--out-dir", str(out), *ov])
    check_single_writer(out, 2, {"metrics.jsonl", "curves.png", "config.yaml", "log.txt",
                                 "model_final.pth", "metrics.json",
                                 "coco_results_tiny_val.json"})
    metrics = json.loads((out / "metrics.json").read_text())
    # every val image was scored once: COCO results gathered from both ranks' shards
    results = json.loads((out / "coco_results_tiny_val.json").read_text())
    val_ids = {im["id"] for im in json.loads(
        (tmp_path / "data" / "demo_det" / "annotations" / "instances_val.json").read_text()
    )["images"]}
    assert {r["image_id"] for r in results} == val_ids and len(val_ids) == 7

    # tools/eval.py in one process on the same weights gives the same numbers
    m_json = tmp_path / "single" / "m.json"
    m_json.parent.mkdir()
    assert tool("eval").main(["--cfg", str(out / "config.yaml"), "--weights",
                              str(out / "model_final.pth"), "--out", str(m_json)]) == 0
    single = json.loads(m_json.read_text())
    for key in ("mAP@.5", "mAP@[.5,.95]", "per_class"):
        assert single[key] == metrics[key], key
    single_results = json.loads((m_json.parent / "coco_results_tiny_val.json").read_text())
    assert len(single_results) == len(results)
