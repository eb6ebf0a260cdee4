#!/usr/bin/env bash
# Paper Table 4: fine-grained sets, ResNet-18 at 224 px, 200 epochs, batch 64, test error (%),
# mean of three seeds, with the same MADAO settings as Table 2 (s = 30, w = 20, tau = 0.05).
#   paper (Standard / RandAugment / MADAO): Flowers 10.7/8.5/7.5  Pets 15.0/13.4/12.5
#                                           Aircraft 12.8/9.7/8.7  Cars 14.2/11.3/10.8
# "Standard" is augment=baseline (random resized crop + flip). TrivialAugment is an extra column.
# The MADAO runs also give Figure 2 (policy_evolution.png in each run directory).
# Extra arguments go to Hydra (paths.data_dir=..., hydra/launcher=slurm hydra.launcher.gpus_per_node=1).
set -euo pipefail
PYTHON=${PYTHON:-python}

$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/table4_finegrained trainer=gpu logger=csv \
  dataset=flowers,pets,aircraft,cars model=resnet18 augment=baseline,randaugment,trivialaugment,madao \
  seed=0,1,2 "$@"

$PYTHON experiments/summarize.py multirun/table4_finegrained --out multirun/table4_finegrained.md
