"""What the benchmarks share: where results go, the provenance block every result file starts with, the
``-- OVERRIDE ...`` split of a command line, and a launcher for processes that run side by side."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUIET_TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
QUIET_TRAINER |= {"enable_model_summary": False, "limit_val_batches": 0}
"""``pytorch_lightning.Trainer`` arguments of a benchmark fit: no logger, checkpoints, bars, validation."""


def stamp(module: str, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """Date (UTC), the command that ran (``python -m <module> <argv>``, default ``sys.argv[1:]``) and the
    machine it ran on, ``extra`` added."""
    info = Path("/proc/cpuinfo")
    cpus = re.findall(r"^model name\s*:\s*(.+)$", info.read_text() if info.is_file() else "", re.MULTILINE)
    machine = {
        "cpu": cpus[0].strip() if cpus else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": os.getloadavg()[0],
        **extra,
    }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (parents created), indented, ending in a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` cut at ``--``: the script's own arguments, and the Hydra overrides after it."""
    return (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])


def run_at_most(
    commands: list[list[str]], width: int, env: dict[str, str], logs: list[Path] | None = None
) -> Iterator[int]:
    """Run ``commands`` from the repository root, at most ``width`` at a time, stdout and stderr into ``logs``
    (default: stdout discarded, stderr shown); yield their exit statuses, in order."""
    running = []
    for i, command in enumerate(commands):
        with open(logs[i] if logs else os.devnull, "w") as log:
            stderr = subprocess.STDOUT if logs else None
            running.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=stderr))
        if len(running) == width:
            yield running.pop(0).wait()
    for process in running:
        yield process.wait()
