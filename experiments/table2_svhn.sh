#!/usr/bin/env bash
# Paper Table 2, SVHN row: WRN-28-2, 160 epochs, test error (%), mean of three seeds.
#   paper (Baseline / AutoAugment* / RandAugment / MADAO): 2.9 / N/A / 2.6 / 2.5
# AutoAugment (the published SVHN policy) and TrivialAugment are extra columns.
# Extra arguments go to Hydra (paths.data_dir=..., hydra/launcher=slurm hydra.launcher.gpus_per_node=1).
set -euo pipefail
PYTHON=${PYTHON:-python}

$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/table2_svhn trainer=gpu logger=csv \
  dataset=svhn model=wrn28_2 augment=baseline,autoaugment,randaugment,trivialaugment,madao seed=0,1,2 "$@"

$PYTHON experiments/summarize.py multirun/table2_svhn --out multirun/table2_svhn.md
