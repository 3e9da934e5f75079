"""The docs cannot rot: every command in the README and docs/*.md names a tool or subcommand
that exists, options that tool takes, configs that ship and config keys that exist (the
overrides are loaded with the config); the blocks marked ``<!-- docs-test: run -->`` run for
real (commands that take seconds on a CPU), from an empty folder."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from detres.cli import COMMANDS
from detres.config import CONFIG_DIR, find_config, load_config

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- docs-test: run -->\s*\n)?```(?:bash|sh)\n(.*?)```", re.S)
TOOL = {module: sub for sub, (module, _) in COMMANDS.items() if module}


def blocks() -> list[tuple[str, bool, str]]:
    """(page, marked to run, block text) for each shell block."""
    out = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            out.append((page.relative_to(REPO).as_posix(), bool(m.group(1)), m.group(2)))
    return out


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def tool_call(line: str) -> tuple[str, list[str]] | None:
    """(module under detres.cli, its arguments) of a detres tool call, else None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, w in enumerate(words):
        m = re.fullmatch(r"tools/(\w+)\.py", w)
        if m and m.group(1) in TOOL:
            return m.group(1), words[i + 1:]
        if w == "detres" and i + 1 < len(words):
            sub = words[i + 1]
            if sub in COMMANDS and COMMANDS[sub][0]:
                return COMMANDS[sub][0], words[i + 2:]
            return None
    return None


CALLS = [(page, line, call) for page, _, block in blocks() for line in commands(block)
         if (call := tool_call(line))]
_HELP: dict[str, str] = {}


def help_text(module: str) -> str:
    if module not in _HELP:
        import importlib

        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            importlib.import_module(f"detres.cli.{module}").main(["--help"])
        _HELP[module] = out.getvalue()
    return _HELP[module]


def test_the_docs_have_commands() -> None:
    assert len(CALLS) >= 40, len(CALLS)
    assert {c[0] for _, _, c in CALLS} >= {"train_det", "eval", "predict", "export",
                                           "convert_weights", "inspect_data", "pretrain_cls"}


@pytest.mark.parametrize("page, line, call", CALLS, ids=[f"{p}:{c[0]}:{i}" for i, (p, _, c)
                                                          in enumerate(CALLS)])
def test_command_in_docs_is_valid(page: str, line: str, call: tuple[str, list[str]]) -> None:
    module, args = call
    helptext = help_text(module)
    cfg, overrides = None, []
    it = iter(enumerate(args))
    for i, a in it:
        if a.startswith("--"):
            opt = a.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", helptext), (
                f"{page}: {line!r}: {module} has no option {opt}")
            if opt == "--cfg":
                cfg = a.split("=", 1)[1] if "=" in a else args[i + 1]
        elif "=" in a and re.match(r"^[a-z_]+(\.[a-z_0-9]+)+=", a):
            overrides.append(a)
    if module == "analyze_model":
        return  # its key=value are the backbone builder's options
    if cfg and "/" not in cfg and "$" not in cfg:
        find_config(cfg)  # ships
        load_config(cfg, [o for o in overrides if "$" not in o and "<" not in o])
    elif overrides:
        load_config(None, ["task=det", "model.arch=faster_rcnn_fpn",
                           *[o for o in overrides if "$" not in o and "<" not in o]])


def test_config_names_in_docs_ship() -> None:
    text = "\n".join(p.read_text() for p in PAGES)
    named = set(re.findall(r"`(\w+\.yaml)`", text)) - {"config.yaml", "data.yaml"}
    shipped = {p.name for p in CONFIG_DIR.rglob("*.yaml")}
    assert named and named <= shipped, sorted(named - shipped)


RUN = [(page, block) for page, run, block in blocks() if run]


@pytest.mark.parametrize("page, block", RUN, ids=[p for p, _ in RUN])
def test_marked_blocks_run(page: str, block: str, tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent)  # the `detres` console script beside python
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "DETRES_DATA": str(tmp_path / "data")}
    for line in commands(block):
        line = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", line)
        line = line.replace(" tools/", f" {REPO}/tools/")
        r = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f"{page}: {line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def test_some_blocks_run() -> None:
    assert len(RUN) >= 2
