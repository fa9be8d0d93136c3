"""The on-disk attribution atlas: many datasets, stored gene-major, queried by signature.

See :class:`scsig.Atlas`. Needs the ``atlas`` extra (``pip install 'scsig[atlas]'``: tensorstore,
zarr, dask); importing TileDB atlases needs ``tiledb``, cluster queries ``dask.distributed``.
"""

from __future__ import annotations

from ._atlas import Atlas

__all__ = ["Atlas"]
