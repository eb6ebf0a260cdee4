"""The cost benchmark on the shipped module: one case through the Trainer in this process (what the
Recorder callback sees), and the whole quick benchmark end to end, each case in its own process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks import bench_cost, report


def test_one_case_records_the_hyper_steps_profile_and_hypergradient(
    tmp_path: Path, single_thread: None
) -> None:
    """A tiny ``plain`` fit: warm-up 2 + one cycle at s = 2, so batches 1 and 3 are the hyper steps."""
    settings = {
        "device": "cpu",
        "depth": 10,
        "width": 1,
        "batch": 4,
        "threads": 1,
        "seed": 0,
        "inner_steps": 2,
    }
    spec = bench_cost.case_spec("plain", {**settings, "warmup_batches": {"plain": 2}, "cycles": 1}, "timed")
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


@pytest.mark.slow
def test_quick_cost_benchmark_end_to_end(tmp_path: Path) -> None:
    """``--quick``: every case in its own processes (timed, live, profiled); ratios positive and finite, the
    variants' first hypergradients equal to the plain one's to the series' tolerance, the README renders."""
    out = tmp_path / "cost.json"
    assert bench_cost.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    cost = json.loads(out.read_text())
    parts = (
        "date command machine settings cases live_memory profiles ratios hypergrad_vs_plain wall_s".split()
    )
    assert set(parts) <= set(cost)
    supervised = [c for c in bench_cost.CASES if c not in bench_cost.SSL_CASES]
    assert list(cost["cases"]) == list(bench_cost.CASES) and list(cost["live_memory"]) == supervised
    ssl = cost["ratios"]["ssl_madao"]  # the self-supervised task, against its own RandAugment run
    assert math.isfinite(ssl["time_vs_ssl_randaugment"]) and ssl["time_vs_ssl_randaugment"] > 0
    assert "time_vs_baseline" not in ssl and "time_vs_ssl_randaugment" not in cost["ratios"]["fast"]
    assert cost["cases"]["ssl_madao"]["hyper_step_s"] and not cost["cases"]["ssl_randaugment"]["hyper_step_s"]
    for variant in bench_cost.VARIANTS:
        ratios = cost["ratios"][variant]
        for key in (
            "time_vs_randaugment",
            "time_vs_baseline",
            "peak_rss_vs_randaugment",
            "live_peak_rss_vs_randaugment",
            "live_peak_above_setup_vs_randaugment",
        ):
            assert math.isfinite(ratios[key]) and ratios[key] > 0, (variant, key)
        assert cost["cases"][variant]["hyper_step_s"] and cost["live_memory"][variant]["hyper_batches"] == [1]
    assert cost["cases"]["plain"]["total_hvps"] == 2 * 5 and cost["cases"]["fast"]["total_hvps"] < 2 * 5
    assert list(cost["profiles"]) == list(bench_cost.VARIANTS) and not cost["cases"]["plain"]["sections_s"]
    assert (
        cost["profiles"]["plain"]["sections_s"]["madao/hvp"]["count"] == 5
    )  # profiled apart from the timing
    assert cost["settings"]["variants"]["fast_class100"]["num_classes"] == 100
    assert set(cost["hypergrad_vs_plain"]) == {"fast", "fast_recompute", "fast_segmented"}  # class: more
    for variant in ("fast", "fast_recompute", "fast_segmented"):
        compare = cost["hypergrad_vs_plain"][variant]
        assert compare["same_state"] is True and compare["rel_diff"] < 1e-3 and compare["cosine"] > 0.999
    (tmp_path / "cost.json").rename(tmp_path / "work" / "cost.json")
    assert "| `fast_recompute` | neumann_tol=0.0001 recompute=true |" in report.build_readme(
        tmp_path / "work"
    )
