"""Hydra entry point: ``python -m madao_pl.run [overrides]``.

Composes ``madao_pl/conf`` (groups dataset, model, augment, trainer, logger, callbacks),
checks the settings, builds every object by ``_target_``, fits, tests, and writes into the run
directory: ``results.json``, ``policy.json``, ``policy_history.csv``,
``policy_evolution.png``, ``policy_parameters.png``, ``checkpoints/last.ckpt`` and the
logger's files. Hydra builds objects only; the logic lives in the modules it names.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from madao_pl.callbacks import ProcessGroupCleanup
from madao_pl.data import CorruptImageError, DatasetNotFoundError
from madao_pl.hyperstep import check_precision
from madao_pl.module import MADAOModule

log = logging.getLogger("madao_pl")
CONF = Path(__file__).resolve().parent / "conf"
GROUPS = ("dataset", "model", "augment", "task", "trainer", "logger", "callbacks")
REQUIRED_HINTS = {
    "dataset.root": "the image folder, e.g. dataset.root=/data/my_images",
    "augment.path": "a policy.json written by a MADAO run, e.g. augment.path=outputs/<run dir>/policy.json",
}
"""Keys a choice leaves to the user (``???``), and what to give."""


class ConfigError(ValueError):
    """A configuration value outside its valid range; the message names the key."""


def _choices(group: str) -> list[str]:
    """The choices of config group ``group``: its files, less the shared ``_*`` ones."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _known_keys(group: str) -> set[str]:
    """Every top-level key that some file of config group ``group`` sets."""
    keys: set[str] = set()
    for path in (CONF / group).glob("*.yaml"):
        keys |= set(OmegaConf.load(path).keys())
    return keys - {"defaults"}


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` in an unresolved container (interpolations left alone)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _missing_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "???" else []


def _check_choices_and_keys(cfg: DictConfig) -> None:
    """A shared file chosen as a group's choice, a required key left unset, an unknown augment key."""
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        for group in GROUPS:
            choice = str(choices.get(group, ""))
            if choice.startswith("_"):
                names = ", ".join(_choices(group))
                raise ConfigError(f"{group}={choice} is a shared file, not a choice: pick one of {names}")
    for key in _missing_keys(OmegaConf.to_container(cfg, resolve=False)):
        group = key.split(".")[0]
        if key == f"{group}.name" and group in GROUPS:
            raise ConfigError(
                f"{group} has no choice (a shared file?): pick one of {', '.join(_choices(group))}"
            )
        hint = REQUIRED_HINTS.get(key, f"add {key}=<value> to the command line")
        raise ConfigError(f"{key} is required here and not set: {hint}")
    known = _known_keys("augment")
    for key in sorted(set(cfg.augment.keys()) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean augment.{close[0]}?" if close else "no augment choice reads it"
        raise ConfigError(f"augment.{key} is not a setting ({hint}): fix or remove it")
    path = cfg.augment.get("path")
    if path is not None and not Path(str(path)).is_file():
        raise ConfigError(f"augment.path={path}: no such file; give a policy.json written by a MADAO run")


def _check_devices(cfg: DictConfig) -> None:
    """More than one device on CPU only through an explicit strategy (trainer=ddp_cpu), never by accident."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    devices, strategy = cfg.trainer.get("devices", 1), str(cfg.trainer.get("strategy", "auto"))
    if on_cpu and devices not in (1, "1", "auto") and strategy == "auto":
        raise ConfigError(
            f"trainer.devices={devices} on CPU would start {devices} processes: for CPU DDP choose it "
            f"explicitly (trainer=ddp_cpu trainer.devices={devices}), else keep trainer.devices=1"
        )


def check_config(cfg: DictConfig) -> None:
    """Refuse, before anything is built, the settings that no library object checks when it is built."""
    _check_choices_and_keys(cfg)
    _check_devices(cfg)
    checks = [
        ("dataset.epochs", cfg.dataset.epochs, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        ("dataset.lr", cfg.dataset.lr, lambda v: _number(v) and v > 0, "a number > 0"),
    ]
    if "probe_epochs" in cfg.task:
        valid = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        checks.append(("task.probe_epochs", cfg.task.probe_epochs, valid, "an integer >= 1"))
    for key, value, valid, expected in checks:
        if not valid(value):
            raise ConfigError(f"{key}={value!r} is invalid: it must be {expected}")
    _check_launch(cfg)
    if cfg.trainer.get("sync_batchnorm", False):
        raise ConfigError(
            "trainer.sync_batchnorm=true is not supported: SyncBatchNorm has no double backward, which the "
            "MADAO hyper step needs; use trainer.sync_batchnorm=false"
        )


def build(cfg: DictConfig, key: str, sources: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``instantiate`` the node at ``key``; a ``ValueError`` of the object built becomes a one-line
    :class:`ConfigError` naming the config key of the argument it names (the library's messages start with
    the argument's name; an argument set by interpolation, ``${augment.inner_steps}``, is named by its
    source; one of an object passed in whole, built from a node of ``sources``, by that node's key)."""
    node = OmegaConf.select(cfg, key)
    try:
        return instantiate(node, _convert_="object", **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
        if isinstance(cause, TypeError) and unexpected:
            target = OmegaConf.select(cfg, f"{key}._target_")
            raise ConfigError(
                f"{key}.{unexpected.group(1)} is not an argument of {target}: fix or remove it"
            ) from None
        if isinstance(cause, DatasetNotFoundError):  # a FileNotFoundError whose message names the fix
            raise cause from None
        if isinstance(cause, FileNotFoundError):
            raise ConfigError(f"{key}: no such file: {cause.filename}") from None
        if not isinstance(cause, ValueError):
            raise
        raise ConfigError(config_terms(cfg, key, _name_key(cfg, key, cause, sources))) from None


def build_module(
    cfg: DictConfig,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    net: nn.Module | None = None,
) -> MADAOModule:
    """The LightningModule ``train`` fits: the ``module`` node around the network (``net``, default
    ``model.net`` built for ``num_classes``; ``task=ssl``: wrapped by ``task.network``), the policy, the
    hyper-step settings and the data's normalisation. The benchmarks build their cases with it too."""
    net = build(cfg, "model.net", num_classes=num_classes) if net is None else net
    if "network" in cfg.task:  # task=ssl: the model's network becomes MoCo's encoder
        net = build(cfg, "task.network", backbone=net)
    # a class-conditional policy on a data set whose classes are read from the data (dataset=folder)
    unknown = "num_classes" in cfg.augment.policy and cfg.augment.policy.num_classes is None
    policy = build(cfg, "augment.policy", **({"num_classes": num_classes} if unknown else {}))
    hyper = build(cfg, "augment.hyper")
    return build(
        cfg, "module", ("augment.hyper",), net=net, policy=policy, hyper=hyper, num_classes=num_classes,
        mean=mean, std=std,
    )  # fmt: skip


def _name_key(cfg: DictConfig, key: str, error: ValueError, sources: tuple[str, ...] = ()) -> str:
    """``<config key>=<value> is invalid: <message>`` for the argument the message starts with: one of the
    node at ``key``, else one of a node of ``sources``; ``<key>: <message>`` when neither has it."""
    match = re.match(r"\w+", str(error))
    argument = match.group(0) if match else ""
    for node in (key, *sources):
        raw = OmegaConf.to_container(OmegaConf.select(cfg, node), resolve=False)
        if isinstance(raw, dict) and argument in raw:
            full_key = _source_key(raw[argument], f"{node}.{argument}")
            return f"{full_key}={OmegaConf.select(cfg, full_key)!r} is invalid: {error}"
    return f"{key}: {error}"


def _source_key(value: Any, key: str) -> str:
    """The config key a value comes from: ``a.b`` for an interpolation ``${a.b}``, else ``key``."""
    interpolation = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
    return interpolation.group(1) if interpolation else key


def config_terms(cfg: DictConfig, key: str, text: str) -> str:
    """``text`` with each argument of the node at ``key`` that it names between backticks (root,
    download=True) written as its config key, still between backticks (dataset.root, dataset.download=true):
    the library's messages name arguments, a run's name the keys to set."""
    raw = OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=False)
    if not isinstance(raw, dict):
        return text

    def rename(match: re.Match[str]) -> str:
        argument, value = match.groups()
        if argument not in raw:
            return match.group(0)
        full_key = _source_key(raw[argument], f"{key}.{argument}")
        value = {"True": "true", "False": "false", "None": "null"}.get(value, value)
        return f"`{full_key}`" if value is None else f"`{full_key}={value}`"

    return re.sub(r"`(\w+)(?:=([^`]*))?`", rename, text)


@contextlib.contextmanager
def _data_errors_name_keys(cfg: DictConfig) -> Iterator[None]:
    """Re-raise a :class:`DatasetNotFoundError` with the arguments it names as config keys
    (:func:`config_terms` of ``dataset.datamodule``)."""
    try:
        yield
    except DatasetNotFoundError as error:
        raise DatasetNotFoundError(config_terms(cfg, "dataset.datamodule", str(error))) from None


def _check_launch(cfg: DictConfig) -> None:
    """Refuse a local multirun with strategy=ddp: Lightning's ddp launcher re-runs the command
    line in child processes, which would re-launch the whole sweep from every rank."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    strategy = str(cfg.trainer.get("strategy", "auto"))
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and strategy.startswith("ddp") and strategy != "ddp_spawn":
        if "submitit" not in launcher:
            raise ConfigError(
                f"trainer.strategy={strategy} cannot run inside a local Hydra multirun (its child processes "
                "would re-launch the sweep): use hydra/launcher=slurm for clusters, or "
                "trainer.strategy=ddp_spawn locally"
            )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def output_dir(cfg: DictConfig) -> Path:
    """The run directory (Hydra's, or paths.output_dir when composed outside @hydra.main)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


RESUME_MUST_MATCH = (
    "task.name",
    "dataset.name",
    "model",
    "augment.name",
    "augment.inner_steps",
    "augment.policy.num_stages",
    "augment.policy.identity",
    "augment.policy.num_classes",
)
"""Settings a resumed run must share with the run that wrote its checkpoint (the weights and counters)."""


class _ConfigInCheckpoint(pl.Callback):
    """Keeps :data:`RESUME_MUST_MATCH` and the output directory in every checkpoint, for the resume check."""

    def __init__(self, cfg: DictConfig) -> None:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        self.settings = {key: _select(resolved, key) for key in (*RESUME_MUST_MATCH, "paths.output_dir")}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["madao_run"] = self.settings


def _select(container: Any, key: str) -> Any:
    for part in key.split("."):
        container = container.get(part) if isinstance(container, dict) else None
    return container


def continue_run(cfg: DictConfig) -> None:
    """With ``ckpt_path``: refuse changed settings that matter in one line, and continue in the checkpoint's
    run directory (metrics.csv appended, best.ckpt tracking kept, the same W&B run)."""
    if not cfg.get("ckpt_path"):
        return
    path = Path(str(cfg.ckpt_path))
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint; give a run's checkpoints/last.ckpt")
    # mmap: only the small dict is read here (Lightning loads the whole checkpoint again for the fit)
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("madao_run")
    if not saved:
        return  # an older checkpoint: resume where this run writes
    now = OmegaConf.to_container(cfg, resolve=True)
    changed = [
        f"{k} {saved.get(k)!r} -> {_select(now, k)!r}"
        for k in RESUME_MUST_MATCH
        if k in saved and saved[k] != _select(now, k)  # a key added since that checkpoint: not compared
    ]
    if changed:
        raise ConfigError(
            f"ckpt_path={path} was written with other settings ({'; '.join(changed)}): resume with the "
            "checkpoint's settings, or start a new run without ckpt_path"
        )
    previous = Path(saved["paths.output_dir"])
    if previous.is_dir() and previous.resolve() != Path(cfg.paths.output_dir).resolve():
        here = Path(cfg.paths.output_dir)
        here.mkdir(parents=True, exist_ok=True)
        (here / "continues").unlink(missing_ok=True)
        (here / "continues").symlink_to(previous.resolve(), target_is_directory=True)
        cfg.paths.output_dir = str(previous)
    latest = Path(cfg.paths.output_dir) / "wandb" / "latest-run"
    if cfg.get("logger") and "wandb" in cfg.logger and latest.exists():
        OmegaConf.update(cfg, "logger.wandb.id", latest.resolve().name.rsplit("-", 1)[-1], force_add=True)
        OmegaConf.update(cfg, "logger.wandb.resume", "allow", force_add=True)
    log.info("resuming %s in %s", path, cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; write the run's outputs; return results.json's content."""
    with _data_errors_name_keys(cfg):
        return _fit_and_test(cfg)


def _fit_and_test(cfg: DictConfig) -> dict[str, Any]:
    """:func:`train`'s work: check, build, fit, test, write the outputs."""
    check_config(cfg)
    continue_run(cfg)
    out = output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg, "dataset.datamodule")
    num_classes = cfg.dataset.num_classes
    if num_classes is None:  # read from the data (dataset=folder): a layout it refuses is a config error
        try:
            datamodule.prepare_data()
            datamodule.setup("fit")
        except ValueError as error:
            raise ConfigError(config_terms(cfg, "dataset.datamodule", f"dataset: {error}")) from None
        num_classes = datamodule.num_classes
    module = build_module(cfg, num_classes, datamodule.mean, datamodule.std)
    policy = module.policy
    log.info(summary_line(cfg, datamodule, num_classes, module))
    callbacks = [
        build(cfg, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c and "_target_" in c
    ]
    callbacks += [_ConfigInCheckpoint(cfg), ProcessGroupCleanup()]
    loggers = [
        build(cfg, f"logger.{k}") for k, c in (cfg.get("logger") or {}).items() if c and "_target_" in c
    ]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if module.learns_policy:
        try:  # the precision Lightning resolved (on CPU, 16-mixed becomes bf16-mixed)
            check_precision(trainer.precision)
        except ValueError as error:
            raise ConfigError(f"trainer.precision={cfg.trainer.precision}: {error}") from None
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    fit_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.test and "probe" in cfg.task:
        metrics.update(linear_probe(cfg, module, datamodule, num_classes, loggers))
    elif cfg.test:
        test_metrics = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in (test_metrics[0] if test_metrics else {}).items()})

    results = {
        "task": cfg.task.name,
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "augment": cfg.augment.name,
        "seed": cfg.seed,
        "inner_steps": cfg.augment.inner_steps,
        "warmup_epochs": cfg.augment.warmup_epochs,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "test_error": metrics.get("test/error"),
        "val_error": metrics.get("probe/val_error", metrics.get("val/error")),
        "hyper_steps": int(module.hyper_steps),
        "skipped_hyper_steps": int(module.skipped_hyper_steps),
        "hvps": int(module.total_hvps),
        "hvps_per_hyper_step": int(module.total_hvps) / int(module.hyper_steps)
        if module.hyper_steps
        else None,
        "fit_seconds": fit_seconds,
        "device": str(module.device),
        "world_size": trainer.world_size,
        "policy": policy.describe(),
        "metrics": metrics,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if hasattr(policy, "save_json"):
            policy.save_json(out / "policy.json")
    _finish_wandb(loggers)
    return results


def linear_probe(
    cfg: DictConfig, module: Any, datamodule: Any, num_classes: int, loggers: list[Any]
) -> dict[str, float]:
    """``task=ssl``'s evaluation: fit ``task.probe`` (a linear classifier on the frozen pre-trained encoder)
    for ``task.probe_epochs`` on the labelled training split and test it; its metrics (``test/error``...)."""
    probe = build(
        cfg, "task.probe", encoder=module.net.encoder, feature_dim=module.net.feature_dim,
        num_classes=num_classes, mean=datamodule.mean, std=datamodule.std,
    )  # fmt: skip
    trainer: pl.Trainer = instantiate(
        cfg.trainer, max_epochs=cfg.task.probe_epochs, callbacks=[ProcessGroupCleanup()],
        logger=loggers or False, enable_checkpointing=False,
    )  # fmt: skip
    log.info(
        "linear probe: %d epochs on the frozen encoder's %d features",
        cfg.task.probe_epochs,
        probe.classifier.in_features,
    )
    trainer.fit(probe, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    tested = trainer.test(probe, datamodule=datamodule, verbose=False)
    return {**metrics, **{k: float(v) for k, v in (tested[0] if tested else {}).items()}}


def summary_line(cfg: DictConfig, datamodule: Any, num_classes: int, module: Any) -> str:
    """The start-up line: data (classes, image size, batch, loader workers), model, augmentation, length."""
    a = cfg.augment
    learns = f" (s = {a.inner_steps}, warm-up {a.warmup_epochs} epochs)" if module.learns_policy else ""
    return (
        f"dataset={cfg.dataset.name}: {num_classes} classes, images resized to {datamodule.image_size} px, "
        f"batch {datamodule.batch_size}, {datamodule.num_workers} loader workers; model={cfg.model.name}; "
        f"augment={a.name}{learns}; task={cfg.task.name}; {cfg.trainer.max_epochs} epochs; outputs in "
        f"{cfg.paths.output_dir}"
    )


def _finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run so that the next multirun job starts a new one."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        wandb.finish()


def _log_to_the_job_log() -> None:
    """Send Lightning's messages and Python warnings through the root logger, which Hydra points at the
    console and the job's ``run.log`` (Lightning installs its own console handler when imported first)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)


def _one_line(error: BaseException) -> str:
    """The error's own message. A :class:`CorruptImageError` re-raised from a DataLoader worker carries the
    worker's traceback, whose last line is the original ``<Type>: <message>``."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if isinstance(error, CorruptImageError) and len(lines) > 1 and ": " in lines[-1]:
        return lines[-1].split(": ", 1)[1]
    return " ".join(lines)


def _file_only(level: int, message: str, exc_info: bool = False) -> None:
    """Write ``message`` to the job's log files only (what the console already showed another way)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: returns the test error (for sweepers that optimise it). What the console shows also goes
    to the job's ``run.log``, a failed run's error included; rank 0 alone reports the result."""
    _log_to_the_job_log()
    try:
        results = train(cfg)
    except (ConfigError, DatasetNotFoundError, CorruptImageError) as error:
        message = _one_line(error)
        print(f"error: {message}", file=sys.stderr)
        _file_only(logging.ERROR, f"error: {message}")
        sys.exit(2)
    except BaseException:
        _file_only(logging.ERROR, "the run failed", exc_info=True)
        raise
    error = results.get("test_error")
    if pl.utilities.rank_zero_only.rank == 0:
        log.info(f"test error: {100 * error:.2f}%" if error is not None else "no test error (test=false)")
        log.info("outputs in %s", HydraConfig.get().runtime.output_dir)
    return error


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
