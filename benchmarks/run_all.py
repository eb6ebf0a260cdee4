"""Run the benchmarks, each in its own process (a failure stops none of the others), then the READMEs.

Full (``make bench``, about an hour on 2 CPU cores): every benchmark into ``benchmarks/results/``, then
``benchmarks/README.md`` and the top README's results part. ``--quick`` (``make bench-quick``): the cost
benchmark's quick mode alone, into ``outputs/bench/quick/`` with its own README there, so quick numbers
never replace the published ones. Logs: ``outputs/bench/logs/<name>.log``; exit status 1 when one failed.

Run: ``python -m benchmarks.run_all [--quick] [--only policy cost accuracy hypergrad] [--no-report]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.report import BENCHMARKS

NAMES = list(BENCHMARKS)
QUICK = "outputs/bench/quick"


def commands(quick: bool) -> dict[str, list[str]]:
    """Name -> command line of each benchmark (paths relative to the repository root)."""
    if quick:
        return {
            "cost": [sys.executable, "-m", "benchmarks.bench_cost", "--out", f"{QUICK}/cost.json", "--quick"]
        }
    return {
        name: [sys.executable, "-m", f"benchmarks.bench_{name}", "--out", f"benchmarks/results/{name}.json"]
        for name in NAMES
    }


def report_command(quick: bool) -> list[str]:
    """The README generator: the published pages, or (quick) a page beside the quick results only."""
    extra = ["--results", QUICK, "--out", f"{QUICK}/README.md", "--no-top-readme"] if quick else []
    return [sys.executable, "-m", "benchmarks.report", *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the cost benchmark alone, in its --quick mode")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate the README")
    parser.add_argument("--logs", type=Path, default=ROOT / "outputs" / "bench" / "logs")
    args = parser.parse_args(argv)
    todo = {name: c for name, c in commands(args.quick).items() if not args.only or name in args.only}
    if not todo:
        print(f"error: --only {' '.join(args.only)} selects nothing in this mode (quick: cost only)")
        return 2
    if not args.no_report:
        todo["report"] = report_command(args.quick)
    args.logs.mkdir(parents=True, exist_ok=True)
    env = {"WANDB_MODE": "disabled", **os.environ, "PYTHONUNBUFFERED": "1"}
    failed = []
    for name, command in todo.items():
        log = args.logs / f"{name}.log"
        print(f"=== {name}: {' '.join(command)} (log: {log})", flush=True)
        start = time.perf_counter()
        with open(log, "w") as handle:
            status = subprocess.run(
                command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
            ).returncode
        if status:
            failed.append(name)
        state = f"FAILED (exit {status}), see {log}" if status else "ok"
        print(f"=== {name}: {state} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print(f"{len(failed)} failed: {', '.join(failed)}" if failed else "all benchmarks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
