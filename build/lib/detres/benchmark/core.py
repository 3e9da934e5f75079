"""Measuring speed: timers, peak memory, synthetic inputs, the closures that are timed, and
detection agreement.

Every figure is taken after warm-up over repeated runs and reported as median and spread;
comparisons run both sides in the same process on the same inputs, alternating A B A B so
that drift of a shared machine (frequency, neighbours) hits both alike.
"""

from __future__ import annotations

import copy
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import FrozenBatchNorm2d, box_iou

from detres.modeling.faster_rcnn import FasterRCNN
from detres.modeling.fastpath import reference_ops
from detres.preprocess import padded_hw, resized_hw
from detres.utils.device import autocast_context

PRECISIONS = ("fp32", "bf16", "fp16")


def amp_name(precision: str) -> str:
    """``fp32|bf16|fp16`` -> the trainer's ``train.amp`` value."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    return "none" if precision == "fp32" else precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: list[float]) -> dict[str, float]:
    """Median and spread (quartiles, min, max) of a list of seconds."""
    if not times:
        raise ValueError("no timings to summarize")
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "p25_s": q[0], "p75_s": q[2],
            "min_s": min(times), "max_s": max(times), "n": len(times)}


def alternate(fns: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int,
              repeats: int) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, interleaved A B A B after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a code region, in MiB above the level at entry: CUDA's allocator peak
    on a GPU; on CPU the process's resident set, sampled every millisecond by a thread
    (Linux ``/proc``; ``None`` elsewhere). The CPU figure can undercount: memory freed earlier
    but still resident is reused without raising the resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib = device, None
        self._stop = threading.Event()
        self._peak = self._base = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        else:
            return
        self.peak_mib = (peak - self._base) / 2**20


# ---------------------------------------------------------------------------- inputs


def synthetic_images(n: int, hw: tuple[int, int], seed: int = 0) -> list[Tensor]:
    """``n`` RGB images in [0, 1] of size ``hw`` with smooth structure (blobs and edges, not
    white noise), so that proposals and detections behave as on photographs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        coarse = torch.rand(1, 3, max(hw[0] // 32, 2), max(hw[1] // 32, 2), generator=g)
        img = F.interpolate(coarse, size=hw, mode="bilinear", align_corners=False)[0]
        out.append((img + 0.05 * torch.rand(3, *hw, generator=g)).clamp_(0, 1))
    return out


def test_size(model: FasterRCNN, hw: tuple[int, int]) -> tuple[int, int]:
    """The resized size ``predict`` gives a raw ``hw`` image (:mod:`detres.preprocess`)."""
    return resized_hw(*hw, short=model.min_size_test, max_size=model.max_size_test,
                      rule=model.resize_rule)


def padded_test_size(model: FasterRCNN, hw: tuple[int, int]) -> tuple[int, int]:
    """The padded input the detector sees for a raw ``hw`` image at test time."""
    return padded_hw([test_size(model, hw)], model.size_divisibility)


def synthetic_targets(n: int, hw: tuple[int, int], num_classes: int, *, boxes_per_image: int = 8,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Random GT boxes (10-50% of the image side) and classes 1..K, in the loader's format."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    out = []
    for _ in range(n):
        wh = (torch.rand(boxes_per_image, 2, generator=g) * 0.4 + 0.1) * torch.tensor([w, h])
        xy = torch.rand(boxes_per_image, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        classes = torch.randint(1, num_classes + 1, (boxes_per_image,), generator=g)
        out.append({"gt_boxes": boxes, "gt_classes": classes, "image_size": (h, w)})
    return out


@torch.no_grad()
def calibrate_random_detector(model: FasterRCNN, hw: tuple[int, int], *, seed: int = 0) -> None:
    """Make a randomly initialised detector behave like a trained one for timing purposes.

    With default frozen-BN statistics a deep random trunk's activations blow up (ResNet-101:
    inf by res4, so the RPN proposes nothing and the ROI heads never run). Each BN layer gets
    the statistics of its input on a synthetic image, layer by layer (data-dependent init);
    then the RPN keeps ``post_nms_topk`` proposals as a trained one does on a real image.
    Timing figures report the RoIs per image, so that this can be checked."""
    def set_stats(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].float()
        mod.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        mod.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)

    kinds = (FrozenBatchNorm2d, nn.BatchNorm2d)
    norms = [m for m in model.backbone.modules() if isinstance(m, kinds)]
    hooks = [m.register_forward_pre_hook(set_stats) for m in norms]
    was_training = model.training
    model.eval()
    try:
        image = synthetic_images(1, hw, seed)[0].to(model.pixel_mean.device)
        x = model.normalize(image[None], [hw])
        with reference_ops():  # the norms run as modules, so that the hooks see them
            model.backbone.forward_features(x, [model.backbone.stage_names[-1]])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_rois(model: FasterRCNN, run: Callable[[], Any]) -> int:
    """RoIs per call that reach the box head while ``run()`` runs."""
    seen: list[int] = []
    hook = model.roi_heads.box_pooler.register_forward_pre_hook(
        lambda mod, args: seen.append(len(args[1])))  # (R, 5) RoIs
    try:
        run()
    finally:
        hook.remove()
    return sum(seen)  # pooling may run in chunks


# ---------------------------------------------------------------------------- closures


def detres_inference(model: FasterRCNN, images: list[Tensor], device: torch.device,
                     precision: str) -> Callable[[], list[dict[str, Tensor]]]:
    imgs = [i.to(device) for i in images]

    def run() -> list[dict[str, Tensor]]:
        with torch.inference_mode(), autocast_context(device, amp_name(precision)):
            return model.predict(imgs)
    return run


def detres_train_step(model: FasterRCNN, images: Tensor, targets: list[dict[str, Any]],
                      device: torch.device, precision: str, channels_last: bool,
                      lr: float = 1e-4) -> Callable[[], float]:
    """One SGD iteration (forward, backward, step) on a fixed batch. The scaler of fp16
    training is left out: it adds no measurable time."""
    model.train()
    x = images.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tg = [{**t, "gt_boxes": t["gt_boxes"].to(device), "gt_classes": t["gt_classes"].to(device)}
          for t in targets]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)

    def step() -> float:
        with autocast_context(device, amp_name(precision)):
            losses = model.losses(x, tg)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


# ---------------------------------------------------------------------------- hardware


def large_conv(device: torch.device, precision: str,
               channels_last: bool) -> tuple[Callable[[], None], int]:
    """A large 3x3 convolution (256 -> 256 channels on a 200 x 272 map, the FPN's p2 level at
    800 x 1088), what the machine can do on the model's main operation: a function that runs
    it once and its FLOPs (2 per multiply-add). Time it beside what it is compared with, in
    one ``alternate`` call, so that the machine's drift cancels in the ratio."""
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device)
    x = torch.randn(1, 256, 200, 272, device=device)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), autocast_context(device, amp_name(precision)):
            conv(x)
    return run, 2 * 256 * 256 * 9 * 200 * 272


