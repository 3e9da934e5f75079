"""Classification pretraining (the paper's ImageNet and CIFAR experiments) on the shared loop.

The classifier *is* the backbone module with its ``fc`` head, so its checkpoint's ``model``
entry has torchvision names and loads into a detector's trunk without renaming.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detres.config import Config
from detres.data.cls_loader import (
    ClsDataset,
    build_cls_dataset,
    build_cls_test_loader,
    build_cls_train_loader,
)
from detres.engine.launch import Run
from detres.engine.trainer import Trainer
from detres.evaluation import EVALUATORS
from detres.modeling import (
    build_backbone,
    load_pretrained,
    load_weights,
    read_weights,
    resolve_weights,
)
from detres.modeling.weights.core import input_spec
from detres.utils.device import autocast_context
from detres.utils.dist import is_dist
from detres.utils.errors import InputError
from detres.utils.logging import LOG, plot_curves


def build_model(cfg: Config, num_classes: int, *, finetune: bool = False) -> nn.Module:
    """The classifier of ``cfg`` with its weights (``model.weights``: strict, or with another
    head when ``finetune``; else ``model.backbone.weights`` as a trunk)."""
    model = build_backbone(cfg.model.backbone, num_classes=num_classes)
    load_pretrained(model, cfg.model, finetune=finetune)
    return model


@torch.inference_mode()
def evaluate_classifier(model: nn.Module, ds: ClsDataset, cfg: Config,
                        device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 error (fractions, :class:`~detres.evaluation.ClassificationEvaluator`)
    and the mean loss over the whole split, every rank's shard gathered."""
    was_training = model.training
    model.eval()
    evaluator = EVALUATORS.build("classification", topk=(1, 5))
    loss = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, count
    with autocast_context(device, cfg.evaluation.amp):
        for x, y in build_cls_test_loader(cfg, ds):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float()
            evaluator.process(logits, y)
            loss += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 torch.tensor(float(y.numel()), device=device).double()])
    if is_dist():
        torch.distributed.all_reduce(loss)
    model.train(was_training)
    scores = evaluator.evaluate()  # rank 0; the trainer shares the metrics with every rank
    if not scores:
        return {}
    return {"top1_err": scores["top1_err"], "top5_err": scores["top5_err"],
            "loss": loss[0].item() / max(loss[1].item(), 1.0),
            "num_images": scores["num_samples"]}


def pretrain(run: Run, resume: str | None = None, eval_only: bool = False) -> dict[str, float]:
    cfg, device = run.cfg, run.device
    val_ds = build_cls_dataset(cfg, train=False)
    if eval_only:
        run.save_config()
        if not cfg.model.weights:
            raise InputError("--eval-only needs model.weights=CHECKPOINT")
        # the head the checkpoint has (ImageNet's 1000 classes, which the val set's labels
        # index into), else the val set's
        weights = read_weights(resolve_weights(cfg.model.weights, cfg.model))
        head = [v for k, v in weights.state.items() if k in ("fc.weight", "classifier.6.weight")]
        model = build_backbone(cfg.model.backbone,
                               num_classes=int(head[0].shape[0]) if head else len(val_ds.classes))
        load_weights(model, weights, policy="strict", expect_input=input_spec(cfg.model.input))
        model = model.to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return evaluate_classifier(model, val_ds, cfg, device)
    train_ds = build_cls_dataset(cfg, train=True)
    classes = list(train_ds.classes)
    if cfg.model.num_classes != len(classes):
        LOG.info(
            "model.num_classes=%d -> %d (from the training set)",
            cfg.model.num_classes,
            len(classes),
        )
        cfg.model.num_classes = len(classes)
    run.save_config()  # after the data set the class count: OUT/config.yaml builds this model
    model = build_model(cfg, len(classes), finetune=True).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = DistributedDataParallel(model) if run.distributed else model
    LOG.info(
        "%s: %d train / %d val images, %d classes, %.2fM parameters",
        cfg.model.backbone.name,
        len(train_ds),
        len(val_ds),
        len(classes),
        sum(p.numel() for p in model.parameters()) / 1e6,
    )

    def step(m: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = m(x)
        err = (logits.detach().argmax(1) != y).float().mean()
        return {"loss_cls": F.cross_entropy(logits, y), "train_top1_err": err}

    def evaluate(m: nn.Module) -> dict[str, float]:
        out = evaluate_classifier(model, val_ds, cfg, device)
        if not out:  # not rank 0
            return out
        LOG.info(
            "val: top-1 err %.4f  top-5 err %.4f  (%d images)",
            out["top1_err"],
            out["top5_err"],
            out["num_images"],
        )
        return out

    trainer = Trainer(
        cfg,
        net,
        lambda start: iter(build_cls_train_loader(cfg, start_iter=start, ds=train_ds)),
        step,
        evaluate,
        run.out_dir,
        device=device,
        primary_metric="top1_err",
        meta={"task": "cls", "class_names": classes, "input": input_spec(cfg.model.input)},
    )
    if resume is not None:
        trainer.resume(None if resume == "last" else resume)
    metrics = trainer.train()
    png = plot_curves(
        run.out_dir / "metrics.jsonl",
        run.out_dir / "curves.png",
        train_keys=["loss_cls", "train_top1_err"],
        val_keys=["val/top1_err", "val/top5_err"],
        title=f"{cfg.model.backbone.name}: training and validation error",
        val_ylabel="validation error",
    )
    if png is not None:
        LOG.info("curves: %s", png)
    return metrics


def final_summary(metrics: dict[str, float], out_dir: Path) -> str:
    return (
        f"top-1 error {100 * metrics.get('top1_err', float('nan')):.2f}%  "
        f"top-5 error {100 * metrics.get('top5_err', float('nan')):.2f}%  ({out_dir})"
    )
