#!/usr/bin/env bash
# Paper Section 4, cost: the two runs of experiment=cost_gpu (CIFAR-10, WRN-28-2, 200 epochs, one GPU,
# augment=baseline and augment=madao), plus the GPU's used memory sampled by nvidia-smi every 0.5 s.
# This stays a shell script because a config cannot start a sampler around each job: the runs go
# one at a time (not as a multirun) so that each memory trace brackets exactly one run. Prints time
# (results.json's fit_seconds) and peak memory (nvidia-smi's memory.used, CUDA context included) and
# both ratios; the paper: 1.7x time, 1.94x memory. Use an otherwise idle GPU.
# Extra arguments go to Hydra (paths.data_dir=..., dataset.epochs=... for a shorter check).
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=multirun/cost_gpu
mkdir -p "$OUT"

for augment in baseline madao; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 500 > "$OUT/$augment.memory.csv" &
  sampler=$!
  $PYTHON -m madao_pl.run experiment=cost_gpu augment=$augment hydra.run.dir="$OUT/$augment" "$@"
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
