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
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_train_parity  # noqa: E402
from conftest import D2Goldens  # noqa: E402
from test_train_parity import d2_batch, d2_grads, d2_run, rel  # noqa: E402

from detres.utils.device import cpu_line  # noqa: E402


def relu_inputs(model: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """Hooks that record each ReLU module's input per call (``name#call``)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ReLU):
            def hook(m: nn.Module, inp: tuple, name: str = name) -> None:
                calls = sum(1 for k in seen if k.startswith(name + "#"))
                seen[f"{name}#{calls}"] = inp[0].detach().double().clone()
            handles.append(mod.register_forward_pre_hook(hook))
    return seen, handles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="r50_fpn", choices=["r50_fpn", "r101_c4"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(cpu_line())
    d2 = D2Goldens()
    with np.load(d2.gold / "train_step.npz") as f:
        z = {k: f[k] for k in f.files}
    runs = {"float64": dict(fast=False, dtype=torch.float64),
            "float32 reference ops": dict(fast=False, dtype=torch.float32),
            "float32 fast path": dict(fast=True, dtype=torch.float32)}
    results = {}
    for label, kw in runs.items():
        captured: dict[str, dict[str, torch.Tensor]] = {}
        build = test_train_parity.build_detector

        def hooked(cfg: object, _build=build, out=captured) -> nn.Module:  # type: ignore[no-untyped-def]
            model = _build(cfg)
            out["seen"], _ = relu_inputs(model)
            return model

        test_train_parity.build_detector = hooked
        try:
            losses, grads, model = d2_run(d2, z, args.model, **kw)
        finally:
            test_train_parity.build_detector = build
        results[label] = (losses, grads, model, captured["seen"])
    exact_losses, exact, model, exact_in = results["float64"]
    theirs = d2_grads(z, args.model, "f64/", model)
    print(f"{args.model}: {len(exact_in)} ReLU calls, "
          f"{sum(v.numel() for v in exact_in.values()):,} inputs; batch {d2_batch(z)[0].shape}")
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
