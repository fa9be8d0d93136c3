"""Checksummed downloads of public data files: a registry of named files and ``sg.datasets.fetch``."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from .. import _logging as logg
from .._docs import doc_params, doc_progress
from .._settings import settings

__all__ = ["REGISTRY", "RemoteFile", "fetch", "registry"]

CACHE_ENV = "SCSIG_DATA_DIR"
"""Environment variable naming the download cache folder (default: the OS cache folder of ``scsig``)."""

_HEX64 = re.compile(r"^(sha256:)?[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class RemoteFile:
    """A public file that :func:`~scsig.datasets.fetch` can download by name.

    Attributes
    ----------
    name
        The name :func:`~scsig.datasets.fetch` takes; also the file name in the cache.
    url
        Where it is downloaded from.
    sha256
        Its SHA-256; a download whose hash differs is refused.
    size
        Its size in bytes.
    description
        What it holds and where it comes from.
    hash_source
        Where the SHA-256 was taken from.
    """

    name: str
    url: str
    sha256: str
    size: int
    description: str
    hash_source: str


_GEO = "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE96nnn/GSE96583/suppl/"
_GEO_HASHES = (
    "SHA-256 and size as pinned, identically, by several independent public analysis repositories that "
    "download these GEO files and check them before use. scsig's own test suite cannot reach GEO; a download "
    "whose hash differs is refused, never used."
)

REGISTRY: dict[str, RemoteFile] = {
    f.name: f
    for f in (
        RemoteFile(
            name="GSE96583_RAW.tar",
            url=_GEO + "GSE96583_RAW.tar",
            sha256="e5d41a3248a813f99d68fd5c9eb9773de7f46a83680a67f4a02d683b8955fe80",
            size=76_195_840,
            description=(
                "Kang et al. 2018 (GEO GSE96583), all count matrices: batch 1 (GSM2560245-7) and batch 2 "
                "(GSM2560248 control, GSM2560249 IFN-beta; Matrix Market, genes x barcodes, with barcode files)."
            ),
            hash_source=_GEO_HASHES,
        ),
        RemoteFile(
            name="GSE96583_batch2.genes.tsv.gz",
            url=_GEO + "GSE96583_batch2.genes.tsv.gz",
            sha256="93aa4e9b530ef9d6411ca129b416324c5cc1cc5a01a1fa6ed4f4a845480ed3ca",
            size=277_054,
            description="Kang et al. 2018 (GEO GSE96583), batch 2 genes (Ensembl ID, symbol): rows of the matrices.",
            hash_source=_GEO_HASHES,
        ),
        RemoteFile(
            name="GSE96583_batch2.total.tsne.df.tsv.gz",
            url=_GEO + "GSE96583_batch2.total.tsne.df.tsv.gz",
            sha256="1d57e72e92ca8695250e88cc0f1c3fa8c0be1175d974f8b427c58f1274dc6c09",
            size=756_342,
            description=(
                "Kang et al. 2018 (GEO GSE96583), batch 2 cell metadata: t-SNE, donor (ind), stim, cell type, "
                "multiplet call for 29,065 barcodes."
            ),
            hash_source=_GEO_HASHES,
        ),
        RemoteFile(
            name="scirpy-0.22.5.tar.gz",
            url=(
                "https://files.pythonhosted.org/packages/87/ee/"
                "3adf2e327107c4f37f1756503c639cb6b8f736d56e34d772b11f9f355bfc/scirpy-0.22.5.tar.gz"
            ),
            sha256="7b532993a7a396d35c81d7178f03ab7a2e6a6ffd5816e78ec0c4f246380bd427",
            size=36_853_571,
            description=(
                "scirpy 0.22.5 source archive (PyPI, BSD-3-Clause). Its docs/tutorials/example_data/liao-2019-covid19 "
                "holds the Cell Ranger gene-expression matrices and TCR contig tables of bronchoalveolar lavage from "
                "patients C144, C146, C149 of Liao et al. 2020 (GEO GSE145926)."
            ),
            hash_source="The SHA-256 PyPI publishes for this file (the #sha256= of its link on pypi.org/simple/scirpy/).",
        ),
    )
}
"""Named public files :func:`~scsig.datasets.fetch` knows."""


def registry() -> pd.DataFrame:
    """The named files :func:`~scsig.datasets.fetch` can download, one row per file.

    Returns
    -------
    A DataFrame indexed by name with columns ``url``, ``sha256``, ``size`` (bytes), ``description``
    and ``hash_source``.

    Examples
    --------
    >>> import scsig as sg
    >>> "GSE96583_RAW.tar" in sg.datasets.registry().index
    True
    """
    frame = pd.DataFrame([asdict(f) for f in REGISTRY.values()])
    return frame.set_index("name")


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import pooch

    return Path(pooch.os_cache("scsig"))


def _safe_fname(fname: str, *, given: bool) -> str:
    """``fname`` checked to be a plain file name inside the cache folder (no separators, no ``..``)."""
    name = str(fname)
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).is_absolute()
        or Path(name).name != name
    )
    if bad:
        what = "fname" if given else "The file name taken from the URL"
        msg = (
            f"{what} {name!r} is not a plain file name; it must name a file inside the cache folder "
            "(no '/', '\\', '..' or absolute path). Pass fname='<name>' and choose the folder with cache_dir=."
        )
        raise ValueError(msg)
    return name


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a failed download (pooch downloads over HTTP with requests)."""
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with pooch
        return (ConnectionError,)
    return (requests.RequestException, ConnectionError)


