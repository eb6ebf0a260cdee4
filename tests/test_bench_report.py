"""benchmarks/: the cost and accuracy reports built from made-up records with known numbers, the README
generator (both READMEs, the markers), and run_all's failure handling. No benchmark runs here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmarks import bench_accuracy, bench_cost, common, report, run_all
from omegaconf import OmegaConf

from tests.test_summarize import write_run


def fake_case(case: str, seconds: float, peak: float, hyper_s: list[float], hvps: int = 0) -> dict:
    """A bench_cost record with the given time per step, peak RSS (set-up 500 MiB) and hyper steps."""
    learns = bool(hyper_s)
    return {
        **{"model": "wrn28_2", "dataset": "cifar10", "batch": 128, "case": case, "compile": False},
        "image_size": 32,
        "memory_measure": "peak RSS (ru_maxrss)",
        "hyper": {"neumann_tol": 0.0 if case == "plain" else 1e-4} if learns else None,
        "time_per_step_s": seconds,
        "inner_step_s_median": 0.5,
        "hyper_step_s": hyper_s,
        "hyper_steps": 2 * len(hyper_s),
        "total_hvps": 2 * hvps,
        "setup_memory_mb": 500.0,
        "peak_mb": peak,
        "peak_above_setup_mb": peak - 500.0,
        "sections_s": {"madao/hvp": {"seconds": 0.9, "count": hvps}} if learns else {},
        "hypergrad": [1.0, 2.0, 2.0 + (case != "plain") * 3e-3] if learns else None,
        "state_before_first_hyper_step": 12.5 if learns else None,
    }


def synthetic_cost_report() -> dict:
    """bench_cost.combine() on made-up records of the cpu form: its real layout, known ratios."""
    cases = {
        "baseline": fake_case("baseline", 0.5, 900.0, []),
        "randaugment": fake_case("randaugment", 0.6, 1000.0, []),
        "plain": fake_case("plain", 0.9, 2500.0, [6.0], hvps=5),
        "madao": fake_case("madao", 0.72, 1500.0, [4.0], hvps=1),
    }
    live = {
        n: {**r, "peak_mb": r["peak_mb"] - 100, "peak_above_setup_mb": r["peak_mb"] - 600}
        for n, r in cases.items()
    }
    settings = {**bench_cost.FORMS["cpu"], "cases": {c: bench_cost.CASES[c] for c in cases}, "threads": 1}
    settings |= {"data": "synthetic", "probe": bench_cost.PROBE, "memory_env": common.LIVE_MEMORY_ENV}
    head = {
        "date": "2026-01-01",
        "command": "python -m benchmarks.bench_cost --form cpu --out x.json",
        "machine": {"cpu": "x86_64", "cpu_count": 2, "torch_threads": 1},
        **{"form": "cpu", "device": "cpu", "device_name": None, "note": None, "bf16": None},
    }
    settings["isolation"] = "a fresh process per case"
    profiles = {name: row for name, row in cases.items() if row["sections_s"]}
    records = {"live": live, "profile": profiles, "timed": cases}
    return json.loads(json.dumps(bench_cost.combine(head, settings, records)))


def test_cost_ratios_and_hypergradient_comparison() -> None:
    cost = synthetic_cost_report()
    madao = cost["ratios"]["madao"]
    assert madao["time_per_step_vs_randaugment"] == pytest.approx(1.2)
    assert madao["time_per_step_vs_baseline"] == pytest.approx(1.44)
    assert madao["peak_vs_randaugment"] == pytest.approx(1.5)
    assert madao["peak_above_setup_vs_randaugment"] == pytest.approx(2.0)  # 1000 / 500
    assert madao["live_peak_above_setup_vs_randaugment"] == pytest.approx(900 / 400)
    assert cost["ratios"]["randaugment"] == pytest.approx(
        {
            "time_per_step_vs_baseline": 1.2,
            "peak_vs_baseline": 1000 / 900,
            "peak_above_setup_vs_baseline": 500 / 400,
            "live_peak_vs_baseline": 900 / 800,
            "live_peak_above_setup_vs_baseline": 400 / 300,
        }
    )
    assert "baseline" not in cost["ratios"]  # no references
    compare = cost["hypergrad_vs_plain"]
    assert list(compare) == ["madao"] and compare["madao"]["same_state"] is True
    assert compare["madao"]["rel_diff"] == pytest.approx(1e-3)  # |(0, 0, 3e-3)| / |(1, 2, 2)|


def test_cost_section_and_top_readme_between_the_markers(tmp_path: Path) -> None:
    (tmp_path / "cost.json").write_text(json.dumps(synthetic_cost_report()))
    text = report.build_readme(tmp_path, tmp_path)
    assert text.count("Not run yet") == 6  # policy, accuracy, hypergrad, levers, gpu and scaling
    assert "Measured 2026-01-01 on 2 CPU cores (x86_64)" in text
    assert "by `python -m benchmarks.bench_cost --form cpu --out x.json`" in text
    row = "| `madao` | `augment=madao` | 0.720 | 0.500 | 4.000 | 1.0 | 1500 | 1000 | RA |"
    assert row + " 1.20 | 1.50 | 2.00 | 1.56 | 2.25 | 1.44 |" in text  # time, peak, above set-up, live; none
    assert "| `randaugment` | `augment=randaugment` | 0.600 | 0.500 | — | — | 1000 | 500 | none |" in text
    assert "| `madao/hvp` | 0.900 | 0.900 | 5 | 1 |" in text
    assert "| `madao` | 1.00e-03 | 1.000000 | yes |" in text
    assert "one cycle at s = 2, under `MALLOC_MMAP_THRESHOLD_=131072`" in text

    summary = report.top_readme_summary(tmp_path)
    assert summary.startswith("No accuracy results yet")
    assert "| `plain` | `augment=madao` `augment.hyper.neumann_tol=0` | 0.900 |" in summary
    assert "`baseline`" not in summary and "`madao` 1.0e-03" in summary
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{report.BEGIN}\nold numbers\n{report.END}\nafter\n")
    assert report.update_top_readme(readme, summary)
    text = readme.read_text()
    assert "old numbers" not in text and summary in text
    assert text.startswith(f"# Title\n\nbefore\n{report.BEGIN}\n") and text.endswith(f"{report.END}\nafter\n")
    assert report.update_top_readme(readme, "new")  # a second update replaces the first
    assert f"{report.BEGIN}\nnew\n{report.END}" in readme.read_text()
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.update_top_readme(plain, summary) and plain.read_text() == "no markers\n"
    assert not report.update_top_readme(tmp_path / "missing.md", summary)


def test_results_missing_or_in_an_older_layout_are_not_run(tmp_path: Path) -> None:
    assert report.build_readme(tmp_path, tmp_path).count("Not run yet") == len(report.BENCHMARKS) == 7
    for name in report.BENCHMARKS:
        (tmp_path / f"{name}.json").write_text(json.dumps({"machine": {}, "time_s": {}, "methods": {}}))
    assert report.build_readme(tmp_path, tmp_path).count("Not run yet (in this layout)") == 7
    assert report.top_readme_summary(tmp_path).startswith("No accuracy results yet")


def fake_sweeps(root: Path) -> None:
    """The three sweep directories as the bench_* multiruns leave them (digits / cnn runs)."""
    errors = {"baseline": [0.048, 0.050, 0.052], "madao": [0.046, 0.044, 0.045], "randaugment": [0.047]}
    job = 0
    for method, values in errors.items():
        for seed, error in enumerate(values):
            out = write_run(root / "methods", str(job), "digits", "cnn", method, seed, error)
            job += 1
            if method == "madao" and seed == 0:
                (out / "policy_evolution.png").write_bytes(b"png")
    write_run(root / "replay", "digits_0", "digits", "cnn", "replay", 0, 0.043)
    conditional = write_run(root / "classes", "0", "digits", "cnn", "madao_class", 0, 0.042)
    shared = [{"A": {"selection": 0.5, "apply": 0.4, "magnitude": 0.5}, "B": {"selection": 0.5, "apply": 0.2,
                                                                            "magnitude": None}}]  # fmt: skip
    own = [{"A": {**shared[0]["A"], "apply": 0.1}, "B": {**shared[0]["B"], "apply": 0.6}}]
    (conditional / "policy.json").write_text(
        json.dumps({"describe": {"stages": shared}, "classes": {"7": own}})
    )
    (conditional / "policy_classes.png").write_bytes(b"heat")
    for job, method in enumerate(("baseline", "madao")):  # task=ssl: linear-probe errors
        write_run(root / "ssl", str(job), "digits", "cnn", method, 0, 0.07 - job / 100)
    lever = write_run(root / "levers" / "rao16_centered", "0", "digits", "cnn", "madao", 0, 0.041, lr=0.2)
    history = ["hyper_step,epoch,global_step,stage,op,selection,apply,magnitude"]
    for step, (sel, app, mag) in enumerate([(0.5, 0.2, 0.6), (0.4, 0.1, 0.7)]):  # 2 ops, 1 stage
        history += [f"{step * 10},0,0,0,A,{sel},{app},{mag}", f"{step * 10},0,0,0,B,{1 - sel},{app},"]
    (lever / "policy_history.csv").write_text("\n".join(history) + "\n")
    for key, values in (("inner_steps", (5, 30)), ("warmup_epochs", (0, 20))):
        for job, value in enumerate(values):
            write_run(root / key, str(job), "digits", "cnn", "madao", 0, 0.05 + value / 1000, **{key: value})


def test_accuracy_report_from_the_multirun_directories(tmp_path: Path) -> None:
    fake_sweeps(tmp_path / "runs")
    out = tmp_path / "results" / "accuracy.json"
    accuracy = bench_accuracy.build_report(tmp_path / "runs", out, {"methods": 0}, ["--no-run"])
    assert accuracy["complete"] is True and accuracy["problems"] == []
    assert accuracy["command"] == "python -m benchmarks.bench_accuracy --no-run"
    digits = accuracy["settings"]["datasets"]["digits"]
    assert list(accuracy["settings"]["datasets"]) == ["digits"] and accuracy["settings"]["seeds"] == [0, 1, 2]
    assert digits["inner_steps"] == 30 and digits["warmup_epochs"] == 20
    methods = accuracy["tables"]["methods"]
    assert "| digits | cnn | 5.00 ± 0.20 (3) | 4.70 (1) | 4.50 ± 0.10 (3) | 4.20 (1) | 4.30 (1) |" in methods
    assert "MADAO's learned policy, replayed" in methods and "MADAO, class-conditional" in methods
    learned = accuracy["class_policy"]["classes"]["7"]  # use A 0.2 -> 0.05, B 0.1 -> 0.3
    assert learned["lowered"][0][0] == "A" and learned["lowered"][0][1] == pytest.approx(-0.15)
    assert learned["raised"][0][0] == "B" and learned["raised"][0][1] == pytest.approx(0.2)
    assert (out.parent / "madao_class_policy_classes.png").read_bytes() == b"heat"
    assert "| digits | cnn | MADAO | 5.50 (1) | 8.00 (1) |" in accuracy["tables"]["inner_steps"]
    assert len(accuracy["runs"]["methods"]) == 9 and accuracy["runs"]["inner_steps"][0]["augment"] == "madao"
    assert (out.parent / "sweep_inner_steps.png").stat().st_size > 0
    assert (out.parent / "sweep_warmup.png").stat().st_size > 0
    assert (out.parent / "madao_policy_evolution.png").read_bytes() == b"png"
    (moved,) = accuracy["movement"]
    assert moved["sweep"] == "levers" and moved["group"] == "rao16_centered" and moved["hyper_steps"] == 10
    assert moved["selection_mean_abs_change"] == pytest.approx(0.1)
    assert moved["apply_mean_abs_change"] == pytest.approx(0.1)
    assert moved["magnitude_mean_abs_change"] == pytest.approx(0.1)  # B has no magnitude
    assert moved["use_stage0_first"] == pytest.approx(0.2) and moved["use_stage0_last"] == pytest.approx(0.1)
    assert "4.10 (1)" in accuracy["tables"]["levers"] and accuracy["levers"]["rao16_centered"] == [
        "augment.policy.rao_samples=16",
        "augment.policy.centered_selection=true",
    ]

    out.write_text(json.dumps(accuracy))
    readme = report.build_readme(out.parent, tmp_path)
    assert methods.rstrip() in readme and accuracy["tables"]["warmup_epochs"].rstrip() in readme
    assert "![Inner steps s (paper Figure 3), MADAO](results/sweep_inner_steps.png)" in readme
    assert "(results/madao_policy_evolution.png)" in readme and "Incomplete" not in readme
    assert accuracy["tables"]["levers"].rstrip() in readme and "| `rao16_centered` |" in readme
    assert "| `7` | A -0.150, B 0.200 | B 0.200, A -0.150 |" in readme
    assert "(results/madao_class_policy_classes.png)" in readme
    assert "| levers `rao16_centered` | digits | 1 | 10 | 0.1000 | 0.1000 | 0.1000 | 0.20 -> 0.10 |" in readme
    ssl = accuracy["tables"]["ssl"]  # its own table (the same method names as the supervised one)
    assert "| digits | cnn | 7.00 (1) | 6.00 (1) |" in ssl and f"### {report.SSL_HEADING}" in readme
    summary = report.top_readme_summary(out.parent)
    assert (
        summary.startswith("digits: model `cnn`") and methods.rstrip() in summary and ssl.rstrip() in summary
    )

    failed = bench_accuracy.build_report(tmp_path / "runs", out, {"methods": 1}, [])
    assert failed["complete"] is False
    out.write_text(json.dumps(failed))
    assert "**Incomplete**: sweep exit statuses {'methods': 1}" in report.build_readme(out.parent)


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
    assert (
        "=== cost: FAILED (exit 3)" in out and "=== accuracy: ok" in out
    )  # the failure lost nothing after it
    assert (tmp_path / "policy.log").read_text() == "policy ok\n"
    assert (tmp_path / "cost.log").read_text() == "cost broke\n"
    assert "1 failed: cost" in out
    assert run_all.main(["--no-report", "--logs", str(tmp_path), "--only", "policy"]) == 0
    assert run_all.main(["--quick", "--no-report", "--logs", str(tmp_path), "--only", "policy"]) == 2


def test_run_all_commands_point_at_the_result_files() -> None:
    full = run_all.commands(quick=False)
    assert list(full) == ["policy", "cost", "accuracy", "hypergrad", "levers", "gpu", "scaling", "report"]
    assert full["scaling"][-5:] == [
        "benchmarks.bench_cost",
        "--form",
        "scaling",
        "--out",
        "benchmarks/results/scaling.json",
    ]
    assert full["cost"][-4:] == ["--form", "cpu", "--out", "benchmarks/results/cost.json"]
    assert full["gpu"][-4:] == ["--form", "gpu", "--out", "benchmarks/results/gpu.json"]
    assert full["accuracy"][-3:] == ["benchmarks.bench_accuracy", "--out", "benchmarks/results/accuracy.json"]
    quick = run_all.commands(quick=True)
    assert list(quick) == ["cost", "report"] and quick["cost"][-4:] == [
        "--form",
        "quick",
        "--out",
        "outputs/bench/quick/cost.json",
    ]
    assert "--no-top-readme" in quick["report"]  # quick numbers never reach the README
    assert "--no-top-readme" not in full["report"]


def test_a_sweep_is_one_multirun_of_its_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_sweep empties the sweep's directory and runs its experiment as one Hydra multirun (the joblib
    launcher, one torch thread per job, the extra overrides last) whose jobs go there; the exit status."""
    runs_dir = tmp_path / "runs"
    (runs_dir / "replay" / "0").mkdir(parents=True)
    (runs_dir / "replay" / "0" / "results.json").write_text("{}")
    calls = []

    def fake_run(command: list[str], cwd: Path, env: dict[str, str]) -> object:
        calls.append((command, env, (runs_dir / "replay").exists()))
        return type("Done", (), {"returncode": 3})()

    monkeypatch.setattr(bench_accuracy.subprocess, "run", fake_run)
    assert bench_accuracy.run_sweep("replay", runs_dir, ["x=1"]) == 3
    [(command, env, existed)] = calls
    launcher = ["hydra/launcher=local_parallel", f"paths.bench_dir={runs_dir}"]
    assert command[1:] == ["-m", "madao_pl.run", "-m", "experiment=bench_replay", *launcher, "x=1"]
    assert env["OMP_NUM_THREADS"] == "1" and not existed
    assert list(bench_accuracy.SWEEPS)[:2] == ["methods", "replay"]  # the replays read the methods' policies
    for name, experiment in bench_accuracy.SWEEPS.items():  # each sweep's jobs go where it is emptied
        config = OmegaConf.load(
            common.ROOT / "src" / "madao_pl" / "conf" / "experiment" / f"{experiment}.yaml"
        )
        sweep_dir = OmegaConf.to_container(config, resolve=False)["hydra"]["sweep"]["dir"]
        assert sweep_dir == f"${{paths.bench_dir}}/{name}", name


