# Entry points for a fresh clone: `make demo` and `make test` (also docs, wheel-check).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the builds this project's machines keep on disk;
# any torch>=2.3 works (see pyproject.toml).
TORCH := torch==2.14.1 torchvision==0.29.1

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,export,docs]'
	touch $@

venv: $(BIN)/.installed

demo: venv  ## train on the embedded demo data and score it
	$(BIN)/python tools/train_det.py --out-dir output/demo

demo-cls: venv  ## classification pretraining demo on the synthetic set
	$(BIN)/python tools/pretrain_cls.py --out-dir output/demo_cls

test: venv  ## the test suite (CPU, no network; the longer `slow` runs are left out)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: venv  ## every test, the slow end-to-end runs included
	$(BIN)/python -m pytest -q

docs: venv  ## the docs site into site/ (warnings are errors)
	$(BIN)/mkdocs build --strict -q

wheel-check: venv  ## the wheel in a fresh venv, from an empty folder: train and score the demo
	PY=$(PY) bash .ci/wheel_check.sh

lint: venv
	$(BIN)/ruff check detres tools tests

.PHONY: venv demo demo-cls test test-all docs wheel-check lint
