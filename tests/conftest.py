"""Shared fixtures for the sparse_lrp test suite.

``backend`` runs a test once per scatter backend that works in this process
(``"torch"`` always, ``"torch_scatter"`` when it is installed and passes the probe),
so every kernel test exercises both implementations of ``scatter_add``.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from sparse_lrp import available_backends, get_backend, set_backend, use_backend

BACKENDS = available_backends()

# The suite runs many tiny products; on a small shared machine intra-op threads only
# add contention (CSR products slow down by an order of magnitude), so use one.
torch.set_num_threads(1)


@pytest.fixture
def clean_handlers():
    """Registrations made by a test must not leak into other tests."""
    from sparse_lrp.layers import _HANDLERS, _SUBGRAPH

    saved, declared = dict(_HANDLERS), dict(_SUBGRAPH)
    yield
    _HANDLERS.clear()
    _HANDLERS.update(saved)
    _SUBGRAPH.clear()
    _SUBGRAPH.update(declared)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Select each available scatter backend for the duration of one test."""
    with use_backend(request.param):
        assert get_backend() == request.param
        yield request.param


@pytest.fixture(autouse=True)
def _restore_backend():
    """No test may leak a changed global backend into the next one."""
    before = get_backend()
    yield
    after = get_backend()
    if after != before:
        set_backend(before)
        pytest.fail(f"test left the scatter backend at {after!r} instead of {before!r}")


@pytest.fixture(autouse=True)
def _single_targets_on_subgraphs(request, monkeypatch):
    """A single node target on a graph as small as the tests' runs on the whole graph by
    default (explain.WHOLE_GRAPH_ROWS). The suite's graphs would then never take the k-hop
    subgraph path that large graphs take, so it is pinned here; tests marked
    ``default_paths`` (tests/test_small_graphs.py) check the default choice itself."""
    if request.node.get_closest_marker("default_paths") is None:
        explain_module = importlib.import_module("sparse_lrp.explain")  # (the module, not the function)
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)
    yield


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["all rows", "active rows"])
def rows_mode(request, monkeypatch):
    """Run a model test with the kernel on whole maps, then cut to relevant rows always.

    By default only large maps with few relevant output rows are cut down; the test
    graphs are small, so "active rows" lowers those thresholds to take that path on
    every layer that has any row without relevance.
    """
    from sparse_lrp.layers import base

    if request.param == "active rows":
        monkeypatch.setattr(base, "RESTRICT_MIN_ROWS", 0)
        monkeypatch.setattr(base, "RESTRICT_MAX_SHARE", 1.0)
    else:
        monkeypatch.setattr(base, "RESTRICT_MIN_ROWS", 2**62)
    return request.param
