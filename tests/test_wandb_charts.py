"""experiments/wandb_charts.py: the last table of each chart of an offline W&B run, drawn as one PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import wandb_charts  # noqa: E402


def write_table(charts: Path, stage: int, value: str, step: int, rows: list[list]) -> None:
    charts.mkdir(parents=True, exist_ok=True)
    table = {"columns": ["step", "lineKey", "lineVal"], "data": rows}
    (charts / f"stage{stage}_{value}_table_{step}_0123abcd.table.json").write_text(json.dumps(table))


def test_last_table_of_each_chart_is_drawn(tmp_path: Path) -> None:
    charts = tmp_path / "run" / "files" / "media" / "table" / "policy" / "charts"
    write_table(charts, 0, "selection", 4, [[0, "ShearX", 0.07]])
    write_table(charts, 0, "selection", 12, [[0, "ShearX", 0.07], [1, "ShearX", 0.08], [1, "Invert", 0.06]])
    write_table(charts, 1, "magnitude", 12, [[0, "Rotate", 0.6], [1, "Rotate", None]])
    tables = wandb_charts.last_tables(tmp_path / "run")
    assert set(tables) == {(0, "selection"), (1, "magnitude")}
    assert len(tables[(0, "selection")]["data"]) == 3  # step 12's table, not step 4's
    out = tmp_path / "charts.png"
    assert wandb_charts.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
