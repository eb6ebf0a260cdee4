"""The Hydra app end to end: every config combination builds, tiny fits write every output, and
bad input is refused with a message naming the problem."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import initialize_config_module
from hydra.utils import instantiate

import madao_pl
from madao_pl.data import DatasetNotFoundError
from madao_pl.module import MADAOModule
from madao_pl.run import ConfigError, train
from tests.conftest import TINY, compose_config

CONF = Path(__file__).resolve().parents[1] / "src" / "madao_pl" / "conf"
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if not p.stem.startswith("_"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
AUGMENTS = sorted(p.stem for p in (CONF / "augment").glob("*.yaml") if not p.stem.startswith("_"))
FIXED_AUGMENTS = ["baseline", "randaugment", "autoaugment", "trivialaugment"]


def _dataset_overrides(name: str, tmp_path: Path) -> list[str]:
    return [f"dataset={name}", f"dataset.root={tmp_path}"] if name == "folder" else [f"dataset={name}"]


def test_config_groups_are_complete() -> None:
    assert {
        "digits",
        "cifar10",
        "cifar100",
        "svhn",
        "flowers",
        "pets",
        "aircraft",
        "cars",
        "imagenet",
        "folder",
    } <= set(DATASETS)
    assert {"wrn28_2", "wrn40_2", "wrn28_10", "resnet18", "resnet50", "cnn"} <= set(MODELS)
    assert {"madao", "baseline", "randaugment", "autoaugment", "trivialaugment", "replay"} <= set(AUGMENTS)


def test_every_dataset_model_augment_combination_composes_and_instantiates(tmp_path: Path) -> None:
    """Model and augment configs depend on the dataset, never on each other: composing every
    dataset x model and dataset x augment pair, then building the module for every triple from
    those composed pieces, covers every combination."""
    policy_path = tmp_path / "policy.json"
    instantiate(compose_config(tmp_path, "augment=madao").augment.policy).save_json(policy_path)
    nets: dict[tuple, torch.nn.Module] = {}
    with initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        for dataset in DATASETS:
            base = _dataset_overrides(dataset, tmp_path)
            by_model = {m: compose_config(tmp_path, *base, f"model={m}") for m in MODELS}
            by_augment = {
                a: compose_config(tmp_path, *base, f"augment={a}", f"augment.path={policy_path}")
                if a == "replay"
                else compose_config(tmp_path, *base, f"augment={a}")
                for a in AUGMENTS
            }
            datamodule = instantiate(by_model[MODELS[0]].dataset.datamodule)
            num_classes = by_model[MODELS[0]].dataset.num_classes or 3
            for model, cfg in by_model.items():
                key = (model, num_classes, cfg.dataset.image_size)
                if key not in nets:
                    nets[key] = instantiate(cfg.model.net, num_classes=num_classes)
                assert cfg.trainer.max_epochs == cfg.dataset.epochs
            for augment, cfg in by_augment.items():
                unknown = cfg.augment.policy.get("num_classes", 0) is None  # run.train: from the data
                policy = instantiate(cfg.augment.policy, **({"num_classes": num_classes} if unknown else {}))
                for model in MODELS:
                    module = instantiate(
                        cfg.module,
                        net=nets[(model, num_classes, cfg.dataset.image_size)],
                        policy=policy,
                        num_classes=num_classes,
                        mean=datamodule.mean,
                        std=datamodule.std,
                    )
                    assert isinstance(module, MADAOModule)
                    assert module.learns_policy == (augment in ("madao", "madao_class", "madao_paper"))


def test_madao_initial_starts_where_madao_starts_and_madao_paper_is_the_paper() -> None:
    """augment=madao_initial is augment=madao's starting policy, frozen (same raw values, no parameters);
    augment=madao_paper is the paper's Table 6 / Appendix B: full series, s = 30, w = 20, tau = 0.05."""
    madao = instantiate(compose_config("/tmp/unused", "augment=madao").augment.policy)
    initial = instantiate(compose_config("/tmp/unused", "augment=madao_initial").augment.policy)
    assert not list(initial.parameters()) and initial.to_dict()["raw"] == madao.to_dict()["raw"]
    assert initial.temperature == madao.temperature
    paper = compose_config("/tmp/unused", "augment=madao_paper").augment
    hyper = instantiate(paper.hyper)
    assert (paper.inner_steps, paper.warmup_epochs, paper.temperature) == (30, 20, 0.05)
    assert (hyper.method, hyper.neumann_steps, hyper.neumann_alpha, hyper.neumann_tol) == (
        "neumann",
        5,
        1e-3,
        0.0,
    )
    assert paper.policy_optimizer.lr == 1e-2 and paper.name == "madao_paper"
    raw = instantiate(paper.policy).to_dict()["raw"]
    assert {v for rows in raw["probability_raw"] + raw["magnitude_raw"] for v in rows} == {0.5}


