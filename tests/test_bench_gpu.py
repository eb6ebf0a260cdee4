"""The GPU cost benchmark's reduced form on CPU, end to end: every case through the Trainer in a fork of
its own, the JSON with every case, the MADAO / RandAugment ratios, the bf16 and CPU notes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from benchmarks import bench_gpu


def test_cpu_reduced_form_end_to_end(tmp_path: Path) -> None:
    """In a process that has run OpenMP threads first, as the suite's has (forked cases must not hang)."""
    torch.nn.functional.conv2d(torch.rand(8, 16, 32, 32), torch.rand(16, 16, 3, 3)).sum()
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--device", "cpu", "--quick", "--out", str(out), "--work-dir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["form"] == "quick" and report["device_name"] is None
    assert "await a CUDA machine" in report["note"] and report["bf16"] == bench_gpu.BF16
    assert {"date", "command", "machine", "torch", "cuda", "settings", "wall_s"} <= set(report)
    models, form = bench_gpu.MODELS["quick"], bench_gpu.FORMS["quick"]
    names = [bench_gpu.case_name(model, False, augment) for model in models for augment in bench_gpu.AUGMENTS]
    assert list(report["cases"]) == names
    for name, row in report["cases"].items():
        assert "error" not in row, (name, row.get("error"))
        for key in ("time_per_step_s", "inner_step_s_median", "setup_memory_mb", "peak_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        assert row["peak_above_setup_mb"] >= 0 and len(row["cycle_s"]) == form["cycles"]
        learns = row["augment"] == "madao"
        assert row["hyper_steps"] == (form["warmup_cycles"] + form["cycles"] if learns else 0)
        assert len(row["hyper_step_s"]) == (form["cycles"] if learns else 0)
        assert row["inner_steps"] == form["inner_steps"]
    assert list(report["ratios"]) == [f"{model}/eager" for model in models]
    for name, row in report["ratios"].items():
        assert set(row) == set(bench_gpu.RATIO_KEYS), (name, row)
        assert all(math.isfinite(v) and v > 0 for v in row.values()), (name, row)
