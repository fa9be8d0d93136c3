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
    # measured with the bundled pbmc-demo model (mode='top'): pooled 0.987, every cell type >= 0.99
    assert table.loc["all cells", "scsig AUROC"] > 0.95
    assert (table["scsig AUROC"] > 0.95).all()
    assert (table["scsig STIM"] > table["scsig CTRL"]).all()
    # hits are set at the 95th percentile of control cells: about 5 % of them by construction
    assert abs(table.loc["all cells", "hits CTRL %"] - 5.0) < 1.0
    assert table.loc["all cells", "hits STIM %"] > 50
    ctrl = (adata.obs["stim"] == "CTRL").to_numpy()
    assert np.isclose(adata.obs["ifn"][ctrl].mean(), table.loc["all cells", "scsig CTRL"])
