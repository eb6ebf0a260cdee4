"""One-off: record the hyper step's outputs before the one-path redesign (issue 11).

Run once on the code before the redesign: ``python tests/data/record_regression.py``; it writes
``tests/data/regression.pt`` which ``tests/test_regression.py`` compares the redesigned code with.
Kept in history only (it calls the old API).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from madao_pl.augment.ops import cutout  # noqa: E402
from madao_pl.augment.policy import MADAOPolicy  # noqa: E402
from madao_pl.hyperstep import hyper_step  # noqa: E402
from madao_pl.models import SmallCNN  # noqa: E402
from madao_pl.run import train  # noqa: E402
from tests.conftest import TINY, compose_config  # noqa: E402

torch.set_num_threads(1)
FIT = ("trainer.max_epochs=4", "dataset.datamodule.limit_train=640", "model.net.width=16")
SIZE, BATCH, CUTOUT, POLICY_SEED, GLOBAL_SEED = 12, 12, 4, 3, 7


def normalize(images):
    return (images - 0.5) / 0.25


def problem():
    torch.manual_seed(0)
    net = SmallCNN(num_classes=3, width=4).double()
    policy = MADAOPolicy().double()
    with torch.no_grad():  # a policy away from its symmetric start, so every group has a distinct gradient
        g = torch.Generator().manual_seed(11)
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (BATCH,), generator=g)
    val_images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    val_labels = torch.randint(0, 3, (BATCH,), generator=g)
    return net, policy, (images, labels, val_images, val_labels)


SETTINGS = {
    "plain": dict(tol=0.0, recompute=False, method="neumann", steps=5, alpha=1e-3),
    "fast": dict(tol=1e-4, recompute=False, method="neumann", steps=5, alpha=1e-3),
    "recompute": dict(tol=1e-4, recompute=True, method="neumann", steps=5, alpha=1e-3),
    "neumann_large_alpha": dict(tol=0.0, recompute=False, method="neumann", steps=20, alpha=0.05),
    "cg": dict(tol=0.0, recompute=False, method="cg", steps=10, alpha=1e-3),
}


def main() -> None:
    record = {"hyper_step": {}, "augment": {}}
    for name, kwargs in SETTINGS.items():
        net, policy, batches = problem()
        torch.manual_seed(GLOBAL_SEED)
        result = hyper_step(
            net, policy, *batches, normalize=normalize, cutout_size=CUTOUT,
            generator=torch.Generator().manual_seed(POLICY_SEED), **kwargs,
        )
        record["hyper_step"][name] = {
            "hypergrad": [t.clone() for t in result.hypergrad],
            "network_grads": [t.clone() for t in result.network_grads],
            "train_loss": result.train_loss.clone(),
            "val_loss": result.val_loss.clone(),
            "hvps": result.info.hvps,
            "buffers": [b.clone() for b in net.buffers()],
        }
    net, policy, (images, *_) = problem()
    with torch.no_grad():
        hard = policy(images, generator=torch.Generator().manual_seed(POLICY_SEED))
    relaxed = policy(images, generator=torch.Generator().manual_seed(POLICY_SEED)).detach()
    torch.manual_seed(GLOBAL_SEED)
    record["augment"] = {"hard": hard, "relaxed": relaxed, "cutout": cutout(images, CUTOUT)}

    out = Path(__file__).resolve().parent
    results = train(compose_config(out / "_fit", *TINY, *FIT))
    record["fit"] = {
        "test_error": results["test_error"],
        "val_error": results["val_error"],
        "hyper_steps": results["hyper_steps"],
        "hvps": results["hvps"],
        "policy": results["policy"],
    }
    torch.save(record, out / "regression.pt")
    print({k: v for k, v in record["fit"].items() if k != "policy"})


if __name__ == "__main__":
    main()
