"""sg.get.orthologs: the mapping table, the default table, no silent expansion, signatures."""

from __future__ import annotations

from importlib import resources

import pandas as pd
import pytest

import scsig as sg
from scsig.models._orthologs import BUNDLED

IMMUNE = ["CCL5", "IFIT1", "IFITM3", "S100A9", "LYZ", "GZMB"]


def _one(genes, **kwargs):
    """gene -> target (None where missing) of the mapping table."""
    m = sg.get.orthologs(genes, **kwargs)
    return {s: (None if pd.isna(t) else t) for s, t in zip(m["source"], m["target"], strict=True)}


def test_default_is_mgi_with_the_orthologs_immunologists_expect():
    got = _one(IMMUNE)
    assert got == {
        "CCL5": "Ccl5",
        "IFIT1": "Ifit1",
        "IFITM3": "Ifitm3",
        "S100A9": "S100a9",
        "LYZ": None,
        "GZMB": "Gzmb",
    }
    m = sg.get.orthologs(IMMUNE).set_index("source")
    assert m.loc["CCL5", "relationship"] == "one2one"
    assert m.loc["S100A9", "relationship"] == "one2one"
    assert m.loc["IFIT1", "choice"] == "same_symbol"
    assert m.loc["IFIT1", "n_orthologs"] == 3
    assert m.loc["LYZ", "choice"] == "ambiguous"
    assert set(m["table"]) == {"mgi2024-human-mouse"}
    assert "support_n" not in m.columns


def test_ensembl105_selectable_and_gives_the_old_mapping():
    got = _one(IMMUNE, table="ensembl105")
    assert got == {
        "CCL5": None,
        "IFIT1": None,
        "IFITM3": "Ifitm6",
        "S100A9": "Gm5849",
        "LYZ": "9530003J23Rik",
        "GZMB": "Gzmb",
    }
    # expanded, it is exactly what sg.get.orthologs returned before: every ortholog in the file's order
    source = resources.files("scsig.models") / "_data" / "orthologs" / BUNDLED["ensembl105"].file
    with resources.as_file(source) as path:
        raw = pd.read_csv(path, header=None, names=["human", "mouse"], dtype=str).dropna()
    genes = ["GZMB", "CD19", "IFITM1", "IFITM3", "HLA-DRA", "CCL5"]
    expected = list(
        dict.fromkeys(
            raw.loc[raw["human"] == g, "mouse"].iloc[i] for g in genes for i in range((raw["human"] == g).sum())
        )
    )
    with pytest.warns(UserWarning, match="expanded"):
        got = sg.get.orthologs(genes, table="ensembl105", expand=True, as_signature=True, warn=True)
    assert got == expected
    assert len(expected) > len(genes)  # the expansion is real
    # the name recorded in provenance selects the table too
    assert _one(["LYZ"], table="ensembl105-human-mouse") == {"LYZ": "9530003J23Rik"}


def test_hcop_has_support_counts():
    m = sg.get.orthologs(["LYZ", "S100A9", "CD19", "GNLY"], table="hcop2024")
    assert m["target"].tolist()[:3] == ["Lyz2", "S100a9", "Cd19"]
    assert m["choice"].tolist() == ["most_support", "same_symbol", "only", "missing"]
    assert m["support_n"].tolist()[:3] == [8, 12, 11]
    assert pd.isna(m["support_n"].iloc[3])
    full = sg.models.orthologs("human", "mouse", table="hcop2024")
    assert full["support_n"].min() == 3
    # S100A9 -> Gm5849 has support 3, so it is kept, but not picked
    expanded = sg.get.orthologs(["S100A9"], table="hcop2024", expand=True)
    assert dict(zip(expanded["target"], expanded["support_n"], strict=True)) == {"Gm5849": 3, "S100a9": 12}


def test_no_silent_expansion():
    m = sg.get.orthologs(["GZMB"])
    assert len(m) == 1
    assert m["target"].tolist() == ["Gzmb"]
    assert m["n_orthologs"].tolist() == [7]
    assert sg.get.orthologs(["GZMB", "CD19"], as_signature=True) == ["Gzmb", "Cd19"]
    # expansion only on request, and it says which genes expanded
    m = sg.get.orthologs(["GZMB", "CD19"], expand=True)
    assert len(m) == 8
    assert set(m.loc[m["source"] == "GZMB", "choice"]) == {"expanded"}
    with pytest.warns(UserWarning, match=r"expand=True: 1 gene\(s\) expanded.*GZMB -> 7"):
        sig = sg.get.orthologs({"GZMB": 2.0, "CD19": 1.0}, expand=True, as_signature=True)
    assert len(sig) == 8
    assert set(sig.values()) == {1.0, 2.0}
    assert sig["Gzmc"] == 2.0


