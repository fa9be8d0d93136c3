"""Names that survive saving: every name scsig files records under round-trips through h5ad and zarr."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scsig as sg
from scsig._uns import decode_key, encode_key, get_record, records

HOSTILE = ["CD4+/CD25 T Reg", "a.b", "..", "sp ace", "interféron β", "back\\slash", "50%"]


@pytest.mark.parametrize("name", HOSTILE)
def test_encode_key_round_trip(name):
    key = encode_key(name)
    assert "/" not in key
    assert "\\" not in key
    assert set(key) != {"."}
    assert decode_key(key) == name


def _read(adata, tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    getattr(adata, f"write_{fmt}")(path)
    return getattr(ad, f"read_{fmt}")(path)


@pytest.fixture
def attributed(toy):
    adata, model = toy
    sg.tl.attribute(adata, model)
    groups = np.array(HOSTILE)[np.arange(adata.n_obs) % len(HOSTILE)]
    adata.obs["label"] = pd.Categorical(groups)
    return adata


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_everything_scsig_writes_round_trips(attributed, tmp_path, fmt):
    adata = attributed
    # obs column names with "/" are refused by anndata's write_zarr itself (scsig warns); uns names are scsig's
    keys = [n for n in HOSTILE if fmt == "h5ad" or ("/" not in n and "\\" not in n and n != "..")]
    for i, key in enumerate(keys):
        sg.tl.score(adata, {key: ["g0", "g1"], "plain": ["g2"]}, key_added=f"s{i}")
        sg.tl.score(adata, ["g3", "g4"], key_added=key)
        sg.tl.hits(adata, key, groupby="label", reference={"group": "a"}, key_added=f"{key}_hit")
    sg.tl.compare_scores(
        adata,
        ["g0", "g1", "g2"],
        contrast="group",
        positive="b",
        groupby="label",
        methods=["attribution"],
        key_added=keys[0],
        min_cells=1,
    )
    back = _read(adata, tmp_path, fmt)
    for section in ("scores", "hits", "compare"):
        assert set(records(back, section)) == set(records(adata, section)), section
    for i, key in enumerate(keys):
        assert get_record(back, "scores", key)["name"] == key
        sigs = {s["name"] for s in get_record(back, "scores", f"s{i}")["signatures"].values()}
        assert sigs == {key, "plain"}
        pd.testing.assert_frame_equal(
            sg.get.hit_thresholds(back, f"{key}_hit"), sg.get.hit_thresholds(adata, f"{key}_hit")
        )
        assert sg.get.hit_thresholds(back, f"{key}_hit").index.tolist() == list(adata.obs["label"].cat.categories)
    table = get_record(back, "compare", keys[0])["table"]
    assert set(table["group"]) == {"all", *HOSTILE}
    sg.pl.compare_scores(back, key=keys[0], show=False)
    sg.pl.gene_attributions(back, keys[1], groupby="label", show=False)


def test_obs_column_with_slash_warns_about_zarr(attributed):
    with pytest.warns(UserWarning, match="write_zarr refuses"):
        sg.tl.score(attributed, ["g0"], key_added="ifn/2")


def test_reads_records_of_the_earlier_layout(attributed, tmp_path):
    """Files written before names were encoded: records under plain names, thresholds as dicts."""
    adata = attributed
    sg.tl.score(adata, ["g0", "g1"], key_added="ifn")
    adata.obs["ifn_hit"] = adata.obs["ifn"] > adata.obs["ifn"].median()
    adata.uns["scsig"]["scores"] = {
        "ifn": {"layer": "attr_ig", "aggregate": "mean", "signatures": {"signature": {"genes": ["g0", "g1"]}}}
    }
    adata.uns["scsig"]["hits"] = {
        "ifn_hit": {"key": "ifn", "thresholds": {"all": 1.5}, "n_hits": {"all": 30}, "groupby": "none"}
    }
    back = _read(adata, tmp_path, "h5ad")
    assert get_record(back, "scores", "ifn")["signatures"]["signature"]["genes"].tolist() == ["g0", "g1"]
    table = sg.get.hit_thresholds(back, "ifn_hit")
    assert table.loc["all", "threshold"] == 1.5
    assert table.loc["all", "n_hits"] == 30
    sg.pl.gene_attributions(back, "ifn", groupby="group", show=False)
    # a new call replaces the old-layout record, under the same name
    sg.tl.hits(back, "ifn", key_added="ifn_hit")
    assert list(records(back, "hits")) == ["ifn_hit"]
