#!/usr/bin/env python
"""Look at a detection set before training: a summary, a grid of images with their boxes, and
the object sizes at the config's train and test scales against its anchor sizes.

    python tools/inspect_data.py --cfg demo.yaml \\
        "data.train=[{format: voc, path: ../shared/data/raccoon, split: train, val_fraction: 0.2}]"
    python tools/inspect_data.py --cfg output/mine/config.yaml --sets test --out output/look

Writes OUT/summary.json, OUT/<set>_grid.png and OUT/<set>_sizes.png (OUT: --out, default
output/inspect/<cfg name>), prints one line per set and a warning when many objects are
smaller than the smallest anchor once resized (the commonest reason a custom set scores low).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detres.config import load_config
from detres.data.catalog import safe_name
from detres.data.det_loader import build_det_sources
from detres.engine.inspect import anchor_warnings, image_grid, set_statistics, size_histogram
from detres.engine.launch import add_debug_flag, run_cli
from detres.utils.errors import InputError
from detres.utils.logging import setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="demo.yaml", help="config name or path (default demo.yaml)")
    p.add_argument("--sets", choices=["train", "test", "both"], default="both",
                   help="which of data.train / data.test to look at (default both)")
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--grid", type=int, default=16, help="images in the grid (default 16)")
    add_debug_flag(p)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.cfg, args.overrides)
    if cfg.task != "det":
        raise InputError(f"{args.cfg}: task is {cfg.task!r}, not a detection config")
    out = args.out or Path("output") / "inspect" / Path(args.cfg).stem
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    which = {"train": [True], "test": [False], "both": [True, False]}[args.sets]
    summary = []
    for train in which:
        for src in build_det_sources(cfg, train=train):
            stats = set_statistics(src, cfg)
            label = safe_name(src.name)
            grid = image_grid(src, out / f"{label}_grid.png", n=args.grid)
            hist = size_histogram(stats, out / f"{label}_sizes.png")
            print(src.summary())
            for k in ("train", "test"):
                p = stats["box_side_px"][k]
                if p:
                    print(f"  object side at the {k} scale (shorter side "
                          f"{stats['scales'][k]['short']}): median {p['p50']} px, 5-95% "
                          f"{p['p5']}-{p['p95']} px; anchors {stats['anchor_sizes']}")
            warns = anchor_warnings(stats)
            for w in warns:
                print(f"  warning: {w}")
            print(f"  wrote {grid} and {hist}")
            summary.append({**{k: v for k, v in stats.items() if not k.startswith("_")},
                            "warnings": warns, "grid": str(grid), "sizes": str(hist)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return run_cli("inspect_data.py", lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
