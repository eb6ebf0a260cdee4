#!/usr/bin/env bash
# Paper Section 4, cost: CIFAR-10, WRN-28-2, 200 epochs on one GPU. The paper: MADAO 1.7 h vs 1.0 h
# without it (1.7x time) and 3.38 GB vs 1.74 GB of GPU memory (1.94x).
# Trains augment=baseline and augment=madao (seed 0) one after the other on an otherwise idle GPU,
# samples the GPU's used memory with nvidia-smi every 0.5 s during each run, and prints both ratios
# (time: results.json's fit_seconds; memory: peak of nvidia-smi's memory.used, CUDA context included).
# Extra arguments go to Hydra (paths.data_dir=..., dataset.epochs=... for a shorter check).
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=multirun/cost_gpu
mkdir -p "$OUT"

for augment in baseline madao; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 500 > "$OUT/$augment.memory.csv" &
  sampler=$!
  $PYTHON -m madao_pl.run trainer=gpu logger=csv dataset=cifar10 model=wrn28_2 augment=$augment seed=0 \
    hydra.run.dir="$OUT/$augment" "$@"
  kill "$sampler"
done

$PYTHON - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
seconds = {a: json.loads((out / a / "results.json").read_text())["fit_seconds"] for a in ("baseline", "madao")}
memory = {a: max(int(v) for v in (out / f"{a}.memory.csv").read_text().split()) for a in ("baseline", "madao")}
for a in ("baseline", "madao"):
    print(f"{a:<9} {seconds[a] / 3600:.2f} h  peak GPU memory {memory[a] / 1024:.2f} GiB")
print(f"MADAO / baseline: time {seconds['madao'] / seconds['baseline']:.2f}x (paper 1.7x), "
      f"memory {memory['madao'] / memory['baseline']:.2f}x (paper 1.94x)")
PY
