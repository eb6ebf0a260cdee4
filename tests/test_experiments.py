"""The experiment configs (conf/experiment/*.yaml) and the data set presets, composed with the real
config tree: every sweep expands, through Hydra's own basic sweeper, to the jobs that
experiments/README.md states and names existing group choices, and every data set composes into a
buildable datamodule and scheduler. Composing every job of every sweep (and madao_pl.run's checks on
each) takes a while: that test is marked slow. No training."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from math import prod
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from madao_pl.run import check_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "madao_pl" / "conf"
README = ROOT / "experiments" / "README.md"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("_"))
# The paper's experiments (not the benchmark's bench_* configs nor make run's quickstart).
PAPER_EXPERIMENTS = [e for e in EXPERIMENTS if not e.startswith("bench_") and e != "quickstart"]
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if not p.stem.startswith("_"))
GROUPS = ("dataset", "model", "augment", "trainer", "logger")
OUTPUT = "/tmp/madao_pl_test_experiments"


@pytest.fixture(scope="module")
def hydra_context() -> Iterator[None]:
    """One Hydra initialisation for the module (or the one a previous test left)."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        yield


def _compose(*overrides: str, hydra: bool = False) -> DictConfig:
    return compose("config", overrides=[*overrides, f"paths.output_dir={OUTPUT}"], return_hydra_config=hydra)


def readme_job_counts() -> dict[str, int]:
    """experiment -> jobs, from the table of experiments/README.md (rows whose jobs cell is a
    number, e.g. `4 x 5 methods x 3 seeds = 60` or `4`; the product is checked on the way)."""
    counts = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not (names := re.findall(r"`([\w]+)`", cells[2])):
            continue
        factors, _, total = cells[3].rpartition("=")
        if not total.strip().isdigit():
            continue
        if factors:
            assert prod(int(n) for n in re.findall(r"\d+", factors)) == int(total), line
        counts[names[0]] = int(total)
    return counts


def sweep_jobs(base: DictConfig, *command_line: str) -> list[list[str]]:
    """The jobs of `python -m madao_pl.run -m COMMAND_LINE`, as Hydra's basic sweeper makes them
    from BASE (that command line composed with Hydra's node): hydra.sweeper.params, then the command
    line (which wins on a shared key)."""
    params = base.hydra.sweeper.params or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(command_line)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def experiment_choices(name: str) -> dict[str, list[str]]:
    """Every group choice an experiment names: its defaults list's overrides and its swept groups."""
    raw = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    choices: dict[str, list[str]] = {}
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) or len(entry) != 1:
            continue
        key, value = next(iter(entry.items()))
        group = key.removeprefix("override ").strip().lstrip("/")
        if value is not None and group in GROUPS:
            choices.setdefault(group, []).append(str(value))
    params = OmegaConf.select(raw, "hydra.sweeper.params") or {}
    for key, value in params.items():
        if key in GROUPS:
            choices.setdefault(key, []).extend(v.strip() for v in str(value).split(","))
    return choices


def value(job: list[str], base: DictConfig, key: str) -> object:
    """A job's value of KEY: its override, else the experiment's (for a group: its choice)."""
    for override in job:
        if override.startswith(f"{key}="):
            text = override.split("=", 1)[1]
            return int(text) if text.lstrip("-").isdigit() else text
    if key in GROUPS:
        return base.hydra.runtime.choices[key]
    return OmegaConf.select(base, key)


@pytest.fixture(scope="module")
def sweeps(hydra_context: None) -> dict[str, tuple[DictConfig, list[list[str]]]]:
    """experiment -> (its composed config with Hydra's node, the override list of every job)."""
    out = {}
    for name in EXPERIMENTS:
        base = _compose(f"experiment={name}", hydra=True)
        out[name] = (base, sweep_jobs(base, f"experiment={name}"))
    return out


def grid(sweeps: dict, name: str, *keys: str) -> set:
    """The distinct values (a tuple for several keys) of KEYS over an experiment's jobs."""
    base, jobs = sweeps[name]
    values = {tuple(value(job, base, k) for k in keys) for job in jobs}
    return {v[0] for v in values} if len(keys) == 1 else values


# --- the experiment files ------------------------------------------------------------------------


