"""experiments/summarize.py on a fabricated Hydra multirun: exact statistics, the paper's layout,
sweep layouts, settings that must (and must not) split a cell, and problems reported, not dropped."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from experiments.summarize import (
    collect,
    main,
    markdown_table,
    render_markdown,
    summarize,
)

from tests.conftest import TINY


def write_run(
    root: Path,
    job: str,
    dataset: str,
    model: str,
    augment: str,
    seed: int,
    test_error: float | None,
    inner_steps: int = 30,
    warmup_epochs: int = 20,
    lr: float = 0.1,
    hydra: bool = True,
) -> Path:
    """A job directory as madao_pl.run writes it: .hydra/ and results.json (config included)."""
    out = root / job
    out.mkdir(parents=True)
    if hydra:
        (out / ".hydra").mkdir()
        (out / ".hydra" / "config.yaml").write_text("seed: 0\n")
    config = {
        "seed": seed,
        "paths": {"output_dir": str(out), "data_dir": "data"},
        "dataset": {"name": dataset, "lr": lr, "datamodule": {"seed": seed, "root": f"data/{dataset}"}},
        "model": {"name": model},
        "augment": {"name": augment, "inner_steps": inner_steps, "warmup_epochs": warmup_epochs},
        "module": {"inner_steps": inner_steps},
        "callbacks": {"warmup": {"warmup_epochs": warmup_epochs}, "ckpt": {"dirpath": f"{out}/checkpoints"}},
        "logger": {"wandb": {"name": f"{dataset}-{augment}-s{seed}"}},
    }
    results = {
        "dataset": dataset,
        "model": model,
        "augment": augment,
        "seed": seed,
        "inner_steps": inner_steps,
        "warmup_epochs": warmup_epochs,
        "test_error": test_error,
        "val_error": None if test_error is None else test_error + 0.01,
        "config": config,
    }
    (out / "results.json").write_text(json.dumps(results))
    return out


@pytest.fixture
def table2_dir(tmp_path: Path) -> Path:
    """CIFAR-10 / WRN-28-2 with three methods, SVHN with one, jobs numbered like a Hydra sweep."""
    root = tmp_path / "multirun" / "2024-01-01_00-00-00"
    runs = [
        ("cifar10", "wrn28_2", "madao", [0.046, 0.044]),
        ("cifar10", "wrn28_2", "baseline", [0.048, 0.050, 0.052]),
        ("svhn", "wrn28_2", "randaugment", [0.026]),
        ("cifar10", "wrn28_2", "randaugment", [0.047, 0.047, 0.047]),
    ]
    job = 0
    for dataset, model, augment, errors in runs:
        for seed, error in enumerate(errors):
            write_run(
                root, f"{job}_augment={augment},dataset={dataset}", dataset, model, augment, seed, error
            )
            job += 1
    return tmp_path / "multirun"


def test_paper_layout_exact_statistics(table2_dir: Path) -> None:
    runs, problems = collect([table2_dir])
    assert problems == []
    assert len(runs) == 9
    table, more = summarize(runs)
    assert more == []
    assert table.row_header == ["dataset", "model"]
    assert table.rows == [("cifar10", "wrn28_2"), ("svhn", "wrn28_2")]
    assert table.columns == ["Baseline", "RandAugment", "MADAO"]  # the paper's order, not the runs' order

    baseline = table.cells[(("cifar10", "wrn28_2"), "Baseline")]
    assert baseline.n == 3
    assert math.isclose(baseline.mean, 5.0, abs_tol=1e-9)
    assert math.isclose(baseline.std, 0.2, abs_tol=1e-9)  # sample std: sqrt((0.2^2 + 0 + 0.2^2) / 2)
    madao = table.cells[(("cifar10", "wrn28_2"), "MADAO")]
    assert math.isclose(madao.mean, 4.5, abs_tol=1e-9)
    assert math.isclose(madao.std, math.sqrt(0.02), abs_tol=1e-9)
    randaugment = table.cells[(("cifar10", "wrn28_2"), "RandAugment")]
    assert math.isclose(randaugment.std, 0.0, abs_tol=1e-9)
    single = table.cells[(("svhn", "wrn28_2"), "RandAugment")]
    assert single.std is None and single.text() == "2.60 (1)"

    lines = render_markdown(table, []).splitlines()
    assert lines[2] == "| dataset | model | Baseline | RandAugment | MADAO |"
    assert lines[4] == "| cifar10 | wrn28_2 | 5.00 ± 0.20 (3) | 4.70 ± 0.00 (3) | 4.50 ± 0.14 (2) |"
    assert lines[5] == "| svhn | wrn28_2 | — | 2.60 (1) | — |"
    assert "Problems" not in "\n".join(lines)


def test_val_error_metric(table2_dir: Path) -> None:
    runs, _ = collect([table2_dir], metric="val_error")
    table, _ = summarize(runs, metric="val_error")
    assert math.isclose(table.cells[(("cifar10", "wrn28_2"), "Baseline")].mean, 6.0, abs_tol=1e-9)
    assert render_markdown(table, []).startswith("Validation error (%)")


def test_sweep_layout_by_inner_steps(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    errors = {5: [0.050, 0.054], 30: [0.046, 0.048], 100: [0.049, 0.049]}
    for inner, values in errors.items():
        for seed, error in enumerate(values):
            write_run(root, f"s{inner}_{seed}", "cifar10", "wrn28_2", "madao", seed, error, inner_steps=inner)
    runs, problems = collect([root])
    assert problems == []

    table, _ = summarize(runs, by="inner_steps")
    assert table.row_header == ["dataset", "model", "method"]
    assert table.rows == [("cifar10", "wrn28_2", "MADAO")]  # module.inner_steps varies alike: no label
    assert table.columns == ["5", "30", "100"]  # numeric order, not "100" < "30" < "5"
    row = table.rows[0]
    assert math.isclose(table.cells[(row, "5")].mean, 5.2, abs_tol=1e-9)
    assert math.isclose(table.cells[(row, "5")].std, math.sqrt(0.08), abs_tol=1e-9)
    assert math.isclose(table.cells[(row, "30")].mean, 4.7, abs_tol=1e-9)

    # The dotted key and the paper layout: different s are never averaged together.
    assert summarize(runs, by="augment.inner_steps")[0].columns == ["5", "30", "100"]
    paper, _ = summarize(runs)
    assert paper.columns == ["MADAO [inner_steps=5]", "MADAO [inner_steps=30]", "MADAO [inner_steps=100]"]
    assert all(cell.n == 2 for cell in paper.cells.values())


def test_warmup_sweep_keeps_other_settings_apart(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    for warmup in (0, 10, 20):
        write_run(
            root, f"w{warmup}", "cifar10", "wrn28_2", "madao", 0, 0.05 + warmup / 1000, warmup_epochs=warmup
        )
    write_run(root, "lr", "cifar10", "wrn28_2", "madao", 1, 0.07, warmup_epochs=20, lr=0.05)
    runs, _ = collect([root])
    table, _ = summarize(runs, by="warmup_epochs")
    assert table.columns == ["0", "10", "20"]
    assert table.rows == [
        ("cifar10", "wrn28_2", "MADAO [dataset.lr=0.05]"),
        ("cifar10", "wrn28_2", "MADAO [dataset.lr=0.1]"),
    ]
    assert table.cells[(table.rows[1], "20")].values == pytest.approx([7.0])
    assert table.cells[(table.rows[0], "20")].values == pytest.approx([7.0])
    assert table.cells[(table.rows[1], "10")].values == pytest.approx([6.0])


def test_seed_and_paths_do_not_split_a_cell(table2_dir: Path) -> None:
    """Output dirs, data roots, logger names and datamodule seeds differ per run: still one cell."""
    runs, _ = collect([table2_dir])
    assert len({run.settings.get("paths.output_dir") for run in runs}) == 1  # ignored keys are dropped
    table, _ = summarize(runs)
    assert table.cells[(("cifar10", "wrn28_2"), "Baseline")].n == 3


def test_problems_are_reported_not_dropped(table2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = table2_dir / "2024-01-01_00-00-00"
    (sweep / "90_broken").mkdir()
    (sweep / "90_broken" / "results.json").write_text('{"dataset": "cifar10", ')
    write_run(sweep, "91_no_test", "cifar10", "wrn28_2", "madao", 2, None)
    write_run(sweep, "92_bad_value", "cifar10", "wrn28_2", "madao", 2, 4.6)  # a percentage, not a rate
    (sweep / "93_crashed" / ".hydra").mkdir(parents=True)
    write_run(sweep, "94_again", "cifar10", "wrn28_2", "madao", 1, 0.046)  # seed 1 a second time
    (sweep / "95_not_ours").mkdir()
    (sweep / "95_not_ours" / "results.json").write_text(json.dumps({"test_error": 0.1}))
    (sweep / ".submitit" / "123").mkdir(parents=True)  # hidden: not searched, not a problem

    runs, problems = collect([table2_dir])
    assert len(runs) == 10  # the 9 good ones and the duplicate seed
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "90_broken/results.json: unreadable (JSONDecodeError" in text
    assert "91_no_test/results.json: no test_error" in text
    assert "92_bad_value/results.json: test_error=4.6 is not an error rate in [0, 1]" in text
    assert "93_crashed: Hydra job without results.json" in text
    assert "95_not_ours/results.json: no dataset, model, augment" in text

    table, duplicates = summarize(runs)
    assert (
        len(duplicates) == 1 and "cifar10 / wrn28_2 / MADAO: seed 1 appears more than once" in duplicates[0]
    )
    assert table.cells[(("cifar10", "wrn28_2"), "MADAO")].n == 3

    assert main([str(table2_dir)]) == 0
    out, err = capsys.readouterr()
    assert "Problems (6):" in out
    assert err.count("problem: ") == 6
    assert main([str(table2_dir), "--strict"]) == 1


def test_plot_of_a_sweep(tmp_path: Path) -> None:
    """--plot draws a --by table (one line per row, numeric columns on the x axis); without --by, nothing."""
    root = tmp_path / "multirun"
    for inner in (5, 30):
        write_run(root, f"s{inner}", "cifar10", "wrn28_2", "madao", 0, 0.05, inner_steps=inner)
    figure = tmp_path / "sweep.png"
    assert main([str(root), "--by", "inner_steps", "--plot", str(figure)]) == 0
    assert figure.read_bytes().startswith(b"\x89PNG")
    figure.unlink()
    assert main([str(root), "--plot", str(figure)]) == 0 and not figure.exists()


def test_cli_writes_markdown_and_refuses_bad_input(
    table2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "table.md"
    assert main([str(table2_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert "| cifar10 | wrn28_2 | 5.00 ± 0.20 (3) |" in printed

    assert main([str(table2_dir), "--augment", "madao"]) == 0
    assert "| dataset | model | MADAO |" in capsys.readouterr().out

    assert main([str(table2_dir), "--by", "no_such_key"]) == 2
    assert "--by no_such_key: no run has a setting named no_such_key" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert "no usable results.json" in capsys.readouterr().err


def test_markdown_table() -> None:
    """The table helper benchmarks/report.py also renders with."""
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_cells_keep_their_runs_metrics(table2_dir: Path) -> None:
    """Each cell keeps its runs, with results.json's fit time and hyper steps beside the errors."""
    root = table2_dir / "2024-01-01_00-00-00"
    path = write_run(root, "99_timed", "digits", "cnn", "madao", 0, 0.05)
    data = json.loads((path / "results.json").read_text())
    (path / "results.json").write_text(json.dumps({**data, "fit_seconds": 12.5, "hyper_steps": 7}))
    runs, _ = collect([table2_dir])
    cell = summarize(runs)[0].cells[(("digits", "cnn"), "MADAO")]
    assert [run.metrics["fit_seconds"] for run in cell.runs] == [12.5]
    assert (
        cell.runs[0].metrics["hyper_steps"] == 7
        and cell.seeds == [0]
        and cell.paths == [path / "results.json"]
    )


