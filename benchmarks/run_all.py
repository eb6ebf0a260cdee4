"""Run the benchmarks, each in its own process (a failure stops none of the others), then the READMEs.

``make bench`` (about 4 hours on 2 CPU cores, two of them the accuracy sweeps): every benchmark into
``benchmarks/results/``, both READMEs.
``--quick`` (``make bench-quick``): the cost benchmark's quick form into ``outputs/bench/quick/`` with its own
README, so quick numbers never replace the published ones. Logs: ``outputs/bench/logs/<name>.log``.

Run: ``python -m benchmarks.run_all [--quick] [--only policy cost ... scaling] [--no-report]`` (the names:
:data:`benchmarks.report.BENCHMARKS`; each runs :data:`benchmarks.report.COMMANDS`' command).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.report import BENCHMARKS, COMMANDS

QUICK = "outputs/bench/quick"


def commands(quick: bool) -> dict[str, list[str]]:
    """Name -> command line of each benchmark, then ``report`` (quick: a README beside the quick results)."""
    python = [sys.executable, "-m"]
    report = [*python, "benchmarks.report"]
    if quick:
        cost = [*python, "benchmarks.bench_cost", "--form", "quick", "--out", f"{QUICK}/cost.json"]
        return {
            "cost": cost,
            "report": [*report, "--results", QUICK, "--out", f"{QUICK}/README.md", "--no-top-readme"],
        }
    return {**{n: [*python, *c.split()[2:]] for n, c in COMMANDS.items()}, "report": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the cost benchmark alone, in its quick form")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate the README")
    parser.add_argument("--logs", type=Path, default=ROOT / "outputs" / "bench" / "logs")
    args = parser.parse_args(argv)
    todo = {n: c for n, c in commands(args.quick).items() if n == "report" or not args.only or n in args.only}
    if set(todo) <= {"report"}:
        print(f"error: --only {' '.join(args.only)} selects nothing in this mode (quick: cost only)")
        return 2
    if args.no_report:
        todo.pop("report", None)
    args.logs.mkdir(parents=True, exist_ok=True)
    env = {"WANDB_MODE": "disabled", **os.environ, "PYTHONUNBUFFERED": "1"}
    failed = []
    for name, command in todo.items():
        log, start = args.logs / f"{name}.log", time.perf_counter()
        print(f"=== {name}: {' '.join(command)} (log: {log})", flush=True)
        with open(log, "w") as handle:
            status = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        failed += [name] if status.returncode else []
        state = f"FAILED (exit {status.returncode}), see {log}" if status.returncode else "ok"
        print(f"=== {name}: {state} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print(f"{len(failed)} failed: {', '.join(failed)}" if failed else "all benchmarks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
