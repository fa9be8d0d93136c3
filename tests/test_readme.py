"""The README's example runs as printed and gives the numbers the README states; the measured numbers
moved to ``docs/benchmarks.md`` each say when, with which command, they were measured."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import matplotlib as mpl
import pytest

import scsig as sg

mpl.use("agg")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"


def _flat(text: str) -> str:
    """The text with every run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


def _hits_pct(obs, mask=None):
    obs = obs if mask is None else obs.loc[mask]
    return 100 * obs.groupby("stim", observed=True)["score_hit"].mean()


def test_readme_example_and_its_numbers():
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, flags=re.DOTALL).group(1)
    assert 'reference={"stim": "CTRL"}' in code
    assert len(code.strip().splitlines()) <= 10, "the README's example stays short"
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    adata = namespace["adata"]
    flat = _flat(text)
    claim = re.search(
        r"([\d.]+) % of control and ([\d.]+) % of stimulated cells are hits \(([\d.]+) % of stimulated B cells, "
        r"([\d.]+)-([\d.]+) % of the other five cell types; with `mode=\"classic\"`, the reference tool's score, "
        r"([\d.]+) % of stimulated cells\)",
        flat,
    )
    assert claim is not None, "the README states the example's hit fractions"
    ctrl, stim, b_stim, low, high, classic = (float(g) for g in claim.groups())
    frac = _hits_pct(adata.obs)
    assert frac["CTRL"] == pytest.approx(ctrl, abs=0.06)
    assert frac["STIM"] == pytest.approx(stim, abs=0.06)
    per_type = (
        100 * adata.obs[adata.obs["stim"] == "STIM"].groupby("seurat_annotations", observed=True)["score_hit"].mean()
    )
    assert per_type["B"] == pytest.approx(b_stim, abs=0.06)
    others = per_type.drop("B")
    assert len(others) == 5
    assert others.min() == pytest.approx(low, abs=0.06)
    assert others.max() == pytest.approx(high, abs=0.06)
    genes = re.search(r"sg\.tl\.score\(adata, (\[.*?\])\)", code).group(1)
    sg.tl.score(adata, ast.literal_eval(genes), mode="classic", key_added="classic")
    sg.tl.hits(adata, "classic", cut=95, reference={"stim": "CTRL"}, key_added="classic_hit")
    pooled = 100 * adata.obs.loc[adata.obs["stim"] == "STIM", "classic_hit"].mean()
    assert pooled == pytest.approx(classic, abs=0.06)


def test_readme_links_resolve():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert "docs/benchmarks.md" in links
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_is_a_users_page():
    text = README.read_text()
    assert len(text.split()) < 1500, "measured tables belong in docs/benchmarks.md"
    assert "cells/s" not in text, "speed figures belong in docs/benchmarks.md, with their date, machine and command"
    assert "benchmarks" in (ROOT / "docs" / "index.md").read_text(), "docs/benchmarks.md is in the toctree"


def _benchmark_rows() -> list[list[str]]:
    rows = []
    for line in BENCHMARKS.read_text().splitlines():
        if line.startswith("| ") and not line.startswith(("| what", "| ---")):
            rows.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return rows


def test_every_benchmark_row_has_a_command_and_a_date():
    rows = _benchmark_rows()
    assert len(rows) >= 30
    last_command = None
    for row in rows:
        assert len(row) == 6, row[0]
        what, *_, command, recorded = row
        assert re.fullmatch(r"20\d\d-\d\d-\d\d \(`[0-9a-f]{7,}`\)", recorded), f"{what[:60]}: no date and commit"
        scripts = re.findall(r"python (benchmarks/\w+\.py)", command)
        if scripts:
            last_command = scripts
        else:  # "same", "the runs above" or empty: the command of the rows before
            assert last_command, f"{what[:60]}: no command"
        for script in scripts:
            assert (ROOT / script).is_file(), f"{script} does not exist"


def test_readme_speed_ratio_is_the_benchmarks_pages():
    """The README's speed claim is the newest row of docs/benchmarks.md, against the reference's fastest setting."""
    text = " ".join(README.read_text().split())
    claim = re.search(r"([\d.]+)x faster than the reference at its fastest batch size", text)
    assert claim, "the README states the speed ratio against the reference's fastest setting"
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    first = next(line for line in page.splitlines() if line.startswith("| IG attributions, SCimilarity shape"))
    assert f"**{claim.group(1)}x the reference's fastest setting**" in first
    default = re.search(r"([\d.]+)x against its default batch size", text)
    assert default, "the README states the ratio against the reference's default batch size too"
    assert f"{default.group(1)}x its default" in first
