"""Every script in ``examples/`` runs (on small sizes), so the examples never rot.

Each example reads ``SPARSE_LRP_EXAMPLES_SMALL=1`` to shrink its data and training; the
scripts run in this process (``runpy``) as ``__main__``, exactly as ``python examples/X.py``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"explain_node_classifier.py", "graph_classification.py", "sparse_mlp.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path, monkeypatch, capsys):
    monkeypatch.setenv("SPARSE_LRP_EXAMPLES_SMALL", "1")
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{path.name} printed nothing"
