"""tools/benchmark.py and its pieces, at tiny sizes (the figures themselves are not checked:
timings are not tests; what is checked is that every figure is produced and that the
torchvision comparison really compares the same computation)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from detres.benchmark import suite as bench_suite
from detres.benchmark.core import (
    alternate,
    match_detections,
    summarize,
    synthetic_targets,
)
from detres.benchmark.reference import build_torchvision_frcnn
from detres.config import load_config
from detres.data.demo_det import generate_demo_det

SMALL_R50 = [
    "model.input.min_size_test=128", "model.input.max_size_test=160",
    "model.input.min_size_train=[128]", "model.input.max_size_train=160",
    "model.rpn.pre_nms_topk_test=200", "model.rpn.post_nms_topk_test=100",
    "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.roi_heads.batch_size_per_image=64",
]


def test_summarize_and_alternate_order() -> None:
    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert s["median_s"] == 2.5 and s["min_s"] == 1.0 and s["max_s"] == 4.0 and s["n"] == 4
    calls: list[str] = []
    t = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                  torch.device("cpu"), warmup=1, repeats=2)
    assert calls == ["a", "b"] * 3 and len(t["a"]) == len(t["b"]) == 2
    with pytest.raises(ValueError):
        summarize([])


def test_peak_memory_sees_an_allocation() -> None:
    """In a fresh process, as the tool runs (in a long test session, memory freed by earlier
    tests may be reused while resident, which the RSS sampler cannot see)."""
    if not Path("/proc/self/statm").exists():
        pytest.skip("RSS sampling needs Linux /proc")
    code = (
        "import time, torch\n"
        "from detres.benchmark.core import PeakMemory\n"
        "with PeakMemory(torch.device('cpu')) as mem:\n"
        "    x = torch.ones(64 * 2**20 // 4)\n"
        "    x += 1\n"
        "    time.sleep(0.05)\n"
        "    del x\n"
        "print(mem.peak_mib)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert 40 < float(out.strip().splitlines()[-1]) < 200


def test_match_detections() -> None:
    ref = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
           "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
    same = match_detections(ref, {k: v.clone() for k, v in ref.items()})
    assert same["matched"] == 1.0 and same["max_box_diff_px"] == 0.0
    other = {**ref, "labels": torch.tensor([1, 3])}  # second box: wrong label
    assert match_detections(ref, other)["matched"] == 0.5
    assert synthetic_targets(2, (64, 80), 5)[1]["gt_boxes"][:, 2].max() <= 80


def test_benchmark_tool_vs_torchvision(tmp_path: Path, tool: Callable[[str], ModuleType]
                                       ) -> None:
    out = tmp_path / "bench.json"
    argv = ["--cfg", "coco_r50_fpn", "--image-size", "96x120", "--repeats", "1",
            "--warmup", "0", "--vs-torchvision", "--ablation", "--skip", "train",
            "--precision", "fp32",
            "--json", str(out), *SMALL_R50]
    assert tool("benchmark").main(argv) == 0
    res = json.loads(out.read_text())
    vs = res["vs_torchvision"]
    assert set(vs["inference"]) == {"torchvision_fp32", "ours_fp32"}
    assert set(vs["train"]) == {"torchvision_fp32", "ours_fp32"} and vs["batch"] == 2
    agree = vs["agreement"]["fp32"][0]
    # random weights give near-tied scores: a rare top-k/NMS flip may swap one detection;
    # tests/test_det_parity.py is the exact check
    assert agree["ref"] > 0 and agree["matched"] >= 0.95 and agree["max_score_diff"] < 1e-4
    assert agree["max_box_diff_px"] < 1e-2
    assert vs["inference_speedup"]["ours_fp32"] > 0
    assert set(res["ablation"]) == {f"{ops}/{layout}/fp32" for ops in ("reference_ops", "fast_ops")
                                    for layout in ("nchw", "channels_last")}
    # the random weights were calibrated: the RPN keeps its post-NMS top-k, as a trained one
    assert res["inference"]["rois_per_image"] == 100
    # the FLOPs behind GFLOP/s: torchvision's own backbone + FPN, counted independently
    eff = res["efficiency"]
    tv = build_torchvision_frcnn(load_config("coco_r50_fpn", SMALL_R50))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tv.backbone(torch.zeros(1, 3, *eff["input"]))
    assert eff["input"] == [128, 160]  # 96x120 -> 128x160 (torchvision's rule), padded to 32
    assert eff["gflop"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)
    assert 0 < eff["fraction"] and eff["conv3x3_gflops"] > 0
    assert res["inference"]["median_s"] > 0
    assert res["machine"]["threads"] == torch.get_num_threads()
    for key in ("cpu", "flags", "torch_cpu_capability", "bf16_native"):  # never compared blind
        assert key in res["machine"]


def test_benchmark_tool_loader_and_training(tmp_path: Path, tool: Callable[[str], ModuleType],
                                            tiny_det: list[str],
                                            demo_data: Callable[[Path], list[str]]) -> None:
    generate_demo_det(tmp_path / "data", num_train=8, num_val=4)
    out = tmp_path / "bench.json"
    argv = ["--cfg", "demo", "--image-size", "100x120", "--repeats", "1", "--warmup", "0",
            "--loader", "--workers", "0", "--precision", "bf16", "--skip", "efficiency",
            "--json", str(out), *tiny_det, *demo_data(tmp_path / "data"),
            "solver.batch_size=2"]
    assert tool("benchmark").main(argv) == 0
    res = json.loads(out.read_text())
    assert res["loader"]["images"] == 40 and res["loader"]["images_per_s"] > 0
    assert res["train"]["batch"] == 2 and res["train"]["images_per_s"] > 0
    with pytest.raises(SystemExit):
        tool("benchmark").main(["--cfg", "demo", "--image-size", "100"])


def test_bench_ops_small() -> None:
    r = bench_suite.bench_ops(torch.device("cpu"), hw=(64, 96), rois=20, repeats=1)
    assert set(r["multiscale_roi_align"]) == {
        f"{p}/{k}" for p in ("forward", "forward_backward")
        for k in ("torchvision", "ours", "ours_channels_last")}


def test_reference_requires_r50_fpn() -> None:
    with pytest.raises(ValueError, match="ResNet-50-FPN"):
        build_torchvision_frcnn(load_config("demo.yaml"))


def test_benchmark_tool_vs_onnx(tmp_path: Path, tool: Callable[[str], ModuleType]) -> None:
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnxscript", reason="needs the [export] extra")
    out = tmp_path / "bench.json"
    argv = ["--cfg", "coco_r50_fpn", "--image-size", "96x120", "--repeats", "1", "--warmup",
            "0", "--vs-onnx", "--skip", "inference", "train", "efficiency", "--json", str(out),
            *SMALL_R50]
    assert tool("benchmark").main(argv) == 0
    vs = json.loads(out.read_text())["vs_onnx"]
    assert set(vs["inference"]) == {"torchvision_fp32", "detres_fp32", "onnxruntime_fp32"}
    assert vs["export_check"]["ok"]
    for agree in vs["agreement"].values():  # see test_benchmark_tool_vs_torchvision
        assert agree["ref"] > 0 and agree["matched"] >= 0.95 and agree["max_score_diff"] < 1e-4
    assert "Conv" in vs["onnxruntime_profile"] and vs["onnxruntime_vs_detres"] > 0
