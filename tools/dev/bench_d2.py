#!/usr/bin/env python
"""detres vs Detectron2 (from source) on this CPU: the same model-zoo detector, the same
weights, the same image, timed A B A B in one process (not run by the tests).

    PYTHONPATH=/tmp/d2src:/tmp/d2deps python tools/dev/bench_d2.py --d2 /tmp/d2src \\
        [--models r101_c4 r50_fpn] [--hw 800 1067] [--repeats 3]

Setup as in ``tools/dev/d2_goldens.py``. No trained weights can be downloaded here, so each
model gets full-width random weights calibrated the same way as the goldens' (proposals and
scores spread), written in the model zoo's ``.pkl`` format. Detectron2 runs them through its
``DefaultPredictor`` (its resize, its model); detres through ``--from detectron2``'s
conversion into ``coco_r101_c4_3x.yaml`` / ``coco_r50_fpn_3x.yaml``, set up as ``predict.py``
and ``eval.py`` set it up (channels-last), and ``predict`` (its preprocessing included), in
fp32. The image's short side equals the test size, so neither
side resizes. Prints the CPU, per-model medians and quartiles, the ratio, and how far the
detections agree. ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch
from d2_goldens import MODELS, image, randomize  # tools/dev/, beside this script

from detres.benchmark.core import alternate, detres_inference, match_detections, summarize
from detres.config import load_config
from detres.data.det_transforms import image_tensor
from detres.engine.predict import build_predictor
from detres.modeling.weights.zoo import detectron2_checkpoint
from detres.utils.device import cpu_line, resolve_device
from detres.utils.io import atomic_save

CONFIGS = {"r101_c4": "coco_r101_c4_3x.yaml", "r50_fpn": "coco_r50_fpn_3x.yaml"}


def d2_full_cfg(d2: Path, name: str, short: int):  # noqa: ANN201
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(d2 / "configs" / MODELS[name]))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = short
    return cfg


def bench_one(d2: Path, name: str, hw: tuple[int, int], warmup: int, repeats: int,
              tmp: Path, d2_nhwc: bool) -> dict[str, object]:
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    bgr = image(hw, seed=7)
    torch.manual_seed(0)
    cfg = d2_full_cfg(d2, name, short=min(hw))
    model = build_model(cfg)
    randomize(model, bgr, seed=3)
    pkl = tmp / f"{name}.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()},
                     "__author__": "detres bench (random, calibrated)"}, f, protocol=4)
    del model
    cfg.MODEL.WEIGHTS = str(pkl)
    d2_pred = DefaultPredictor(cfg)

    dcfg = load_config(CONFIGS[name], [f"model.input.min_size_test={min(hw)}"])
    converted = tmp / f"{name}.pth"
    atomic_save(detectron2_checkpoint(pkl, dcfg), converted)  # convert_weights --from detectron2
    cpu = resolve_device("cpu")  # as predict.py and eval.py set the process up (the allocator)
    ours = build_predictor(dcfg, converted, cpu)  # as predict.py, eval.py run it
    rgb = image_tensor(np.ascontiguousarray(bgr[:, :, ::-1]))
    ours_run = detres_inference(ours, [rgb], cpu, "fp32")

    def d2_run() -> object:
        with torch.inference_mode():
            return d2_pred(bgr)
    fns = {"detectron2": d2_run, "detres": ours_run}
    if d2_nhwc:  # for information: Detectron2 as shipped does not convert its model
        d2_cl = DefaultPredictor(cfg)
        d2_cl.model.to(memory_format=torch.channels_last)

        def d2_cl_run() -> object:
            with torch.inference_mode():
                return d2_cl(bgr)
        fns["detectron2_nhwc"] = d2_cl_run
    times = alternate(fns, torch.device("cpu"), warmup=warmup, repeats=repeats)
    inst = d2_run()["instances"]
    ids = torch.tensor(ours.category_ids)
    ref = {"boxes": inst.pred_boxes.tensor, "scores": inst.scores,
           "labels": ids[inst.pred_classes]}
    out: dict[str, object] = {k: summarize(v) for k, v in times.items()}
    out["speedup"] = out["detectron2"]["median_s"] / out["detres"]["median_s"]
    if d2_nhwc:
        out["speedup_vs_nhwc"] = out["detectron2_nhwc"]["median_s"] / out["detres"]["median_s"]
    out["agreement"] = match_detections(ref, ours_run()[0])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d2", type=Path, required=True,
                   help="the Detectron2 source tree (for its configs; import it via PYTHONPATH)")
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--hw", type=int, nargs=2, default=[800, 1067], help="image height width")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d2-nhwc", action="store_true",
                   help="also time Detectron2 with its model converted to channels-last")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    a = p.parse_args()
    resolve_device("cpu")  # the process as detres' tools set it up (DETRES_MALLOC=default: not)
    print(cpu_line(), f"| torch threads {torch.get_num_threads()}")
    report: dict[str, object] = {"cpu": cpu_line(), "threads": torch.get_num_threads(),
                                 "hw": a.hw}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            r = bench_one(a.d2, name, tuple(a.hw), a.warmup, a.repeats, Path(tmp), a.d2_nhwc)
            report[name] = r
            d, o, ag = r["detectron2"], r["detres"], r["agreement"]
            print(f"{name} {a.hw[0]}x{a.hw[1]} fp32: Detectron2 {d['median_s']:.2f} s "
                  f"[{d['p25_s']:.2f}, {d['p75_s']:.2f}]  detres {o['median_s']:.2f} s "
                  f"[{o['p25_s']:.2f}, {o['p75_s']:.2f}]  -> {r['speedup']:.2f}x | "
                  f"detections {ag['ref']} vs {ag['ours']}, matched {ag['matched']:.1%} "
                  f"(max box diff {ag['max_box_diff_px']:.2g} px, "
                  f"score {ag['max_score_diff']:.2g})", flush=True)
            if a.d2_nhwc:
                n = r["detectron2_nhwc"]
                print(f"  Detectron2 converted to channels-last: {n['median_s']:.2f} s "
                      f"-> detres {r['speedup_vs_nhwc']:.2f}x", flush=True)
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
