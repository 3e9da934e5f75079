"""The figures of ``tools/benchmark.py``, one function each, returning plain dicts.

Inference latency is per image (batch 1, through ``predict``: resize, normalize, detect);
a training iteration is forward + backward + SGD step on a fixed batch; GFLOP/s divide the
backbone + neck FLOPs by the time of ``model.features``; the loader figure is images/s of
the configured training loader, drained without a model.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import MultiScaleRoIAlign

from detres.benchmark.core import (
    PeakMemory,
    alternate,
    amp_name,
    count_rois,
    detres_inference,
    detres_train_step,
    feature_flops,
    large_conv,
    match_detections,
    padded_test_size,
    summarize,
    synthetic_images,
    synthetic_targets,
)
from detres.benchmark.reference import torchvision_reference
from detres.config import Config
from detres.data.det_loader import build_det_train_loader
from detres.export import OnnxDetector, export_onnx
from detres.modeling.faster_rcnn import FasterRCNN
from detres.modeling.fastpath import reference_ops
from detres.modeling.roi_align import multilevel_roi_align
from detres.preprocess import pad_batch, resize_image, resized_hw
from detres.utils.device import autocast_context


def _train_inputs(cfg: Config, hw: tuple[int, int], batch: int, seed: int = 0):
    """``batch`` synthetic images resized as the training loader does (the first training
    size), random targets for them, and that size."""
    i = cfg.model.input
    size = resized_hw(*hw, short=i.min_size_train[0], max_size=i.max_size_train,
                      rule=i.resize_rule)
    images = [resize_image(x, size, i.resize_rule) for x in synthetic_images(batch, hw, seed)]
    targets = synthetic_targets(batch, size, cfg.model.num_classes, seed=seed)
    return images, targets, size


def bench_inference(model: FasterRCNN, hw: tuple[int, int], device: torch.device,
                    precision: str, *, warmup: int, repeats: int) -> dict[str, Any]:
    run = detres_inference(model.eval(), synthetic_images(1, hw), device, precision)
    with PeakMemory(device) as mem:
        times = alternate({"ours": run}, device, warmup=warmup, repeats=repeats)["ours"]
    return {**summarize(times), "peak_mib": mem.peak_mib, "image_size": list(hw),
            "rois_per_image": count_rois(model, run)}


def bench_train(cfg: Config, model: FasterRCNN, hw: tuple[int, int], device: torch.device,
                precision: str, channels_last: bool, *, batch: int, warmup: int,
                repeats: int) -> dict[str, Any]:
    images, targets, size = _train_inputs(cfg, hw, batch)
    work = copy.deepcopy(model)  # the optimizer steps must not change the caller's model
    step = detres_train_step(work, pad_batch(images, cfg.model.input.size_divisibility),
                             targets, device, precision, channels_last)
    with PeakMemory(device) as mem:
        times = alternate({"ours": step}, device, warmup=warmup, repeats=repeats)["ours"]
    return {**summarize(times), "peak_mib": mem.peak_mib, "batch": batch,
            "train_size": list(size), "images_per_s": batch / summarize(times)["median_s"]}


def bench_efficiency(model: FasterRCNN, cfg: Config, hw: tuple[int, int],
                     device: torch.device, precision: str, channels_last: bool, *,
                     warmup: int, repeats: int) -> dict[str, Any]:
    """Achieved GFLOP/s of backbone + neck beside a large 3x3 convolution's, the two timed
    alternately (A B A B) in one loop."""
    ph, pw = padded_test_size(model, hw)
    flops = feature_flops(model, (ph, pw))
    x = torch.rand(1, 3, ph, pw, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()

    def run() -> None:
        with torch.inference_mode(), autocast_context(device, amp_name(precision)):
            model.features(x)
    conv, conv_flops = large_conv(device, precision, channels_last)
    times = alternate({"f": run, "conv": conv}, device, warmup=warmup, repeats=repeats)
    t = summarize(times["f"])
    achieved = flops / t["median_s"] / 1e9
    peak = conv_flops / summarize(times["conv"])["median_s"] / 1e9
    head = _box_head_efficiency(model, cfg, device, precision, channels_last, warmup=warmup,
                                repeats=repeats)
    return {"input": [ph, pw], "gflop": flops / 1e9, "features_s": t["median_s"],
            "achieved_gflops": achieved, "conv3x3_gflops": peak, "fraction": achieved / peak,
            "box_head": head}


def _box_head_efficiency(model: FasterRCNN, cfg: Config, device: torch.device, precision: str,
                         channels_last: bool, *, warmup: int, repeats: int) -> dict[str, Any]:
    """The box head (res5 per RoI for C4, fc6/fc7 otherwise) on ``post_nms_topk_test`` RoIs;
    its FLOPs are counted on 4 RoIs and scaled (they are linear in the RoI count)."""
    r, s = cfg.model.rpn.post_nms_topk_test, cfg.model.roi_heads.pooler_resolution
    c = (cfg.model.fpn.out_channels if model.neck is not None
         else model.backbone.output_shape()[model.backbone_features[0]].channels)
    head = model.roi_heads.box_head
    x = torch.randn(r, c, s, s, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        head(x[:4])
    flops = counter.get_total_flops() * r / 4

    def run() -> None:
        with torch.inference_mode(), autocast_context(device, amp_name(precision)):
            head(x)
    t = summarize(alternate({"h": run}, device, warmup=warmup, repeats=repeats)["h"])
    return {"rois": r, "gflop": flops / 1e9, "seconds": t["median_s"],
            "achieved_gflops": flops / t["median_s"] / 1e9}


def bench_loader(cfg: Config, *, workers: int, batch: int, batches: int) -> dict[str, Any]:
    """Images/s of the training loader (decode, augment, collate) with ``workers`` workers:
    each batch's wait is timed after the first ``workers + 1`` batches (start-up)."""
    cfg = copy.deepcopy(cfg)
    cfg.data.num_workers = workers
    it = iter(build_det_train_loader(cfg, batch))
    for _ in range(workers + 1):  # workers started, their first batches out
        next(it)
    waits, n = [], 0
    t0 = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        images, _ = next(it)
        waits.append(time.perf_counter() - t)
        n += len(images)
    dt = time.perf_counter() - t0
    return {"workers": workers, "batch": batch, "images": n, "seconds": dt,
            "images_per_s": n / dt, "batch_wait": summarize(waits)}


