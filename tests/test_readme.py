"""The README's example runs as printed and gives the hit fractions the README states."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib as mpl
import pytest

mpl.use("agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_and_its_numbers():
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, flags=re.DOTALL).group(1)
    assert 'reference={"stim": "CTRL"}' in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    adata = namespace["adata"]
    frac = 100 * adata.obs.groupby("stim", observed=True)["score_hit"].mean()
    claim = re.search(r"([\d.]+) % of\ncontrol and ([\d.]+) % of stimulated cells are hits", text)
    assert claim is not None, "the README states the example's hit fractions"
    assert frac["CTRL"] == pytest.approx(float(claim.group(1)), abs=0.06)
    assert frac["STIM"] == pytest.approx(float(claim.group(2)), abs=0.06)
    b_cells = adata.obs["seurat_annotations"] == "B"
    b_stim = 100 * adata.obs.loc[b_cells & (adata.obs["stim"] == "STIM"), "score_hit"].mean()
    assert f"{b_stim:.1f} % of stimulated B cells" in text
