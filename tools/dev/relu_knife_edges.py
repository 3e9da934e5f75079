#!/usr/bin/env python
"""Find the ReLUs on a knife edge in one training step on Detectron2's goldens.

A ReLU whose input lies within rounding of zero passes its gradient in one computation and
blocks it in another: the loss moves by the input's size (nothing), the gradients of every
layer below by about that activation's share. This runs the golden training step
(``tests/goldens/detectron2/train_step.npz``, the batch and weights of
``tests/test_train_parity.py``) in float64 and in float32 with detres's reference
operations and with its fast path, records every ``nn.ReLU`` module's input, and prints the
inputs whose sign differs from float64's, with each run's gradient difference against
float64 and against Detectron2's recorded float64 step.

    python tools/dev/relu_knife_edges.py [--model r50_fpn|r101_c4]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from torch import nn

from detres.utils.device import cpu_line


def d2_goldens() -> object:
    """tests/conftest.py's ``D2Goldens`` (the goldens and the golden step), loaded from its
    file: the tests are not a package."""
    path = Path(__file__).resolve().parents[2] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("detres_tests_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.D2Goldens()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def record_relu_inputs(model: nn.Module, seen: dict[str, torch.Tensor]) -> None:
    """Hooks that put each ReLU module's input into ``seen`` per call (``name#call``)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ReLU):
            def hook(m: nn.Module, inp: tuple, name: str = name) -> None:
                calls = sum(1 for k in seen if k.startswith(name + "#"))
                seen[f"{name}#{calls}"] = inp[0].detach().double().clone()
            mod.register_forward_pre_hook(hook)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="r50_fpn", choices=["r50_fpn", "r101_c4"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(cpu_line())
    d2 = d2_goldens()
    runs = {"float64": dict(fast=False, dtype=torch.float64),
            "float32 reference ops": dict(fast=False, dtype=torch.float32),
            "float32 fast path": dict(fast=True, dtype=torch.float32)}
    results = {}
    for label, kw in runs.items():
        seen: dict[str, torch.Tensor] = {}
        losses, grads, model = d2.train(  # type: ignore[attr-defined]
            args.model, hook=lambda m, seen=seen: record_relu_inputs(m, seen), **kw)
        results[label] = (losses, grads, model, seen)
    exact_losses, exact, model, exact_in = results["float64"]
    theirs = d2.train_grads(args.model, "f64/", model)  # type: ignore[attr-defined]
    print(f"{args.model}: {len(exact_in)} ReLU calls, "
          f"{sum(v.numel() for v in exact_in.values()):,} inputs")
    for label, (_, grads, _, seen) in results.items():
        err = {k: rel(grads[k], exact[k]) for k in grads}
        err_d2 = {k: rel(grads[k], theirs[k]) for k in grads}
        w, wd = max(err, key=err.__getitem__), max(err_d2, key=err_d2.__getitem__)
        print(f"\n{label}: gradients vs detres float64 up to {err[w]:.2g} ({w}); vs "
              f"Detectron2 float64 up to {err_d2[wd]:.2g} ({wd})")
        if label == "float64":
            continue
        found = []  # (|float64 input|, call, index, float64, this run)
        for key, x in seen.items():
            ref = exact_in[key]
            for i in ((x > 0) != (ref > 0)).nonzero():
                t = tuple(int(v) for v in i)
                found.append((abs(float(ref[t])), key, t, float(ref[t]), float(x[t])))
        found.sort()
        for _, key, t, a, b in found[:8]:
            print(f"  {key} at {t}: float64 {a:+.3e}, this run {b:+.3e} (median |input| "
                  f"{float(exact_in[key].abs().median()):.3f})")
        far = sum(1 for f in found if f[0] > 1e-4)
        print(f"  {len(found)} ReLU input(s) on the other side of zero from float64"
              + (f"; {far} of them further than 1e-4 from it: RoIs in another order (the"
                 " per-RoI inputs are compared by position), not rounding" if far else ""))
        closest = min((float(v.abs().min()), k) for k, v in exact_in.items())
    print(f"\nsmallest |ReLU input| in float64: {closest[0]:.2e} ({closest[1]})")


if __name__ == "__main__":
    main()