def test_readme_lists_every_paper_experiment() -> None:
    assert set(readme_job_counts()) == set(PAPER_EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_is_global_and_names_existing_choices(name: str) -> None:
    path = CONF / "experiment" / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_"), f"{path.name}: no '# @package _global_'"
    for group, values in experiment_choices(name).items():
        for v in values:
            assert (CONF / group / f"{v}.yaml").is_file(), f"{name}: {group}={v} does not exist"


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_sweep_expands_to_the_readme_job_count(name: str, sweeps: dict) -> None:
    base, jobs = sweeps[name]
    assert base.hydra.sweep.dir == f"multirun/{name}"
    assert len(jobs) == readme_job_counts()[name]
    assert len({tuple(sorted(job)) for job in jobs}) == len(jobs), "a job appears twice"


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_without_multirun_an_experiment_is_its_first_job(name: str, sweeps: dict) -> None:
    """`python -m madao_pl.run experiment=X` (no -m) runs the sweep's first job: the experiment's
    defaults are the first value of each swept key."""
    single, first_job = _compose(f"experiment={name}"), _compose(*sweeps[name][1][0])
    assert OmegaConf.to_container(single) == OmegaConf.to_container(first_job)


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_paper_runs_are_full_scale_gpu_runs_with_csv_logs(name: str, sweeps: dict) -> None:
    base, _ = sweeps[name]
    assert base.trainer.accelerator == "gpu"
    assert base.hydra.runtime.choices["logger"] == "csv"
    assert base.trainer.max_epochs == base.dataset.epochs  # the preset's epochs, not a test's
    assert base.dataset.datamodule.limit_train is None
    assert "dataset.epochs" not in str(base.hydra.sweeper.params)


def test_the_sweeps_are_the_papers(sweeps: dict) -> None:
    methods = {"baseline", "autoaugment", "randaugment", "trivialaugment", "madao"}
    fine_grained = {"flowers", "pets", "aircraft", "cars"}

    assert grid(sweeps, "table2_cifar10", "dataset") == {"cifar10"}
    assert grid(sweeps, "table2_cifar10", "model") == {"wrn28_2", "wrn40_2", "wrn28_10", "resnet18"}
    assert len(grid(sweeps, "table2_cifar10", "model", "augment")) == 4 * 5
    for name in ("table2_cifar10", "table2_cifar100", "table2_svhn"):
        dataset = name.removeprefix("table2_")
        assert grid(sweeps, name, "augment") == methods
        assert grid(sweeps, name, "dataset") == {dataset}
    for name in ("table2_cifar100", "table2_svhn", "fig3_inner_steps", "fig6_warmup", "fig4_fig5_policies"):
        assert grid(sweeps, name, "model") == {"wrn28_2"}, name

    assert grid(sweeps, "table3_imagenet", "dataset", "model") == {("imagenet", "resnet50")}
    assert grid(sweeps, "table3_imagenet", "augment") == {"baseline", "randaugment", "madao"}
    imagenet = sweeps["table3_imagenet"][0]  # the paper's total batch 1024, which its lr 0.4 is for
    assert imagenet.trainer.devices * imagenet.dataset.datamodule.batch_size == 1024
    assert imagenet.dataset.lr == 0.4
    assert imagenet.trainer.strategy == "ddp_spawn"  # a local multirun refuses plain ddp

    assert grid(sweeps, "table4_finegrained", "dataset") == fine_grained
    assert grid(sweeps, "table4_finegrained", "model") == {"resnet18"}
    assert grid(sweeps, "table4_finegrained", "augment") == methods - {"autoaugment"}

    assert grid(sweeps, "fig3_inner_steps", "augment.inner_steps") == {5, 10, 30, 50, 100}
    assert grid(sweeps, "fig6_warmup", "augment.warmup_epochs") == {0, 10, 20, 30}
    for name in ("fig3_inner_steps", "fig6_warmup", "fig2_policies", "fig4_fig5_policies"):
        assert grid(sweeps, name, "augment") == {"madao"}, name
    assert grid(sweeps, "fig3_inner_steps", "augment.warmup_epochs") == {20}
    assert grid(sweeps, "fig6_warmup", "augment.inner_steps") == {30}
    for name in ("fig3_inner_steps", "fig6_warmup", "cost_gpu"):
        assert grid(sweeps, name, "dataset") == {"cifar10"}, name

    assert grid(sweeps, "fig2_policies", "dataset", "model") == {(d, "resnet18") for d in fine_grained}
    assert grid(sweeps, "fig4_fig5_policies", "dataset") == {"cifar10", "svhn"}
    assert grid(sweeps, "cost_gpu", "model", "augment") == {("wrn28_2", "baseline"), ("wrn28_2", "madao")}

    for name in PAPER_EXPERIMENTS:
        three_seeds = name.startswith("table") or name in ("fig3_inner_steps", "fig6_warmup")
        assert grid(sweeps, name, "seed") == ({0, 1, 2} if three_seeds else {0}), name


def test_the_benchmark_sweeps(sweeps: dict) -> None:
    """bench_accuracy: both digits variants x seven methods x three seeds; the sweeps: MADAO on digits."""
    methods = {
        "baseline",
        "autoaugment",
        "randaugment",
        "trivialaugment",
        "madao",
        "madao_paper",
        "madao_initial",
    }
    assert len(sweeps["bench_accuracy"][1]) == 2 * 7 * 3
    assert grid(sweeps, "bench_accuracy", "dataset", "augment", "seed") == {
        (d, a, s) for d in ("digits", "digits_low") for a in methods for s in (0, 1, 2)
    }
    assert grid(sweeps, "bench_inner_steps", "dataset", "augment", "augment.inner_steps") == {
        ("digits", "madao", s) for s in (5, 10, 30, 50, 100)
    }
    assert grid(sweeps, "bench_warmup", "dataset", "augment", "augment.warmup_epochs") == {
        ("digits", "madao", w) for w in (0, 10, 20, 30)
    }


def test_make_run_takes_enough_hyper_steps_for_its_plots(hydra_context: None) -> None:
    """make run's job (experiment=quickstart, the Makefile's run target) plans at least 100 hyper steps on
    digits: the batches after warm-up, at the real loader's batch count, over s."""
    from madao_pl.data import DigitsDataModule

    assert "experiment=quickstart" in (ROOT / "Makefile").read_text()
    cfg = _compose("experiment=quickstart")
    datamodule = DigitsDataModule(**{k: v for k, v in cfg.dataset.datamodule.items() if k != "_target_"})
    datamodule.setup("fit")
    batches = len(datamodule.train_dataloader())
    planned = (cfg.trainer.max_epochs - cfg.augment.warmup_epochs) * batches // cfg.augment.inner_steps
    assert cfg.augment.name == "madao" and planned >= 100, planned


def test_the_class_conditional_sweep(sweeps: dict) -> None:
    """bench_classes: class-conditional MADAO on both digits variants x three seeds, ten classes each."""
    assert grid(sweeps, "bench_classes", "dataset", "augment", "seed") == {
        (d, "madao_class", s) for d in ("digits", "digits_low") for s in (0, 1, 2)
    }
    cfg = _compose("experiment=bench_classes", "augment=madao_class")
    check_config(cfg)
    assert cfg.augment.policy.num_classes == 10 and cfg.augment.policy.class_offset_decay == 0.0


def test_the_lever_sweep_and_every_lever_composes(sweeps: dict) -> None:
    """bench_levers: MADAO on both digits variants x three seeds x every conf/lever file; each lever passes
    madao_pl.run's checks and sets what its file says, after the experiment (so it is the one change)."""
    from experiments.summarize import flatten

    levers = sorted(p.stem for p in (CONF / "lever").glob("*.yaml"))
    assert grid(sweeps, "bench_levers", "dataset", "augment", "seed", "lever") == {
        (d, "madao", s, lever) for d in ("digits", "digits_low") for s in (0, 1, 2) for lever in levers
    }
    default = OmegaConf.to_container(_compose("experiment=bench_levers"))
    for lever in levers:
        cfg = _compose("experiment=bench_levers", f"lever={lever}")
        check_config(cfg)
        own = OmegaConf.load(CONF / "lever" / f"{lever}.yaml")
        own.pop("defaults", None)
        for key, text in flatten(OmegaConf.to_container(own)).items():
            assert OmegaConf.select(cfg, key) == text, (lever, key)
        assert OmegaConf.to_container(cfg) != default, lever


def test_the_replays_read_the_policy_of_their_own_methods_run(sweeps: dict) -> None:
    """bench_replay: one replay per MADAO run of bench_accuracy (data set, seed), each reading the
    policy.json of the job directory bench_accuracy gives that run, in the methods sweep beside its own."""
    assert grid(sweeps, "bench_replay", "dataset", "augment", "seed") == {
        (d, "replay", s) for d in ("digits", "digits_low") for s in (0, 1, 2)
    }
    for dataset, seed in (("digits", 0), ("digits_low", 2)):
        job = [f"dataset={dataset}", f"seed={seed}"]
        methods = _compose("experiment=bench_accuracy", "augment=madao", *job, hydra=True).hydra.sweep
        replay = _compose("experiment=bench_replay", *job)
        assert methods.subdir == f"{dataset}_madao_{seed}"
        assert Path(replay.augment.path) == Path(methods.dir) / methods.subdir / "policy.json"


def test_command_line_wins_over_the_experiment(hydra_context: None) -> None:
    """A swept key given one value on the command line replaces its list; a group the experiment
    picks can be changed (e.g. a CPU check of a GPU experiment)."""
    command_line = ["experiment=table2_cifar10", "augment=madao", "seed=0"]
    base = _compose(*command_line, hydra=True)
    jobs = sweep_jobs(base, *command_line)
    assert sorted(value(job, base, "model") for job in jobs) == sorted(
        ["wrn28_2", "wrn40_2", "wrn28_10", "resnet18"]
    )
    assert all("augment=madao" in job and "seed=0" in job for job in jobs)
    cfg = _compose("experiment=table2_cifar10", "trainer=cpu", "dataset=digits", "model=cnn")
    assert (cfg.trainer.accelerator, cfg.dataset.name, cfg.model.name) == ("cpu", "digits", "cnn")


def test_remaining_scripts_use_existing_experiments() -> None:
    """A shell script stays only where a config cannot say it (cost_gpu's memory sampling)."""
    for script in (ROOT / "experiments").glob("*.sh"):
        names = re.findall(r"experiment=(\w+)", script.read_text())
        assert names and set(names) <= set(EXPERIMENTS), script.name


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_composes_and_passes_the_checks(name: str, sweeps: dict, tmp_path: Path) -> None:
    """Each job composed as the sweeper would (a job differing from another only in its seed once):
    Hydra refuses a missing group choice or key; madao_pl.run's checks pass; the names match. The replays
    find the policies a methods sweep beside theirs wrote."""
    from madao_pl.augment import MADAOPolicy

    for dataset, seed in ((d, s) for d in DATASETS for s in (0, 1, 2)):
        (run := tmp_path / "methods" / f"{dataset}_madao_{seed}").mkdir(parents=True)
        MADAOPolicy().save_json(run / "policy.json")
    composed = set()
    for job in sweeps[name][1]:
        key = tuple(o for o in job if not o.startswith("seed="))
        if key in composed:
            continue
        composed.add(key)
        cfg = _compose(*job, *([f"paths.bench_dir={tmp_path}"] if name.startswith("bench_") else []))
        check_config(cfg)
        for group in ("dataset", "model", "augment"):
            assert cfg[group].name == value(job, sweeps[name][0], group), job


# --- the data set presets ------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["dataset.epochs=3", "trainer.max_epochs=3"])
def test_the_schedule_follows_the_run_length_whichever_key_sets_it(
    override: str, hydra_context: None
) -> None:
    """One run length: dataset.epochs sets trainer.max_epochs, and the cosine period follows max_epochs."""
    for dataset, key in (("digits", "T_max"), ("cifar10", "T_0"), ("flowers", "T_max")):
        cfg = _compose(f"dataset={dataset}", override)
        assert cfg.trainer.max_epochs == 3 and cfg.dataset.scheduler[key] == 3, (dataset, override)


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_composes_into_a_buildable_datamodule_and_scheduler(name: str, hydra_context: None) -> None:
    overrides = [f"dataset={name}"] + (["dataset.root=/data/images"] if name == "folder" else [])
    cfg = _compose(*overrides)
    dataset = cfg.dataset
    assert dataset.name == name
    assert OmegaConf.missing_keys(dataset) == set(), "every key of _common.yaml marked ??? must be set"
    resolved = OmegaConf.to_container(dataset, resolve=True)

    datamodule_cls = get_class(dataset.datamodule._target_)
    assert issubclass(datamodule_cls, pl.LightningDataModule)
    kwargs = {k: v for k, v in resolved["datamodule"].items() if k != "_target_"}
    inspect.signature(datamodule_cls).bind(**kwargs)  # no key the class does not take

    scheduler_cls = get_class(dataset.scheduler._target_)
    assert issubclass(scheduler_cls, torch.optim.lr_scheduler.LRScheduler)
    kwargs = {k: v for k, v in resolved["scheduler"].items() if not k.startswith("_")}
    # no key of another schedule (e.g. a T_max leaking from a shared file into warm restarts)
    inspect.signature(scheduler_cls).bind(None, **kwargs)

    assert dataset.datamodule.image_size == dataset.image_size and dataset.datamodule.seed == cfg.seed
    assert dataset.datamodule.root == dataset.root
    if "download" in dataset:
        assert dataset.datamodule.download == dataset.download
