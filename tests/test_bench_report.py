"""benchmarks/: the accuracy benchmark's plan, statistics and resume logic, the README generator,
and run_all's failure handling. No benchmark numbers are produced here; tiny fits only."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from benchmarks import bench_accuracy, bench_cost, report, run_all
from benchmarks.bench_accuracy import METHODS, Outcome, aggregate, make_plan, write_report

from tests.conftest import TINY


def fake_results(job: bench_accuracy.Job, test_error: float) -> dict:
    """A results.json-like dict for ``job`` (its sweep keys as the plan sets them)."""
    inner = next((int(o.split("=")[1]) for o in job.overrides if o.startswith("augment.inner_steps=")), 30)
    warmup = next((int(o.split("=")[1]) for o in job.overrides if o.startswith("augment.warmup_epochs=")), 20)
    return {
        "test_error": test_error,
        "val_error": test_error + 0.01,
        "fit_seconds": 10.0,
        "hyper_steps": 7,
        "hvps": 35,
        "inner_steps": inner,
        "warmup_epochs": warmup,
        "device": "cpu",
    }


def test_plan_reuses_the_default_madao_run_for_equal_sweep_points() -> None:
    jobs = make_plan([0, 1, 2], [])
    names = [job.name for job in jobs]
    assert names[:15] == [f"{m}-seed{s}" for m in METHODS for s in (0, 1, 2)]
    reused = {job.name: job.reuse for job in jobs if job.reuse}
    assert reused == {"madao-inner30-seed0": "madao-seed0", "madao-warmup20-seed0": "madao-seed0"}
    assert len([job for job in jobs if job.reuse is None]) == 15 + 4 + 3
    sweep = {job.value for job in jobs if job.sweep == "inner_steps"}
    assert sweep == {5, 10, 30, 50, 100}
    assert {job.value for job in jobs if job.sweep == "warmup_epochs"} == {0, 10, 20, 30}

    # The reuse follows the composed config, not the names: another default changes which point is shared.
    shifted = {j.name: j.reuse for j in make_plan([0], ["augment.inner_steps=10"]) if j.reuse}
    assert shifted == {"madao-inner10-seed0": "madao-seed0", "madao-warmup20-seed0": "madao-seed0"}
    assert not any(job.reuse for job in make_plan([1, 2], []))  # no seed-0 MADAO run to share


def test_aggregate_statistics_and_sweeps() -> None:
    jobs = make_plan([0, 1, 2], [])
    errors = {"baseline": [0.048, 0.050, 0.052], "madao": [0.046, 0.044, 0.045], "randaugment": [0.047]}
    outcome = Outcome()
    for job in jobs:
        if job.sweep is None and job.method in errors and job.seed < len(errors[job.method]):
            outcome.results[job.name] = fake_results(job, errors[job.method][job.seed])
        elif job.sweep and job.reuse is None and job.value != 50:
            outcome.results[job.name] = fake_results(job, 0.05 + job.value / 10_000)
    summary = aggregate(jobs, outcome)

    baseline = summary["methods"]["baseline"]
    assert baseline["test_error_pct"] == pytest.approx([4.8, 5.0, 5.2])
    assert math.isclose(baseline["mean_pct"], 5.0, abs_tol=1e-9)
    assert math.isclose(baseline["std_pct"], 0.2, abs_tol=1e-9)  # sample std (n - 1)
    assert summary["methods"]["madao"]["std_pct"] == pytest.approx(0.1)
    single = summary["methods"]["randaugment"]
    assert (
        single["n"] == 1
        and single["std_pct"] is None
        and single["missing"] == ["randaugment-seed1", "randaugment-seed2"]
    )
    assert summary["methods"]["autoaugment"]["mean_pct"] is None

    inner = {p["value"]: p for p in summary["sweeps"]["inner_steps"]["points"]}
    assert sorted(inner) == [5, 10, 30, 100]
    assert inner[30]["job"] == "madao-seed0" and inner[30]["test_error_pct"] == pytest.approx(4.6)
    assert inner[5]["test_error_pct"] == pytest.approx(5.05)
    assert summary["sweeps"]["inner_steps"]["missing"] == ["madao-inner50-seed0"]
    warmup = {p["value"]: p["job"] for p in summary["sweeps"]["warmup_epochs"]["points"]}
    assert warmup == {
        0: "madao-warmup0-seed0",
        10: "madao-warmup10-seed0",
        20: "madao-seed0",
        30: "madao-warmup30-seed0",
    }

    # A run made with another sweep value is not taken for this point.
    outcome.results["madao-inner5-seed0"]["inner_steps"] = 6
    again = aggregate(jobs, outcome)["sweeps"]["inner_steps"]
    assert "madao-inner5-seed0" in again["missing"]


def test_report_files_and_readme(tmp_path: Path) -> None:
    jobs = make_plan([0, 1, 2], [])
    outcome = Outcome()
    for job in jobs:
        if job.reuse is None:
            outcome.results[job.name] = fake_results(job, 0.05 + 0.002 * job.seed)
    out = tmp_path / "results" / "accuracy.json"
    written = write_report(out, jobs, outcome, tmp_path / "runs", [0, 1, 2], [], 0.0, plots=True)
    assert written["complete"] is True and written["failures"] == {}
    assert written["runs"] == {"torch_threads": [None], "mean_load_average_1min": None}  # no conditions files
    stored = json.loads(out.read_text())
    assert stored["methods"]["madao"]["mean_pct"] == pytest.approx(5.2)
    assert stored["settings"]["inner_steps"] == 30 and stored["settings"]["warmup_epochs"] == 20
    assert stored["machine"]["cpu_count"] >= 1 and stored["command"].startswith(
        "python -m benchmarks.bench_accuracy"
    )
    assert (out.parent / "sweep_inner_steps.png").stat().st_size > 0
    assert (out.parent / "sweep_warmup.png").stat().st_size > 0

    table = report.accuracy_table(stored)
    assert "| MADAO | 5.20 ± 0.20 | 3 | 5.00, 5.20, 5.40 | 10 |" in table
    assert report.accuracy_markdown(out.parent).startswith(
        "Test error (%) on digits (cnn, 40 epochs, MADAO s = 30"
    )
    readme = report.build_readme(out.parent, tmp_path)
    assert "the paper's shared settings" in readme
    assert "![Inner steps s (paper Figure 3)](results/sweep_inner_steps.png)" in readme
    assert readme.count("Not run yet") == 2  # policy and cost


def synthetic_cost_report() -> dict:
    """bench_cost.py's own summarise() on made-up step times and memory: its real layout, known numbers."""
    args = bench_cost.parse_args(["--quick"])
    rounds = [
        {
            "inner_s": {"baseline": 0.5, "randaugment": 0.6, "madao_inner": 0.62},
            "hyper_s": {"plain": 6.0, "fast": 4.0},
            "breakdown_s": {
                "plain": {"augmented_forward": 0.2, "hvp_1": 1.0, "mixed_derivative": 0.5},
                "fast": {"augmented_forward": 0.2, "hvp_1": 0.9, "mixed_derivative": 0.5},
            },
            "hvps": {"plain": 5, "fast": 3},
            "compare": {"fast": {"rel_diff": 2e-5, "cosine": 0.999999, "network_grad_rel_diff": 0.0}},
        }
    ] * 3
    memory = {
        method: {"peak_rss": [peak], "setup_rss": [500.0], "peak_above_setup": [peak - 500.0]}
        for method, peak in (
            ("baseline", 900.0),
            ("randaugment", 1000.0),
            ("plain", 2500.0),
            ("fast", 1500.0),
        )
    }
    summary = bench_cost.summarise(args, {"rounds": rounds}, memory, None)
    machine = {"cpu": "x86_64", "cpu_count": 2, "torch_threads": 1, "device": "cpu", "date": "2026-01-01"}
    machine["command"] = "python -m benchmarks.bench_cost --out x.json --quick"
    settings = {
        "quick": True,
        "rounds": 3,
        "inner_steps_per_round": 2,
        "memory_reps": 1,
        "s_values": [10, 30, 50],
    }
    settings["variants"] = {
        "plain": {"neumann_tol": 0.0, "hyper_chunks": 1},
        "fast": {"neumann_tol": 1e-4, "hyper_chunks": 1},
    }
    return {"benchmark": "cost of MADAO", "machine": machine, "settings": settings, **summary}


