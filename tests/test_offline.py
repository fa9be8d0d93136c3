"""A clone runs offline: nothing the package, tests, tutorials or docs run reads data from beside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"""(\.\./)+shared|/work/shared|["']shared["']\s*/|parents\[\d\]\s*/\s*["']shared""")


def test_nothing_reads_data_beside_the_repository():
    offenders = []
    for folder in ("src", "tests", "tutorials", "docs", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".ipynb", ".md"} or path == Path(__file__):
                continue
            if PATTERN.search(path.read_text(errors="ignore")):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, (
        f"these read the data folder beside the repository, which a user's clone does not have: {offenders}"
    )


def test_bundled_real_datasets_load_offline():
    import scsig as sg

    assert sg.datasets.kang_muscat().shape == (1556, 1267)
    assert sg.datasets.pbmc3k().shape == (2700, 13714)