def test_paper_presets() -> None:
    """Appendix B: the numbers users will compare against."""
    cifar = compose_config("/tmp/unused", "dataset=cifar10", "model=wrn28_2")
    assert (cifar.dataset.epochs, cifar.dataset.datamodule.batch_size, cifar.dataset.lr) == (200, 128, 0.1)
    assert (
        cifar.dataset.weight_decay == 5e-4
        and cifar.optimizer.momentum == 0.9
        and not cifar.optimizer.nesterov
    )
    svhn = compose_config("/tmp/unused", "dataset=svhn")
    assert (svhn.dataset.epochs, svhn.dataset.lr, list(svhn.dataset.scheduler.milestones)) == (
        160,
        5e-3,
        [80, 120],
    )
    imagenet = compose_config("/tmp/unused", "dataset=imagenet")
    assert imagenet.dataset.datamodule.batch_size == 1024 and imagenet.dataset.datamodule.val_fraction == 0.01
    madao = compose_config("/tmp/unused").augment
    assert (madao.inner_steps, madao.warmup_epochs, madao.temperature) == (30, 20, 0.05)
    assert (madao.hyper.neumann_steps, madao.hyper.neumann_alpha, madao.policy_optimizer.lr) == (
        5,
        1e-3,
        1e-2,
    )


def test_resnet_stem_follows_image_size(tmp_path: Path) -> None:
    small = instantiate(compose_config(tmp_path, "dataset=cifar10", "model=resnet18").model.net)
    large = instantiate(compose_config(tmp_path, "dataset=flowers", "model=resnet18").model.net)
    assert small.conv1.kernel_size == (3, 3) and large.conv1.kernel_size == (7, 7)
    assert large.fc.out_features == 102