def test_readme_without_results_and_with_a_cost_report(tmp_path: Path) -> None:
    empty = report.build_readme(tmp_path, tmp_path)
    assert empty.count("Not run yet") == 3
    assert report.accuracy_markdown(tmp_path).startswith("No accuracy results yet")

    (tmp_path / "cost.json").write_text(json.dumps(synthetic_cost_report()))
    text = report.build_readme(tmp_path, tmp_path)
    assert text.count("Not run yet") == 2
    assert "Measured 2026-01-01 on 2 CPU cores (x86_64)" in text
    assert "by `python -m benchmarks.bench_cost --out x.json --quick`" in text
    # s = 30, fast: ((29 * 0.62 + 4.0) / 30) / 0.6 = 1.2211 of RandAugment, / 0.5 = 1.4653 of the baseline;
    # peak RSS 1500 / 1000, above setup 1000 / 500.
    row = "| 30 | `fast` | 1.22 [1.22, 1.22] | 1.47 [1.47, 1.47] | 0.733 | 1.50 [1.50, 1.50] | "
    assert row + "2.00 [2.00, 2.00] | — | — |" in text
    assert "| 10 | `plain` | 1.93 [1.93, 1.93] |" in text  # (9 * 0.62 + 6) / 10 / 0.6
    assert "| `hvp_1` | 1.000 | 0.900 |" in text
    assert "| HVPs per hyper step (median) | 5 | 3 |" in text
    assert "| `fast` | 0.000020 | 0.999999 | 0.000000 |" in text
    assert "| `fast_hypergrad_rel_diff_max` | 2.00e-05 | < 0.0010 | yes |" in text
    assert "| `s30_fast_time_ratio_median` | 1.2211 | <= 1.3000 | yes |" in text
    assert "RandAugment / baseline step time (median): 1.20." in text

    (tmp_path / "cost.json").write_text(json.dumps({"machine": {"cpu_count": 2}, "something": {"new": 1.5}}))
    assert "| `something.new` | 1.5000 |" in report.build_readme(tmp_path, tmp_path)  # unknown layout: shown


