"""CUDA paths: RoIAlign kernel parity on the GPU, AMP (bf16, fp16 with GradScaler),
channels-last, cudnn benchmark, the benchmark tool. Marked ``gpu``: skipped without CUDA."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from detres.config import load_config
from detres.data.demo_det import generate_demo_det
from detres.modeling import build_detector
from detres.modeling.roi_align import roi_align
from detres.utils.device import autocast_context

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_cuda_matches_torchvision(aligned: bool) -> None:
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 40, 50, device=CUDA).contiguous(memory_format=torch.channels_last)
    xy = torch.rand(300, 2, device=CUDA) * 350
    boxes = torch.cat([xy, xy + torch.rand(300, 2, device=CUDA) * 150], 1)
    rois = torch.cat([torch.randint(0, 2, (300, 1), device=CUDA).float(), boxes], 1)
    a, b = feats.clone().requires_grad_(), feats.clone().requires_grad_()
    ref = tv_roi_align(a, rois, (7, 7), 1 / 8, 0, aligned)
    got = roi_align(b, rois, 7, 1 / 8, 0, aligned)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(ref)
    ref.backward(g)
    got.backward(g)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_detector_amp_channels_last_cuda(amp: str, tiny_det: list[str]) -> None:
    torch.backends.cudnn.benchmark = True
    cfg = load_config("demo.yaml", tiny_det)
    model = build_detector(cfg).to(CUDA).to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 128, 160, device=CUDA).contiguous(memory_format=torch.channels_last)
    targets = [{"gt_boxes": torch.tensor([[10.0, 10, 80, 90]], device=CUDA),
                "gt_classes": torch.tensor([2], device=CUDA), "image_size": (128, 160)}] * 2
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    with autocast_context(CUDA, amp):
        losses = model.losses(images, targets)
    scaler.scale(sum(losses.values())).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with autocast_context(CUDA, amp):
        dets = model.inference(images, [(128, 160), (128, 160)])
    assert all(d["boxes"].device.type == "cuda" for d in dets)


def test_train_det_fp16_cuda(tmp_path: Path, tool: Callable[[str], ModuleType],
                            tiny_det: list[str], demo_data: Callable[[Path], list[str]]) -> None:
    generate_demo_det(tmp_path / "data", num_train=8, num_val=4)
    out = tmp_path / "run"
    argv = ["--cfg", "demo.yaml", "--out-dir", str(out), *demo_data(tmp_path / "data"),
            *tiny_det, "train.device=cuda", "train.amp=fp16", "train.channels_last=true",
            "solver.max_iter=4", "solver.batch_size=2", "solver.warmup_iters=1",
            "solver.steps=[3]", "train.eval_period=4", "train.checkpoint_period=4",
            "data.num_workers=0"]
    assert tool("train_det").main(argv) == 0
    assert "mAP@.5" in json.loads((out / "metrics.json").read_text())


def test_benchmark_tool_cuda(tmp_path: Path, tool: Callable[[str], ModuleType],
                            tiny_det: list[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--cfg", "demo", "--device", "cuda", "--precision", "fp16", "--image-size",
            "100x120", "--repeats", "2", "--json", str(out), *tiny_det]
    assert tool("benchmark").main(argv) == 0
    res = json.loads(out.read_text())
    assert res["inference"]["peak_mib"] > 0 and "gpu" in res["machine"]
