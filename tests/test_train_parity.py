"""Training equals the references': torchvision's and Detectron2's.

torchvision: ``coco_r50_fpn.yaml`` against ``fasterrcnn_resnet50_fpn``
with the same (converted) weights in train mode, on the same preprocessed batch (images of
two sizes with several boxes, and one image without any): every loss term, every
parameter's gradient (after mapping the names with the weights converter), and the weights
after one SGD step of torchvision's reference recipe.

Sampling is made deterministic by sampler sizes so large that every candidate is taken on
both sides (10**6 anchors per image in the RPN, 10**6 RoIs per image in the box head): the
sampled sets are then the same, whatever order each side draws them in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from detres.benchmark.reference import torchvision_reference
from detres.config import load_config
from detres.engine.schedule import build_optimizer
from detres.modeling import build_detector, load_weights
from detres.modeling.fastpath import reference_ops
from detres.modeling.weights import weights_from_dict
from detres.modeling.weights.torchvision import coco_layout, convert_torchvision_frcnn
from detres.modeling.weights.zoo import detectron2_checkpoint, detectron2_to_detres, read_zoo_file

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = 10**6
OVERRIDES = [
    f"model.rpn.batch_size_per_image={ALL}", f"model.roi_heads.batch_size_per_image={ALL}",
    "model.input.min_size_test=160", "model.input.max_size_test=256",
    "model.weights=''", "model.backbone.weights=''",
]
TERMS = {"loss_rpn_cls": "loss_objectness", "loss_rpn_box": "loss_rpn_box_reg",
         "loss_cls": "loss_classifier", "loss_box": "loss_box_reg"}


class Preprocessed(nn.Module):
    """torchvision's transform replaced by the batch detres normalized: both models see the
    same tensor."""

    def __init__(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.x, self.sizes = x, sizes

    def forward(self, images: object, targets: object) -> tuple[ImageList, object]:
        return ImageList(self.x, self.sizes), targets

    def postprocess(self, result: object, *args: object) -> object:  # training: unused
        return result


def batch() -> tuple[torch.Tensor, list[dict]]:
    """Three images padded to 192 x 256: two of other sizes with boxes, one without."""
    g = torch.Generator().manual_seed(3)
    sizes = [(192, 256), (160, 224), (192, 192)]
    images = torch.zeros(3, 3, 192, 256)
    targets = []
    for i, (h, w) in enumerate(sizes):
        coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
        images[i, :, :h, :w] = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        n = (4, 3, 0)[i]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 24 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        targets.append({"gt_boxes": torch.cat([xy, xy + wh], 1),
                        "gt_classes": torch.randint(1, 81, (n,), generator=g),
                        "image_size": (h, w)})
    return images, targets


@pytest.fixture(scope="module")
def step() -> dict:
    cfg = load_config("coco_r50_fpn.yaml", OVERRIDES)
    tv, ours = torchvision_reference(cfg, seed=0)
    tv.train()
    ours.train()
    tv.rpn.fg_bg_sampler.batch_size_per_image = ALL
    tv.roi_heads.fg_bg_sampler.batch_size_per_image = ALL
    images, targets = batch()
    sizes = [t["image_size"] for t in targets]
    with torch.no_grad():
        x = ours.normalize(images, sizes)
    tv.transform = Preprocessed(x, sizes)
    ids = torch.tensor([0, *coco_layout()[0]])  # contiguous label -> torchvision's COCO id
    tv_targets = [{"boxes": t["gt_boxes"], "labels": ids[t["gt_classes"]]} for t in targets]
    before = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    tv_before = {k: v.detach().clone() for k, v in tv.state_dict().items()}
    ours_losses = ours.losses(images, targets)
    tv_losses = tv(list(images), tv_targets)
    sum(ours_losses.values()).backward()
    sum(tv_losses.values()).backward()
    grads = {k: p.grad.detach().clone() for k, p in ours.named_parameters()
             if p.grad is not None}
    tv_grads = {k: p.grad.detach().clone() for k, p in tv.named_parameters()
                if p.grad is not None}
    # one SGD step each: detres's optimizer from the config, torchvision's reference recipe
    # (train.py: SGD over the parameters that train, momentum 0.9, weight decay 1e-4 on all)
    lr = 0.02
    opt = build_optimizer(ours, cfg.solver)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    tv_opt = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=lr,
                             momentum=0.9, weight_decay=1e-4)
    tv_opt.step()
    return {"ours": ours_losses, "tv": tv_losses, "grads": grads, "tv_grads": tv_grads,
            "before": before, "tv_before": tv_before, "after": ours.state_dict(),
            "tv_after": tv.state_dict(), "num_boxes": sum(len(t["gt_boxes"]) for t in targets)}


def mapped(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision names and class layout -> detres's (the weights converter's own map)."""
    return convert_torchvision_frcnn(tv_state, src_bn_eps=1e-5)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def test_every_loss_term_equals_torchvision(step: dict) -> None:
    for ours, theirs in TERMS.items():
        a, b = float(step["ours"][ours].detach()), float(step["tv"][theirs].detach())
        print(f"{ours}: {a:.8g} vs torchvision {b:.8g}, relative {abs(a - b) / b:.2g}")
        assert b > 0 and abs(a - b) <= 1e-5 * abs(b), (ours, a, b)


