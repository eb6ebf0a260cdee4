"""DDP on CPU (gloo, 2 processes), sweeps, checkpoint/resume, numerical faults, memory."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

import madao_pl.module as module_lib
from madao_pl.augment import MADAOPolicy
from madao_pl.callbacks import ProcessGroupCleanup, WarmupCallback
from madao_pl.data.base import UnpaddedShardSampler
from madao_pl.run import train
from tests.conftest import TINY, compose_config
from tests.test_module import BrightnessData, make_module, make_trainer

ROOT = Path(__file__).resolve().parents[1]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


class SyncCheck(pl.Callback):
    """On every rank: after each hyper step, gather policy and network parameters and record the
    largest difference between ranks; once, record whether the ranks' augmentations differ."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.policy_diffs: list[float] = []
        self.network_diffs: list[float] = []
        self.augmentations_differ: bool | None = None
        self._seen = 0
        self.planned: int | None = None
        self.cleanup: bool | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        warmup = next(c for c in trainer.callbacks if isinstance(c, WarmupCallback))
        self.planned = warmup.planned_hyper_steps(trainer, pl_module.inner_steps)
        self.cleanup = any(isinstance(c, ProcessGroupCleanup) for c in trainer.callbacks)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.augmentations_differ is None:
            generator = torch.Generator().manual_seed(0)
            generator.set_state(pl_module.policy.generator.get_state())
            images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                out = pl_module.policy(images, generator=generator, labels=torch.arange(16) % 10)
            gathered = pl_module.all_gather(out)
            self.augmentations_differ = bool((gathered[0] - gathered[1]).abs().max() > 0)
        if int(pl_module.hyper_steps) != self._seen:
            self._seen = int(pl_module.hyper_steps)
            for params, diffs in (
                (pl_module.policy.parameters(), self.policy_diffs),
                (pl_module.net.parameters(), self.network_diffs),
            ):
                gathered = pl_module.all_gather(_flat(params))
                diffs.append(float((gathered[0] - gathered[1]).abs().max()))

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.output_dir) / f"sync_rank{trainer.global_rank}.json"
        path.write_text(
            json.dumps(
                {
                    "policy": self.policy_diffs,
                    "network": self.network_diffs,
                    "augmentations_differ": self.augmentations_differ,
                    "hyper_steps": int(pl_module.hyper_steps),
                    "planned_hyper_steps": self.planned,
                    "cleanup": self.cleanup,
                }
            )
        )


