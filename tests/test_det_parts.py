"""Detector parts against torchvision's references: anchors, box coder, matcher, sampler,
batched NMS helpers and RPN proposal selection."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import box_iou

from detres.modeling.anchors import AnchorGenerator
from detres.modeling.box_coder import BoxCoder
from detres.modeling.box_ops import batched_iou, batched_nms, keep_topk_per_image, split_by_image
from detres.modeling.matcher import Matcher, match_boxes
from detres.modeling.rpn import RPN
from detres.modeling.sampler import BalancedSampler


def random_boxes(n: int, size: float = 100.0, gen: torch.Generator | None = None) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize(
    ("sizes", "padded", "feature_sizes"),
    [
        ([[32, 64, 128, 256, 512]], (128, 160), [(8, 10)]),  # C4, stride 16
        (
            [[32], [64], [128], [256], [512]],
            (224, 256),
            [(56, 64), (28, 32), (14, 16), (7, 8), (4, 4)],
        ),
    ],
)
def test_anchors_match_torchvision(sizes, padded, feature_sizes) -> None:
    ratios = [0.5, 1.0, 2.0]
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
    tv = TVAnchorGenerator(tuple(tuple(s) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    feats = [torch.zeros(2, 4, h, w) for h, w in feature_sizes]
    ref = tv(ImageList(torch.zeros(2, 3, *padded), [padded, padded]), feats)
    got = ours(feats, padded)
    assert [len(a) for a in got] == [
        h * w * 3 * len(s) for (h, w), s in zip(feature_sizes, sizes, strict=True)
    ]
    for img_anchors in ref:
        torch.testing.assert_close(torch.cat(got), img_anchors, rtol=0, atol=0)
    assert ours(feats, padded)[0] is got[0]  # cached


def test_box_coder_matches_torchvision_and_round_trips() -> None:
    gen = torch.Generator().manual_seed(0)
    boxes, gt = random_boxes(50, gen=gen), random_boxes(50, gen=gen)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        ours, tv = BoxCoder(weights=weights), tv_utils.BoxCoder(weights)
        deltas = ours.encode(gt, boxes)
        torch.testing.assert_close(deltas, tv.encode_single(gt, boxes), rtol=0, atol=0)
        torch.testing.assert_close(ours.decode(deltas, boxes), gt, rtol=1e-5, atol=1e-4)
        # class-specific decode, (R, K, 4) deltas against (R, 1, 4) boxes
        codes = torch.randn(50, 3 * 4, generator=gen) * 2
        ref = tv.decode_single(codes, boxes).view(50, 3, 4)
        got = ours.decode(codes.view(50, 3, 4), boxes[:, None, :])
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # the clamp at log(1000/16) keeps huge deltas finite
    big = BoxCoder().decode(
        torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([[0.0, 0, 10, 10]])
    )
    assert torch.isfinite(big).all()
    assert big[0, 2] - big[0, 0] == pytest.approx(10 * 1000 / 16, rel=1e-4)
    assert BoxCoder().scale_clamp == pytest.approx(math.log(1000 / 16))


@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_matches_torchvision_per_image(low_quality: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    gts = [random_boxes(3, gen=gen), torch.zeros(0, 4), random_boxes(7, gen=gen)]
    boxes = random_boxes(400, gen=gen)
    matcher = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=low_quality)
    tv = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    matches, vals, _ = match_boxes(matcher, gts, boxes)
    assert matches.shape == (3, 400)
    assert (matches[1] == -1).all()  # no GT: every box is background
    for i in (0, 2):
        torch.testing.assert_close(matches[i], tv(box_iou(gts[i], boxes)))
        torch.testing.assert_close(vals[i], box_iou(gts[i], boxes).max(dim=0).values)
        best_box_of_gt = box_iou(gts[i], boxes).argmax(dim=1)
        # with low-quality matches, each GT's best box is a foreground box (for some GT)
        assert (matches[i][best_box_of_gt] >= 0).all() == low_quality


def test_batched_iou_matches_box_iou() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = random_boxes(5, gen=gen), random_boxes(9, gen=gen)
    got = batched_iou(torch.stack([a, a * 0.5]), torch.stack([b, b]))
    torch.testing.assert_close(got[0], box_iou(a, b))
    torch.testing.assert_close(got[1], box_iou(a * 0.5, b))


def test_sampler_quota_and_balance() -> None:
    labels = torch.full((3, 1000), -1)
    labels[0, :10] = 1  # few positives: all kept, negatives fill up
    labels[0, 10:600] = 0
    labels[1, :700] = 2  # many positives: capped at 128
    labels[1, 700:720] = 0
    labels[2, :5] = 0  # only 5 negatives, no positives
    pos, neg = BalancedSampler(batch_size_per_image=256, positive_fraction=0.5)(labels)
    assert pos.sum(1).tolist() == [10, 128, 0]
    assert neg.sum(1).tolist() == [246, 20, 5]
    assert not (pos & neg).any()
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    # the draw is random: two draws differ, both valid
    pos2, _ = BalancedSampler(batch_size_per_image=256, positive_fraction=0.5)(labels)
    assert pos2.sum(1).tolist() == [10, 128, 0] and not torch.equal(pos, pos2)


def test_batched_nms_and_topk_per_image_match_per_image_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    n, per = 3, 300
    boxes = torch.cat([random_boxes(per, gen=gen) for _ in range(n)])
    scores = torch.rand(n * per, generator=gen)
    cls = torch.randint(0, 4, (n * per,), generator=gen)
    img = torch.arange(n).repeat_interleave(per)
    keep = keep_topk_per_image(batched_nms(boxes, scores, img * 4 + cls, 0.5), img, 20, n)
    got = split_by_image(keep, img[keep], n)
    for i in range(n):
        sl = slice(i * per, (i + 1) * per)
        ref = tv_batched_nms(boxes[sl], scores[sl], cls[sl], 0.5)[:20] + i * per
        assert got[i].tolist() == ref.tolist()


def test_rpn_proposals_match_torchvision() -> None:
    torch.manual_seed(0)
    sizes = ((32,), (64,))
    tv_gen = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 2)
    tv = RegionProposalNetwork(
        tv_gen,
        RPNHead(8, 3),
        0.7,
        0.3,
        256,
        0.5,
        dict(training=2000, testing=150),
        dict(training=2000, testing=60),
        0.7,
    ).eval()
    with torch.no_grad():
        for p in tv.head.parameters():
            p.normal_(0, 0.5)
    ours = RPN(
        in_channels=8,
        anchor_generator=AnchorGenerator(sizes=[[32], [64]]),
        pre_nms_topk_test=150,
        post_nms_topk_test=60,
    )
    ours.head.load_state_dict(
        {
            "conv.weight": tv.head.conv[0][0].weight,
            "conv.bias": tv.head.conv[0][0].bias,
            "objectness_logits.weight": tv.head.cls_logits.weight,
            "objectness_logits.bias": tv.head.cls_logits.bias,
            "anchor_deltas.weight": tv.head.bbox_pred.weight,
            "anchor_deltas.bias": tv.head.bbox_pred.bias,
        }
    )
    feats = {"a": torch.randn(2, 8, 16, 20), "b": torch.randn(2, 8, 8, 10)}
    image_sizes = [(128, 160), (100, 120)]
    with torch.no_grad():
        ref, _ = tv(ImageList(torch.zeros(2, 3, 128, 160), image_sizes), feats)
        got = ours.proposals(ours(list(feats.values()), (128, 160)), image_sizes, training=False)
    for r, g, (h, w) in zip(ref, got, image_sizes, strict=True):
        assert len(r) == len(g) > 0
        torch.testing.assert_close(g, r)
        assert (g[:, 2] <= w).all() and (g[:, 3] <= h).all() and (g >= 0).all()



def test_rpn_ranks_saturated_proposals_by_logits_under_detectron2_rules() -> None:
    """float32's sigmoid ties logits 18 and 20 (both 1.0), so by probabilities which of two
    overlapping boxes survives NMS is up to the sort; Detectron2 ranks by the logits: the box
    with logit 20 survives, as ``nms`` on the logits says."""
    from torchvision.ops import nms

    from detres.modeling.rpn import RPNOutput

    rpn = RPN(in_channels=4, anchor_generator=AnchorGenerator(sizes=[[32]]),
              pre_nms_topk_test=10, post_nms_topk_test=2, rank_by_logits=True)
    anchors = torch.tensor([[10.0, 10, 50, 50], [11, 11, 51, 51],  # IoU 0.9: one survives
                            [60, 60, 90, 90], [0, 60, 20, 90]])
    logits = torch.tensor([[18.0, 20.0, 5.0, 4.0]])
    assert torch.sigmoid(logits[0, 0]) == torch.sigmoid(logits[0, 1])  # the tie
    out = RPNOutput([anchors], [logits], [torch.zeros(1, 4, 4)])
    got = rpn.proposals(out, [(100, 100)], training=False)[0]
    assert torch.equal(got, anchors[nms(anchors, logits[0], 0.7)[:2]])
    assert torch.equal(got, anchors[[1, 2]])
