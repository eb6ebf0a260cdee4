#!/usr/bin/env bash
# Paper Figure 6: test error (%) against the warm-up epochs w, CIFAR-10, WRN-28-2, 200 epochs,
# mean and standard deviation over three seeds (the paper: no significant difference for 0 to 30).
# Extra arguments go to Hydra (paths.data_dir=..., hydra/launcher=slurm hydra.launcher.gpus_per_node=1).
set -euo pipefail
PYTHON=${PYTHON:-python}

$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/fig6_warmup trainer=gpu logger=csv \
  dataset=cifar10 model=wrn28_2 augment=madao augment.warmup_epochs=0,10,20,30 seed=0,1,2 "$@"

$PYTHON experiments/summarize.py multirun/fig6_warmup --by warmup_epochs --out multirun/fig6_warmup.md