def _outputs(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


@pytest.mark.parametrize("augment", FIXED_AUGMENTS)
def test_tiny_fit_with_each_fixed_policy(tiny_cfg, tmp_path: Path, augment: str) -> None:
    results = train(tiny_cfg(f"augment={augment}", "trainer.max_epochs=1"))
    assert results["hyper_steps"] == 0
    assert 0.0 <= results["test_error"] <= 1.0
    assert {"results.json", "checkpoints", "csv"} <= _outputs(tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_tiny_madao_fit_writes_every_output_and_replay_reproduces_it(tiny_cfg, tmp_path: Path) -> None:
    results = train(tiny_cfg("augment=madao"))
    assert results["hyper_steps"] > 0
    # The adaptive series (default neumann_tol) takes 1..J HVPs per hyper step; results.json's count is
    # the sum of the per-step counts the logger saw.
    assert 1 <= results["hvps_per_hyper_step"] <= 5
    (metrics_csv,) = (tmp_path / "csv").rglob("metrics.csv")
    with open(metrics_csv) as handle:  # one entry per hyper step, keyed by the hyper-step counter
        logged = {
            row["hyper/steps"]: float(row["hyper/hvps"])
            for row in csv.DictReader(handle)
            if row.get("hyper/hvps")
        }
    assert len(logged) == results["hyper_steps"] and sum(logged.values()) == results["hvps"]
    expected = {
        "results.json",
        "policy.json",
        "policy_history.csv",
        "policy_evolution.png",
        "policy_parameters.png",
    }
    assert expected <= _outputs(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_error"] == pytest.approx(results["test_error"])

    replay_results = train(
        compose_config(
            tmp_path / "replay", *TINY, "augment=replay", f"augment.path={tmp_path / 'policy.json'}"
        )
    )
    assert replay_results["hyper_steps"] == 0
    assert replay_results["policy"]["stages"] == results["policy"]["stages"]


def test_class_conditional_madao_fits_names_its_classes_and_replays(tiny_cfg, tmp_path: Path) -> None:
    """augment=madao_class on digits: one policy per digit "0".."9" in policy.json, the class heat map,
    per-class scalars in the CSV (10 classes <= 20), and augment=replay retrains with it (labels given)."""
    results = train(tiny_cfg("augment=madao_class"))
    assert results["hyper_steps"] > 0 and results["policy"]["num_classes"] == 10
    saved = json.loads((tmp_path / "policy.json").read_text())
    assert list(saved["classes"]) == [str(c) for c in range(10)]
    assert saved["classes"]["3"] != saved["describe"]["stages"]  # the offsets moved
    assert (tmp_path / "policy_classes.png").stat().st_size > 0
    (metrics_csv,) = (tmp_path / "csv").rglob("metrics.csv")
    assert "policy/class/7/Invert/use" in metrics_csv.read_text().splitlines()[0]
    replay = train(
        compose_config(
            tmp_path / "replay", *TINY, "augment=replay", f"augment.path={tmp_path / 'policy.json'}"
        )
    )
    assert replay["hyper_steps"] == 0 and replay["policy"]["num_classes"] == 10


def test_wandb_disabled_fit_logs_policy_keys(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged: set[str] = set()
    original = WandbLogger.log_metrics

    def record(self, metrics, step=None):
        logged.update(metrics)
        return original(self, metrics, step)

    monkeypatch.setattr(WandbLogger, "log_metrics", record)
    train(tiny_cfg("logger=wandb", "trainer.max_epochs=1"))
    for key in (
        "policy/stage0/Invert/apply",
        "policy/stage1/ShearX/magnitude",
        "policy/stage0/Equalize/selection",
    ):
        assert key in logged
    assert "hyper/grad_norm" in logged and "policy/entropy" in logged


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline run's ``.wandb`` file, parsed with wandb's own protobuf schema (the file is
    a LevelDB-style log: 7-byte header, 32 KiB blocks of checksum / length / type framed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, chunks = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block tail padding
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        chunks = payload if kind in (1, 2) else chunks + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record


def test_wandb_offline_run_read_back_has_every_hyper_step_and_the_charts(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offline W&B run, read back from its file: one policy row per hyper step (and the start) whatever
    log_every_n_steps, the hyper_step axis for policy/*, the line-series charts and the plot images."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # an earlier test's disabled-mode settings must not carry over
    try:
        results = train(tiny_cfg("logger=wandb", "trainer.max_epochs=2", "trainer.log_every_n_steps=50"))
    finally:
        wandb.teardown()
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history, metrics = [], set()
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = record.history.item
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
        elif kind == "metric":
            metrics.add((record.metric.name or record.metric.glob_name, record.metric.step_metric))
    steps = [row["hyper_step"] for row in history if "policy/stage1/Sharpness/apply" in row]
    assert steps == list(range(results["hyper_steps"] + 1)) and ("policy/*", "hyper_step") in metrics
    charts = [row for row in history if "policy/charts/stage0_selection_table/nrows" in row]
    assert len(charts) == 3  # after each epoch and at the end of fit
    assert charts[-1]["policy/charts/stage0_selection_table/nrows"] == 14 * (results["hyper_steps"] + 1)
    for k, value in ((0, "apply"), (1, "magnitude"), (1, "selection")):
        assert charts[-1][f"policy/charts/stage{k}_{value}_table/_type"] == "table-file"
    assert sum(row.get("policy/plots/count", 0) == 2 for row in history) == 3  # the two plots each time


def test_wandb_gets_line_series_charts_and_the_plots(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each plotted epoch and the end of fit: the policy plots as images and, per stage, one line-series
    chart each for selection, apply and magnitude over every hyper step."""
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    images, charts = [], []
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, paths, **kw: images.append(key))
    original = WandbLogger.experiment.fget

    class Recording:
        def __init__(self, run):
            self.run = run

        def log(self, data, *args, **kwargs):
            charts.append(data)

        def __getattr__(self, name):
            return getattr(self.run, name)

    monkeypatch.setattr(WandbLogger, "experiment", property(lambda self: Recording(original(self))))
    results = train(tiny_cfg("logger=wandb", "trainer.max_epochs=2"))
    assert images == ["policy/plots"] * 3  # after epochs 1 and 2, and at the end of fit
    drawn = [c for c in charts if any(key.startswith("policy/charts/") for key in c)]
    assert len(drawn) == 3
    last = drawn[-1]
    assert set(last) == {
        f"policy/charts/stage{k}_{v}" for k in (0, 1) for v in ("selection", "apply", "magnitude")
    }
    table = last["policy/charts/stage0_selection"].table
    assert (
        len({row[0] for row in table.data}) == results["hyper_steps"] + 1
    )  # x: every hyper step and the start


def test_every_hyper_step_reaches_the_csv_log_once_whatever_log_every_n_steps(
    tiny_cfg, tmp_path: Path
) -> None:
    """log_every_n_steps=50 (more than the whole run): metrics.csv still has one policy row per hyper step,
    the initial policy included, and one hyper/* row per hyper step, at the loggers' step (training
    batches), with the hyper_step axis."""
    results = train(tiny_cfg("trainer.log_every_n_steps=50", "trainer.max_epochs=2"))
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    policy_rows = [r for r in rows if r.get("policy/stage0/Invert/apply")]
    steps = [int(float(r["hyper_step"])) for r in policy_rows]
    assert results["hyper_steps"] >= 2 and steps == list(range(results["hyper_steps"] + 1))
    hyper_rows = [r for r in rows if r.get("hyper/val_loss")]
    assert [int(float(r["hyper_step"])) for r in hyper_rows] == list(range(1, results["hyper_steps"] + 1))
    assert [r["step"] for r in hyper_rows] == [r["step"] for r in policy_rows[1:]]
    assert all(r["hyper/grad_norm"] and r["policy/entropy"] for r in hyper_rows)
    history = list(csv.DictReader((tmp_path / "policy_history.csv").open()))
    last = [r for r in history if int(r["hyper_step"]) == results["hyper_steps"]]
    assert int(policy_rows[-1]["step"]) == int(last[0]["global_step"]) <= results["global_steps"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("augment.inner_steps=0", "augment.inner_steps=0"),
        ("augment.warmup_epochs=-1", "augment.warmup_epochs=-1"),
        ("augment.temperature=0", "augment.temperature=0"),
        ("augment.hyper.neumann_steps=-1", "augment.hyper.neumann_steps=-1"),
        ("augment.hyper.neumann_alpha=0", "augment.hyper.neumann_alpha=0"),
        ("augment.hyper.neumann_tol=-0.1", "augment.hyper.neumann_tol=-0.1"),
        ("augment.hyper.method=newton", "augment.hyper.method='newton'"),
        ("augment.hyper.cg_iterations=-2", "augment.hyper.cg_iterations=-2"),
        ("augment.hyper.recompute=sometimes", "augment.hyper.recompute='sometimes'"),
        ("dataset.cutout=-4", "dataset.cutout=-4"),
        ("dataset.epochs=0", "dataset.epochs=0"),
        ("dataset.lr=-0.1", "dataset.lr=-0.1"),
    ],
)
def test_out_of_range_settings_are_refused_before_training(
    tiny_cfg, tmp_path: Path, override: str, key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        train(tiny_cfg(override))
    message = str(raised.value)
    assert key in message and "must be" in message and "\n" not in message
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset=folder"], "dataset.root is required here and not set: the image folder"),
        (["augment=replay"], "augment.path is required here and not set: a policy.json written by a MADAO"),
        (
            ["augment=replay", "augment.path=/nope/policy.json"],
            "augment.path=/nope/policy.json: no such file",
        ),
        (["augment=_common"], "augment has no choice (a shared file?): pick one of autoaugment, baseline"),
        (
            ["+augment.inner_step=5"],
            "augment.inner_step is not a setting (did you mean augment.inner_steps?)",
        ),
        (["+augment.hyper.neumann_step=3"], "augment.hyper.neumann_step is not an argument of madao_pl."),
        (["trainer.devices=3"], "trainer.devices=3 on CPU would start 3 processes: for CPU DDP choose it"),
    ],
)
def test_config_mistakes_get_one_line_naming_the_fix(tiny_cfg, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        train(tiny_cfg(*overrides))
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_start_up_line_says_the_image_size_and_the_workers(
    tiny_cfg, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up summary names the data, the image size, the loader workers, model and augmentation;
    a folder data set's workers default to this machine's cores (less one, at most 4)."""
    from madao_pl.data.base import default_workers

    cfg = tiny_cfg("augment=randaugment", "trainer.max_epochs=1", "test=false")
    with caplog.at_level("INFO", logger="madao_pl"):
        train(cfg)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("dataset=digits"))
    assert (
        "10 classes, images resized to 32 px, batch 16, 0 loader workers; model=cnn; augment=randaugment"
        in line
    )
    folder = tiny_cfg("dataset=folder", "dataset.root=/data/images")
    assert folder.dataset.datamodule.num_workers is None
    assert 0 <= default_workers() <= 4


def test_cli_failed_run_says_one_line_and_keeps_it_in_run_log(tmp_path: Path) -> None:
    """A shared file as a choice (only the app sees the choice names): one line on stderr, also in run.log."""
    run = _run_cli("augment=_common", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: augment=_common is a shared file, not a choice: pick one of autoaugment, baseline, madao, "
        "madao_class, madao_initial, madao_paper, randaugment, replay, trivialaugment"
    ]
    assert lines[0] in (tmp_path / "run" / "run.log").read_text()


def test_a_folder_layout_it_refuses_names_the_config_key(tiny_cfg, tmp_path: Path) -> None:
    """root/train/ beside class folders: a ConfigError naming dataset.root (the library's message names the
    argument, ``root``), before any fitting."""
    from tests.test_data import write_folder

    write_folder(tmp_path / "images" / "train", ["a", "b"], 4)
    write_folder(tmp_path / "images" / "d", ["x"], 1)
    cfg = tiny_cfg("dataset=folder", f"dataset.root={tmp_path / 'images'}", "dataset.image_size=16")
    with pytest.raises(ConfigError, match=r"holds a train/ folder .*: point `dataset.root` at the folder"):
        train(cfg)


def test_cli_corrupt_image_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A corrupt image read mid-epoch (in a loader worker): one line naming the file, no traceback."""
    from tests.test_data import write_folder

    write_folder(tmp_path / "images" / "train", ["a", "b"], 12)
    write_folder(tmp_path / "images" / "test", ["a", "b"], 2)
    bad = tmp_path / "images" / "train" / "b" / "b_5.JPEG"
    bad.write_bytes(b"not an image")
    run = _run_cli(
        "dataset=folder", f"dataset.root={tmp_path / 'images'}", "dataset.image_size=16", "model.net.width=8",
        "dataset.datamodule.batch_size=4", "dataset.datamodule.num_workers=1", "augment=baseline",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert lines[-1].startswith(f"error: cannot read image file '{bad}'") and "Traceback" not in run.stderr


def test_help_lists_the_choices_not_the_shared_files() -> None:
    """--help's group list (a fixed template) names exactly each group's choice files, no _shared ones."""
    from omegaconf import OmegaConf

    conf = Path(madao_pl.__file__).parent / "conf"
    template = OmegaConf.load(conf / "hydra" / "default.yaml").help.template
    listed = {
        line.split(":")[0].strip(): line.split(":", 1)[1].strip().split(", ")
        for line in template.split("== Configuration groups ==")[1].split("== Config ==")[0].splitlines()
        if ":" in line
    }
    groups = {p.name for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}
    assert set(listed) == groups
    for group, names in listed.items():
        files = sorted(f.stem for f in (conf / group).glob("*.yaml") if not f.stem.startswith("_"))
        assert names == files, group


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "madao_pl.run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"},
    )


def test_cli_unknown_choice_lists_the_options(tmp_path: Path) -> None:
    run = _run_cli("augment=nope", cwd=tmp_path)
    assert run.returncode != 0
    assert "Could not find 'augment/nope'" in run.stderr
    for choice in ("madao", "randaugment", "trivialaugment"):
        assert choice in run.stderr


def test_cli_bad_value_is_one_line(tmp_path: Path) -> None:
    run = _run_cli("augment.inner_steps=0", cwd=tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == ["error: augment.inner_steps=0 is invalid: inner_steps must be an integer >= 1, got 0"]


def test_a_precision_that_cannot_train_the_policy_names_the_key(tiny_cfg) -> None:
    """16-bit parameters under a learned policy: refused before fitting, naming trainer.precision and the
    precisions that work."""
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-true: .*use one of 32-true, 64-true"):
        train(tiny_cfg("trainer.precision=bf16-true"))


def test_missing_dataset_directory_names_path_and_download_flag(tiny_cfg, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as raised:
        train(tiny_cfg("dataset=cifar10", "model=cnn", f"paths.data_dir={missing}"))
    assert str(missing) in str(raised.value) and "dataset.download=true" in str(raised.value)


def _missing_data(root: str, download: bool) -> None:
    """A data module that finds no data as it is built (an ``instantiate`` target)."""
    raise DatasetNotFoundError(f"no data at '{root}': set `root` or pass `download=True`")


def test_a_data_set_missing_when_built_keeps_its_message(tiny_cfg) -> None:
    """A :class:`DatasetNotFoundError` raised by the constructor is a ``FileNotFoundError``: it keeps its
    message (as config keys), not build's "no such file: None"."""
    cfg = tiny_cfg()
    cfg.dataset.datamodule = {"_target_": f"{__name__}._missing_data", "root": "/nowhere", "download": False}
    with pytest.raises(DatasetNotFoundError) as raised:
        train(cfg)
    message = str(raised.value)
    assert "no data at '/nowhere'" in message and "`dataset.datamodule.root`" in message
    assert "`dataset.datamodule.download=true`" in message and "no such file" not in message