@doc_params(doc_progress=doc_progress)
def fetch(
    name: str,
    *,
    known_hash: str | None = None,
    fname: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Path:
    """Download a public file once, check its SHA-256, and return its local path.

    ``name`` is either a name from :func:`registry` (its URL and SHA-256 are known) or an
    ``http(s)://`` URL together with ``known_hash``. A file already in the cache with the right
    hash is not downloaded again; a download whose hash differs raises and is not kept.
    Downloads go through :mod:`pooch`.

    Parameters
    ----------
    name
        A registered name (see :func:`registry`) or a URL.
    known_hash
        SHA-256 of the file at a URL, as 64 hex digits, optionally prefixed ``"sha256:"``.
        Required with a URL; must be ``None`` (or equal the registered hash) with a name.
    fname
        File name in the cache. Default: the registered name, or the URL's last path component.
        A plain file name: path separators, ``..`` and absolute paths are refused, so a
        download never lands outside ``cache_dir``.
    cache_dir
        Folder to keep downloads in. Default: ``$SCSIG_DATA_DIR`` when set, else the operating
        system's cache folder for ``scsig`` (e.g. ``~/.cache/scsig`` on Linux).
    {doc_progress}

    Returns
    -------
    The path of the verified local file.

    Raises
    ------
    ConnectionError
        When the download fails (no network, an HTTP error); the message names the file's path in
        the cache, where a copy with the right hash is used without downloading.

    Examples
    --------
    >>> import scsig as sg
    >>> path = sg.datasets.fetch("GSE96583_batch2.total.tsne.df.tsv.gz")  # doctest: +SKIP
    """
    try:
        import pooch
    except ImportError as err:  # pragma: no cover - pooch is a core dependency
        msg = "Downloading data needs pooch: pip install pooch"
        raise ImportError(msg) from err

    if name in REGISTRY:
        entry = REGISTRY[name]
        if known_hash is not None and known_hash.lower().removeprefix("sha256:") != entry.sha256:
            msg = f"known_hash={known_hash!r} differs from the registered SHA-256 of {name!r} ({entry.sha256})."
            raise ValueError(msg)
        url, sha, default_fname = entry.url, entry.sha256, entry.name
    elif urlparse(name).scheme in ("http", "https", "ftp"):
        if known_hash is None:
            msg = (
                f"Pass known_hash= the SHA-256 of {name!r}: scsig downloads only files it can verify. "
                "(Compute it once with `sha256sum` on a copy you trust.)"
            )
            raise ValueError(msg)
        url, sha = name, known_hash
        default_fname = Path(urlparse(name).path).name or "download"
    else:
        known = ", ".join(sorted(REGISTRY))
        msg = f"{name!r} is neither a registered file nor a URL. Registered files: {known}."
        raise KeyError(msg)
    if not _HEX64.match(sha):
        msg = f"known_hash must be a SHA-256 (64 hex digits, optionally prefixed 'sha256:'), got {sha!r}."
        raise ValueError(msg)
    sha = sha.lower().removeprefix("sha256:")

    target = _safe_fname(fname if fname is not None else default_fname, given=fname is not None)
    folder = _cache_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    show = settings.progress if progress is None else progress
    start = logg.info(f"fetching {url}")
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{sha}", fname=target, path=folder, progressbar=show)
    except _network_errors() as err:
        msg = (
            f"Could not download {url} ({type(err).__name__}: {err}). Check the network connection (or proxy), "
            f"or put a copy of the file at {folder / target}: a file there whose SHA-256 is {sha} is used "
            "without downloading."
        )
        raise ConnectionError(msg) from err
    logg.info(f"    finished: {path}", time=start)
    return Path(path)
