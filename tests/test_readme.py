"""The README's "Using it in your own Lightning code" example runs as printed: what a user copies works.

The block is executed as it stands except for named substitutions that shrink it (epochs, warm-up, inner
steps; each must be found, so an edited README fails here rather than being skipped) and its two
placeholders, ``my_backbone`` and ``my_datamodule``, which are given a small CNN and the digits data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl

from madao_pl.data import DigitsDataModule
from madao_pl.models import SmallCNN
from tests.conftest import compose_config

README = Path(__file__).resolve().parents[1] / "README.md"
SHRINK = {
    "max_epochs=200": "max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False",
    "WarmupCallback(20)": "WarmupCallback(1, min_hyper_steps=0)",
    "inner_steps=30": "inner_steps=2",
    '"out"': "OUT",
}
"""README text -> what the test runs instead (a tiny fit writing into the test's directory)."""


def own_code_example() -> str:
    """The first python block after the README's "Using it in your own Lightning code" heading."""
    section = README.read_text().split("## Using it in your own Lightning code", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's own-code section has no python block"
    return match.group(1)


@pytest.mark.usefixtures("single_thread")
def test_the_own_lightning_code_example_runs(tmp_path: Path) -> None:
    code = own_code_example()
    for old, new in SHRINK.items():
        assert old in code, f"the README example no longer says {old}: update SHRINK"
        code = code.replace(old, new)
    pl.seed_everything(0, workers=True, verbose=False)
    datamodule = DigitsDataModule(batch_size=32, limit_train=128, hyper_batch_size=32)
    namespace = {"my_backbone": SmallCNN(10, width=8), "my_datamodule": datamodule, "OUT": str(tmp_path)}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (the README's own example)
    module = namespace["module"]
    assert module.hyper_steps > 0, "the example's fit took no hyper step"
    history = json.loads((tmp_path / "policy.json").read_text())
    assert history["describe"]["stages"], "PolicyHistoryCallback wrote no policy"


def test_the_example_starts_where_augment_madao_starts(tmp_path: Path) -> None:
    """Its comment calls ``MADAOPolicy(init_probability=...)`` ``augment=madao``'s start: the values agree."""
    printed = re.search(
        r"MADAOPolicy\(init_probability=(-?[\d.]+)\)\s+# augment=madao's start", own_code_example()
    )
    assert printed, "the example no longer builds the policy with augment=madao's start"
    cfg = compose_config(tmp_path, "augment=madao")
    assert float(printed.group(1)) == cfg.augment.policy.init_probability


def test_the_layout_names_every_module() -> None:
    """The README's layout names each module of the package's top level and of benchmarks/, and each
    subpackage folder: a new file cannot go unmentioned."""
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    root = README.parent
    modules = [p for folder in ("src/madao_pl", "benchmarks") for p in sorted((root / folder).glob("*.py"))]
    missing = [str(p.relative_to(root)) for p in modules if p.name != "__init__.py" and p.name not in layout]
    packages = [p for p in sorted((root / "src/madao_pl").iterdir()) if (p / "__init__.py").is_file()]
    missing += [f"{p.relative_to(root)}/" for p in packages if f"src/madao_pl/{p.name}/" not in layout]
    assert not missing, f"README.md's layout section does not name {missing}"
