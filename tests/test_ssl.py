"""Self-supervised MADAO (task=ssl): InfoNCE, the momentum encoder, the queue, the hyper step, the probe."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import kornia.augmentation as K
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from madao_pl.augment import MADAOPolicy, RandAugmentPolicy
from madao_pl.hyperstep import HyperStepConfig, hyper_step
from madao_pl.models import SmallCNN
from madao_pl.run import ConfigError, train
from madao_pl.ssl import MoCo, MoCoModule, info_nce, without_classifier
from tests.conftest import TINY, compose_config
from tests.test_module import BrightnessData, make_trainer


def test_info_nce_equals_a_hand_computation() -> None:
    """Two queries, their keys and a queue of three: -log(e^(q.k/T) / (e^(q.k/T) + sum_n e^(q.n/T))), mean."""
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    k = torch.tensor([[0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    queue = torch.tensor([[1.0, 0.0], [0.0, -1.0], [-0.6, 0.8]], dtype=torch.float64)
    temperature = 0.5
    losses = []
    for qi, ki in zip(q.tolist(), k.tolist(), strict=True):
        dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
        positive = math.exp(dot(qi, ki) / temperature)
        negatives = sum(math.exp(dot(qi, n) / temperature) for n in queue.tolist())
        losses.append(-math.log(positive / (positive + negatives)))
    assert float(info_nce(q, k, queue, temperature)) == pytest.approx(sum(losses) / 2, rel=1e-12)
    # the positive is the key of the same row: swapping the keys changes the loss
    assert float(info_nce(q, k.flip(0), queue, temperature)) != pytest.approx(sum(losses) / 2)


def test_without_classifier_leaves_the_features() -> None:
    encoder, width = without_classifier(SmallCNN(num_classes=10, width=4))
    assert width == 16 and encoder(torch.rand(3, 3, 12, 12)).shape == (3, 16)
    with pytest.raises(ValueError, match="no nn.Linear classifier"):
        without_classifier(torch.nn.Conv2d(3, 3, 1))


def test_queue_enqueues_in_order_and_wraps_around() -> None:
    moco = MoCo(SmallCNN(width=2), projection_dim=2, hidden_dim=4, queue_size=5)
    batches = [torch.tensor([[i, -i], [i + 0.5, -i - 0.5]], dtype=torch.float32) for i in (1, 2, 3)]
    moco.enqueue(batches[0])
    assert int(moco.queue_pointer) == 2 and torch.equal(moco.queue[:2], batches[0])
    moco.enqueue(batches[1])
    assert int(moco.queue_pointer) == 4 and torch.equal(moco.queue[2:4], batches[1])
    moco.enqueue(batches[2])  # the first row goes to the end, the second replaces the oldest
    assert int(moco.queue_pointer) == 1
    assert torch.equal(moco.queue[4], batches[2][0]) and torch.equal(moco.queue[0], batches[2][1])
    assert torch.equal(moco.queue[1:4], torch.cat([batches[0][1:], batches[1]]))
    state = moco.state_dict()  # the queue and its pointer are saved with the weights
    assert torch.equal(state["queue"], moco.queue) and int(state["queue_pointer"]) == 1


class SSLData(BrightnessData):
    """BrightnessData in a fixed order (resume comparisons), 8 px."""

    def __init__(self) -> None:
        super().__init__(n=128, size=8, batch_size=16)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, drop_last=True)


def make_ssl_module(policy: torch.nn.Module | None = None, momentum: float = 0.9, **kwargs) -> MoCoModule:
    net = MoCo(SmallCNN(width=4), projection_dim=8, hidden_dim=16, queue_size=40, momentum=momentum)
    views = K.AugmentationSequential(K.RandomResizedCrop((8, 8), scale=(0.5, 1.0)), K.RandomHorizontalFlip())
    return MoCoModule(
        net,
        policy if policy is not None else MADAOPolicy(),
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        views=views,
        inner_steps=2,
        **kwargs,
    )


class KeyRecorder(pl.Callback):
    """Per step: query and key weights before it, key weights after it, the keys it enqueued."""

    def __init__(self) -> None:
        self.steps: list[dict[str, list[torch.Tensor]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        net = pl_module.net
        query = [p.detach().clone() for p in [*net.encoder.parameters(), *net.head.parameters()]]
        key = [p.detach().clone() for p in [*net.key_encoder.parameters(), *net.key_head.parameters()]]
        self.steps.append({"query": query, "key_before": key, "pointer": [net.queue_pointer.clone()]})
        enqueue = net.enqueue

        def recording(keys: torch.Tensor) -> None:
            self.steps[-1]["keys"] = [keys.clone()]
            enqueue(keys)

        net.enqueue = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        net = pl_module.net
        del net.enqueue  # back to the method
        self.steps[-1]["key_after"] = [
            p.detach().clone() for p in [*net.key_encoder.parameters(), *net.key_head.parameters()]
        ]
        self.steps[-1]["queue"] = [net.queue.clone()]


def test_key_encoder_is_the_moving_average_and_the_queue_gets_each_steps_keys(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    module, recorder = make_ssl_module(momentum=0.9), KeyRecorder()
    make_trainer(tmp_path, epochs=1, callbacks=[recorder]).fit(module, datamodule=SSLData())
    assert len(recorder.steps) == 4 and int(module.hyper_steps) == 2  # steps 2 and 4 were hyper steps
    for step in recorder.steps:
        for key_after, key, query in zip(step["key_after"], step["key_before"], step["query"], strict=True):
            torch.testing.assert_close(key_after, 0.9 * key + 0.1 * query, rtol=0, atol=1e-6)
        (keys,), (pointer,) = step["keys"], step["pointer"]
        assert keys.shape == (16, 8)
        torch.testing.assert_close(keys.norm(dim=1), torch.ones(16))
        rows = (pointer + torch.arange(16)) % 40
        assert torch.equal(step["queue"][0][rows], keys)  # in order, from the pointer on
    # after the first step the key encoder lags the query encoder, so the check above tells m from 1 - m
    lag = max(
        float((k - q).abs().max())
        for k, q in zip(recorder.steps[-1]["key_before"], recorder.steps[-1]["query"], strict=True)
    )
    assert lag > 1e-3
    assert int(module.net.queue_pointer) == 64 % 40
    assert not any(p.requires_grad for p in module.net.key_encoder.parameters())


def test_resumed_pretraining_continues_the_queue_and_key_encoder(tmp_path: Path) -> None:
    """Two epochs, or one, a checkpoint and a second from it: the same queue, pointer and weights."""

    def fit(epochs: int, ckpt_path: Path | None = None) -> MoCoModule:
        pl.seed_everything(0, verbose=False)
        module = make_ssl_module()
        trainer = make_trainer(tmp_path, epochs=epochs)
        trainer.fit(module, datamodule=SSLData(), ckpt_path=ckpt_path)
        if ckpt_path is None and epochs == 1:
            trainer.save_checkpoint(tmp_path / "one.ckpt")
        return module

    full = fit(2)
    fit(1)
    resumed = fit(2, ckpt_path=tmp_path / "one.ckpt")
    assert int(resumed.net.queue_pointer) == int(full.net.queue_pointer) == (8 * 16) % 40
    for name, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert int(resumed.hyper_steps) == int(full.hyper_steps) == 4


def test_hypergradient_reaches_all_78_policy_parameters() -> None:
    """The SSL hyper step (the shared hyper_step with the contrastive f and g): every one of the 78 policy
    parameters gets a finite, non-zero hypergradient (summed over three batches)."""
    torch.manual_seed(0)
    module = make_ssl_module()
    data = SSLData()
    images, labels = data.train_set.tensors
    val_images, val_labels = data.hyper_set.tensors
    total = [torch.zeros_like(p) for p in module.policy.parameters()]
    for draw in range(3):
        index = torch.randperm(64)[:48]
        result = hyper_step(
            module.net, module.policy, module.views(images[index], labels[index]),
            module.views(val_images[:32], val_labels[:32]), normalize=module.normalize,
            config=HyperStepConfig(neumann_tol=0.0), generator=torch.Generator().manual_seed(draw),
            loss=module.training_loss, val_loss=module.validation_loss,
        )  # fmt: skip
        assert result.inputs.shape == (96, 3, 8, 8) and result.info.hvps == 5
        for sum_, g in zip(total, result.hypergrad, strict=True):
            assert bool(torch.isfinite(g).all())
            sum_ += g.abs()
    assert sum(t.numel() for t in total) == 78
    assert all(bool((t > 0).all()) for t in total)


def test_class_conditional_policies_and_other_networks_are_refused() -> None:
    with pytest.raises(ValueError, match="class-conditional policy needs labels"):
        make_ssl_module(MADAOPolicy(num_classes=2))
    with pytest.raises(ValueError, match="net must be a madao_pl.ssl.MoCo"):
        MoCoModule(SmallCNN(), RandAugmentPolicy(), optimizer=torch.optim.SGD, views=torch.nn.Identity())
    with pytest.raises(ValueError, match="queue_size must be an integer >= 1"):
        MoCo(SmallCNN(), queue_size=0)


SSL_TINY = [
    *TINY,
    "task=ssl",
    "task.network.queue_size=64",
    "task.network.hidden_dim=32",
    "task.probe_epochs=2",
]


@pytest.mark.slow
def test_two_epoch_ssl_madao_run_writes_every_output_and_a_linear_probe_error(tmp_path: Path) -> None:
    results = train(compose_config(tmp_path, *SSL_TINY, "augment=madao", "trainer.max_epochs=2"))
    assert results["task"] == "ssl" and results["hyper_steps"] > 0 and results["epochs"] == 2
    assert 0.0 <= results["test_error"] <= 1.0 and results["val_error"] is not None
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.json", "policy.json", "policy_history.csv", "policy_evolution.png"} <= names
    assert {"policy_parameters.png", "checkpoints", "csv"} <= names
    assert json.loads((tmp_path / "results.json").read_text())["test_error"] == results["test_error"]
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_epoch", "val/loss", "hyper/val_loss", "probe/train_loss", "test/error"} <= set(header)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {"net.queue", "net.queue_pointer", "net.key_encoder.fc.weight"} - set(
        checkpoint["state_dict"]
    ) == {
        "net.key_encoder.fc.weight"  # the classifier was removed: fc is an Identity
    }


def test_ssl_with_a_fixed_policy_and_its_mistakes(tmp_path: Path) -> None:
    results = train(compose_config(tmp_path, *SSL_TINY, "augment=randaugment", "trainer.max_epochs=1"))
    assert results["hyper_steps"] == 0 and 0.0 <= results["test_error"] <= 1.0
    with pytest.raises(ConfigError, match="class-conditional policy needs labels"):
        train(compose_config(tmp_path / "b", *SSL_TINY, "augment=madao_class"))
    with pytest.raises(ConfigError, match=r"task.probe_epochs=0 is invalid"):
        train(compose_config(tmp_path / "c", *SSL_TINY, "task.probe_epochs=0"))
    with pytest.raises(
        ConfigError, match=r"task.network.temperature=0.0 is invalid: temperature must be > 0"
    ):
        train(compose_config(tmp_path / "d", *SSL_TINY, "task.network.temperature=0.0"))
    segmented = r"^augment.hyper.segmented=True is invalid: segmented=True takes f = the cross-entropy"
    with pytest.raises(ConfigError, match=segmented):  # an argument of the hyper node the module takes
        train(compose_config(tmp_path / "e", *SSL_TINY, "augment.hyper.segmented=true"))


class QueueCheck(pl.Callback):
    """On every rank: the size of every enqueued block, and at the end how far the ranks' queues, pointers,
    key encoders and policies are apart."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir, self.enqueued = output_dir, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        net, enqueue = pl_module.net, pl_module.net.enqueue

        def recording(keys: torch.Tensor) -> None:
            half = len(keys) // 2
            self.enqueued.append([len(keys), float((keys[:half] - keys[half:]).abs().max())])
            enqueue(keys)

        net.enqueue = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        del pl_module.net.enqueue

    def on_train_end(self, trainer, pl_module) -> None:
        net = pl_module.net
        apart = {}
        for name, tensors in (
            ("queue", [net.queue, net.queue_pointer.float()]),
            ("key_encoder", list(net.key_encoder.parameters())),
            ("policy", list(pl_module.policy.parameters())),
        ):
            gathered = pl_module.all_gather(torch.cat([t.detach().reshape(-1) for t in tensors]))
            apart[name] = float((gathered[0] - gathered[1]).abs().max())
        report = {"apart": apart, "enqueued": self.enqueued, "pointer": int(net.queue_pointer)}
        (Path(self.output_dir) / f"queue_rank{trainer.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_two_gloo_ranks_fill_one_queue_with_every_ranks_keys(tmp_path: Path) -> None:
    results = train(
        compose_config(
            tmp_path,
            *SSL_TINY,
            "augment=madao",
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            f"+callbacks.queue._target_={__name__}.QueueCheck",
            f"+callbacks.queue.output_dir={tmp_path}",
        )  # fmt: skip
    )
    assert results["world_size"] == 2 and results["hyper_steps"] > 0
    for rank in (0, 1):
        report = json.loads((tmp_path / f"queue_rank{rank}.json").read_text())
        assert report["apart"] == {"queue": 0.0, "key_encoder": 0.0, "policy": 0.0}
        # each step enqueues both ranks' 16 keys (the ranks' keys differ: their own images)
        assert [size for size, _ in report["enqueued"]] == [32] * len(report["enqueued"])
        assert all(difference > 0 for _, difference in report["enqueued"])
        assert report["pointer"] == 32 * len(report["enqueued"]) % 64
