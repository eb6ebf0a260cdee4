#!/usr/bin/env bash
# Paper Figures 2, 4 and 5: how the learned policy develops during training (one MADAO run each).
#   Figure 2: first-stage selection probabilities, fine-grained sets, ResNet-18, 200 epochs
#   Figure 4: selection probabilities of both stages, CIFAR-10 and SVHN, WRN-28-2
#   Figure 5: apply probability p and magnitude mu of the most selected ops, CIFAR-10, WRN-28-2
# Each run directory gets policy_evolution.png (Figures 2 and 4: both stages, stacked over epochs),
# policy_parameters.png (Figure 5) and policy_history.csv (every value after every hyper step).
# The MADAO runs of table4_finegrained.sh and table2_*.sh already contain these; this script is for
# the figures alone. Add logger=wandb to watch them live. Extra arguments go to Hydra.
set -euo pipefail
PYTHON=${PYTHON:-python}

$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/fig2_policies trainer=gpu logger=csv \
  dataset=flowers,pets,aircraft,cars model=resnet18 augment=madao seed=0 "$@"
$PYTHON -m madao_pl.run -m hydra.sweep.dir=multirun/fig4_fig5_policies trainer=gpu logger=csv \
  dataset=cifar10,svhn model=wrn28_2 augment=madao seed=0 "$@"

ls multirun/fig2_policies/*/policy_evolution.png multirun/fig4_fig5_policies/*/policy_*.png