def bench_vs_torchvision(cfg: Config, hw: tuple[int, int], device: torch.device,
                         precision: str, channels_last: bool, *, batch: int, warmup: int,
                         repeats: int, weights: str | None = None,
                         train: bool = True) -> dict[str, Any]:
    """torchvision's R50-FPN and ours with the same weights and settings, A B A B."""
    tv, ours = torchvision_reference(cfg, weights=weights)
    tv, ours = tv.to(device), ours.to(device)
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    images = [x.to(device) for x in synthetic_images(2, hw, seed=1)]

    def tv_run() -> list[dict[str, Any]]:
        with torch.inference_mode():
            return tv(images[:1])
    fns = {"torchvision_fp32": tv_run,
           "ours_fp32": detres_inference(ours, images[:1], device, "fp32")}
    if precision != "fp32":
        fns[f"ours_{precision}"] = detres_inference(ours, images[:1], device, precision)
    times = alternate(fns, device, warmup=warmup, repeats=repeats)
    out: dict[str, Any] = {"inference": {k: summarize(v) for k, v in times.items()}}
    ref = tv_run()
    out["agreement"] = {
        k.removeprefix("ours_"): [match_detections(r, o) for r, o in zip(
            ref, detres_inference(ours, images[:1], device, k.removeprefix("ours_"))(),
            strict=True)]
        for k in fns if k.startswith("ours_")}
    if train:
        imgs, targets, size = _train_inputs(cfg, hw, batch, seed=2)
        tv_train = copy.deepcopy(tv).train()
        tv_train.transform.min_size = (size[0],)  # already resized: the transform keeps it
        tv_params = [p for p in tv_train.parameters() if p.requires_grad]
        tv_opt = torch.optim.SGD(tv_params, lr=1e-4, momentum=0.9)
        ids = torch.tensor(ours.category_ids, device=device)
        tv_imgs = [x.to(device) for x in imgs]
        tv_targets = [{"boxes": t["gt_boxes"].to(device), "labels": ids[t["gt_classes"] - 1]}
                      for t in targets]

        def tv_step() -> float:
            loss = sum(tv_train(tv_imgs, tv_targets).values())
            tv_opt.zero_grad(set_to_none=True)
            loss.backward()
            tv_opt.step()
            return float(loss.detach())
        batch_t = pad_batch(imgs, cfg.model.input.size_divisibility)
        steps = {"torchvision_fp32": tv_step,
                 "ours_fp32": detres_train_step(copy.deepcopy(ours), batch_t, targets, device,
                                                "fp32", channels_last)}
        if precision != "fp32":
            steps[f"ours_{precision}"] = detres_train_step(
                copy.deepcopy(ours), batch_t, targets, device, precision, channels_last)
        t = alternate(steps, device, warmup=warmup, repeats=repeats)
        out["train"] = {k: summarize(v) for k, v in t.items()}
        out["train_size"], out["batch"] = list(size), batch
    for key in ("inference", "train"):
        if key in out:
            base = out[key]["torchvision_fp32"]["median_s"]
            out[key + "_speedup"] = {k: base / v["median_s"] for k, v in out[key].items()
                                     if k != "torchvision_fp32"}
    return out


