"""benchmarks/bench_hypergrad.py on a tiny digits run: the statistics it reports have their defining
properties, and its JSON renders into the benchmark README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from benchmarks import bench_hypergrad, report

from madao_pl.augment import OP_NAMES


def test_statistics_of_identical_and_opposite_draws() -> None:
    """Identical draws: cosine 1 and no noise; a draw and its negative: cosine -1, mean 0."""
    same = [{"a": torch.tensor([1.0, 2.0, 3.0])} for _ in range(3)]
    stats = bench_hypergrad.statistics_of(
        [{k: v + 1e-9 * i for k, v in d.items()} for i, d in enumerate(same)]
    )
    assert stats["a"]["mean_pairwise_cosine"] == pytest.approx(1.0)
    assert stats["a"]["norm_of_mean_over_mean_norm"] == pytest.approx(1.0)
    opposite = bench_hypergrad.statistics_of(
        [{"a": torch.tensor([1.0, -2.0])}, {"a": torch.tensor([-1.0, 2.0])}]
    )
    assert opposite["a"]["mean_pairwise_cosine"] == pytest.approx(-1.0)
    assert opposite["a"]["norm_of_mean_over_mean_norm"] == pytest.approx(0.0)


def test_tiny_run_writes_every_part_and_renders(tmp_path: Path, single_thread: None) -> None:
    out = tmp_path / "hypergrad.json"
    # batch 16: every draw (up to 16 Gumbel-Rao samples of 8 batches) on a quarter of the default batch
    tiny = ["dataset.epochs=2", "augment.warmup_epochs=1", "dataset.datamodule.limit_train=300"]
    tiny.append("dataset.datamodule.batch_size=16")
    argv = [
        "--out",
        str(out),
        "--draws",
        "4",
        "--reference-draws",
        "1",
        "--op-batches",
        "1",
        "--threads",
        "1",
    ]
    assert bench_hypergrad.main([*argv, "--", *tiny]) == 0
    result = json.loads(out.read_text())
    groups = {"logits", "probability_raw", "magnitude_raw"}
    assert set(result["sources"]) == set(bench_hypergrad.SOURCES)
    for stats in (*result["sources"].values(), result["val_batch"]):
        assert groups <= set(stats)
    for row in result["sources"].values():
        assert all(-1.0 <= row[g]["mean_pairwise_cosine"] <= 1.0 for g in groups)
    assert set(result["averaging"]) == {"1", "2"} and -1 <= result["reference"]["mean"]["logits"] <= 1
    assert list(result["ops"]) == ["none", *OP_NAMES]
    assert list(result["estimators"]) == list(bench_hypergrad.ESTIMATORS)
    for name, row in result["estimators"].items():
        assert groups <= set(row) and row["seconds_per_draw"] > 0
        assert row["batches"] == bench_hypergrad.ESTIMATORS[name]["batches"]
    assert len(result["ops"]) == 15 and all(v["grad_norm"] > 0 for v in result["ops"].values())
    assert result["settings"]["warmup_epochs"] == 1 and result["settings"]["draws"] == 4
    text = report.build_readme(tmp_path, tmp_path)
    assert "## Signal and noise of one hypergradient on digits" in text and "| `Invert` |" in text
    assert "| `rao16_centered_k4` | 16 | yes | 4 |" in text
    assert list(result["reference"]["solvers"]) == list(bench_hypergrad.SOLVERS)
    assert all(-1 <= v["mean"]["logits"] <= 1 for v in result["reference"]["solvers"].values())
    assert "| `damped_cg10` | method=cg, cg_iterations=10, damping=1.0 |" in text
