"""Shared parameter text for docstrings."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

doc_adata = """\
adata
    Annotated data matrix (cells x genes), or a :class:`~mudata.MuData`; with a MuData the
    modality ``mod`` is read and written."""

doc_mod = """\
mod
    Modality of a :class:`~mudata.MuData` to use. Ignored for an :class:`~anndata.AnnData`."""

doc_layer_counts = """\
layer
    Layer holding raw counts. ``None`` reads ``adata.X``."""

doc_copy = """\
copy
    Return a modified copy instead of writing into ``adata``."""

doc_progress = """\
progress
    Show a progress bar. ``None`` follows :attr:`scsig.settings.progress` (on unless the
    ``SCSIG_PROGRESS`` environment variable is ``0``)."""

doc_plot_common = """\
ax
    Axes to draw into. A new figure is made when ``None``.
show
    Show the figure. ``None`` follows :attr:`scsig.settings.autoshow`; ignored when ``ax`` is given.
save
    Save the figure, as scanpy does: ``True`` writes ``{figdir}/{plot}.{format}`` and a string
    without a folder such as ``"_ifn.png"`` writes ``{figdir}/{plot}_ifn.png`` (``figdir`` and
    ``format``: ``scanpy.settings.figdir`` and ``file_format_figs``; ``plot`` is the function's
    name); a path with a folder is used as it is. Missing folders are created.
return_fig
    Return the :class:`~matplotlib.figure.Figure` instead of the Axes."""


def doc_params(**kwds: str) -> Callable[[F], F]:
    """Replace ``{name}`` placeholder lines of a docstring with shared text, keeping indentation.

    As with :meth:`str.format` (scanpy's ``_doc_params``), literal braces in a decorated docstring
    are written doubled (``f"{{key}}_hit"``) and come out single.
    """

    def dec(obj: F) -> F:
        doc = obj.__doc__
        if doc:
            for name, text in kwds.items():
                pattern = re.compile(rf"^([ \t]*)\{{{name}\}}[ \t]*$", re.MULTILINE)
                doc = pattern.sub(lambda m, t=text: _indent(t, m.group(1)), doc)
            obj.__doc__ = doc.replace("{{", "{").replace("}}", "}")
        return obj

    return dec


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())