def feature_flops(model: FasterRCNN, hw: tuple[int, int]) -> int:
    """FLOPs (2 per multiply-add) of the backbone and neck on one padded image of size
    ``hw``, counted on the ``meta`` device (no arithmetic)."""
    meta = copy.deepcopy(model).to("meta")
    x = torch.zeros(1, 3, *hw, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta.features(x)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------- agreement


def match_detections(ref: dict[str, Tensor], got: dict[str, Tensor], *,
                     iou: float = 0.99) -> dict[str, float]:
    """How far two detectors' outputs on one image agree: each reference detection is paired
    with the best-overlapping detection of the same label; reports the matched fraction
    (IoU >= ``iou``), the largest box coordinate and score differences among matches."""
    rb, gb = ref["boxes"].float().cpu(), got["boxes"].float().cpu()
    n_ref, n_got = len(rb), len(gb)
    if n_ref == 0 or n_got == 0:
        return {"ref": n_ref, "ours": n_got, "matched": float(n_ref == n_got),
                "max_box_diff_px": 0.0, "max_score_diff": 0.0}
    ov = box_iou(rb, gb)
    ov[ref["labels"].cpu()[:, None] != got["labels"].cpu()[None, :]] = -1
    best, j = ov.max(dim=1)
    ok = best >= iou
    box_diff = (rb[ok] - gb[j[ok]]).abs().amax().item() if ok.any() else float("inf")
    score_diff = ((ref["scores"].float().cpu()[ok] - got["scores"].float().cpu()[j[ok]])
                  .abs().amax().item() if ok.any() else float("inf"))
    return {"ref": n_ref, "ours": n_got, "matched": ok.float().mean().item(),
            "max_box_diff_px": box_diff, "max_score_diff": score_diff}
