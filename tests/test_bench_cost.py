"""The cost benchmark on the shipped module, built from the real configs: one case through the Trainer in
this process (what the Recorder callback sees), every case in this process (the variants against
``plain``, each case against its references), the quick form end to end (a fork per case), the ``cpu``
form's probes in processes of their own, and which cases the ``gpu`` and ``scaling`` forms run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from benchmarks import bench_cost, report

TINY = {"models": {"cnn": ("cifar10", "cnn", 4)}, "inner_steps": 2, "warmup_cycles": 1, "cycles": 1}
"""The small CNN at batch 4, s = 2: one warm-up and one timed cycle, so batches 1 and 3 are hyper steps."""


def tiny_specs(tmp_path: Path, cases: list[str]) -> dict[str, dict]:
    """The ``cpu`` form's specs of ``cases`` at :data:`TINY`'s sizes."""
    return bench_cost.case_specs("cpu", {**bench_cost.FORMS["cpu"], **TINY}, "cpu", tmp_path, cases)


def test_one_case_records_the_hyper_steps_profile_and_hypergradient(
    tmp_path: Path, single_thread: None
) -> None:
    """A tiny ``plain`` fit with the profiler on (at the first hyper step)."""
    spec = tiny_specs(tmp_path, ["plain"])["plain"]
    assert (spec["model"], spec["batch"], spec["inner_steps"], spec["profile"]) == ("cnn", 4, 2, False)
    row = bench_cost.run_case({**spec, "profile": True})
    assert "error" not in row, row.get("traceback_tail")
    assert row["hyper_steps"] == 2 and row["total_hvps"] == 10 and row["batches_done"] == 4
    assert len(row["hyper_step_s"]) == len(row["cycle_s"]) == 1 and row["time_per_step_s"] > 0
    sections = row["sections_s"]
    assert sections["madao/hvp"]["count"] == 5  # plain: all J = 5 terms, one range per product
    names = ("augment", "train_gradient", "validation_gradient", "mixed_derivative", "optimizer_steps")
    assert {f"madao/{name}" for name in ("hyper_step", *names)} <= set(sections)
    assert sections["madao/hyper_step"]["seconds"] >= sections["madao/hvp"]["seconds"] > 0
    assert len(row["hypergrad"]) == 78 and all(math.isfinite(g) for g in row["hypergrad"])  # K = 2 stages
    assert row["hyper"]["neumann_tol"] == 0.0 and row["peak_mb"] >= row["setup_memory_mb"] > 0
    assert (row["precision"], row["image_size"], row["cutout"]) == ("32-true", 32, 16)  # the cifar10 preset


def test_every_case_in_this_process_against_its_references(tmp_path: Path, single_thread: None) -> None:
    """Every case of :data:`bench_cost.CASES` fitted here, combined: the exact variants' first hypergradients
    equal ``plain``'s to the series' tolerance, each case is divided by its own references (the
    self-supervised MADAO by its RandAugment run, bf16 MADAO by bf16 RandAugment), and each override took
    effect (100 classes' offsets, bf16-mixed, the default tolerance's fewer products)."""
    specs = tiny_specs(tmp_path, list(bench_cost.CASES))
    rows = {name: bench_cost.run_case(spec) for name, spec in specs.items()}
    assert not [name for name, row in rows.items() if "error" in row]
    cost = bench_cost.combine({}, {}, {"timed": rows})
    assert set(cost["hypergrad_vs_plain"]) == set(bench_cost.EXACT)
    for variant, compare in cost["hypergrad_vs_plain"].items():
        assert compare["same_state"] is True and compare["rel_diff"] < 1e-3, variant
        assert compare["cosine"] > 0.999, variant
    for name, (_, references) in bench_cost.CASES.items():
        expected = {f"{m}_vs_{ref}" for m in bench_cost.METRICS for ref in references}
        assert set(cost["ratios"].get(name, {})) == expected, name
        for key, ratio in cost["ratios"].get(name, {}).items():
            # in one process the peak RSS is the process's, perhaps reached by an earlier case: the memory
            # above set-up may be 0 here (the benchmark runs each case in a fresh process)
            positive = ratio >= 0 if key.startswith("peak_above_setup") else ratio > 0
            assert math.isfinite(ratio) and positive, (name, key, ratio)
    assert rows["plain"]["total_hvps"] == 2 * 5 and rows["madao"]["total_hvps"] < 2 * 5
    assert (
        len(rows["madao_class100"]["hypergrad"]) == 78 * 101
        and len(rows["madao_class10"]["hypergrad"]) == 78 * 11
    )
    assert rows["madao_bf16"]["precision"] == "bf16-mixed" and rows["madao"]["precision"] == "32-true"
    learners = [name for name, (overrides, _) in bench_cost.CASES.items() if "augment=madao" in overrides[0]]
    assert all(bool(rows[name]["hyper_step_s"]) == (name in learners) for name in rows)


def test_quick_form_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--form gpu`` without CUDA runs the quick form, a fork per case, in a process that has run OpenMP
    threads first, as the suite's has (forked cases must not hang). Its models here: the small CNN at two
    batch sizes (``make bench-quick`` runs the real ones; WRN-28-2 in bf16 on CPU takes a minute)."""
    models = {"cnn": ("cifar10", "cnn", 8), "cnn_b4": ("cifar10", "cnn", 4)}
    monkeypatch.setitem(bench_cost.FORMS, "quick", {**bench_cost.FORMS["quick"], "models": models})
    torch.nn.functional.conv2d(torch.rand(8, 16, 32, 32), torch.rand(16, 16, 3, 3)).sum()
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--form", "gpu", "--out", str(out), "--work-dir", str(tmp_path)]
    assert bench_cost.main(args) == 0
    cost = json.loads(out.read_text())
    assert cost["device"] == "cpu" and cost["form"] == "quick" and cost["device_name"] is None
    assert "await a CUDA machine" in cost["note"] and cost["bf16"] == bench_cost.BF16_NOTE
    assert {"date", "command", "machine", "cuda", "settings", "wall_s"} <= set(cost)
    form, models = bench_cost.FORMS["quick"], bench_cost.FORMS["quick"]["models"]
    names = [f"{model}/eager/{case}" for model in models for case in bench_cost.GPU_CASES]
    assert list(cost["cases"]) == names and cost["settings"]["isolation"] == "a fork per case"
    for name, row in cost["cases"].items():
        assert "error" not in row, (name, row.get("error"))
        for key in ("time_per_step_s", "inner_step_s_median", "setup_memory_mb", "peak_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        assert row["peak_above_setup_mb"] >= 0 and len(row["cycle_s"]) == form["cycles"]
        learns = row["case"].startswith("madao")
        assert row["precision"] == ("bf16-mixed" if row["case"].endswith("_bf16") else "32-true"), name
        assert row["hyper_steps"] == (form["warmup_cycles"] + form["cycles"] if learns else 0)
        assert len(row["hyper_step_s"]) == (form["cycles"] if learns else 0)
    madao = [f"{model}/eager/{case}" for model in models for case in bench_cost.GPU_CASES if "madao" in case]
    assert [name for name in cost["ratios"] if "madao" in name] == madao
    assert set(cost["ratios"]["cnn/eager/madao_bf16"]) == {
        f"{m}_vs_randaugment_bf16" for m in bench_cost.METRICS
    }
    assert "| `cnn/eager/madao_bf16` |" in report.cost_table(cost)


@pytest.mark.slow
def test_cpu_form_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``cpu`` form at tiny sizes on three cases, each in processes of its own (live, profiled, timed):
    ratios positive and finite, ``madao_segmented``'s first hypergradient (another process) equal to
    ``plain``'s, the README renders."""
    cases = ["randaugment", "plain", "madao_segmented"]
    monkeypatch.setitem(bench_cost.FORMS, "cpu", {**bench_cost.FORMS["cpu"], **TINY, "cases": cases})
    out = tmp_path / "cost.json"
    assert bench_cost.main(["--form", "cpu", "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    cost = json.loads(out.read_text())
    assert list(cost["cases"]) == list(cost["live_memory"]) == cases
    assert list(cost["profiles"]) == ["plain", "madao_segmented"] and not cost["cases"]["plain"]["sections_s"]
    assert cost["profiles"]["plain"]["sections_s"]["madao/hvp"]["count"] == 5  # profiled apart from timing
    assert cost["live_memory"]["plain"]["inner_steps"] == 2 and cost["cases"]["plain"]["total_hvps"] == 2 * 5
    for variant in ("plain", "madao_segmented"):
        ratios = cost["ratios"][variant]
        for key in ("time_per_step", "peak", "live_peak", "live_peak_above_setup"):
            assert math.isfinite(ratios[f"{key}_vs_randaugment"]) and ratios[f"{key}_vs_randaugment"] > 0
    compare = cost["hypergrad_vs_plain"]["madao_segmented"]
    assert list(cost["hypergrad_vs_plain"]) == ["madao_segmented"] and compare["same_state"] is True
    assert compare["rel_diff"] < 1e-3 and compare["cosine"] > 0.999
    out.rename(tmp_path / "work" / "cost.json")
    assert "| `madao_segmented` | `augment=madao` `augment.hyper.segmented=true` |" in report.build_readme(
        tmp_path / "work"
    )


def test_gpu_form_runs_the_segmented_mode_and_bf16_eager_only(tmp_path: Path) -> None:
    """The GPU form: every case eager, float32 and bf16-mixed, and compiled the float32 policies but the
    segmented mode (a compiled network hides the blocks it splits at)."""
    specs = bench_cost.case_specs("gpu", bench_cost.FORMS["gpu"], "cuda", tmp_path)
    for model in bench_cost.FORMS["gpu"]["models"]:
        assert all(f"{model}/eager/{case}" in specs for case in bench_cost.GPU_CASES)
        compiled = [name for name in specs if name.startswith(f"{model}/compiled/")]
        assert compiled == [f"{model}/compiled/randaugment", f"{model}/compiled/madao"]


def test_scaling_form_cases_ratios_and_table(tmp_path: Path) -> None:
    """``--form scaling``: its cases (WRN-28-2 at three batches, WRN-28-10 at 32), and the README's table
    built from made-up records with known ratios, a row per MADAO mode (the form itself takes minutes)."""
    settings = bench_cost.FORMS["scaling"] | bench_cost.CPU_SCALING
    specs = bench_cost.case_specs("scaling", settings, "cpu", tmp_path)
    assert [(s["model"], s["batch"]) for s in specs.values()][::3] == [
        ("wrn28_2", 64), ("wrn28_2", 128), ("wrn28_2", 256), ("wrn28_10", 32)
    ]  # fmt: skip
    assert {(s["inner_steps"], s["warmup_cycles"], s["cycles"]) for s in specs.values()} == {(3, 0, 1)}
    assert [s["case"] for s in specs.values()][:3] == ["randaugment", "madao", "madao_segmented"]

    def extra(spec: dict) -> float:  # MADAO's memory above RandAugment's: half of it when segmented
        return {"randaugment": 0, "madao": 100, "madao_segmented": 50}[spec["case"]] * spec["batch"] / 64

    cases = {
        name: {**{k: spec[k] for k in bench_cost.KEYS}, "parameters": 1_500_000, "hyper_step_s": [],
               "inner_step_s_median": 1.0, "hyper_steps": 0, "total_hvps": 0, "image_size": 32,
               "time_per_step_s": 1.0 + (spec["case"] != "randaugment"), "setup_memory_mb": 500.0,
               "peak_mb": 600.0 + extra(spec), "peak_above_setup_mb": 100.0 + extra(spec)}
        for name, spec in specs.items()
    }  # fmt: skip
    failed = "wrn28_10_b32/eager/madao"  # a failed case keeps the keys of its spec
    cases[failed] = {**{k: specs[failed][k] for k in bench_cost.KEYS}, "error": "timed out after 1800 s"}
    head = {"form": "scaling", "device": "cpu", "device_name": None, "date": "2026-01-01"}
    head |= {"command": "python -m benchmarks.bench_cost --form scaling", "machine": {"cpu_count": 2}}
    settings = {
        **settings,
        "cases": bench_cost.CASES,
        "threads": 1,
        "data": "synthetic",
        "isolation": "fresh",
    }
    cost = json.loads(json.dumps(bench_cost.combine(head, settings, {"timed": cases})))
    assert cost["ratios"]["wrn28_2_b256/eager/madao"]["peak_above_setup_vs_randaugment"] == 5.0
    assert cost["ratios"]["wrn28_2_b256/eager/madao_segmented"]["peak_above_setup_vs_randaugment"] == 3.0
    assert "error" in cost["ratios"]["wrn28_10_b32/eager/madao"]
    assert "error" not in cost["ratios"]["wrn28_10_b32/eager/madao_segmented"]
    table = report.scaling_table(cost)
    assert "| `wrn28_2` | 128 | 1.5 | `madao` | 100 | 300 | 3.00 | 1.33 | 2.00 |" in table
    assert "| `wrn28_2` | 128 | 1.5 | `madao_segmented` | 100 | 200 | 2.00 | 1.17 | 2.00 |" in table
    assert "| `wrn28_10` | 32 | 1.5 | `madao` | 100 | — | — | — | — |" in table
    (tmp_path / "scaling.json").write_text(json.dumps(cost))
    text = report.build_readme(tmp_path, tmp_path)
    assert table in text and "| `wrn28_10_b32/eager/madao` | error: timed out after 1800 s |" in text
