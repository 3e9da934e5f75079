#!/usr/bin/env python
"""300 iterations of the demo recipe with detres's ``coco_r50_fpn`` modules beside
torchvision's Faster R-CNN R50-FPN, both at the demo's width, from the same start.

The model is ``coco_r50_fpn.yaml``'s (ResNet-50 v1.5, FrozenBN, stem and res2 frozen, FPN,
torchvision's RPN and RoI-head rules, top-k and thresholds) at the demo's width (every stage
1/4 as wide: ``width_per_group 16``, FPN 48 channels, box head 256) and with the demo's data,
input sizes, anchors and schedule (batch 8, LR 0.02, warm-up 100 iterations). torchvision's
model is built from torchvision's own classes at the same width (its ``ResNet`` stages made
with its ``_make_layer``, ``BackboneWithFPN``, ``FasterRCNN``). The start: torchvision's
initialization, its BatchNorm statistics measured on 8 training batches and then frozen (a
random trunk with frozen unit statistics does not train), copied into detres's model with the
weights converter. Both see the same batches (the demo loader, same seed) as the same
normalized tensors.

Runs: detres and torchvision each with sampling seeds 0, 1, 2 (``--seeds``: the RPN's and RoI
head's random choice of anchors and RoIs; the batches are the same), fp32. Printed: the total
loss averaged over windows of 50 iterations for each run, the mean gap between two runs of
one library (the run-to-run noise) beside the mean gap between a detres run and a torchvision
run, and the final mAP on the demo val split, both scored by detres's evaluator
(torchvision's trained weights converted: detres's inference equals torchvision's on the same
weights, tests/test_det_parity.py). A picture of the curves goes to ``--out``. ``--merge``
compares runs.json files written by separate invocations (other seeds, other machines).

    python tools/dev/train_parity_long.py [--iters 300] [--seeds 0 1 2] [--out DIR]
    python tools/dev/train_parity_long.py --merge A/runs.json B/runs.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detres.benchmark.reference import torchvision_frcnn_kwargs
from detres.config import Config, load_config
from detres.data.det_loader import build_det_train_loader
from detres.engine.det import _score_on_test_set
from detres.engine.schedule import LRSchedule, build_optimizer
from detres.modeling import build_detector
from detres.modeling.backbones.base import convert_frozen_batchnorm
from detres.modeling.weights.torchvision import convert_torchvision_frcnn
from detres.utils.device import cpu_line

TERMS = {"loss_rpn_cls": "loss_objectness", "loss_rpn_box": "loss_rpn_box_reg",
         "loss_cls": "loss_classifier", "loss_box": "loss_box_reg"}


def recipe(iters: int) -> Config:
    demo = load_config("demo.yaml")
    d, i = demo.model, demo.model.input
    return load_config("coco_r50_fpn.yaml", [
        f"model.num_classes={d.num_classes}", "model.weights=''", "model.backbone.weights=''",
        f"model.backbone.width_per_group={d.backbone.width_per_group}",
        f"model.fpn.out_channels={d.fpn.out_channels}",
        f"model.roi_heads.fc_dim={d.roi_heads.fc_dim}",
        f"model.anchors.sizes={d.anchors.sizes}",
        f"model.input.min_size_train={i.min_size_train}",
        f"model.input.max_size_train={i.max_size_train}",
        f"model.input.min_size_test={i.min_size_test}",
        f"model.input.max_size_test={i.max_size_test}",
        f"model.roi_heads.detections_per_image={d.roi_heads.detections_per_image}",
        "data.train=[{name: demo_coco_train}]", "data.test=[{name: demo_coco_val}]",
        "data.num_workers=2", f"solver.batch_size={demo.solver.batch_size}",
        f"solver.reference_batch_size={demo.solver.batch_size}",
        f"solver.base_lr={demo.solver.base_lr}", f"solver.warmup_iters={demo.solver.warmup_iters}",
        f"solver.max_iter={iters}", f"solver.steps=[{iters * 5 // 6}]",
        "train.amp=none", "train.device=cpu",
    ])


def torchvision_model(cfg: Config) -> nn.Module:
    """torchvision's Faster R-CNN R50-FPN at the config's width (every stage scaled like
    detres's ``width_per_group``), with trainable BatchNorm until :func:`calibrate`."""
    m, w = cfg.model, cfg.model.backbone.width_per_group
    body = ResNet(Bottleneck, [3, 4, 6, 3])
    body.inplanes = w
    body.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
    body.bn1 = nn.BatchNorm2d(w)
    for k, (n, s) in enumerate(zip([3, 4, 6, 3], [1, 2, 2, 2], strict=True)):
        setattr(body, f"layer{k + 1}", body._make_layer(Bottleneck, w * 2**k, n, stride=s))
    for mod in body.modules():  # torchvision's ResNet initialization, on the new stages too
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    backbone = BackboneWithFPN(
        body, {f"layer{k}": str(k - 1) for k in range(1, 5)}, [4 * w * 2**k for k in range(4)],
        m.fpn.out_channels, extra_blocks=LastLevelMaxPool())
    sizes, ratios = m.anchors.sizes, tuple(m.anchors.aspect_ratios)
    return FasterRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=AnchorGenerator(tuple(map(tuple, sizes)), (ratios,) * len(sizes)),
        box_head=TwoMLPHead(m.fpn.out_channels * 49, m.roi_heads.fc_dim),
        box_predictor=FastRCNNPredictor(m.roi_heads.fc_dim, m.num_classes + 1),
        **torchvision_frcnn_kwargs(cfg))


