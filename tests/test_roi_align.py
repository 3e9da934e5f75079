"""detres' embedding-bag RoIAlign against torchvision's ``roi_align`` and ``MultiScaleRoIAlign``:
forward values and gradients, aligned or not, fixed or adaptive sampling, boxes that leave
the feature map, degenerate boxes, several images."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from detres.modeling.roi_align import multilevel_roi_align, roi_align


def random_rois(n_img: int, count: int, extent: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * extent * 1.1 - 0.05 * extent  # some outside
    wh = torch.rand(count, 2, generator=g) * extent * 0.6
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:3, 2:] = boxes[:3, :2]  # zero-size boxes
    boxes[3, 2:] = boxes[3, :2] - 2.0  # inverted box
    img = torch.randint(0, n_img, (count, 1), generator=g).float()
    return torch.cat([img, boxes], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_matches_torchvision(aligned: bool, sampling_ratio: int, channels_last: bool):
    torch.manual_seed(0)
    feats = torch.randn(2, 8, 13, 17, dtype=torch.float64)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    rois = random_rois(2, 40, extent=17 * 8, seed=1).double()
    a = feats.clone().requires_grad_()
    b = feats.clone().requires_grad_()
    ref = tv_roi_align(a, rois, (5, 5), 1 / 8, sampling_ratio, aligned)
    got = roi_align(b, rois, 5, 1 / 8, sampling_ratio, aligned)
    assert got.shape == ref.shape == (40, 8, 5, 5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    got.backward(grad.to(got.dtype))
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)


def test_roi_align_float32_and_empty():
    torch.manual_seed(0)
    feats = torch.randn(1, 16, 50, 40)
    rois = random_rois(1, 300, extent=300, seed=3)
    ref = tv_roi_align(feats, rois, (7, 7), 1 / 8, 0, True)
    torch.testing.assert_close(roi_align(feats, rois, 7, 1 / 8, 0, True), ref)
    assert roi_align(feats, rois[:0], 7, 1 / 8).shape == (0, 16, 7, 7)
    with pytest.raises(ValueError, match=r"\(R, 5\)"):
        roi_align(feats, rois[:, 1:], 7, 1 / 8)


def test_roi_align_bf16() -> None:
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 20, 20).bfloat16()
    rois = random_rois(1, 30, extent=160, seed=4)
    ref = tv_roi_align(feats.float(), rois, (7, 7), 1 / 8, 2, False)
    got = roi_align(feats, rois, 7, 1 / 8, 2, False)  # no gradient: pooled in bf16
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)
    leaf = feats.clone().requires_grad_()  # training: pooled in float32, like autocast
    got = roi_align(leaf, rois, 7, 1 / 8, 2, False)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2)
    got.float().sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16


def test_multilevel_matches_multiscale_roialign():
    torch.manual_seed(0)
    h, w = 256, 320
    names, strides = ["p2", "p3", "p4", "p5"], [4, 8, 16, 32]
    feats = {n: torch.randn(2, 8, h // s, w // s, dtype=torch.float64) for n, s in
             zip(names, strides, strict=True)}
    g = torch.Generator().manual_seed(5)
    props = []
    for _ in range(2):  # sizes from 2 px to the whole image: every level is used
        xy = torch.rand(60, 2, generator=g) * torch.tensor([w, h]) * 0.8
        wh = torch.exp(torch.rand(60, 2, generator=g) * 6.5) + 1
        props.append(torch.cat([xy, xy + wh], 1).double())
    ref_pool = MultiScaleRoIAlign(names, 7, 2)
    leaves = {n: f.clone().requires_grad_() for n, f in feats.items()}
    ref = ref_pool(leaves, props, [(h, w), (h - 30, w)])
    mine = {n: f.clone().requires_grad_() for n, f in feats.items()}
    idx = torch.cat([torch.full((len(p), 1), i, dtype=torch.float64) for i, p in enumerate(props)])
    rois = torch.cat([idx, torch.cat(props)], 1)
    got = multilevel_roi_align([mine[n] for n in names], strides, rois, 7, 2)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    got.backward(grad)
    used = 0
    for n in names:
        if mine[n].grad is None:  # no RoI on this level: torchvision's gradient is all zero
            assert not leaves[n].grad.any()
            continue
        used += 1
        torch.testing.assert_close(mine[n].grad, leaves[n].grad, rtol=1e-6, atol=1e-6)
    assert used >= 3


def test_reference_ops_switch():
    from detres.modeling.fastpath import fast_ops_enabled, reference_ops

    torch.manual_seed(0)
    feats = torch.randn(1, 4, 16, 16)
    rois = random_rois(1, 20, extent=128, seed=6)
    fast = roi_align(feats, rois, 7, 1 / 8, 2, True)
    with reference_ops():
        assert not fast_ops_enabled()
        ref = roi_align(feats, rois, 7, 1 / 8, 2, True)
    assert fast_ops_enabled()
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(ref, tv_roi_align(feats, rois, (7, 7), 1 / 8, 2, True), rtol=0,
                               atol=0)
