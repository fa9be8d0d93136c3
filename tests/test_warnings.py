"""Warnings name the user's line (``stacklevel``), however deep inside scsig they are raised.

Each case calls a public function from this file in a way that warns, and checks that every scsig
warning it raised points at this file (``warning.filename == __file__``), not at a line of scsig.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scsig as sg
from scsig._utils._warn import user_stacklevel


@pytest.fixture(scope="module")
def attributed():
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    return adata, model


def _ours(record, match):
    got = [w for w in record if match in str(w.message)]
    assert got, f"no warning matching {match!r}: {[str(w.message) for w in record]}"
    return got


def _check(record, match):
    assert [w.filename for w in _ours(record, match)] == [__file__] * len(_ours(record, match))


def test_user_stacklevel_outside_scsig_is_one():
    assert user_stacklevel() == 1


def test_score_missing_genes(attributed):
    adata, _ = attributed
    with pytest.warns(UserWarning, match="are left out") as record:
        sg.tl.score(adata.copy(), ["g0", "g1", "not_a_gene"])
    _check(record, "are left out")


def test_several_signatures_missing_genes(attributed):
    adata, _ = attributed
    with pytest.warns(UserWarning, match="are left out") as record:
        sg.tl.score(adata.copy(), {"a": ["g0", "nope"], "b": ["g1", "nada"]})
    _check(record, "are left out")


def test_attribute_on_a_view():
    adata, model = sg.datasets.toy()
    with pytest.warns(UserWarning, match="view") as record:
        sg.tl.attribute(adata[:30], model, n_steps="auto", progress=False)
    _check(record, "view")


def test_prepare_with_few_model_genes():
    adata, model = sg.datasets.toy()
    small = adata[:, :15].copy()
    with pytest.warns(UserWarning, match="The model sees only") as record:
        sg.pp.prepare(small, model, min_overlap=5)
    _check(record, "The model sees only")


def test_hits_percentile_that_looks_like_a_fraction(attributed):
    adata, _ = attributed
    adata = adata.copy()
    sg.tl.score(adata, ["g0", "g1"])
    with pytest.warns(UserWarning, match="If you meant the fraction") as record:
        sg.tl.hits(adata, "score", cut=0.95)
    _check(record, "If you meant the fraction")


def test_hits_unlabelled_cells(attributed):
    adata, _ = attributed
    adata = adata.copy()
    sg.tl.score(adata, ["g0", "g1"])
    adata.obs["grp"] = adata.obs["group"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("grp")] = np.nan
    with pytest.warns(UserWarning, match="have no 'grp' label") as record:
        sg.tl.hits(adata, "score", groupby="grp")
    _check(record, "have no 'grp' label")


def test_orthologs_without_a_match():
    with pytest.warns(UserWarning, match="have no mouse ortholog") as record:
        sg.get.orthologs(["CD19", "NOT_A_GENE_XYZ"], as_signature=True)
    _check(record, "have no mouse ortholog")


def test_atlas_attribute_names_the_dataset_and_the_callers_line(tmp_path):
    adata, model = sg.datasets.toy()
    x = adata.X.toarray()
    x[2, :] = 0
    adata.X = sparse.csr_matrix(x)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.warns(UserWarning, match="zero counts") as record:
        atlas.attribute([adata[:30].copy(), adata[30:].copy()], model, names=["first", "second"], n_steps="auto",
                        progress=False)  # fmt: skip
    _check(record, "zero counts")
    assert all("'first'" in str(w.message) for w in _ours(record, "zero counts"))


def test_atlas_attribute_prefixes_warnings_with_the_dataset(tmp_path):
    adata, model = sg.datasets.toy()
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    few = adata[:, :15].copy()
    with pytest.warns(UserWarning, match="The model sees only") as record:
        atlas.attribute([adata, few], model, names=["full", "few_genes"], n_steps="auto", min_overlap=5,
                        progress=False)  # fmt: skip
    got = _ours(record, "The model sees only")
    assert [str(w.message).split(":")[0] for w in got] == ["dataset 'few_genes'"]
    _check(record, "The model sees only")


def test_atlas_query_that_selects_no_cells(tmp_path, attributed):
    adata, model = attributed
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    with pytest.warns(UserWarning, match="selects no cells") as record:
        atlas.score(["g0", "g1"], obs_filter={"group": ["no such group"]})
    _check(record, "selects no cells")


def test_atlas_gene_importance_warnings(tmp_path, attributed):
    adata, model = attributed
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    labelled = adata.copy()
    labelled.obs["group"] = labelled.obs["group"].astype(object)
    labelled.obs.iloc[:3, labelled.obs.columns.get_loc("group")] = np.nan
    atlas.add(labelled, name="labelled", progress=False)
    atlas.add(adata.copy(), name="other", obs_columns=[], progress=False)
    with pytest.warns(UserWarning, match="no .group. column") as record:
        atlas.gene_importance("group", progress=False)
    _check(record, "no 'group' column")
    _check(record, "without a 'group' label")


def test_no_fixed_stacklevel_in_the_package():
    """A fixed ``stacklevel`` points at the user's line only at one call depth: every warning takes user_stacklevel()."""
    import re
    from pathlib import Path

    root = Path(sg.__file__).parent
    fixed = [
        f"{p.relative_to(root)}:{i}"
        for p in root.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"stacklevel=\d", line) and "#" not in line.split("stacklevel")[0]
    ]
    assert not fixed, f"fixed stacklevels: {fixed}"
