"""The three Faster R-CNN families at tiny widths: losses, gradients, empty images, inference,
predict, weight loading and the state-dict layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from detres.config import ConfigError
from detres.modeling import (
    FasterRCNN,
    build_classifier,
    load_weights,
)


def batch(empty: bool = False) -> tuple[torch.Tensor, list[dict]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 96, 128)
    images[0] = torch.rand(3, 96, 128, generator=gen)
    images[1, :, :64, :96] = torch.rand(3, 64, 96, generator=gen)
    boxes = [
        torch.tensor([[10.0, 12, 60, 70], [40, 30, 120, 90]]),
        torch.tensor([[5.0, 5, 40, 50]]),
    ]
    classes = [torch.tensor([1, 3]), torch.tensor([2])]
    if empty:
        boxes, classes = [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2
    targets = [
        {"gt_boxes": b, "gt_classes": c, "image_size": s, "image_id": i}
        for i, (b, c, s) in enumerate(zip(boxes, classes, [(96, 128), (64, 96)], strict=True))
    ]
    return images, targets


@pytest.mark.parametrize("family", ["c4", "vgg", "fpn"])
def test_losses_and_every_parameter_gets_a_gradient(
    family: str, tiny_detector: Callable[..., FasterRCNN]
) -> None:
    model = tiny_detector(family).train()
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad


def test_empty_images_give_zero_box_losses(tiny_detector: Callable[..., FasterRCNN]) -> None:
    model = tiny_detector("c4").train()
    images, targets = batch(empty=True)
    losses = model.losses(images, targets)
    assert losses["loss_rpn_box"] == 0 and losses["loss_box"] == 0
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_cls"] > 0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # one empty image beside one with objects
    images, targets = batch()
    targets[1]["gt_boxes"], targets[1]["gt_classes"] = (
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
    )
    assert all(torch.isfinite(v) for v in model.losses(images, targets).values())


def test_frozen_trunk_and_state_dict_layout(
    tmp_path: Path, tiny_detector: Callable[..., FasterRCNN]
) -> None:
    # a pretrain_cls-style classifier state dict loads into the detector, res5 included
    torch.manual_seed(1)
    cls = build_classifier("resnet50", num_classes=10, width_per_group=8)
    path = tmp_path / "cls.pth"
    torch.save({"model": cls.state_dict(), "config": {}}, path)
    model = tiny_detector(
        "c4",
        f"model.backbone.weights={path}",
        "model.backbone.norm=FrozenBN",
        "model.backbone.freeze_at=2",
    )
    res5 = model.roi_heads.box_head.res5  # res5 runs per RoI: the box head owns it
    torch.testing.assert_close(res5[0].conv1.weight, cls.layer4[0].conv1.weight)
    torch.testing.assert_close(
        model.backbone.layer3[1].bn2.running_var, cls.layer3[1].bn2.running_var
    )
    assert not hasattr(model.backbone, "layer4")  # one module, in one place
    keys = list(model.state_dict())
    assert not any(k.startswith("backbone.layer4") for k in keys)
    assert any(k.startswith("roi_heads.box_head.res5.") for k in keys)
    ptrs = [t.data_ptr() for t in model.state_dict().values() if t.numel()]
    assert len(ptrs) == len(set(ptrs)), "duplicated tensors in the state dict"
    trainable = {
        n.split(".")[1]
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("backbone.")
    }
    assert trainable == {"layer2", "layer3"}
    assert all(p.requires_grad for p in res5.parameters())


@pytest.mark.parametrize("pooler", ["ROIAlign", "ROIPool"])
def test_c4_poolers_run_and_inference_boxes_lie_inside_images(
    pooler: str, tiny_detector: Callable[..., FasterRCNN]
) -> None:
    model = tiny_detector(
        "c4", f"model.roi_heads.pooler={pooler}", "model.roi_heads.score_thresh_test=0.0"
    )
    images, targets = batch()
    assert all(torch.isfinite(v) for v in model.train().losses(images, targets).values())
    dets = model.inference(images, [t["image_size"] for t in targets])
    assert model.training  # inference switches to eval mode and back
    for det, (h, w) in zip(dets, [(96, 128), (64, 96)], strict=True):
        assert len(det["boxes"]) > 0 and len(det["boxes"]) <= 100
        b = det["boxes"]
        assert (b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("family", ["c4", "vgg", "fpn"])
def test_predict_maps_boxes_and_labels_back(
    family: str, tiny_detector: Callable[..., FasterRCNN]
) -> None:
    model = tiny_detector(family, "model.roi_heads.score_thresh_test=0.0")
    model.set_classes(["cat", "dog", "bird"], [17, 18, 16])
    gen = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 150, 200, generator=gen), torch.rand(3, 40, 70, generator=gen)]
    dets = model.predict(images)
    for det, img in zip(dets, images, strict=True):
        h, w = img.shape[-2:]
        assert len(det["boxes"]) > 0
        b = det["boxes"]
        assert (b >= 0).all() and (b[:, 2] <= w + 1e-3).all() and (b[:, 3] <= h + 1e-3).all()
        assert set(det["labels"].tolist()) <= {16, 17, 18}
    # the large image is scaled down by 96/150: boxes reach beyond the resized size
    assert dets[0]["boxes"][:, 2].max() > 128


def test_normalize_keeps_padding_zero(tiny_detector: Callable[..., FasterRCNN]) -> None:
    model = tiny_detector("c4")
    images, targets = batch()
    x = model.normalize(images, [t["image_size"] for t in targets])
    assert (x[1, :, 64:, :] == 0).all() and (x[1, :, :, 96:] == 0).all()
    torch.testing.assert_close(
        x[0, :, 0, 0], (images[0, :, 0, 0] - model.pixel_mean[:, 0, 0]) / model.pixel_std[:, 0, 0]
    )


def test_checkpoint_round_trip(tmp_path: Path, tiny_detector: Callable[..., FasterRCNN]) -> None:
    model = tiny_detector("vgg")
    model.set_classes(["a", "b", "c"], [3, 5, 9])
    path = tmp_path / "det.pth"
    torch.save(
        {
            "model": model.state_dict(),
            "class_names": model.class_names,
            "category_ids": model.category_ids,
        },
        path,
    )
    other = tiny_detector("vgg", f"model.weights={path}")
    assert other.category_ids == [3, 5, 9] and other.class_names == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    wrong = tiny_detector("c4")
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(wrong, path, policy="strict")


def test_bad_inputs_fail_with_clear_errors(tiny_detector: Callable[..., FasterRCNN]) -> None:
    with pytest.raises(ConfigError, match="model.anchors.sizes"):
        tiny_detector("fpn", "model.anchors.sizes=[[32,64]]")
    with pytest.raises(ConfigError, match="pooler_resolution"):
        tiny_detector("vgg", "model.roi_heads.pooler_resolution=14")
    model = tiny_detector("c4")
    images, targets = batch()
    targets[0]["gt_classes"] = torch.tensor([0, 4])
    with pytest.raises(ValueError, match="model.num_classes"):
        model.losses(images, targets)
    del targets[1]["gt_boxes"]
    with pytest.raises(KeyError, match="gt_boxes"):
        model.losses(images, targets)


def test_finetuning_reinitializes_the_predictor_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tiny_detector: Callable[..., FasterRCNN]
) -> None:
    """A detector trained on 3 classes fine-tuned to 5: everything but the box predictor loads,
    and one log line says what was re-initialized and why. A classifier's fc: likewise."""
    src = tiny_detector("fpn")
    src.set_classes(["a", "b", "c"], [1, 2, 3])
    path = tmp_path / "det3.pth"
    torch.save({"model": src.state_dict(), "class_names": src.class_names,
                "category_ids": src.category_ids}, path)
    dst = tiny_detector("fpn", "model.num_classes=5")
    with caplog.at_level("INFO", logger="detres"):
        report = load_weights(dst, path, policy="trunk")
    assert report.reinitialized == ["roi_heads.box_predictor"]
    lines = [r.getMessage() for r in caplog.records if "det3.pth" in r.getMessage()]
    assert len(lines) == 1
    assert "re-initialized roi_heads.box_predictor (3 classes in the file, 5 in the model)" \
        in lines[0]
    torch.testing.assert_close(dst.rpn.head.conv.weight, src.rpn.head.conv.weight)
    assert dst.class_names == ["class_1", "class_2", "class_3", "class_4", "class_5"]
    with pytest.raises(ValueError, match="does not fit"):  # strict: the predictor must fit
        load_weights(dst, path, policy="strict")

    cls = build_classifier("resnet50", num_classes=1000, width_per_group=8)
    cls_path = tmp_path / "r50.pth"
    torch.save(cls.state_dict(), cls_path)
    caplog.clear()
    with caplog.at_level("INFO", logger="detres"):
        load_weights(build_classifier("resnet50", num_classes=10, width_per_group=8), cls_path)
        load_weights(tiny_detector("c4"), cls_path)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "re-initialized fc (1000 classes in the file, 10 in the model)" in lines[0]
    assert "not used from the file: fc" in lines[1] and "roi_heads.box_predictor" in lines[1]
