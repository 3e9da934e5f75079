"""Classification pretraining (the paper's ImageNet and CIFAR experiments) on the shared loop.

The classifier *is* the backbone module with its ``fc`` head, so its checkpoint's ``model``
entry has torchvision names and loads into a detector's trunk without renaming.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from detres.config import Config
from detres.data.cls_loader import build_cls_dataset
from detres.data.sampling import InfiniteSampler, SeededDataset, ShardSampler
from detres.engine.distributed import get_world_size, is_dist
from detres.engine.launch import Run
from detres.engine.logging import LOG, plot_curves
from detres.engine.trainer import Trainer, autocast_context
from detres.modeling import build_backbone
from detres.modeling.backbones.weights import load_weights


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    model = build_backbone(cfg.model.backbone, num_classes=num_classes)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
    return model


def _loader_kwargs(cfg: Config, device: torch.device) -> dict[str, Any]:
    w = cfg.data.num_workers
    return {"num_workers": w, "pin_memory": device.type == "cuda", "persistent_workers": w > 0}


def train_batches(
    ds: Dataset, cfg: Config, device: torch.device, start_iter: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches of this rank's share of ``solver.batch_size``, from iteration
    ``start_iter`` on (the same batches an uninterrupted run would have drawn)."""
    per_rank = cfg.solver.batch_size // get_world_size()
    sampler = InfiniteSampler(len(ds), seed=cfg.train.seed, start=start_iter * per_rank)
    loader = DataLoader(
        SeededDataset(ds),
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        **_loader_kwargs(cfg, device),
    )
    return iter(loader)


@torch.inference_mode()
def evaluate_classifier(
    model: nn.Module, ds: Dataset, cfg: Config, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """Top-1 / top-5 error (fractions) over the whole split, summed across ranks."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ds, batch_size=batch_size, sampler=ShardSampler(len(ds)), **_loader_kwargs(cfg, device)
    )
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss sum, count
    with autocast_context(device, cfg.train.amp):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hit = topk == y[:, None]
            stats += torch.stack(
                [
                    hit[:, 0].sum(),
                    hit.any(1).sum(),
                    F.cross_entropy(logits, y, reduction="sum"),
                    torch.tensor(y.numel(), device=device),
                ]
            ).double()
    if is_dist():
        torch.distributed.all_reduce(stats)
    model.train(was_training)
    n = max(stats[3].item(), 1.0)
    return {
        "top1_err": 1 - stats[0].item() / n,
        "top5_err": 1 - stats[1].item() / n,
        "loss": stats[2].item() / n,
        "num_images": int(stats[3].item()),
    }


def pretrain(run: Run, resume: str | None = None, eval_only: bool = False) -> dict[str, float]:
    cfg, device = run.cfg, run.device
    val_ds = build_cls_dataset(cfg, train=False)
    if eval_only:
        if not cfg.model.weights:
            raise ValueError("--eval-only needs model.weights=CHECKPOINT")
        model = build_model(cfg, len(val_ds.classes)).to(device)
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
    model = build_model(cfg, len(classes)).to(device)
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
        lambda start: train_batches(train_ds, cfg, device, start),
        step,
        evaluate,
        run.out_dir,
        device=device,
        primary_metric="top1_err",
        meta={"task": "cls", "class_names": classes},
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
