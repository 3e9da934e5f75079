"""Config schema, YAML inheritance, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from detres.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    find_config,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["solver.base_lr=0.02", "model.anchors.aspect_ratios=[1.0]"])
    assert isinstance(cfg, Config)
    assert cfg.solver.base_lr == 0.02
    assert cfg.model.anchors.aspect_ratios == [1.0]
    assert cfg.model.roi_heads.bbox_reg_weights == [10.0, 10.0, 5.0, 5.0]


def test_base_inheritance(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("solver: {base_lr: 0.5, max_iter: 10}\ntrain: {seed: 3}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nsolver: {max_iter: 20}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.solver.base_lr, cfg.solver.max_iter, cfg.train.seed) == (0.5, 20, 3)


@pytest.mark.parametrize(
    ("text", "override", "needle"),
    [
        ("solver: {base_lrr: 0.1}\n", None, "solver.base_lrr"),
        ("solver: {base_lr: fast}\n", None, "solver.base_lr"),
        ("model: {backbone: {nam: resnet50}}\n", None, "model.backbone.nam"),
        ("", "train.amp=fp8", "train.amp"),
        ("", "solver.steps=[5,2]", "solver.steps"),
        ("", "model.backbone.shortcut=D", "model.backbone.shortcut"),
        ("", "train.seed", "key=value"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, override: str | None, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        load_config(p, [override] if override else [])


def test_bad_yaml_and_missing_base(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("solver: [unclosed\n")
    with pytest.raises(ConfigError, match="a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        find_config("no_such_config.yaml")


def test_round_trip_and_save(tmp_path: Path) -> None:
    cfg = load_config(None, ["task=det", "model.arch=faster_rcnn_c4"])
    d = to_dict(cfg)
    assert from_dict(d) == cfg
    path = save_config(cfg, tmp_path)
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path.name)
    assert cfg.task in ("cls", "det")
    assert find_config(path.stem) == path


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_build(path: Path) -> None:
    """Every experiment file builds its model (on the meta device: shapes only, no memory)."""
    import torch

    from detres.modeling import build_backbone, build_detector

    cfg = load_config(path.name, ["model.backbone.weights=''", "model.weights=''"])
    with torch.device("meta"):
        if cfg.task == "cls":
            model = build_backbone(cfg.model.backbone, num_classes=cfg.model.num_classes)
        else:
            model = build_detector(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
