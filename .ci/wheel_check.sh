#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it with its dependencies into a fresh
# venv, then from an empty folder train the demo for a few iterations and score the result.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PY:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/detres-*.whl)"
"$py" -c "import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist(); \
print(f'wheel: {sys.argv[1].rsplit(\"/\", 1)[-1]} ({len(n)} files, \
{sum(x.endswith(\".yaml\") for x in n)} configs)')" "$wheel"
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
# torch/torchvision pinned to the builds on this project's machines (see the Makefile)
"$work/venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "$wheel"
echo "installed in $((SECONDS - start)) s"
mkdir "$work/empty"
cd "$work/empty"
export PATH="$work/venv/bin:$PATH"
detres --version
detres configs | sed -n 1,3p
detres train --cfg demo.yaml --out-dir runs/demo data.num_workers=0 train.amp=none \
  solver.max_iter=4 solver.batch_size=2 solver.warmup_iters=0 solver.steps=[] \
  train.eval_period=0 train.checkpoint_period=0 train.log_period=2
detres eval --cfg runs/demo/config.yaml --weights runs/demo/model_final.pth data.num_workers=0 \
  --out runs/demo/eval.json
img="$(find data/demo_det -type f \( -name '*.jpg' -o -name '*.png' \) -print -quit)"
python -m detres predict --cfg runs/demo/config.yaml --weights runs/demo/model_final.pth \
  --input "$img" --out runs/demo/pred --score-thresh 0.0
test -f runs/demo/eval.json
test -d data/demo_det && test -n "$(ls runs/demo/pred)"  # the data root is ./data in the folder the command runs in
echo "wheel check passed in $((SECONDS - start)) s"
