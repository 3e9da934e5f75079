"""The ``detres`` command: one entry point with a subcommand per tool.

    detres train --cfg demo.yaml --out-dir runs/demo     # = python tools/train_det.py ...
    detres eval --cfg runs/demo/config.yaml --weights runs/demo/model_final.pth
    python -m detres predict --cfg ... --input photos/

Every subcommand is a module of this package with a ``main(argv) -> int``; ``tools/<name>.py``
in a checkout calls the same function, so the two spellings cannot drift apart. Configs are
found by name from any folder (:func:`detres.config.find_config`).
"""

from __future__ import annotations

import importlib
import sys

from detres import __version__
from detres.config import CONFIG_DIR, config_summary

#: subcommand -> (module under detres.cli, one line of help); the module keeps the tool's name
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train_det", "train a detector and score it (tools/train_det.py)"),
    "pretrain": ("pretrain_cls", "classification pretraining (tools/pretrain_cls.py)"),
    "eval": ("eval", "score a checkpoint, an ONNX file or a results file (tools/eval.py)"),
    "predict": ("predict", "detections on images, folders or a video (tools/predict.py)"),
    "export": ("export", "a detector as an ONNX file (tools/export.py)"),
    "inspect": ("inspect_data", "look at a detection set before training (tools/inspect_data.py)"),
    "convert": ("convert_weights", "torchvision / MSRA / Detectron2 weights as detres files "
                "(tools/convert_weights.py)"),
    "benchmark": ("benchmark", "speed figures (tools/benchmark.py)"),
    "bench-eval": ("bench_eval", "COCO / VOC scoring speed (tools/bench_eval.py)"),
    "analyze": ("analyze_model", "parameters and FLOPs of a model (tools/analyze_model.py)"),
    "plot": ("plot_runs", "classification runs in the paper's figure style (tools/plot_runs.py)"),
    "configs": ("", "list the configs shipped with detres (give --cfg one of these names)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"detres {__version__}: Faster R-CNN on ResNet and VGG-16 (He et al. 2015)", "",
             "usage: detres <command> [options]    (detres <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def list_configs() -> int:
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        print(f"{path.name:<28} {config_summary(path)}")
    print(f"\n({CONFIG_DIR}; give --cfg a name from this list, or a path)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"detres: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    if not module:
        return list_configs()
    sys.argv[0] = f"detres {name}"  # argparse's prog: usage lines say what the user typed
    return int(importlib.import_module(f"detres.cli.{module}").main(rest) or 0)
