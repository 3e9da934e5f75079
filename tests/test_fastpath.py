"""detres' fast paths give the reference results: BatchNorm folded into convolutions (forward
and gradients, frozen and eval-mode BN) and a whole detector with fast vs reference ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detres.config import load_config
from detres.modeling import build_detector
from detres.modeling.backbones.resnet import conv_norm
from detres.modeling.fastpath import reference_ops


def _norm(kind: str, c: int) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(c) if kind == "BN" else FrozenBatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.2)
    return bn.eval()


@pytest.mark.parametrize("kind", ["FrozenBN", "BN"])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_norm_folds_exactly(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=bias).double()
    norm = _norm(kind, 8).double()
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    fused = conv_norm(x, conv, norm)
    (g_fused,) = torch.autograd.grad(fused.square().sum(), conv.weight)
    ref = norm(conv(x))
    (g_ref,) = torch.autograd.grad(ref.square().sum(), conv.weight)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(g_fused, g_ref)


def test_conv_norm_training_bn_is_not_folded() -> None:
    conv, norm = nn.Conv2d(3, 4, 1), _norm("BN", 4).train()
    x = torch.randn(4, 3, 5, 5)
    before = norm.running_mean.clone()
    conv_norm(x, conv, norm)
    assert not torch.equal(norm.running_mean, before)  # batch statistics were used


def test_detector_fast_ops_match_reference() -> None:
    cfg = load_config("demo.yaml", ["model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2"])
    torch.manual_seed(0)
    model = build_detector(cfg)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 128, 160, generator=g)
    targets = [
        {"gt_boxes": torch.tensor([[10.0, 20, 60, 90], [70, 5, 150, 60]]),
         "gt_classes": torch.tensor([1, 3]), "image_size": (128, 160)},
        {"gt_boxes": torch.tensor([[30.0, 30, 90, 100]]), "gt_classes": torch.tensor([2]),
         "image_size": (120, 150)},
    ]
    torch.manual_seed(5)
    fast = model.losses(images, targets)
    torch.autograd.backward(sum(fast.values()))
    grads_fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(5)
    with reference_ops():
        ref = model.losses(images, targets)
        torch.autograd.backward(sum(ref.values()))
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_fast[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)
    sizes = [(128, 160), (120, 150)]
    with torch.no_grad():  # spread the class scores so that detections pass the threshold
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5, generator=g)
    det_fast = model.inference(images, sizes)
    with reference_ops():
        det_ref = model.inference(images, sizes)
    assert sum(len(d["boxes"]) for d in det_ref) > 10
    for a, b in zip(det_fast, det_ref, strict=True):
        assert len(a["boxes"]) == len(b["boxes"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)


def test_folded_weights_cached_without_grad_and_refreshed_on_change() -> None:
    conv, norm = nn.Conv2d(3, 4, 3, padding=1, bias=False), _norm("FrozenBN", 4)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        a = conv_norm(x, conv, norm)
        cached = conv.__dict__["_detres_folded"]
        conv_norm(x, conv, norm)
        assert conv.__dict__["_detres_folded"] is cached  # reused
        conv.weight.mul_(2)  # an optimizer step / load_state_dict: the cache is stale
        b = conv_norm(x, conv, norm)
    torch.testing.assert_close(b, norm(conv(x)).detach())
    assert not torch.allclose(a, b)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        c = conv_norm(x, conv, norm)
        assert conv.__dict__["_detres_folded"][1][0].dtype == torch.bfloat16  # (key, (w, b))
    torch.testing.assert_close(c.float(), b, rtol=2e-2, atol=2e-2)
    y = conv_norm(x, conv, norm)  # with autograd: computed afresh, gradient reaches conv
    y.sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("arch_overrides", [
    [],  # FPN
    ["model.arch=faster_rcnn_c4", "model.anchors.sizes=[[32, 64, 128]]",
     "model.roi_heads.pooler=ROIPool", "model.roi_heads.pooler_resolution=14"],
])
def test_chunked_box_head_inference_matches_one_pass(arch_overrides: list[str]) -> None:
    cfg = load_config("demo.yaml", ["model.backbone.width_per_group=8", *arch_overrides])
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
    images = torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(3))
    sizes = [(128, 160), (110, 150)]
    whole = model.inference(images, sizes)
    model.roi_heads.chunk_bytes = 1  # one RoI per chunk
    chunked = model.inference(images, sizes)
    assert sum(len(d["boxes"]) for d in whole) > 0
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"])


def test_fc6_as_convolution_matches_the_linear() -> None:
    """The FPN box head's inference path (fc6 as a 7x7 convolution, cached kernel) gives the
    Linear's numbers, in fp32 and under bf16 autocast, and refreshes when the weight changes."""
    from detres.modeling.roi_heads import TwoMLPHead

    torch.manual_seed(0)
    head = TwoMLPHead(in_features=16 * 7 * 7, fc_dim=32)
    x = torch.randn(20, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with reference_ops():
            ref = head(x)
        torch.testing.assert_close(head(x), ref, rtol=1e-5, atol=1e-5)
        head.fc6.weight.mul_(0.5)
        with reference_ops():
            ref2 = head(x)
        torch.testing.assert_close(head(x), ref2, rtol=1e-5, atol=1e-5)  # not the stale kernel
        with torch.autocast("cpu", torch.bfloat16):
            torch.testing.assert_close(head(x).float(), ref2, rtol=3e-2, atol=3e-2)
    y = head(x)  # training: the Linear, gradients reach fc6.weight
    y.sum().backward()
    assert head.fc6.weight.grad is not None


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("fine_hw", [(12, 16), (11, 16)])
def test_fpn_top_down_sum_matches_interpolation(layout: torch.memory_format,
                                                fine_hw: tuple[int, int]) -> None:
    """The FPN's top-down sum as a broadcast over a 2x2 view (inference) equals torchvision's
    nearest interpolation plus add, bit for bit, in both layouts; under autograd the
    interpolation runs, gradients equal to the reference; a map that is not exactly twice the
    coarser one (11 rows over 6) takes the interpolation."""
    from detres.modeling.backbones.fpn import add_upsampled_

    g = torch.Generator().manual_seed(0)
    fine0 = torch.randn(2, 8, *fine_hw, generator=g).contiguous(memory_format=layout)
    coarse0 = torch.randn(2, 8, 6, 8, generator=g).contiguous(memory_format=layout)
    outs, grads = [], []
    for ref in (False, True):
        fine, coarse = (t.clone().requires_grad_() for t in (fine0, coarse0))
        with reference_ops(ref):
            out = add_upsampled_(fine * 1, coarse)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append((fine.grad, coarse.grad))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    with torch.no_grad():  # where the broadcast runs
        fast = add_upsampled_(fine0.clone(), coarse0)
        with reference_ops():
            ref = add_upsampled_(fine0.clone(), coarse0)
    assert torch.equal(fast, ref)
