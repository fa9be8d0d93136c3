"""``python -m scsig.quickstart``: runs on the bundled data and model, prints the table, writes three figures."""

from __future__ import annotations

import numpy as np

from scsig import quickstart


def test_quickstart_main(tmp_path, capsys):
    out = tmp_path / "qs"
    assert quickstart.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("scores.png", "hit_fractions.png", "gene_attributions.png"):
        assert (out / name).stat().st_size > 10_000
        assert name in printed
    assert "scsig AUROC" in printed
    assert "score_genes AUROC" in printed
    assert "CD14 Mono" in printed


def test_quickstart_table(tmp_path):
    adata, table = quickstart.run(tmp_path, progress=False)
    assert list(table.index) == ["all cells", *adata.obs["seurat_annotations"].cat.categories]
    assert table.loc["all cells", "n CTRL"] == 391
    assert table.loc["all cells", "n STIM"] == 441
    assert table.loc["all cells", "scsig AUROC"] > 0.95
    assert (table["scsig AUROC"] > 0.95).all()
    assert (table["scsig STIM"] > table["scsig CTRL"]).all()
    # hits are set at the 95th percentile of control cells: about 5 % of them by construction
    assert abs(table.loc["all cells", "hits CTRL %"] - 5.0) < 1.0
    assert table.loc["all cells", "hits STIM %"] > 50
    ctrl = (adata.obs["stim"] == "CTRL").to_numpy()
    assert np.isclose(adata.obs["ifn"][ctrl].mean(), table.loc["all cells", "scsig CTRL"])


def test_readme_states_the_quickstart_numbers(tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(
        r"AUROC ([\d.]+) pooled and ([\d.]+)-([\d.]+) within each of the six cell types \(`score_genes`: ([\d.]+) and ([\d.]+)-([\d.]+)",
        " ".join(text.split()),
    )
    assert m is not None, "the README states the quickstart's AUROCs"
    _, table = quickstart.run(tmp_path, progress=False)
    types = table.drop(index="all cells")
    for col, (pooled, low, high) in (("scsig AUROC", m.group(1, 2, 3)), ("score_genes AUROC", m.group(4, 5, 6))):
        assert f"{table.loc['all cells', col]:.3f}" == pooled
        assert f"{types[col].min():.3f}" == low
        assert f"{types[col].max():.3f}" == high