def test_signature_shapes_and_warnings():
    assert sg.get.orthologs(["CD19", "MS4A1"], as_signature=True) == ["Cd19", "Ms4a1"]
    assert sg.get.orthologs(["Cd19"], source="mouse", target="human", as_signature=True) == ["CD19"]
    assert sg.get.orthologs({"CD19": 2.0, "NKG7": 1.0}, as_signature=True) == {"Cd19": 2.0, "Nkg7": 1.0}
    with pytest.warns(UserWarning, match=r"1 human gene\(s\) have no mouse ortholog.*GNLY") as record:
        out = sg.get.orthologs({"NK": ["GNLY", "NKG7"], "Mono": ["LYZ", "CD14"]}, as_signature=True)
    assert out == {"NK": ["Nkg7"], "Mono": ["Cd14"]}
    assert any("several mouse orthologs" in str(w.message) and "LYZ (3)" in str(w.message) for w in record)
    # the table for a dict of signatures lists each gene once, in order
    m = sg.get.orthologs({"a": ["CD19", "NKG7"], "b": ["NKG7", "CD14"]})
    assert m["source"].tolist() == ["CD19", "NKG7", "CD14"]
    # a user's table, any pair of species
    fish = pd.DataFrame({"zebrafish": ["cd79a"], "human": ["CD79A"]})
    assert sg.get.orthologs(["CD79A"], source="human", target="zebrafish", table=fish, as_signature=True) == ["cd79a"]


def test_rename_genes_with_the_table():
    m = sg.get.orthologs(["Cd19", "Nkg7", "Foo1"], source="mouse", target="human").dropna(subset=["target"])
    rename = dict(zip(m["source"], m["target"], strict=True))
    assert rename == {"Cd19": "CD19", "Nkg7": "NKG7"}


def test_bad_input():
    for call in (
        lambda: sg.get.orthologs(["CD19"], table="mgi"),
        lambda: sg.models.orthologs(table="Ensembl"),
    ):
        with pytest.raises(
            ValueError, match=r"is not a bundled ortholog table.*'mgi2024' \(default\), 'hcop2024', 'ensembl105'"
        ):
            call()
    with pytest.raises(ValueError, match=r"No ortholog table is bundled for 'human' -> 'zebrafish'"):
        sg.get.orthologs(["CD19"], target="zebrafish")
    with pytest.raises(TypeError, match="single string"):
        sg.get.orthologs("CD19")
    with pytest.raises(TypeError, match="True or False"):
        sg.get.orthologs(["CD19"], expand="yes")
    with pytest.raises(TypeError, match="name of a bundled table"):
        sg.get.orthologs(["CD19"], table=["CD19"])


def test_docs_table_of_immune_genes_is_what_the_code_gives():
    """The table in docs/cross_species.md (printed by benchmarks/cross_species.py --part genes) matches the tables."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "cross_species.md"
    lines = [ln for ln in docs.read_text().splitlines() if ln.startswith("| ")]
    start = lines.index("| human gene | mgi2024 | pick | hcop2024 | pick | ensembl105 | pick |")
    rows = {}
    for line in lines[start + 2 :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 7:
            break
        rows[cells[0]] = cells[1:]
    assert len(rows) >= 10
    genes = list(rows)
    for i, table in enumerate(("mgi2024", "hcop2024", "ensembl105")):
        every = sg.get.orthologs(genes, table=table, expand=True).dropna(subset=["target"])
        listed = every.groupby("source")["target"].agg(", ".join)
        picked = sg.get.orthologs(genes, table=table).set_index("source")["target"]
        for gene in genes:
            assert rows[gene][2 * i] == listed.get(gene, "--"), (table, gene)
            assert rows[gene][2 * i + 1] == (picked[gene] if isinstance(picked[gene], str) else "--"), (table, gene)