@pytest.mark.slow
def test_two_process_cpu_ddp_keeps_ranks_identical(tmp_path: Path) -> None:
    """Class-conditional MADAO (its shared part is global MADAO's policy, plus per-class offsets): every rank
    holds the same policy and network after every hyper step, while each draws its own augmentations."""
    cfg = compose_config(
        tmp_path,
        *TINY,
        "augment=madao_class",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "augment.inner_steps=2",
        f"+callbacks.sync._target_={__name__}.SyncCheck",
        f"+callbacks.sync.output_dir={tmp_path}",
    )
    results = train(cfg)
    assert results["world_size"] == 2
    reports = [json.loads((tmp_path / f"sync_rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["hyper_steps"] >= 4 and len(report["policy"]) == report["hyper_steps"]
        assert max(report["policy"]) == 0.0, "policy parameters differ between ranks"
        assert max(report["network"]) < 1e-6, "network parameters differ between ranks"
        assert report["augmentations_differ"] is True
        assert report["planned_hyper_steps"] == report["hyper_steps"]  # the start-up count, per rank
        assert report["cleanup"] is True  # run.train's Trainer destroys each rank's gloo group at exit
    assert results["hyper_steps"] == reports[0]["hyper_steps"]
    assert len(list(tmp_path.rglob("results.json"))) == 1

    # Test error counted over each test image exactly once: equal to a one-process evaluation.
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    net = instantiate(cfg.model.net)
    net.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")})
    datamodule = instantiate(cfg.dataset.datamodule)
    datamodule.setup("test")
    mean, std = torch.tensor(datamodule.mean).view(1, 3, 1, 1), torch.tensor(datamodule.std).view(1, 3, 1, 1)
    wrong = total = near_ties = 0
    net.eval()
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():
            logits = net((images - mean) / std)
            wrong += int((logits.argmax(1) != labels).sum())
            top2 = logits.topk(2, dim=1).values
            near_ties += int((top2[:, 0] - top2[:, 1] < 1e-3).sum())
            total += len(labels)
    # Equal up to the near-tie images: this barely trained net's logits are close, and the sharded
    # batches (225 vs 450 images) take other convolution kernels, which can flip such an argmax.
    assert total == 450 and abs(round(results["test_error"] * total) - wrong) <= max(1, near_ties)


EXIT_CHECK = """
import atexit, sys
import torch.distributed as dist
from madao_pl.callbacks import ProcessGroupCleanup

atexit.register(lambda: print("initialised at exit:", dist.is_initialized()))  # runs after the cleanup's
dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
for stage in ("fit", "test"):  # two set-ups in one process (strategy=ddp fits and tests in one)
    ProcessGroupCleanup().setup(None, None, stage)
"""


@pytest.mark.parametrize("cleanup", [True, False])
def test_process_group_cleanup_destroys_the_group_at_exit(tmp_path: Path, cleanup: bool) -> None:
    """A gloo rank that exits with its group alive can abort (SIGABRT) after its work: the callback
    destroys the group at exit; without it the group is still alive when the process ends."""
    call = "ProcessGroupCleanup().setup(None, None, stage)"
    script = EXIT_CHECK if cleanup else EXIT_CHECK.replace(call, "pass")
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"initialised at exit: {not cleanup}"


def test_unpadded_shard_sampler_counts_each_sample_once() -> None:
    dataset = list(range(451))
    shards = [list(UnpaddedShardSampler(dataset, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == dataset
    assert [len(UnpaddedShardSampler(dataset, num_replicas=2, rank=r)) for r in (0, 1)] == [226, 225]


def test_ddp_and_sync_batchnorm_refusals(tiny_cfg) -> None:
    from madao_pl.run import ConfigError

    with pytest.raises(ConfigError, match="sync_batchnorm=false"):
        train(tiny_cfg("trainer.sync_batchnorm=true"))


def _cli(*args: str, cwd: Path, wait: bool = True):
    command = [sys.executable, "-m", "madao_pl.run", *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_multirun_with_ddp_is_refused_with_a_pointer(tmp_path: Path) -> None:
    run = _cli(
        "-m",
        "trainer=ddp_cpu",
        "trainer.strategy=ddp",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}/m",
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert "hydra/launcher=slurm" in run.stderr and "ddp_spawn" in run.stderr


def test_launcher_presets_compose(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        slurm = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        joblib = compose("config", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.gpus_per_node == 8
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher") and joblib.hydra.launcher.n_jobs == 2


@pytest.mark.slow
def test_local_sweep_over_inner_steps_writes_one_result_per_job(tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith("augment.inner_steps")]
    run = _cli(
        "-m",
        *overrides,
        "trainer.max_epochs=1",
        "augment.inner_steps=2,3,4",
        f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = sorted(tmp_path.rglob("results.json"))
    assert len(results) == 3
    assert sorted(json.loads(p.read_text())["inner_steps"] for p in results) == [2, 3, 4]


RESUME = [
    "dataset=digits",
    "model=cnn",
    "model.net.width=8",
    "trainer=cpu",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "dataset.datamodule.batch_size=16",
    "dataset.datamodule.limit_train=400",
    "augment.warmup_epochs=1",
    "augment.inner_steps=4",
    "logger=none",
]


def _final_state(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    network = _flat(v for k, v in sorted(state.items()) if k.startswith("net."))
    policy = _flat(v for k, v in sorted(state.items()) if k.startswith("policy."))
    return network, policy, json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    run = _cli(*RESUME, f"hydra.run.dir={full}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]

    process = _cli(*RESUME, f"hydra.run.dir={killed}", cwd=tmp_path, wait=False)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint file be written completely
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    epoch_killed = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert epoch_killed < 2

    run = _cli(*RESUME, f"hydra.run.dir={killed}", f"ckpt_path={last}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    net_full, policy_full, results_full = _final_state(full)
    net_resumed, policy_resumed, results_resumed = _final_state(killed)
    torch.testing.assert_close(policy_resumed, policy_full, rtol=0, atol=1e-6)
    torch.testing.assert_close(net_resumed, net_full, rtol=0, atol=1e-6)
    assert results_resumed["hyper_steps"] == results_full["hyper_steps"] > 0


def test_resume_continues_the_same_run_directory(tmp_path: Path) -> None:
    """ckpt_path from another directory: the outputs stay in the checkpoint's run directory (metrics.csv
    continued, best.ckpt kept), the new directory links to it; a changed setting that matters is one line."""
    from madao_pl.run import ConfigError, continue_run

    a, b, last = tmp_path / "a", tmp_path / "b", tmp_path / "a" / "checkpoints" / "last.ckpt"
    train(compose_config(a, *TINY, "trainer.max_epochs=1", "augment.inner_steps=2"))
    results = train(
        compose_config(b, *TINY, "trainer.max_epochs=2", "augment.inner_steps=2", f"ckpt_path={last}")
    )
    assert results["epochs"] == 2 and (a / "results.json").is_file() and not (b / "results.json").exists()
    assert (b / "continues").resolve() == a.resolve()
    epochs = {row["epoch"] for row in csv.DictReader((a / "csv" / "metrics.csv").open()) if row["epoch"]}
    assert epochs == {"0", "1", "2"} and (a / "checkpoints" / "best.ckpt").is_file()  # 2: the test phase
    changed = compose_config(b, *TINY, "trainer.max_epochs=3", "augment.inner_steps=5", f"ckpt_path={last}")
    with pytest.raises(ConfigError, match=r"other settings \(augment.inner_steps 2 -> 5\): resume with"):
        train(changed)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        train(compose_config(b, *TINY, f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    (a / "wandb" / "offline-run-20261201_120000-abc123").mkdir(parents=True)
    (a / "wandb" / "latest-run").symlink_to("offline-run-20261201_120000-abc123")
    with_wandb = compose_config(b, *TINY, "logger=wandb", "augment.inner_steps=2", f"ckpt_path={last}")
    continue_run(with_wandb)
    assert with_wandb.logger.wandb.id == "abc123" and with_wandb.logger.wandb.resume == "allow"


def test_last_checkpoint_is_the_last_epoch_even_without_improvement(tiny_cfg, tmp_path: Path) -> None:
    """A network learning rate of 1e-12 keeps val/error flat, so best.ckpt stays at epoch 0; last.ckpt must
    still be the end of training (Lightning's save_last alone would leave it at epoch 0)."""
    results = train(tiny_cfg("trainer.max_epochs=3", "dataset.lr=1e-12", "test=false"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == results["global_steps"]
    assert best["epoch"] == 0


def test_checkpoint_holds_everything_needed_to_resume(tiny_cfg, tmp_path: Path) -> None:
    train(tiny_cfg("trainer.max_epochs=1", "augment.inner_steps=2"))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert any(k.startswith("net.") for k in state) and "policy.logits" in state
    assert (
        state["hyper_steps"] > 0 and state["inner_step"] > 0 and state["total_hvps"] >= state["hyper_steps"]
    )
    assert len(checkpoint["optimizer_states"]) == 2 and len(checkpoint["lr_schedulers"]) == 1
    assert {"rng", "policy_generator_state", "warmup_active", "hyper_batches"} <= set(checkpoint["madao"])


def test_non_finite_hypergradient_skips_the_policy_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = module_lib.hyper_step

    def first_call_nan(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == 1:
            result = dataclasses.replace(
                result, hypergrad=tuple(torch.full_like(g, float("nan")) for g in result.hypergrad)
            )
        return result

    monkeypatch.setattr(module_lib, "hyper_step", first_call_nan)
    module = make_module(MADAOPolicy(num_classes=2), inner_steps=1)  # class-conditional: offsets skip too
    before = _flat(module.policy.parameters()).clone()
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            snapshots.append(_flat(pl_module.policy.parameters()).clone())

    with pytest.warns(RuntimeWarning, match="non-finite hypergradient"):
        make_trainer(tmp_path, epochs=1, callbacks=[Snapshot()]).fit(
            module, datamodule=BrightnessData(n=128, batch_size=16)
        )
    assert module.skipped_hyper_steps == 1 and module.hyper_steps == 4
    assert torch.equal(snapshots[0], before), "the policy moved on the skipped step"
    assert not torch.equal(snapshots[-1], before), "training did not go on after the skip"
    assert all(torch.isfinite(s).all() for s in snapshots)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read resident memory")
def test_memory_stays_flat_over_200_hyper_steps(tmp_path: Path) -> None:
    rss = {}

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if int(pl_module.hyper_steps) in (20, 200):
                rss[int(pl_module.hyper_steps)] = _rss_bytes()

    module = make_module(MADAOPolicy(), inner_steps=1)
    make_trainer(tmp_path, epochs=25, callbacks=[Probe()]).fit(
        module, datamodule=BrightnessData(n=256, batch_size=16)
    )
    assert module.hyper_steps == 200
    growth = rss[200] / rss[20] - 1
    assert growth <= 0.05, f"resident memory grew {100 * growth:.1f}% between hyper steps 20 and 200"


def test_policy_optimizer_default_is_rmsprop() -> None:
    module = module_lib.MADAOModule(
        torch.nn.Linear(3, 2), MADAOPolicy(), optimizer=partial(torch.optim.SGD, lr=0.1), num_classes=2
    )
    _, policy_opt = module.configure_optimizers()[0]
    assert isinstance(policy_opt, torch.optim.RMSprop) and policy_opt.param_groups[0]["lr"] == 1e-2