def test_every_gradient_equals_torchvision(step: dict) -> None:
    theirs = mapped(step["tv_grads"])
    ours = step["grads"]
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))[:8]
    worst = max((rel(ours[k], theirs[k]), k) for k in ours)
    print(f"{len(ours)} gradients, largest relative difference {worst[0]:.2g} ({worst[1]})")
    assert worst[0] <= 1e-3, worst
    assert len(ours) > 50  # the whole trainable network: res3-res5, FPN, RPN, box head


def test_one_sgd_step_gives_the_same_weights(step: dict) -> None:
    after, tv_after = step["after"], mapped(step["tv_after"])
    before, tv_before = step["before"], mapped(step["tv_before"])
    worst = 0.0
    for k in step["grads"]:  # the update itself, then the weights
        upd, tv_upd = after[k] - before[k], tv_after[k] - tv_before[k]
        worst = max(worst, rel(upd, tv_upd))
        assert rel(upd, tv_upd) <= 1e-3, k
        torch.testing.assert_close(after[k], tv_after[k], rtol=1e-5, atol=1e-7, msg=k)
    print(f"SGD step: largest relative difference of an update {worst:.2g}")


# ------------------------------------------------------------------------------ Detectron2

GOLD = Path(__file__).parent / "goldens" / "detectron2"
D2_TERMS = {"loss_rpn_cls": "loss_rpn_cls", "loss_rpn_box": "loss_rpn_loc",
            "loss_cls": "loss_cls", "loss_box": "loss_box_reg"}


@pytest.fixture(scope="module")
def d2_step() -> dict:
    with np.load(GOLD / "train_step.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("fast", [False, True], ids=["reference_ops", "fast_ops"])
@pytest.mark.parametrize("name", ["r50_fpn", "r101_c4"])
def test_training_step_equals_detectron2(name: str, fast: bool, d2_step: dict,
                                         d2: object) -> None:
    """coco_r50_fpn_3x.yaml and coco_r101_c4_3x.yaml (model.rules: detectron2) against
    Detectron2's faster_rcnn_R_50_FPN_3x and _R_101_C4_3x run from source on the same
    weights and batch (goldens by tools/dev/d2_goldens.py --only train): the four loss terms
    within 1e-5 relative, every gradient within 1e-3 (after the converter's name map)."""
    cfg = load_config(d2.configs[name], [*d2.small, f"model.rpn.batch_size_per_image={ALL}",
                                         f"model.roi_heads.batch_size_per_image={ALL}"])
    ours = build_detector(cfg)
    load_weights(ours, weights_from_dict(detectron2_checkpoint(GOLD / f"{name}.pkl", cfg),
                                         source=name), policy="strict")
    ours.train()
    n = sum(1 for k in d2_step if k.endswith("/image"))
    raw = [d2_step[f"input/{i}/image"] for i in range(n)]
    h, w = max(r.shape[0] for r in raw), max(r.shape[1] for r in raw)
    images = torch.zeros(n, 3, h, w)
    targets = []
    for i, bgr in enumerate(raw):  # the loader's form: RGB in [0, 1], padded
        images[i, :, :bgr.shape[0], :bgr.shape[1]] = torch.from_numpy(
            bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255
        targets.append({"gt_boxes": torch.from_numpy(d2_step[f"input/{i}/boxes"]),
                        "gt_classes": torch.from_numpy(d2_step[f"input/{i}/classes"]) + 1,
                        "image_size": bgr.shape[:2]})
    with reference_ops(not fast):
        losses = ours.losses(images, targets)
        sum(losses.values()).backward()
    for mine, theirs in D2_TERMS.items():
        a, b = float(losses[mine].detach()), float(d2_step[f"{name}/loss/{theirs}"])
        print(f"{name} {mine}: {a:.8g} vs Detectron2 {b:.8g}")
        assert abs(a - b) <= 1e-5 * abs(b), (name, mine, a, b)
    # Detectron2's gradients under detres's names: the weights converter's own map, run on a
    # full Detectron2 state (the .pkl's names) holding the gradients, and on a mask
    prefix = f"{name}/grad/"
    d2_names = read_zoo_file(GOLD / f"{name}.pkl")
    full = {k: torch.zeros_like(v) for k, v in d2_names.items()}
    mask = dict(full)
    for k in d2_step:
        if k.startswith(prefix):
            full[k[len(prefix):]] = torch.from_numpy(d2_step[k])
            mask[k[len(prefix):]] = torch.ones_like(full[k[len(prefix):]])
    theirs = detectron2_to_detres(full, ours)
    has = {k for k, v in detectron2_to_detres(mask, ours).items() if bool(v.all())}
    mine = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert set(mine) == has, sorted(set(mine) ^ has)[:8]
    worst = max((rel(mine[k], theirs[k]), k) for k in mine)
    print(f"{name} ({'fast' if fast else 'reference'} ops): {len(mine)} gradients, largest "
          f"relative difference {worst[0]:.2g} ({worst[1]})")
    # The fast path folds each frozen BN into its convolution in training too; on these
    # reduced-width goldens (4-channel bottlenecks, BN statistics measured on one image) the
    # folded backward loses precision in the lower stages: up to 0.7% (R50-FPN) and 1.6%
    # (R101-C4) against 3.5e-6 unfused, both measured against float64. Full-width R50-FPN
    # against torchvision: 2.3e-4 (test above). An open numerical finding, not a rule that
    # differs: the losses agree to 1e-7 either way.
    assert worst[0] <= (2e-2 if fast else 1e-3), worst
