#!/usr/bin/env python
"""The appendix switches' effect on trained detectors (not run by the tests): each switch
alone and all together, scored by tools/eval.py's path on the run's own test set, with the
seconds per image, as a markdown table beside Table 9 of He et al. 2015.

    python tools/dev/appendix_table.py --run output/demo --context-run output/demo_context \\
        --out output/appendix_demo

``--run`` is a finished training run (its ``config.yaml`` and ``model_final.pth``) without
global context; ``--context-run`` the same recipe trained with
``model.roi_heads.global_context=true`` (context is trained, so it is its own run). The image
pyramid is the paper's, {200, 400, 600, 800, 1000} around its test scale 600, scaled to the
run's test scale (``model.input.min_size_test``), and so is the maxout target (224 at 600);
TTA runs the same pyramid with flips. Prints the CPU line; writes OUT/appendix.json and
OUT/appendix.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PAPER = {  # Table 9 (COCO val, ResNet-101 C4), cumulative rows: mAP@.5, mAP@[.5,.95]
    "baseline": (48.4, 27.2), "+ box refinement": (49.9, 29.9),
    "+ context": (51.1, 30.0), "+ multi-scale testing": (53.8, 32.5),
}


def pyramid(test_scale: int) -> tuple[list[int], int]:
    """The paper's scales and maxout target (at its test scale 600), at ``test_scale``."""
    f = test_scale / 600
    return [round(s * f) for s in (200, 400, 600, 800, 1000)], round(224 * f)


def rows(base: Path, ctx: Path | None, test_scale: int, max_test: int
         ) -> list[tuple[str, Path, list[str]]]:
    scales, target = pyramid(test_scale)
    ms = ["evaluation.multiscale.enabled=true", f"evaluation.multiscale.scales={scales}",
          f"evaluation.multiscale.max_size={round(max_test * scales[-1] / test_scale)}",
          f"evaluation.multiscale.target_size={target}"]
    tta = ["evaluation.tta.enabled=true", f"evaluation.tta.min_sizes={scales}",
           f"evaluation.tta.max_size={round(max_test * scales[-1] / test_scale)}"]
    refine = ["model.roi_heads.box_refinement=true"]
    out = [("baseline", base, []), ("box refinement alone", base, refine),
           ("multi-scale testing alone", base, ms),
           ("multi-scale testing, proposals from the pyramid", base,
            [*ms, "evaluation.multiscale.pyramid_proposals=true"]),
           ("TTA (Detectron2's: pyramid + flip)", base, tta)]
    if ctx is not None:
        out += [("global context alone (trained)", ctx, []),
                ("refinement + context (Table 9 row 4)", ctx, refine),
                ("refinement + context + multi-scale (row 5)", ctx, [*refine, *ms])]
    else:
        out += [("refinement + multi-scale", base, [*refine, *ms])]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished run without context")
    p.add_argument("--context-run", type=Path, help="the same recipe with global context")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="config overrides for every row")
    a = p.parse_args()
    import torch

    from detres.config import load_config
    from detres.engine.det import evaluate_config
    from detres.utils.device import cpu_line, resolve_device
    from detres.utils.logging import setup_logging

    setup_logging()
    a.out.mkdir(parents=True, exist_ok=True)
    first = load_config(a.run / "config.yaml", a.overrides)
    test_scale, max_test = first.model.input.min_size_test, first.model.input.max_size_test
    results = []
    for label, run, extra in rows(a.run, a.context_run, test_scale, max_test):
        cfg = load_config(run / "config.yaml",
                          [f"model.weights={run / 'model_final.pth'}", "data.num_workers=0",
                           *a.overrides, *extra])
        t0 = time.perf_counter()
        m = evaluate_config(cfg, resolve_device(cfg.train.device))
        wall = time.perf_counter() - t0
        results.append({"row": label, "run": str(run), "overrides": extra,
                        "mAP@.5": 100 * m["mAP@.5"], "mAP@[.5,.95]": 100 * m["mAP@[.5,.95]"],
                        "s_per_image": m["inference_s_per_image"], "wall_s": wall})
        print(f"{label}: {results[-1]['mAP@.5']:.1f} / {results[-1]['mAP@[.5,.95]']:.1f}, "
              f"{m['inference_s_per_image']:.3f} s/img", flush=True)
    base_s = results[0]["s_per_image"]
    cpu = cpu_line()
    lines = [f"CPU: `{cpu}`, torch {torch.__version__}, scoring in fp32 "
             f"(evaluation.amp=none); test scale {test_scale}, pyramid "
             f"{pyramid(test_scale)[0]}, maxout target {pyramid(test_scale)[1]} px", "",
             "| row | mAP@.5 | mAP@[.5,.95] | s / image | x baseline |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['mAP@.5']:.1f} | {r['mAP@[.5,.95]']:.1f} | "
                     f"{r['s_per_image']:.3f} | {r['s_per_image'] / base_s:.1f} |")
    lines += ["", "Table 9 (COCO val, ResNet-101 C4, cumulative): " + "; ".join(
        f"{k} {v[0]} / {v[1]}" for k, v in PAPER.items())]
    (a.out / "appendix.json").write_text(json.dumps({"cpu": cpu, "rows": results}, indent=1))
    (a.out / "appendix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