def bench_ablation(model: FasterRCNN, hw: tuple[int, int], device: torch.device,
                   precision: str, *, warmup: int, repeats: int) -> dict[str, Any]:
    """Inference with each technique on and off: detres' kernels (RoIAlign gather, BN folded
    into convolutions) vs the reference ops, NCHW vs channels-last, fp32 vs ``precision``. (The CPU
    allocator's setting is process-wide and a heap once grown keeps serving large blocks, so it
    is compared across processes: ``DETRES_MALLOC=default`` vs not.)"""
    images = synthetic_images(1, hw)
    nchw = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    cl = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    variants: dict[str, Any] = {}
    for layout, m in (("nchw", nchw), ("channels_last", cl)):
        for prec in dict.fromkeys(("fp32", precision)):
            run = detres_inference(m, images, device, prec)

            def ref_run(run: Any = run) -> Any:
                with reference_ops():
                    return run()
            variants[f"reference_ops/{layout}/{prec}"] = ref_run
            variants[f"fast_ops/{layout}/{prec}"] = run
    times = alternate(variants, device, warmup=warmup, repeats=repeats)
    return {k: summarize(v) for k, v in times.items()}


def bench_ops(device: torch.device, hw: tuple[int, int] = (800, 1088), rois: int = 1000, *,
              repeats: int = 5) -> dict[str, Any]:
    """RoIAlign: detres' gather vs torchvision's kernel on FPN-sized inputs (1000 RoIs over
    p2..p5 at 800 x 1088, 256 channels), forward and forward + backward."""
    g = torch.Generator().manual_seed(0)
    h, w = hw
    feats = {f"p{k}": torch.randn(1, 256, h // 2**k, w // 2**k, generator=g).to(device)
             for k in (2, 3, 4, 5)}
    feats_cl = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
    xy = torch.rand(rois, 2, generator=g) * torch.tensor([w, h]) * 0.8
    wh = torch.exp(torch.rand(rois, 2, generator=g) * 6) + 8
    boxes = torch.cat([xy, xy + wh], 1).to(device)
    rois_t = torch.cat([torch.zeros(rois, 1, device=device), boxes], 1)
    tv_pool = MultiScaleRoIAlign(list(feats), 7, 2)

    def fn(kind: str, backward: bool, fs: dict[str, torch.Tensor]):
        def run() -> None:
            leaves = {k: v.detach().requires_grad_(backward) for k, v in fs.items()}
            with torch.set_grad_enabled(backward):
                if kind == "torchvision":
                    y = tv_pool(leaves, [boxes], [hw])
                else:
                    y = multilevel_roi_align(list(leaves.values()), [4, 8, 16, 32], rois_t, 7, 2)
                if backward:
                    y.sum().backward()
        return run
    variants = {"forward/torchvision": fn("torchvision", False, feats),
                "forward/ours": fn("ours", False, feats),
                "forward/ours_channels_last": fn("ours", False, feats_cl),
                "forward_backward/torchvision": fn("torchvision", True, feats),
                "forward_backward/ours": fn("ours", True, feats),
                "forward_backward/ours_channels_last": fn("ours", True, feats_cl)}
    times = {k: summarize(v) for k, v in
             alternate(variants, device, warmup=1, repeats=repeats).items()}
    return {"multiscale_roi_align": times, "rois": rois, "features": list(hw)}


def bench_compile(model: FasterRCNN, cfg: Config, hw: tuple[int, int], device: torch.device,
                  channels_last: bool, *, warmup: int, repeats: int) -> dict[str, Any]:
    """``model.features`` under ``torch.compile`` with Inductor's weight freezing (inference,
    fp32), timed like :func:`bench_efficiency`'s eager figure; ``compile_s`` is the first
    call's extra time."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    x = torch.rand(1, 3, *padded_test_size(model, hw), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fn = torch.compile(model.eval().features)
    t0 = time.perf_counter()
    with torch.inference_mode():
        fn(x)
    first = time.perf_counter() - t0

    def run() -> None:
        with torch.inference_mode():
            fn(x)
    t = summarize(alternate({"c": run}, device, warmup=warmup, repeats=repeats)["c"])
    return {**t, "compile_s": first - t["median_s"]}


def bench_vs_onnx(cfg: Config, hw: tuple[int, int], *, channels_last: bool, warmup: int,
                  repeats: int, weights: str | None = None, workdir: str) -> dict[str, Any]:
    """torchvision's R50-FPN, detres eager (fp32) and detres exported to ONNX in onnxruntime
    (CPU, the same thread count), all with the same weights on the same raw image (each with
    its own preprocessing), A B C A B C; the agreement of each with torchvision; and where
    onnxruntime spends its time (its profiler, by operator type)."""
    tv, ours = torchvision_reference(cfg, weights=weights)
    path = Path(workdir) / "detres_r50_fpn.onnx"
    t0 = time.perf_counter()
    report = export_onnx(ours, path, dynamic=True)
    export_s = time.perf_counter() - t0
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    runtime = OnnxDetector(path, threads=torch.get_num_threads())
    image = synthetic_images(1, hw, seed=1)[0]
    cpu = torch.device("cpu")

    def tv_run() -> list[dict[str, Any]]:
        with torch.inference_mode():
            return tv([image])

    def ort_run() -> list[dict[str, Any]]:
        return runtime.predict([image])
    fns = {"torchvision_fp32": tv_run, "detres_fp32": detres_inference(ours, [image], cpu, "fp32"),
           "onnxruntime_fp32": ort_run}
    times = alternate(fns, cpu, warmup=warmup, repeats=repeats)
    out: dict[str, Any] = {"inference": {k: summarize(v) for k, v in times.items()},
                           "export_s": export_s, "onnx_bytes": report["bytes"],
                           "export_check": report["check"]}
    base = out["inference"]["torchvision_fp32"]["median_s"]
    out["speedup_vs_torchvision"] = {k: base / v["median_s"]
                                     for k, v in out["inference"].items()}
    out["onnxruntime_vs_detres"] = (out["inference"]["detres_fp32"]["median_s"]
                                    / out["inference"]["onnxruntime_fp32"]["median_s"])
    ref = tv_run()[0]
    out["agreement"] = {k: match_detections(ref, fn()[0]) for k, fn in fns.items()
                        if k != "torchvision_fp32"}
    out["onnxruntime_profile"] = onnx_profile(path, image, runtime)
    return out


def onnx_profile(path: Path, image: Tensor, runtime: OnnxDetector) -> dict[str, float]:
    """Milliseconds per ONNX operator type in one run of the graph (onnxruntime's profiler),
    largest first."""
    import onnxruntime as ort  # the [export] extra, present when runtime is

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    batch, sizes = runtime.preprocess([image])
    feed = {"images": batch.numpy(), "image_sizes": torch.tensor(sizes).numpy()}
    sess.run(None, feed)  # warm-up
    sess.end_profiling()
    opts2 = ort.SessionOptions()
    opts2.intra_op_num_threads = torch.get_num_threads()
    opts2.enable_profiling = True
    opts2.profile_file_prefix = str(path.with_suffix("")) + "_run"
    sess = ort.InferenceSession(str(path), opts2, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    sess.run(None, feed)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    runs = 0
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + ev["dur"] / 1e3
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs += 1
    runs = max(runs, 1)
    return dict(sorted(((k, v / runs) for k, v in per_op.items()), key=lambda kv: -kv[1]))