def test_top_readme_results_are_rewritten_between_the_markers_only(tmp_path: Path) -> None:
    (tmp_path / "cost.json").write_text(json.dumps(synthetic_cost_report()))
    summary = report.top_readme_summary(tmp_path)
    assert summary.startswith("No accuracy results yet")
    # s = 30: plain ((29 * 0.62 + 6) / 30) / 0.6 = 1.3322, fast 1.2211; peak RSS 2500 / 1000 and 1500 / 1000.
    assert "| `plain` | neumann_tol=0.0 hyper_chunks=1 | 1.33 [1.33, 1.33] | 2.50 [2.50, 2.50] |" in summary
    assert "| `fast` | neumann_tol=0.0001 hyper_chunks=1 | 1.22 [1.22, 1.22] | 1.50 [1.50, 1.50] |" in summary
    assert "| 3 | 0.000020 |" in summary  # fast: 3 HVPs, hypergradient 2e-5 from the plain one

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{report.BEGIN}\nold numbers\n{report.END}\nafter\n")
    assert report.update_top_readme(readme, summary)
    text = readme.read_text()
    assert "old numbers" not in text and summary in text
    assert text.startswith(f"# Title\n\nbefore\n{report.BEGIN}\n") and text.endswith(f"{report.END}\nafter\n")
    assert report.update_top_readme(readme, "new")  # idempotent markers: a second update replaces the first
    assert f"{report.BEGIN}\nnew\n{report.END}" in readme.read_text()

    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.update_top_readme(plain, summary) and plain.read_text() == "no markers\n"
    assert not report.update_top_readme(tmp_path / "missing.md", summary)


