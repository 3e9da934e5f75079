"""Top-1 / top-5 accuracy against a direct computation."""

from __future__ import annotations

import pytest
import torch

from detres.evaluation import EVALUATORS, ClassificationEvaluator


def reference(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    rank = (logits > logits.gather(1, labels[:, None])).sum(1)  # classes scored above the label
    return (rank < k).float().mean().item()


def test_topk_matches_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(257, 10, generator=g)
    labels = torch.randint(0, 10, (257,), generator=g)
    labels[:60] = logits[:60].argmax(1)  # some certain hits, so top-1 is well above chance
    ev = EVALUATORS.build("classification")
    for chunk in range(0, 257, 64):
        ev.process(logits[chunk:chunk + 64], labels[chunk:chunk + 64])
    r = ev.evaluate()
    assert r["num_samples"] == 257
    assert r["top1"] == pytest.approx(reference(logits, labels, 1))
    assert r["top5"] == pytest.approx(reference(logits, labels, 5))
    assert r["top1_err"] == pytest.approx(1 - r["top1"]) and 0.3 < r["top1"] < r["top5"] < 1
    ev.reset()
    assert ev.evaluate()["num_samples"] == 0


def test_fewer_classes_than_k_and_repeated_ids() -> None:
    ev = ClassificationEvaluator(topk=(1, 5))
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    ev.process(logits, torch.tensor([0, 0, 0]), ids=[10, 11, 11])  # 11 repeated (padding)
    r = ev.evaluate()
    assert r["num_samples"] == 2 and r["top1"] == 0.5 and r["top5"] == 1.0


def test_bad_input() -> None:
    ev = ClassificationEvaluator()
    with pytest.raises(ValueError, match="labels must be in"):
        ev.process(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected logits"):
        ev.process(torch.zeros(2, 3), torch.tensor([0]))
    ev.process(torch.zeros(2, 3), torch.tensor([0, 1]), ids=[0, 1])
    with pytest.raises(ValueError, match="ids for every batch"):
        ev.process(torch.zeros(2, 3), torch.tensor([0, 1]))
