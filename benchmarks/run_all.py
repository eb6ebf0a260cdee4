"""Run the benchmarks, each in its own process, then regenerate ``benchmarks/README.md``.

- full (``make bench``): policy speed, MADAO's cost, test error on digits (about an hour on 2 CPU
  cores: 65 minutes measured on a fresh clone, install included; the cost benchmark about 32 minutes, the
  22 digits fits about 30 minutes, two at a time);
- ``--quick`` (``make bench-quick``): the cost benchmark with ``--quick`` alone.

Each benchmark writes ``benchmarks/results/<name>.json``; its output is shown and also kept in
``outputs/bench/logs/<name>.log``. A benchmark that fails does not stop the others; the failures are
listed at the end and the exit status is then 1. The README is regenerated from whatever results exist.

Run: ``python -m benchmarks.run_all [--quick] [--only policy cost accuracy]`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results")
LOGS = Path("outputs/bench/logs")


def commands(quick: bool) -> dict[str, list[str]]:
    """Name -> command line of each benchmark to run (relative paths: run from the repository root)."""
    python = sys.executable
    if quick:
        return {
            "cost": [python, "-m", "benchmarks.bench_cost", "--out", str(RESULTS / "cost.json"), "--quick"]
        }
    return {
        "policy": [python, "benchmarks/bench_policy.py", "--out", str(RESULTS / "policy.json")],
        "cost": [python, "-m", "benchmarks.bench_cost", "--out", str(RESULTS / "cost.json")],
        "accuracy": [python, "-m", "benchmarks.bench_accuracy", "--out", str(RESULTS / "accuracy.json")],
    }


def run_logged(name: str, command: list[str], log_dir: Path) -> tuple[int, float]:
    """Run ``command`` in the repository root, echoing its output and writing it to ``<log_dir>/<name>.log``.

    Returns (exit status, seconds).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("WANDB_MODE", "disabled")
    start = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        try:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except OSError as error:
            log.write(f"could not start: {error}\n")
            print(f"could not start {name}: {error}", flush=True)
            return 127, time.perf_counter() - start
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        status = process.wait()
    return status, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the cost benchmark alone, in its --quick mode")
    parser.add_argument("--only", nargs="+", choices=["policy", "cost", "accuracy"], help="run only these")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate benchmarks/README.md")
    parser.add_argument("--logs", type=Path, default=LOGS, help="where each benchmark's log goes")
    args = parser.parse_args(argv)

    todo = commands(args.quick)
    if args.only:
        todo = {name: command for name, command in todo.items() if name in args.only}
        if not todo:
            print(f"error: --only {' '.join(args.only)} selects nothing in this mode (quick: cost only)")
            return 2
    if not args.no_report:
        todo["report"] = [sys.executable, "-m", "benchmarks.report"]
    log_dir = args.logs if args.logs.is_absolute() else ROOT / args.logs

    outcomes: dict[str, tuple[int, float]] = {}
    for name, command in todo.items():
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        outcomes[name] = run_logged(name, command, log_dir)
        status, seconds = outcomes[name]
        print(
            f"=== {name}: {'ok' if status == 0 else f'FAILED (exit {status})'} in {seconds / 60:.1f} min",
            flush=True,
        )

    print("\nsummary:")
    for name, (status, seconds) in outcomes.items():
        state = "ok" if status == 0 else f"FAILED (exit {status}), see {log_dir / (name + '.log')}"
        print(f"  {name:<9} {seconds / 60:6.1f} min  {state}")
    failed = [name for name, (status, _) in outcomes.items() if status != 0]
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
