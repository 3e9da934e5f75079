#!/usr/bin/env python
"""Overlay classification runs in the paper's Fig. 4/6 style: training error (thin, dashed)
and validation error (bold) against iterations, one panel per group of runs.

    python tools/plot_runs.py --out degradation.png \
        --panel plain output/synth_plain20 output/synth_plain56 \
        --panel ResNet output/synth_resnet20 output/synth_resnet56
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from detres.utils.logging import read_jsonl


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["iteration"], 100 * r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--panel", nargs="+", action="append", required=True, metavar="TITLE DIR",
                   help="a panel title followed by run directories")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    fig, axes = plt.subplots(1, len(args.panel), figsize=(6 * len(args.panel), 4.5), squeeze=False)
    summary = []
    for ax, (title, *dirs) in zip(axes[0], args.panel, strict=True):
        for i, d in enumerate(dirs):
            rows = read_jsonl(Path(d) / "metrics.jsonl")
            color = f"C{i}"
            name = Path(d).name
            ax.plot(*series(rows, "train_top1_err"), "--", lw=1, color=color, alpha=0.8)
            x, y = series(rows, "val/top1_err")
            ax.plot(x, y, "-", lw=2.5, color=color, label=name)
            if y:
                summary.append(f"{name}: val top-1 error {y[-1]:.2f}%")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel("error (%)  dashed: training, bold: validation")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("\n".join(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
