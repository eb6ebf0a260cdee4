#!/usr/bin/env bash
# Paper Figure 3: test error (%) against the number of inner steps s, CIFAR-10, WRN-28-2, 200 epochs,
# mean and standard deviation over three seeds. The paper's best is s = 30 (about 4.6 %).
# Extra arguments go to Hydra (paths.data_dir=..., hydra/launcher=slurm hydra.launcher.gpus_per_node=1).
set -euo pipefail
PYTHON=${PYTHON:-python}

$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/fig3_inner_steps trainer=gpu logger=csv \
  dataset=cifar10 model=wrn28_2 augment=madao augment.inner_steps=5,10,30,50,100 seed=0,1,2 "$@"

$PYTHON experiments/summarize.py multirun/fig3_inner_steps --by inner_steps --out multirun/fig3_inner_steps.md
