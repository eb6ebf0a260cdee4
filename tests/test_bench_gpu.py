"""The GPU cost benchmark's reduced form on CPU, end to end: every case through the Trainer in a fork of
its own, the JSON with every case, the MADAO / RandAugment ratios, the bf16 and CPU notes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from benchmarks import bench_gpu, report


def test_cpu_reduced_form_end_to_end(tmp_path: Path) -> None:
    """In a process that has run OpenMP threads first, as the suite's has (forked cases must not hang)."""
    torch.nn.functional.conv2d(torch.rand(8, 16, 32, 32), torch.rand(16, 16, 3, 3)).sum()
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--device", "cpu", "--quick", "--out", str(out), "--work-dir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["form"] == "quick" and report["device_name"] is None
    assert "await a CUDA machine" in report["note"] and report["bf16"] == bench_gpu.BF16_NOTE
    assert {"date", "command", "machine", "torch", "cuda", "settings", "wall_s"} <= set(report)
    models, form = bench_gpu.MODELS["quick"], bench_gpu.FORMS["quick"]
    names = [bench_gpu.case_name(model, False, augment) for model in models for augment in bench_gpu.AUGMENTS]
    assert list(report["cases"]) == names and len(names) == 5 * len(models)
    for name, row in report["cases"].items():
        assert "error" not in row, (name, row.get("error"))
        for key in ("time_per_step_s", "inner_step_s_median", "setup_memory_mb", "peak_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        assert row["peak_above_setup_mb"] >= 0 and len(row["cycle_s"]) == form["cycles"]
        learns = row["augment"].startswith("madao")
        assert row["precision"] == ("bf16-mixed" if row["augment"].endswith("_bf16") else "32-true"), name
        assert row["hyper_steps"] == (form["warmup_cycles"] + form["cycles"] if learns else 0)
        assert len(row["hyper_step_s"]) == (form["cycles"] if learns else 0)
        assert row["inner_steps"] == form["inner_steps"]
    modes = bench_gpu.BASELINES
    assert list(report["ratios"]) == [bench_gpu.case_name(model, False, m) for model in models for m in modes]
    for name, row in report["ratios"].items():
        assert set(row) == set(bench_gpu.RATIO_KEYS), (name, row)
        assert all(math.isfinite(v) and v > 0 for v in row.values()), (name, row)


def test_scaling_form_cases_ratios_and_table(tmp_path: Path) -> None:
    """``--form scaling``: its cases (WRN-28-2 at three batches, WRN-28-10 at 32), and the README's table
    built from made-up records with known ratios, a row per MADAO mode (the form itself takes minutes)."""
    settings = bench_gpu.FORMS["scaling"] | bench_gpu.CPU_SCALING
    specs = bench_gpu.case_specs("scaling", settings, "cpu", 1, tmp_path)
    assert [(s["model"], s["batch"]) for s in specs.values()][::3] == [
        ("wrn28_2", 64), ("wrn28_2", 128), ("wrn28_2", 256), ("wrn28_10", 32)
    ]  # fmt: skip
    assert {(s["inner_steps"], s["warmup_cycles"], s["cycles"]) for s in specs.values()} == {(3, 0, 1)}
    assert [s["augment"] for s in specs.values()][:3] == ["randaugment", "madao", "madao_segmented"]

    def extra(spec: dict) -> float:  # MADAO's memory above RandAugment's: half of it when segmented
        return {"randaugment": 0, "madao": 100, "madao_segmented": 50}[spec["augment"]] * spec["batch"] / 64

    cases = {
        name: {**{k: spec[k] for k in bench_gpu.KEYS}, "parameters": 1_500_000, "hyper_step_s": [],
               "time_per_step_s": 1.0 + (spec["augment"] != "randaugment"), "setup_memory_mb": 500.0,
               "peak_mb": 600.0 + extra(spec), "peak_above_setup_mb": 100.0 + extra(spec)}
        for name, spec in specs.items()
    }  # fmt: skip
    failed = "wrn28_10_b32/eager/madao"  # a failed case keeps the keys of its spec
    cases[failed] = {**{k: specs[failed][k] for k in bench_gpu.KEYS}, "error": "timed out after 1800 s"}
    gpu = {"device": "cpu", "device_name": None, "form": "scaling", "note": None, "bf16": bench_gpu.BF16_NOTE}
    gpu |= {"settings": {**settings, "models": bench_gpu.MODELS["scaling"]}, "cases": cases}
    gpu["ratios"] = bench_gpu.ratios(cases, "scaling")
    assert gpu["ratios"]["wrn28_2_b256/eager/madao"]["peak_above_setup"] == 5.0
    assert gpu["ratios"]["wrn28_2_b256/eager/madao_segmented"]["peak_above_setup"] == 3.0
    assert "error" in gpu["ratios"]["wrn28_10_b32/eager/madao"]
    assert "error" not in gpu["ratios"]["wrn28_10_b32/eager/madao_segmented"]
    table = report.scaling_table(gpu)
    assert "| `wrn28_2` | 128 | 1.5 | `madao` | 100 | 300 | 3.00 | 1.33 | 2.00 |" in table
    assert "| `wrn28_2` | 128 | 1.5 | `madao_segmented` | 100 | 200 | 2.00 | 1.17 | 2.00 |" in table
    assert "| `wrn28_10` | 32 | 1.5 | `madao` | 100 | — | — | — | — |" in table
    gpu |= {"date": "2026-01-01", "command": "python -m benchmarks.bench_gpu --form scaling"}
    (tmp_path / "scaling.json").write_text(json.dumps({**gpu, "machine": {"cpu_count": 2}}))
    assert table in report.build_readme(tmp_path, tmp_path)


def test_full_form_runs_the_segmented_mode_and_bf16_eager_only(tmp_path: Path) -> None:
    """The GPU form: every policy eager, float32 and bf16-mixed, and compiled the float32 policies but the
    segmented mode (a compiled network hides the blocks it splits at)."""
    specs = bench_gpu.case_specs("full", bench_gpu.FORMS["full"], "cuda", 1, tmp_path)
    for model in bench_gpu.MODELS["full"]:
        assert all(bench_gpu.case_name(model, False, augment) in specs for augment in bench_gpu.AUGMENTS)
        compiled = [name for name in specs if name.startswith(f"{model}/compiled/")]
        assert compiled == [f"{model}/compiled/randaugment", f"{model}/compiled/madao"]
        assert all(bench_gpu.case_name(model, False, a) in specs for a in ("randaugment_bf16", "madao_bf16"))
