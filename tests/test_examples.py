"""Every script in ``examples/`` runs (on small sizes), so the examples never rot.

Each example reads ``SPARSE_LRP_EXAMPLES_SMALL=1`` to shrink its data and training; the
scripts run in this process (``runpy``) as ``__main__``, exactly as ``python examples/X.py``.
"""

from __future__ import annotations

import re
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


def test_custom_layer_handler_example_matches_gradient_times_input(monkeypatch, capsys):
    """The custom handler example prints its own check, LRP-0 against gradient x input
    (its gated convolutions have zero biases): the printed difference must be rounding
    and the explained logit non-trivial (a 0-hop subgraph once made both 0)."""
    path = next(p for p in EXAMPLES if p.name == "custom_layer_handler.py")
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    diff = float(re.search(r"max \|LRP-0 - grad\*input\|\s+(\S+)", out).group(1))
    logit = float(re.search(r"explained logit\s+(\S+)", out).group(1))
    total = float(re.search(r"sum of feature relevance\s+(\S+)", out).group(1))
    assert diff < 1e-5 * max(1.0, abs(logit))
    assert logit != 0 and total == pytest.approx(logit, rel=1e-4)
