"""Shared helpers: choices from Literals, optional imports, thread counts, the CSR builder, to_memory."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch
from scipy import sparse

from scsig._utils import (
    CSRBuilder,
    check_choice,
    check_installed,
    import_optional,
    literal_values,
    threads,
    to_memory,
)

Kind = Literal["a", "b"]


def test_literal_values():
    assert literal_values(Kind) == ("a", "b")
    assert literal_values(Kind | None) == ("a", "b", None)
    assert literal_values(Literal[Kind, "c"]) == ("a", "b", "c")
    assert literal_values(int) == ()


@pytest.mark.parametrize("value", ["a", "b"])
def test_check_choice_accepts(value):
    assert check_choice("kind", value, Kind) == value


@pytest.mark.parametrize("value", ["c", "A", None, 1, ["a"], np.array(["a", "b"])])
def test_check_choice_rejects_with_the_choices(value):
    with pytest.raises(ValueError, match=r"kind must be one of 'a', 'b'; got "):
        check_choice("kind", value, Kind)


def test_check_choice_none_and_bool():
    assert check_choice("scale", None, Kind | None) is None
    with pytest.raises(ValueError, match="got True"):
        check_choice("flag", True, Literal[0, 1])
    with pytest.raises(TypeError, match="no Literal values"):
        check_choice("x", "a", str)


def test_import_optional_names_the_extra():
    assert import_optional("json", purpose="x", extra="atlas").__name__ == "json"
    with pytest.raises(ImportError, match=r"Querying needs the package 'nosuchpkg_zz': pip install 'scsig\[atlas\]'"):
        import_optional("nosuchpkg_zz.sub", purpose="Querying", extra="atlas")
    check_installed("json", purpose="x", extra="compare")
    with pytest.raises(ImportError, match=r"pip install 'scsig\[compare\]'"):
        check_installed("nosuchpkg_zz.sub", purpose="method 'x'", extra="compare")


def test_threads_sets_and_restores():
    import numba

    before = (torch.get_num_threads(), numba.get_num_threads())
    with threads(1, numba=True):
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before

    def fail_inside():
        with threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_inside()
    assert torch.get_num_threads() == before[0]
    with threads(None, numba=True):
        assert (torch.get_num_threads(), numba.get_num_threads()) == before


@pytest.mark.parametrize("capacity", ["exact", "small", None])
def test_csr_builder_equals_vstack(capacity):
    rng = np.random.default_rng(0)
    blocks = [sparse.random(n, 9, density=0.3, format="csr", random_state=rng, dtype=np.float32) for n in (3, 0, 5, 4)]
    nnz = sum(b.nnz for b in blocks)
    builder = CSRBuilder(9, {"exact": nnz, "small": nnz // 2, None: None}[capacity])
    for b in blocks:
        builder.append(b)
    out = builder.build()
    expected = sparse.vstack(blocks, format="csr")
    assert out.shape == expected.shape
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.toarray(), expected.toarray())
    np.testing.assert_array_equal(out.indptr, expected.indptr)


def test_to_memory_reads_a_dask_block():
    da = pytest.importorskip("dask.array")
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    lazy = da.from_array(x, chunks=2)
    out = to_memory(lazy[1:4])
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, x[1:4])
    m = sparse.csr_matrix(x)
    assert to_memory(m) is m
