"""Cross-species models: the ortholog conversion, its fold into the first layer, saving, matching, TRON."""

from __future__ import annotations

import hashlib
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scsig as sg
from scsig.models import CrossSpeciesModel, SCimilarityEncoder
from scsig.models._conversion import _conversion_module
from scsig.models._orthologs import ORTHOLOGS_FILE, ORTHOLOGS_SHA256

from ..conftest import randomize_batchnorm

HUMAN = [f"HG{i}" for i in range(12)]
# 1:1 pairs for HG0..HG7; Mg8a/Mg8b -> HG8 (many:1); Mg9 -> HG9 and HG10 (1:many); HG11 has no ortholog
PAIRS = pd.DataFrame(
    {
        "mouse": [f"Mg{i}" for i in range(8)] + ["Mg8a", "Mg8b", "Mg9", "Mg9"],
        "human": HUMAN[:8] + ["HG8", "HG8", "HG9", "HG10"],
    }
)


def _human_model(seed: int = 0) -> sg.models.FoundationModel:
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(len(HUMAN), [16, 8], 4)
    randomize_batchnorm(enc, seed)
    return sg.models.FoundationModel(enc.eval(), HUMAN, name="tiny-human")


def _mouse_counts(genes: list[str], n: int = 30, seed: int = 1) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.poisson(2.0, size=(n, len(genes))).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0
    x[:, 0] += 1  # no empty cells
    return ad.AnnData(
        sparse.csr_matrix(x), var=pd.DataFrame(index=genes), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)])
    )


def _table_sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the bundled table
# ---------------------------------------------------------------------------------------------


def test_bundled_table_checksum_and_content():
    source = resources.files("scsig.models") / "_data" / "orthologs" / ORTHOLOGS_FILE
    with resources.as_file(source) as path:
        assert _table_sha(path) == ORTHOLOGS_SHA256
    table = sg.models.orthologs("human", "mouse")
    assert len(table) == 24857
    assert (table["kind"] == "1:1").sum() == 16757
    lookup = table.groupby("source")["target"].agg(list)
    assert lookup["CD19"] == ["Cd19"]
    assert lookup["NKG7"] == ["Nkg7"]
    assert "GNLY" not in lookup.index
    reverse = sg.models.orthologs("mouse", "human")
    assert (reverse["kind"] == "1:1").sum() == 16757
    assert set(reverse["kind"]) == {"1:1", "1:many", "many:1", "many:many"}


# ---------------------------------------------------------------------------------------------
# the conversion and its fold
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["mean", "split"])
def test_conversion_rules(rule):
    x = sg.models.cross_species(_human_model(), species="mouse", orthologs=PAIRS, rule=rule)
    assert x.gene_order == [f"Mg{i}" for i in range(8)] + ["Mg8a", "Mg8b", "Mg9"]
    c = x.conversion.toarray()
    expected = np.zeros((12, 11))
    expected[np.arange(8), np.arange(8)] = 1.0
    if rule == "mean":  # HG8 gets the mean of Mg8a and Mg8b; Mg9 feeds HG9 and HG10 in full
        expected[8, 8] = expected[8, 9] = 0.5
        expected[9, 10] = expected[10, 10] = 1.0
    else:  # Mg8a and Mg8b sum into HG8; Mg9 is split between HG9 and HG10
        expected[8, 8] = expected[8, 9] = 1.0
        expected[9, 10] = expected[10, 10] = 0.5
    np.testing.assert_array_equal(c, expected)
    kinds = x.pairs().set_index("source")["kind"]
    assert kinds["Mg0"] == "1:1"
    assert kinds["Mg8a"] == "many:1"
    assert kinds.loc["Mg9"].tolist() == ["1:many", "1:many"]


@pytest.mark.parametrize("rule", ["mean", "split"])
def test_folded_encoder_equals_conversion_then_model(rule):
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS, rule=rule)
    assert isinstance(x.encoder, SCimilarityEncoder)
    assert x.encoder.network[0][1].weight.shape == (16, 11)
    inp = np.random.default_rng(0).random((20, 11)).astype(np.float32)
    converted = (x.conversion @ inp.T.astype(np.float64)).T.astype(np.float32)
    np.testing.assert_allclose(x.embed(inp), base.embed(converted), rtol=1e-5, atol=1e-6)
    # the pretrained model is untouched
    assert base.encoder.network[0][1].weight.shape == (16, 12)


