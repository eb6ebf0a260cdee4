#!/usr/bin/env bash
# Paper Table 2, CIFAR-10 and CIFAR-100 rows: test error (%), mean of three seeds, 200 epochs.
#   paper (Baseline / AutoAugment* / RandAugment / MADAO):
#   CIFAR-10  WRN-28-2 4.8/4.7/4.7/4.6  WRN-40-2 4.5/4.3/4.3/4.2  WRN-28-10 3.4/3.1/3.1/3.1  ResNet-18 5.2/4.5/4.5/4.4
#   CIFAR-100 WRN-28-2 24.8/24.0/24.0/23.9
# TrivialAugment is an extra column (not in the paper). AutoAugment uses the published CIFAR-10
# policy on both sets, as the paper's AutoAugment*. 60 + 15 runs of 200 epochs on one GPU each.
# Extra arguments go to Hydra, e.g. paths.data_dir=/data, or
# hydra/launcher=slurm hydra.launcher.gpus_per_node=1 to run the jobs as a SLURM array.
set -euo pipefail
PYTHON=${PYTHON:-python}
METHODS=baseline,autoaugment,randaugment,trivialaugment,madao

$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/table2_cifar10 trainer=gpu logger=csv \
  dataset=cifar10 model=wrn28_2,wrn40_2,wrn28_10,resnet18 augment=$METHODS seed=0,1,2 "$@"
$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/table2_cifar100 trainer=gpu logger=csv \
  dataset=cifar100 model=wrn28_2 augment=$METHODS seed=0,1,2 "$@"

$PYTHON experiments/summarize.py multirun/table2_cifar10 multirun/table2_cifar100 --out multirun/table2_cifar.md
