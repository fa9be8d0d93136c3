"""Sphinx configuration for scsig.

Build with ``sphinx-build -W -b html docs docs/_build/html``. Intersphinx inventories are fetched
once into ``docs/_build/intersphinx`` and reused; set ``SCSIG_DOCS_OFFLINE=1`` to skip the network
entirely. Projects whose inventory cannot be had are left out of ``intersphinx_mapping`` and their
names are excused from nitpicky checking, so an offline build passes with ``-W`` while every
reference inside scsig stays checked.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- project -----------------------------------------------------------------------------------------
project = "scsig"
author = "scsig developers"
copyright = f"{datetime.now(UTC):%Y}, {author}"
try:
    release = _version("scsig")
except Exception:  # noqa: BLE001 - building from a tree that is not installed
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "sphinxcontrib.bibtex",
]

templates_path = ["_templates"]
html_static_path: list[str] = []
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "generated/tutorials/.*",
    "validity/*.md",
    "validity/*/*.md",
]
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}  # .rst first: autosummary writes rst
master_doc = "index"
nitpicky = True
suppress_warnings = ["mystnb.unknown_mime_type"]

# -- notebooks: tutorials/ is the source of truth; copied here so sphinx sees them ----------------------
nb_execution_mode = "off"  # outputs are committed; tutorials/run_all.py re-executes them
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

TUTORIALS_SRC = ROOT / "tutorials"
TUTORIALS_DST = HERE / "generated" / "tutorials"


def _sync_tutorials() -> None:
    TUTORIALS_DST.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in TUTORIALS_SRC.glob("*.ipynb")}
    for stale in TUTORIALS_DST.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for src in sorted(TUTORIALS_SRC.glob("*.ipynb")):
        dst = TUTORIALS_DST / src.name
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copy2(src, dst)


_sync_tutorials()


def _settings_doc() -> str:
    import inspect

    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import NumpyDocstring

    from scsig._settings import Settings

    config = Config(napoleon_use_ivar=False, napoleon_use_rtype=True)
    return str(NumpyDocstring(inspect.getdoc(Settings), config, what="class", name="scsig.settings", obj=Settings))


# -- autodoc -----------------------------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True}
autodoc_typehints = "description"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
# "Returns" sections are prose plus a definition list of the fields written (scanpy's style), not
# numpydoc's "type / description" pairs: render them as written, and let sphinx-autodoc-typehints add
# the return type from the annotation.
napoleon_custom_sections = [("Returns", "returns_as_written")]
typehints_defaults = "braces"
always_use_bars_union = True
typehints_document_rtype = True
# sg.settings is an instance: its page (template _templates/settings.rst) documents it as a class named
# ``settings`` whose attributes come from the Settings docstring, so ``:attr:`scsig.settings.progress```
# resolves.
autosummary_context = {"settings_doc": _settings_doc()}
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# -- intersphinx, offline-safe -----------------------------------------------------------------------
INVENTORIES = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "pandas": "https://pandas.pydata.org/pandas-docs/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
    "anndata": "https://anndata.readthedocs.io/en/stable/",
    "mudata": "https://mudata.readthedocs.io/en/latest/",
    "scanpy": "https://scanpy.readthedocs.io/en/stable/",
    "matplotlib": "https://matplotlib.org/stable/",
    "seaborn": "https://seaborn.pydata.org/",
    "torch": "https://docs.pytorch.org/docs/stable/",
    "captum": "https://captum.ai/api/",
    "pooch": "https://www.fatiando.org/pooch/latest/",
    "dask": "https://docs.dask.org/en/stable/",
    "distributed": "https://distributed.dask.org/en/stable/",
}
"""Project -> documentation root (``objects.inv`` lives there)."""

EXTERNAL_NAMES = {
    "python": r"(builtins\.)?(str|int|float|bool|bytes|dict|list|tuple|set|object|type|None|Ellipsis)"
    r"|(collections\.abc|typing|pathlib|os|datetime|logging|concurrent)\..*|Any|Literal|Callable|Sequence|Mapping|Iterator|Path",
    "numpy": r"(numpy|np)\..*",
    "pandas": r"(pandas|pd)\..*",
    "scipy": r"scipy\..*",
    "anndata": r"anndata\..*|AnnData",
    "mudata": r"mudata\..*|MuData",
    "scanpy": r"scanpy\..*",
    "matplotlib": r"matplotlib\..*|Axes|Figure",
    "seaborn": r"seaborn\..*",
    "torch": r"torch\..*",
    "captum": r"captum\..*",
    "pooch": r"pooch(\..*)?",
    "dask": r"dask(\..*)?",
    "distributed": r"distributed(\..*)?",
}
"""Per project, the reference targets to excuse from nitpicky when its inventory is unavailable."""

INVENTORY_CACHE = HERE / "_build" / "intersphinx"
OFFLINE = os.environ.get("SCSIG_DOCS_OFFLINE", "").lower() in {"1", "true", "yes"}


def _fetch(name: str, url: str) -> tuple[str, Path | None]:
    path = INVENTORY_CACHE / f"{name}.inv"
    if path.exists() and path.stat().st_size > 0:
        return name, path
    if OFFLINE:
        return name, None
    try:
        with urllib.request.urlopen(url + "objects.inv", timeout=10) as response:
            data = response.read()
    except Exception:  # noqa: BLE001 - no network, DNS failure, HTTP error: build without this inventory
        return name, None
    if not data.startswith(b"# Sphinx inventory"):
        return name, None
    INVENTORY_CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return name, path


with ThreadPoolExecutor(max_workers=len(INVENTORIES)) as _pool:
    _found = dict(_pool.map(lambda item: _fetch(*item), INVENTORIES.items()))

intersphinx_mapping = {name: (INVENTORIES[name], str(path)) for name, path in _found.items() if path is not None}
missing_inventories = sorted(name for name, path in _found.items() if path is None)
nitpick_ignore_regex = [(r"py:.*", EXTERNAL_NAMES[name]) for name in missing_inventories]
# Private modules and names (never documented, so references to them cannot resolve) and type variables.
nitpick_ignore_regex += [(r"py:.*", r"scsig(\.[a-z]\w*)*\._.*|F|T"), (r"py:class", r"optional")]
# Names in class signatures that autodoc shows as written in the source (the module alias, a private table class).
nitpick_ignore_regex += [(r"py:class", r"sparse\.spmatrix|OrthologTable|TableName")]


def _undo_returns_colon(app, what, name, obj, options, lines) -> None:
    """Drop the ``:`` line sphinx-autodoc-typehints puts under "Returns" for napoleon's type parsing.

    Our "Returns" sections are rendered as written (see ``napoleon_custom_sections``), where that
    line would show up as a stray colon.
    """
    for i in range(len(lines) - 2):
        if lines[i].strip().lower() == "returns" and set(lines[i + 1].strip()) == {"-"} and lines[i + 2] == ":":
            del lines[i + 2]
            return


def setup(app) -> None:
    """Connect the docstring fix-up after sphinx-autodoc-typehints' own step (same priority, later)."""
    app.connect("autodoc-process-docstring", _undo_returns_colon, priority=499)


# -- html --------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "scsig"
html_theme_options = {
    "repository_url": "https://github.com/scsig/scsig",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