class Preprocessed(nn.Module):
    """torchvision's transform replaced by the batch detres normalized (set ``.batch``)."""

    batch: tuple[torch.Tensor, list[tuple[int, int]]]

    def forward(self, images: object, targets: object) -> tuple[ImageList, object]:
        return ImageList(*self.batch), targets

    def postprocess(self, result: object, *args: object) -> object:  # training: unused
        return result


def batches(cfg: Config) -> Iterator[tuple[torch.Tensor, list[dict]]]:
    return iter(build_det_train_loader(cfg, cfg.solver.batch_size))


def calibrate(cfg: Config, tv: nn.Module, normalize: nn.Module, n: int = 8) -> dict:
    """BatchNorm statistics of torchvision's trunk measured on ``n`` training batches, then
    frozen (``FrozenBatchNorm2d``), stem and res2 frozen: the common start, as a state dict."""
    body = tv.backbone.body
    for mod in body.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # a plain average over the batches
    body.train()
    it = batches(cfg)
    with torch.no_grad():
        for _ in range(n):
            images, targets = next(it)
            body(normalize(images, [t["image_size"] for t in targets]))
    tv.backbone.body = convert_frozen_batchnorm(body)
    return {k: v.clone() for k, v in tv.state_dict().items()}


def train(cfg: Config, kind: str, start: dict, seed: int,
          iters: int) -> tuple[list[dict], nn.Module]:
    """``iters`` SGD steps of detres's model or torchvision's from ``start``; per-step losses."""
    ours = build_detector(cfg)
    k = cfg.model.num_classes
    ours.load_state_dict(convert_torchvision_frcnn(start, keep_classes=range(1, k + 1),
                                                   src_bn_eps=1e-5), strict=True)
    if kind == "torchvision":
        model = torchvision_model(cfg)
        model.backbone.body = convert_frozen_batchnorm(model.backbone.body)
        model.load_state_dict(start, strict=True)
        model.transform = Preprocessed()
    else:
        model = ours
    for name, p in model.named_parameters():  # trainable_backbone_layers=3, as detres's
        if name.startswith(("backbone.body.conv1", "backbone.body.layer1")):
            p.requires_grad_(False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    # the same optimizer for both: detres's (SGD, momentum 0.9, weight decay 1e-4 on every
    # trained parameter, which is torchvision's recipe too: frozen BN has no parameters)
    opt = build_optimizer(model, cfg.solver)
    sched = LRSchedule(opt, cfg.solver)
    torch.manual_seed(seed)
    log, it, t0 = [], batches(cfg), time.perf_counter()
    for step in range(iters):
        sched.step(step)
        images, targets = next(it)
        sizes = [t["image_size"] for t in targets]
        if kind == "torchvision":
            with torch.no_grad():
                model.transform.batch = (ours.normalize(images, sizes), sizes)
            tv_targets = [{"boxes": t["gt_boxes"], "labels": t["gt_classes"]} for t in targets]
            out = model(list(images), tv_targets)
            losses = {a: out[b] for a, b in TERMS.items()}
        else:
            losses = model.losses(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        log.append({"iter": step, **{a: float(v.detach()) for a, v in losses.items()}})
        if step % 50 == 49:
            rate = (step + 1) / (time.perf_counter() - t0)
            print(f"  {kind} seed {seed}: {step + 1}/{iters}, {rate:.2f} it/s, total loss "
                  f"{sum(log[-1][a] for a in TERMS):.3f}", flush=True)
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    if kind == "torchvision":
        ours.load_state_dict(convert_torchvision_frcnn(
            model.state_dict(), keep_classes=range(1, k + 1), src_bn_eps=1e-5), strict=True)
    return log, ours


def windows(log: list[dict], width: int = 50) -> list[float]:
    return [sum(sum(r[a] for a in TERMS) for r in log[s:s + width]) / len(log[s:s + width])
            for s in range(0, len(log), width)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="output/train_parity_long")
    ap.add_argument("--merge", nargs="+", metavar="RUNS_JSON", default=[],
                    help="no training: compare the runs of these runs.json files together")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(cpu_line())
    runs, scores = {}, {}
    for path in args.merge:
        data = json.loads(Path(path).read_text())
        runs.update(data["runs"])
        scores.update(data["scores"])
    if not args.merge:
        cfg = recipe(args.iters)
        torch.manual_seed(0)
        tv0 = torchvision_model(cfg)
        start = calibrate(cfg, tv0, build_detector(cfg).normalize)
        for kind in ("detres", "torchvision"):
            for seed in args.seeds:
                name = f"{kind} seed {seed}"
                log, model = train(cfg, kind, start, seed, args.iters)
                runs[name] = log
                m = _score_on_test_set(model.eval(), cfg, torch.device("cpu"), None, "none",
                                       False)
                scores[name] = {k: m[k] for k in ("mAP@.5", "mAP@[.5,.95]")}
                print(f"{name}: {scores[name]}", flush=True)
        (out / "runs.json").write_text(json.dumps({"cpu": cpu_line(), "runs": runs,
                                                   "scores": scores}))
    report(runs, scores)
    plot(runs, out / "train_parity_long.png")
    print(f"wrote {out / 'train_parity_long.png'}")


def report(runs: dict[str, list[dict]], scores: dict[str, dict[str, float]]) -> None:
    """Windowed losses and mAP per run; the mean gap between two runs of one library (the
    run-to-run noise) beside the mean gap between a detres run and a torchvision run."""
    w = {k: windows(v) for k, v in sorted(runs.items())}
    print(f"\n{cpu_line()}\ntotal loss, mean over windows of 50 iterations; final mAP:")
    for k, v in w.items():
        m50, m = 100 * scores[k]["mAP@.5"], 100 * scores[k]["mAP@[.5,.95]"]
        print(f"  {k:20s} " + " ".join(f"{x:.3f}" for x in v)
              + f"   mAP@.5 {m50:.1f}, mAP@[.5,.95] {m:.1f}")

    def gap(a: str, b: str) -> float:
        return sum(abs(x - y) for x, y in zip(w[a], w[b], strict=True)) / len(w[a])

    names = sorted(w)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    same = [gap(a, b) for a, b in pairs if a.split()[0] == b.split()[0]]
    cross = [gap(a, b) for a, b in pairs if a.split()[0] != b.split()[0]]
    def summary(gaps: list[float]) -> str:
        if not gaps:
            return "- (needs two runs)"
        return f"{sum(gaps) / len(gaps):.4f} (max {max(gaps):.4f}, {len(gaps)} pairs)"

    print(f"mean |difference| of the windowed total loss between two runs: same library "
          f"{summary(same)}, detres vs torchvision {summary(cross)}")
    for kind in ("detres", "torchvision"):
        for metric in ("mAP@.5", "mAP@[.5,.95]"):
            v = [100 * scores[k][metric] for k in names if k.startswith(kind)]
            mean = sum(v) / len(v)
            sd = (sum((x - mean) ** 2 for x in v) / max(1, len(v) - 1)) ** 0.5
            print(f"  {kind:12s} {metric:13s} mean {mean:.1f}, sd {sd:.1f} over {len(v)} runs")


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
    style = {"detres": "-", "torchvision": "--"}
    for name, log in runs.items():
        kind, seed = name.split(" seed ")
        for ax, term in zip(axes, ["total", *TERMS], strict=True):
            ys = [sum(r[a] for a in TERMS) if term == "total" else r[term] for r in log]
            smooth = [sum(ys[max(0, i - 19):i + 1]) / len(ys[max(0, i - 19):i + 1])
                      for i in range(len(ys))]
            ax.plot(smooth, style[kind], color=f"C{seed}", label=name, lw=1.2)
            ax.set_title(term)
            ax.set_xlabel("iteration")
    axes[0].legend(fontsize=8)
    seeds = len({name.split(" seed ")[1] for name in runs})
    fig.suptitle("coco_r50_fpn modules at the demo's width: detres (solid) and torchvision "
                 f"(dashed), {seeds} sampling seeds each (colours); 20-iteration running mean")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
