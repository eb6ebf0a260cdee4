"""The cost benchmark on the shipped module: one case through the Trainer in this process (what the
Recorder callback sees), every variant in this process against ``plain``, and the quick benchmark end to end
on a few cases, each in its own processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks import bench_cost, report

TINY = {"device": "cpu", "depth": 10, "width": 1, "batch": 4, "threads": 1, "seed": 0, "inner_steps": 2}
"""A tiny preset: warm-up 2 + one cycle at s = 2, so batches 1 and 3 are the hyper steps."""


def test_one_case_records_the_hyper_steps_profile_and_hypergradient(
    tmp_path: Path, single_thread: None
) -> None:
    """A tiny ``plain`` fit with the profiler on."""
    spec = bench_cost.case_spec("plain", {**TINY, "warmup_batches": {"plain": 2}, "cycles": 1}, "timed")
    assert spec["warmup"] == 2 and spec["inner_steps"] == 2 and spec["profile"] is False
    row = bench_cost.run_case({**spec, "profile": True})
    assert row["hyper_batches"] == [1, 3] and row["hyper_steps"] == 2 and row["total_hvps"] == 10
    assert len(row["batch_s"]) == 4 and len(row["hyper_step_s"]) == 1 and row["time_per_batch_s"] > 0
    sections = row["sections_s"]
    assert sections["madao/hvp"]["count"] == 5  # plain: all J = 5 terms, one range per product
    names = (
        "hyper_step",
        "augment",
        "train_gradient",
        "validation_gradient",
        "mixed_derivative",
        "optimizer_steps",
    )
    assert {f"madao/{name}" for name in names} <= set(sections)
    assert sections["madao/hyper_step"]["seconds"] >= sections["madao/hvp"]["seconds"] > 0
    assert len(row["hypergrad"]) == 78 and all(math.isfinite(g) for g in row["hypergrad"])  # K = 2 stages
    assert row["hyper"]["neumann_tol"] == 0.0 and row["peak_rss_mb"] >= row["setup_rss_mb"] > 0


def test_every_case_in_this_process_and_the_variants_against_plain(single_thread: None) -> None:
    """Every case fitted here at the tiny preset, combined: the variants' first hypergradients equal the
    plain one's to the series' tolerance (class-conditional ones have other parameters), the self-supervised
    task is divided by its own RandAugment run and not by the supervised baseline."""
    settings = {**TINY, "cycles": 1, "warmup_batches": dict.fromkeys(bench_cost.CASES, 2)}
    rows = {
        case: bench_cost.run_case(bench_cost.case_spec(case, settings, "timed")) for case in bench_cost.CASES
    }
    cost = bench_cost.combine({}, settings, {"timed": rows})
    assert set(cost["hypergrad_vs_plain"]) == {"fast", "fast_recompute", "fast_segmented"}
    for variant, compare in cost["hypergrad_vs_plain"].items():
        assert compare["same_state"] is True and compare["rel_diff"] < 1e-3, variant
        assert compare["cosine"] > 0.999, variant
    for variant in bench_cost.VARIANTS:
        ratios = cost["ratios"][variant]
        for key in ("time_vs_randaugment", "time_vs_baseline", "peak_rss_vs_randaugment"):
            assert math.isfinite(ratios[key]) and ratios[key] > 0, (variant, key)
    assert rows["plain"]["total_hvps"] == 2 * 5 and rows["fast"]["total_hvps"] < 2 * 5
    assert cost["settings"]["variants"]["fast_class100"]["num_classes"] == 100
    assert all(rows[v]["hyper_step_s"] for v in bench_cost.LEARNERS)
    assert rows["ssl_madao"]["hyper_step_s"] and not rows["ssl_randaugment"]["hyper_step_s"]
    ssl = cost["ratios"]["ssl_madao"]
    assert math.isfinite(ssl["time_vs_ssl_randaugment"]) and ssl["time_vs_ssl_randaugment"] > 0
    assert "time_vs_baseline" not in ssl and "time_vs_ssl_randaugment" not in cost["ratios"]["fast"]


@pytest.mark.slow
def test_quick_cost_benchmark_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick`` on three cases, each in its own processes (timed, live, profiled): ratios positive and
    finite, ``fast_segmented``'s first hypergradient (another process) equal to ``plain``'s, the README
    renders."""
    cases = ("randaugment", "plain", "fast_segmented")
    monkeypatch.setattr(bench_cost, "CASES", cases)
    out = tmp_path / "cost.json"
    assert bench_cost.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    cost = json.loads(out.read_text())
    parts = (
        "date command machine settings cases live_memory profiles ratios hypergrad_vs_plain wall_s".split()
    )
    assert set(parts) <= set(cost)
    assert list(cost["cases"]) == list(cost["live_memory"]) == list(cases)
    for variant in ("plain", "fast_segmented"):
        ratios = cost["ratios"][variant]
        for key in (
            "time_vs_randaugment",
            "peak_rss_vs_randaugment",
            "live_peak_rss_vs_randaugment",
            "live_peak_above_setup_vs_randaugment",
        ):
            assert math.isfinite(ratios[key]) and ratios[key] > 0, (variant, key)
        assert cost["cases"][variant]["hyper_step_s"] and cost["live_memory"][variant]["hyper_batches"] == [1]
    assert cost["cases"]["plain"]["total_hvps"] == 2 * 5
    assert list(cost["profiles"]) == ["plain", "fast_segmented"] and not cost["cases"]["plain"]["sections_s"]
    assert (
        cost["profiles"]["plain"]["sections_s"]["madao/hvp"]["count"] == 5
    )  # profiled apart from the timing
    compare = cost["hypergrad_vs_plain"]["fast_segmented"]
    assert list(cost["hypergrad_vs_plain"]) == ["fast_segmented"] and compare["same_state"] is True
    assert compare["rel_diff"] < 1e-3 and compare["cosine"] > 0.999
    (tmp_path / "cost.json").rename(tmp_path / "work" / "cost.json")
    row = "| `fast_segmented` | neumann_tol=0.0001 recompute=false segmented=true |"
    assert row in report.build_readme(tmp_path / "work")
