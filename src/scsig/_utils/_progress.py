"""Progress bars: tqdm's notebook-aware bar when shown, a plain silent one otherwise."""

from __future__ import annotations

from typing import Any

__all__ = ["tqdm"]


def tqdm(*args: Any, disable: bool = False, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` when the bar is shown; ``tqdm.tqdm`` (silent) when ``disable``.

    A disabled bar never touches the notebook front end, so a Jupyter session without ipywidgets
    gets no "IProgress not found" warning from work that asked for no progress bar.
    """
    if disable:
        from tqdm import tqdm as plain

        return plain(*args, disable=True, **kwargs)
    from tqdm.auto import tqdm as auto

    return auto(*args, **kwargs)
