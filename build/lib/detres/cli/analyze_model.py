"""Parameters and multiply-adds of a registered backbone, per stage and in total.

    python tools/analyze_model.py resnet50                      # the paper's ResNet-50: 3.86 GMACs
    python tools/analyze_model.py resnet50 stride_in_1x1=false  # torchvision's v1.5: 4.09 GMACs
    python tools/analyze_model.py resnet110 --json              # CIFAR: 32x32 input, 10 classes

MACs are FLOPs / 2 from ``torch.utils.flop_counter`` (convs and fc layers), counted on the meta
device, so even ResNet-152 takes well under a second. ``key=value`` arguments are the backbone
builder's options (values parsed as YAML: true/false, numbers, strings).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import yaml

from detres.modeling import build_classifier, list_backbones
from detres.modeling.backbones import builder_options
from detres.modeling.complexity import complexity


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(int(n))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: override {item!r} is not of the form key=value")
        out[key] = yaml.safe_load(value)
    return out


def analyze(
    name: str, input_size: int | None, num_classes: int | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The complexity report of backbone ``name`` (see :func:`detres.modeling.complexity`)."""
    if num_classes is None:
        num_classes = builder_options(name).get("num_classes", 1000)
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = build_classifier(name, num_classes=num_classes, **overrides)
    size = input_size or model.default_input_size
    report = complexity(model, size)
    variant = {k: getattr(model, k) for k in ("stride_in_1x1", "shortcut") if hasattr(model, k)}
    return {"name": name, "num_classes": num_classes, **variant, "overrides": overrides, **report}


def print_table(r: dict[str, Any]) -> None:
    h, w = r["input_size"]
    extra = ", ".join(f"{k}={r[k]}" for k in ("stride_in_1x1", "shortcut") if r.get(k) is not None)
    print(
        f"{r['name']}: input {h}x{w}, {r['num_classes']} classes" + (f", {extra}" if extra else "")
    )
    print(f"{'stage':<10}{'channels':>9}{'stride':>7}{'output':>16}{'params':>12}{'MACs':>12}")
    for name, s in r["stages"].items():
        shape = "x".join(str(v) for v in s["shape"])
        print(
            f"{name:<10}{s['channels']:>9}{s['stride']:>7}{shape:>16}"
            f"{_si(s['params']):>12}{_si(s['macs']):>12}"
        )
    print(f"{'head':<42}{_si(r['head']['params']):>12}{_si(r['head']['macs']):>12}")
    print(f"{'total':<42}{_si(r['params']):>12}{_si(r['macs']):>12}")
    print(f"params {r['params']:,}  MACs {r['macs']:,} ({r['macs'] / 1e9:.2f} x 10^9)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("name", help=f"a registered backbone: {', '.join(list_backbones())}")
    p.add_argument("--input-size", type=int, default=None, help="default: 224, CIFAR nets 32")
    p.add_argument("--num-classes", type=int, default=None, help="default: 1000, CIFAR nets 10")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", help="builder options as key=value")
    args = p.parse_intermixed_args(argv)
    try:
        report = analyze(
            args.name, args.input_size, args.num_classes, parse_overrides(args.overrides)
        )
    except (KeyError, TypeError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