def test_attributions_equal_captum_on_conversion_in_front():
    """Fold + fast path == captum on the unfolded network (conversion module, then the pretrained encoder)."""
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    mouse = _mouse_counts(x.gene_order)
    unfolded = sg.models.from_module(
        torch.nn.Sequential(_conversion_module(x.conversion), base.encoder), x.gene_order, name="unfolded"
    )
    fast = sg.tl.attribute(mouse, x, engine="fast", copy=True)
    ref = sg.tl.attribute(mouse, unfolded, engine="captum", copy=True)
    assert fast.uns["scsig"]["layers"]["attr_ig"]["engine"] == "fast"
    np.testing.assert_allclose(fast.layers["attr_ig"].toarray(), ref.layers["attr_ig"].toarray(), rtol=1e-4, atol=1e-3)


def test_one_to_one_is_exactly_the_renaming_baseline():
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    genes_1to1 = [f"Mg{i}" for i in range(8)]
    mouse = _mouse_counts(genes_1to1 + ["Xist"])  # a gene without ortholog is left out
    renamed = mouse[:, genes_1to1].copy()
    renamed.var_names = HUMAN[:8]
    sg.tl.attribute(mouse, x, min_overlap=1)
    sg.tl.attribute(renamed, base, min_overlap=1)
    got = mouse[:, genes_1to1].layers["attr_ig"].toarray()
    np.testing.assert_allclose(got, renamed.layers["attr_ig"].toarray(), rtol=1e-5, atol=1e-5)
    assert mouse.var["attr_ig_in_model"].tolist() == [True] * 8 + [False]
    # scores: a plain numpy mean of the signature's columns, and the same as the baseline's
    sg.tl.score(mouse, ["Mg1", "Mg2", "Mg5"], mode="classic", key_added="s")
    sg.tl.score(renamed, ["HG1", "HG2", "HG5"], mode="classic", key_added="s")
    np.testing.assert_allclose(mouse.obs["s"], got[:, [1, 2, 5]].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(mouse.obs["s"], renamed.obs["s"], rtol=1e-5, atol=1e-5)


def test_other_first_layer_gets_conversion_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(12, 4)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    base = sg.models.from_module(Net(), HUMAN, name="net")
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    inp = np.random.default_rng(0).random((5, 11)).astype(np.float32)
    converted = (x.conversion @ inp.T).T.astype(np.float32)
    np.testing.assert_allclose(x.embed(inp), base.embed(converted), rtol=1e-5, atol=1e-6)
    mouse = _mouse_counts(x.gene_order, n=6)
    sg.tl.attribute(mouse, x)
    assert mouse.uns["scsig"]["layers"]["attr_ig"]["engine"] == "captum"


# ---------------------------------------------------------------------------------------------
# pseudo-mouse cells: the bundled human PBMCs with their genes renamed to 1:1 mouse orthologs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pseudo_mouse():
    human = sg.datasets.kang_ifnb()[:60].copy()
    table = sg.models.orthologs("human", "mouse")
    one = table[table["kind"] == "1:1"].set_index("source")["target"]
    human = human[:, human.var_names.isin(one.index)].copy()
    mouse = human.copy()
    mouse.var_names = one.loc[human.var_names].to_numpy()
    return human, mouse


def test_pseudo_mouse_equals_human_model(pseudo_mouse):
    human, mouse = pseudo_mouse
    base = sg.models.load("pbmc-demo")
    x = sg.models.cross_species(base, species="mouse")
    h = sg.tl.attribute(human, base, copy=True)
    m = sg.tl.attribute(mouse, x, copy=True)
    np.testing.assert_allclose(m.layers["attr_ig"].toarray(), h.layers["attr_ig"].toarray(), rtol=1e-5, atol=1e-5)
    record = m.uns["scsig"]["layers"]["attr_ig"]
    assert record["engine"] == "fast"
    cs = record["model"]["cross_species"]
    assert cs["species"] == "mouse"
    assert cs["table"]["name"] == "ensembl105-human-mouse"
    assert cs["table"]["checksum"] == ORTHOLOGS_SHA256[:16]
    assert cs["base_model"]["name"] == "pbmc-demo"
    assert record["overlap"]["n_base_model_genes"] == 4692
    assert record["overlap"]["n_base_model_genes_reached"] == record["overlap"]["n_overlap"]
    # upper-case mouse symbols match too, with the same result
    upper = mouse.copy()
    upper.var_names = upper.var_names.str.upper()
    u = sg.tl.attribute(upper, x, copy=True)
    assert u.uns["scsig"]["layers"]["attr_ig"]["overlap"]["n_matched_ignoring_case"] > 3000
    np.testing.assert_allclose(u.layers["attr_ig"].toarray(), m.layers["attr_ig"].toarray(), rtol=0, atol=0)
    # human signatures translated into mouse score the same as on the human cells
    sig = {"B": ["MS4A1", "CD79A", "CD79B"], "NK": ["NKG7", "PRF1", "KLRD1"]}  # 1:1 orthologs
    sg.tl.score(m, sg.get.orthologs(sig, source="human", target="mouse"), key_added="sig")
    sg.tl.score(h, sig, key_added="sig")
    np.testing.assert_allclose(m.obsm["sig"].to_numpy(), h.obsm["sig"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_human_cells_given_as_mouse_raise(pseudo_mouse):
    human, _ = pseudo_mouse
    x = sg.models.cross_species(sg.models.load("pbmc-demo"), species="mouse")
    full = sg.datasets.kang_ifnb()[:5].copy()
    with pytest.raises(ValueError, match=r"look like human genes.*model\.base"):
        sg.tl.attribute(full, x)


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS, rule="split")
    folder = x.save(tmp_path / "xm")
    assert (folder / "encoder.safetensors").is_file()
    assert not list(tmp_path.glob(".xm*"))  # no temporary folder left behind
    y = sg.models.load(folder)
    assert isinstance(y, CrossSpeciesModel)
    assert y.gene_order == x.gene_order
    assert y.base.gene_order == HUMAN
    assert y.base.name == "tiny-human"
    assert y.rule == "split"
    assert y.species == "mouse"
    np.testing.assert_array_equal(y.conversion.toarray(), x.conversion.toarray())
    dx, dy = x.describe(), y.describe()
    for d in (dx, dy):  # where it was loaded from differs
        d.pop("source")
        d["cross_species"]["base_model"].pop("source")
    assert dx == dy
    mouse = _mouse_counts(x.gene_order)
    a = sg.tl.attribute(mouse, x, copy=True)
    b = sg.tl.attribute(mouse, y, copy=True)
    np.testing.assert_array_equal(a.layers["attr_ig"].toarray(), b.layers["attr_ig"].toarray())
    # overwrite an existing folder; the provenance survives an h5ad round trip
    x.save(folder)
    b.write_h5ad(tmp_path / "b.h5ad")
    back = ad.read_h5ad(tmp_path / "b.h5ad")
    cs = back.uns["scsig"]["layers"]["attr_ig"]["model"]["cross_species"]
    assert cs["species"] == "mouse"
    assert cs["rule"] == "split"
    assert cs["table"]["name"] == "user"


# ---------------------------------------------------------------------------------------------
# learning the conversion (TRON)
# ---------------------------------------------------------------------------------------------


def test_fit_conversion_learns_masked_weights_only(tmp_path):
    base = _human_model()
    before = {k: v.clone() for k, v in base.encoder.state_dict().items()}
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    mouse = _mouse_counts(x.gene_order, n=60)
    mouse.obs["label"] = pd.Categorical(np.where(mouse.X[:, 1].toarray().ravel() > 1, "hi", "lo"))
    learned, pairs = sg.models.fit_conversion(x, mouse, labels="label", epochs=5, lr=0.05)
    # the pretrained encoder is frozen and untouched
    for k, v in base.encoder.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # only the ortholog pairs carry weights, and they moved
    assert (learned.conversion != 0).sum() <= x.conversion.nnz
    np.testing.assert_array_equal(learned.initial.toarray(), x.conversion.toarray())
    assert set(pairs.columns) >= {"source", "target", "kind", "initial", "weight", "change"}
    assert len(pairs) == x.conversion.nnz
    assert pairs["change"].abs().max() > 0.01
    # the learned model is the pretrained encoder after the learned conversion
    inp = np.random.default_rng(2).random((5, learned.n_genes)).astype(np.float32)
    conv = (learned.conversion @ inp.T.astype(np.float64)).T.astype(np.float32)
    np.testing.assert_allclose(learned.embed(inp), base.embed(conv), rtol=1e-5, atol=1e-6)
    assert learned.describe()["cross_species"]["learned"] is True
    assert len(pairs.attrs["loss_history"]) == 5
    # its provenance survives an h5ad round trip
    sg.tl.attribute(mouse, learned)
    mouse.write_h5ad(tmp_path / "fit.h5ad")
    fit = ad.read_h5ad(tmp_path / "fit.h5ad").uns["scsig"]["layers"]["attr_ig"]["model"]["cross_species"]["fit"]
    assert fit["labels"] == "label"
    assert list(fit["classes"]) == ["hi", "lo"]
    # a strong pull toward the orthology keeps the weights there
    held, pairs2 = sg.models.fit_conversion(x, mouse, labels="label", epochs=2, lr=0.05, l2=1e6)
    assert pairs2["change"].abs().max() < pairs["change"].abs().max()


# ---------------------------------------------------------------------------------------------
# signatures in the other species
# ---------------------------------------------------------------------------------------------


def test_get_orthologs_shapes_and_missing():
    assert sg.get.orthologs(["CD19", "MS4A1"], source="human", target="mouse") == ["Cd19", "Ms4a1"]
    assert sg.get.orthologs(["Cd19"], source="mouse", target="human") == ["CD19"]
    assert sg.get.orthologs({"CD19": 2.0, "NKG7": 1.0}) == {"Cd19": 2.0, "Nkg7": 1.0}
    with pytest.warns(UserWarning, match=r"1 human gene\(s\) have no mouse ortholog.*GNLY"):
        out = sg.get.orthologs({"NK": ["GNLY", "NKG7"]})
    assert out == {"NK": ["Nkg7"]}
    # a user's table, any pair of species
    fish = pd.DataFrame({"zebrafish": ["cd79a"], "human": ["CD79A"]})
    assert sg.get.orthologs(["CD79A"], source="human", target="zebrafish", table=fish) == ["cd79a"]


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input():
    base = _human_model()
    with pytest.raises(ValueError, match=r"No ortholog table is bundled.*orthologs="):
        sg.models.cross_species(base, species="zebrafish")
    with pytest.raises(ValueError, match=r"needs 'source'.*Rename"):
        sg.models.cross_species(base, species="mouse", orthologs=pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(ValueError, match=r"None of the model's 12 genes"):
        sg.models.cross_species(base, species="mouse", orthologs=pd.DataFrame({"source": ["Cd3e"], "target": ["CD3E"]}))
    with pytest.raises(ValueError, match="rule must be one of"):
        sg.models.cross_species(base, species="mouse", orthologs=PAIRS, rule="max")
    with pytest.raises(ValueError, match="model's own species"):
        sg.models.cross_species(base, species="human")
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    with pytest.raises(TypeError, match="model.base"):
        sg.models.cross_species(x, species="mouse", orthologs=PAIRS)
    with pytest.raises(TypeError, match="cross-species model"):
        sg.models.fit_conversion(base, _mouse_counts(HUMAN), labels="x")
    with pytest.raises(KeyError, match="not a column of adata.obs"):
        sg.models.fit_conversion(x, _mouse_counts(x.gene_order), labels="x")
    # data with no gene reachable through the orthologs
    with pytest.raises(ValueError, match="Only 0 of the model's"):
        sg.tl.attribute(_mouse_counts(["Foo1", "Bar2"]), x)


def test_low_reach_warns():
    base = _human_model()
    few = pd.DataFrame({"source": ["Mg0", "Mg1"], "target": ["HG0", "HG1"]})
    with pytest.warns(UserWarning, match="Only 2 of the model's 12 genes have a mouse ortholog"):
        sg.models.cross_species(base, species="mouse", orthologs=few)


def test_ensembl_ids_need_gene_symbols():
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    mouse = _mouse_counts(x.gene_order)
    mouse.var["symbol"] = mouse.var_names
    mouse.var_names = [f"ENSMUSG{i:011d}" for i in range(mouse.n_vars)]
    with pytest.raises(ValueError, match=r"look like Ensembl IDs.*gene_symbols=.*'symbol'"):
        sg.tl.attribute(mouse, x)
    sg.tl.attribute(mouse, x, gene_symbols="symbol")
    assert mouse.var["attr_ig_in_model"].all()