def test_run_all_runs_every_benchmark_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = {
        "policy": [sys.executable, "-c", "print('policy ok')"],
        "cost": [sys.executable, "-c", "import sys; print('cost broke'); sys.exit(3)"],
        "accuracy": [sys.executable, "-c", "print('accuracy ok')"],
    }
    monkeypatch.setattr(run_all, "commands", lambda quick: {"cost": fake["cost"]} if quick else fake)
    assert run_all.main(["--no-report", "--logs", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "policy ok" in out and "accuracy ok" in out  # the failure in between lost nothing
    assert "cost      " in out and "FAILED (exit 3)" in out
    assert (tmp_path / "cost.log").read_text().splitlines()[-1] == "cost broke"
    assert run_all.main(["--no-report", "--logs", str(tmp_path), "--only", "policy"]) == 0
    assert run_all.main(["--quick", "--no-report", "--logs", str(tmp_path), "--only", "policy"]) == 2


def test_run_all_commands_point_at_the_result_files() -> None:
    full = run_all.commands(quick=False)
    assert list(full) == ["policy", "cost", "accuracy"]
    assert full["accuracy"][-2:] == ["--out", "benchmarks/results/accuracy.json"]
    assert run_all.commands(quick=True)["cost"][-3:] == ["--out", "benchmarks/results/cost.json", "--quick"]
    assert (run_all.ROOT / "benchmarks" / "bench_policy.py").is_file()


@pytest.mark.slow
def test_accuracy_benchmark_runs_resumes_and_reruns_stale_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tiny real jobs; a second call keeps them; other settings make them stale and rerun."""
    tiny = [o for o in TINY if not o.startswith(("dataset=", "model=", "trainer.max_epochs"))]
    args = ["--out", str(tmp_path / "accuracy.json"), "--runs-dir", str(tmp_path / "runs"), "--epochs", "1"]
    args += [f"--override={o}" for o in tiny]
    args += ["--jobs", "baseline-seed0", "madao-seed0"]
    assert bench_accuracy.main([*args, "--workers", "2"]) == 0  # two worker processes, one job each
    assert "worker 1: 1 jobs" in capsys.readouterr().out
    first = json.loads((tmp_path / "accuracy.json").read_text())
    stored = json.loads((tmp_path / "runs" / "baseline-seed0" / "results.json").read_text())
    assert first["methods"]["baseline"]["test_error_pct"] == pytest.approx([100 * stored["test_error"]])
    assert first["sweeps"]["warmup_epochs"]["points"][0]["job"] == "madao-seed0"  # w=0 in TINY
    assert first["complete"] is False and first["settings"]["epochs"] == 1
    assert (tmp_path / "madao_policy_evolution.png").is_file()
    assert first["runs"]["torch_threads"] == [max(1, (os.cpu_count() or 1) // 2)]
    assert sorted(first["ran_this_time"]) == ["baseline-seed0", "madao-seed0"]

    capsys.readouterr()
    assert bench_accuracy.main(args) == 0
    assert capsys.readouterr().out.count("finished earlier, not run again") == 2

    stamp = (tmp_path / "runs" / "baseline-seed0" / "results.json").stat().st_mtime_ns
    assert bench_accuracy.main([*args[:5], "2", *args[6:], "--no-run"]) == 0  # --epochs 2: nothing usable
    out = capsys.readouterr().out
    assert out.count("made with another config (differs in: dataset.epochs") == 2
    assert "trivialaugment-seed0: not run yet" in out
    assert (tmp_path / "runs" / "baseline-seed0" / "results.json").stat().st_mtime_ns == stamp  # not rerun
    assert json.loads((tmp_path / "accuracy.json").read_text())["methods"]["baseline"]["n"] == 0

    assert bench_accuracy.main([*args[:5], "2", *args[6:-2], "baseline-seed0"]) == 0  # --epochs 2: rerun
    out = capsys.readouterr().out
    assert out.count("made with another config (differs in: dataset.epochs") == 1
    second = json.loads((tmp_path / "accuracy.json").read_text())
    assert second["settings"]["epochs"] == 2 and second["ran_this_time"] == ["baseline-seed0"]
    assert json.loads((tmp_path / "runs" / "baseline-seed0" / "results.json").read_text())["epochs"] == 2
