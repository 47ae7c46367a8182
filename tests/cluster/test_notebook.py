"""notebooks/quickstart.ipynb runs end to end (small size) and renders its plot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.cluster  # starts a real Ray cluster

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


@pytest.mark.timeout(600)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    png = tmp_path / "quickstart.png"
    monkeypatch.setenv("RAY_FT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("RAY_FT_NOTEBOOK_PNG", str(png))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "lost evaluations: 0" in outputs
    assert png.exists() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.environ.get("RAY_FT_NOTEBOOK_SMALL") == "1"
