"""sg.settings.verbosity: validated and converted on set; the scsig logger follows it (and scanpy's)."""

from __future__ import annotations

import logging
import sys
import types

import pytest

import scsig as sg
from scsig import _logging as logg
from scsig._settings import Verbosity


@pytest.fixture(autouse=True)
def _restore_verbosity():
    before = sg.settings._verbosity
    yield
    sg.settings._verbosity = before
    logg.configure(sg.settings.verbosity)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Verbosity.error),
        (2, Verbosity.info),
        ("info", Verbosity.info),
        ("DEBUG", Verbosity.debug),
        (Verbosity.hint, 3),
    ],
)
def test_verbosity_is_converted(value, expected):
    sg.settings.verbosity = value
    assert sg.settings.verbosity == expected
    assert isinstance(sg.settings.verbosity, Verbosity)


@pytest.mark.parametrize("value", [5, -1, "loud", True, 2.0, None])
def test_bad_verbosity_names_the_choices(value):
    before = sg.settings.verbosity
    with pytest.raises(ValueError, match=r"verbosity must be an int from 0 to 4 or one of \['error', 'warning'"):
        sg.settings.verbosity = value
    assert sg.settings.verbosity == before


def test_setting_verbosity_sets_the_logger_level():
    sg.settings.verbosity = "info"
    assert logging.getLogger("scsig").level == logging.INFO
    sg.settings.verbosity = 0
    assert logging.getLogger("scsig").level == logging.ERROR


def test_info_lines_printed_at_info_only(capsys):
    sg.settings.verbosity = 1
    logg.info("quiet line")
    assert "quiet line" not in capsys.readouterr().err
    sg.settings.verbosity = "info"
    start = logg.info("loud line")
    logg.info("    finished", time=start)
    err = capsys.readouterr().err
    assert "loud line" in err
    assert "    finished (" in err
    logg.debug("debug line")
    assert "debug line" not in capsys.readouterr().err


def test_attribute_prints_info_lines(capsys):
    adata, model = sg.datasets.toy(n_obs=30, n_vars=40)
    sg.settings.verbosity = 1
    sg.tl.attribute(adata, model, progress=False)
    assert "attribut" not in capsys.readouterr().err.lower()
    sg.settings.verbosity = "info"
    sg.tl.attribute(adata, model, progress=False)
    err = capsys.readouterr().err
    assert "finished" in err
    assert "attr_ig" in err


def test_follows_scanpy_until_set(capsys, monkeypatch):
    """Without its own setting, scsig follows ``scanpy.settings.verbosity`` (a stand-in module here)."""
    fake = types.SimpleNamespace(settings=types.SimpleNamespace(verbosity=Verbosity.warning))
    monkeypatch.setitem(sys.modules, "scanpy", fake)
    sg.settings._verbosity = None
    assert sg.settings.verbosity == Verbosity.warning
    logg.info("hidden line")
    fake.settings.verbosity = 2  # as sc.settings.verbosity = "info" leaves it (an IntEnum)
    assert sg.settings.verbosity == Verbosity.info
    logg.info("shown line")
    err = capsys.readouterr().err
    assert "shown line" in err
    assert "hidden line" not in err
    sg.settings.verbosity = 0  # an explicit setting wins
    logg.info("own setting")
    assert "own setting" not in capsys.readouterr().err


def test_settings_repr():
    assert "verbosity=<Verbosity." in repr(sg.settings)


def test_follows_real_scanpy(capsys):
    sc = pytest.importorskip("scanpy")
    before = sc.settings.verbosity
    sg.settings._verbosity = None
    try:
        sc.settings.verbosity = "info"
        logg.info("via scanpy")
        assert "via scanpy" in capsys.readouterr().err
    finally:
        sc.settings.verbosity = before