def test_resummarising_keeps_the_invocation_that_ran_the_runs(tmp_path: Path) -> None:
    """--no-run over an accuracy.json keeps its sweep statuses and names the command that ran them."""
    fake_sweeps(tmp_path / "runs")
    out = tmp_path / "results" / "accuracy.json"
    first = bench_accuracy.build_report(tmp_path / "runs", out, {"methods": 1}, [])
    first["runs_by"] = {"methods": {"command": first["command"], "date": first["date"]}}
    out.write_text(json.dumps(first))
    assert bench_accuracy.main(["--no-run", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 1
    again = json.loads(out.read_text())
    assert again["sweep_exit_status"] == {"methods": 1} and again["complete"] is False
    first_run = {"command": "python -m benchmarks.bench_accuracy", "date": first["date"]}
    assert again["runs_by"] == {"methods": first_run}
    assert (
        f"(the runs: methods: {first['date']}, `python -m benchmarks.bench_accuracy`)"
        in report.build_readme(out.parent, tmp_path)
    )


def test_running_some_sweeps_keeps_the_others_provenance(tmp_path: Path, monkeypatch) -> None:
    """--sweeps levers: the levers' status and invocation are this run's, the other sweeps keep theirs."""
    fake_sweeps(tmp_path / "runs")
    out = tmp_path / "results" / "accuracy.json"
    earlier = {"command": "python -m benchmarks.bench_accuracy", "date": "2026-01-01"}
    old = {"command": "python -m benchmarks.bench_accuracy --no-run", "sweep_exit_status": {"methods": 0},
           "runs_by": {"methods": earlier}}  # fmt: skip
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(old))
    launched = []

    def fake_sweep(name: str, runs_dir: Path, overrides: list[str]) -> int:
        launched.append((name, runs_dir, overrides))
        write_run(runs_dir / name, "0", "digits", "cnn", "madao", 0, 0.04, lr=0.1 + len(launched))
        return 0

    monkeypatch.setattr(bench_accuracy, "run_sweep", fake_sweep)
    argv = ["--sweeps", "levers", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert bench_accuracy.main(argv) == 0
    assert launched == [("levers", tmp_path / "runs", [])]  # every lever in one multirun
    result = json.loads(out.read_text())
    assert result["sweep_exit_status"] == {"methods": 0, "levers": 0}
    assert result["runs_by"]["methods"] == earlier
    assert result["runs_by"]["levers"]["command"] == "python -m benchmarks.bench_accuracy " + " ".join(argv)