@pytest.mark.slow
def test_summarize_a_real_hydra_multirun(tmp_path: Path) -> None:
    """A real `python -m madao_pl.run -m` sweep (tiny digits fits) summarised: two methods x two seeds,
    one cell each, nothing reported as a problem (the per-run config differences are only paths/seeds)."""
    sweep_dir = tmp_path / "multirun"
    command = [
        sys.executable,
        "-m",
        "madao_pl.run",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}",  # TINY's many overrides would make too long a name
        *TINY,
        "augment=baseline,randaugment",
        "seed=0,1",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run(command, check=True, cwd=tmp_path, env=env, capture_output=True, timeout=600)
    runs, problems = collect([sweep_dir])
    assert problems == []
    assert len(runs) == 4
    table, duplicates = summarize(runs)
    assert duplicates == []
    assert table.columns == ["Baseline", "RandAugment"]
    for column in table.columns:
        cell = table.cells[(("digits", "cnn"), column)]
        assert cell.n == 2 and sorted(cell.seeds) == [0, 1]
        expected = [100 * json.loads(p.read_text())["test_error"] for p in cell.paths]
        assert cell.values == pytest.approx(expected)


def test_replays_of_each_seeds_policy_are_one_cell(tmp_path: Path) -> None:
    """augment=replay runs differ in the policy file they replay (each seed's own MADAO run): one cell."""
    for seed in range(3):
        out = write_run(tmp_path, str(seed), "digits", "cnn", "replay", seed, 0.03 + seed / 100)
        data = json.loads((out / "results.json").read_text())
        path = f"/runs/madao/{seed}/policy.json"
        data["config"]["augment"].update(path=path, policy={"path": path})
        (out / "results.json").write_text(json.dumps(data))
    runs, problems = collect([tmp_path])
    table, more = summarize(runs)
    assert not problems and not more and len(table.cells) == 1
    assert next(iter(table.cells.values())).n == 3
