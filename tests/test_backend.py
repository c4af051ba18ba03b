"""Scatter backends: torch (index_add_) and torch_scatter give the same results;
selecting backends is validated and ``use_backend`` always restores the previous one."""

from __future__ import annotations

import pytest
import torch
from test_rules_reference import RULES, make_rule, random_graph

import sparse_lrp
import sparse_lrp.backend as backend_module
from sparse_lrp import available_backends, edge_lrp, get_backend, linear_lrp, set_backend, use_backend

HAS_TORCH_SCATTER = "torch_scatter" in available_backends()


def fake_torch_scatter(calls):
    """A stand-in for ``torch_scatter.scatter_add`` (same signature), counting calls."""

    def scatter_add(src, index, dim=0, out=None, dim_size=None):
        assert dim == 0
        calls.append(src.shape[0])
        if out is None:
            out = src.new_zeros((dim_size, *src.shape[1:]))
        return out.index_add_(0, index.to(torch.long), src)

    return scatter_add


@pytest.fixture
def two_backends(monkeypatch):
    """Make "torch_scatter" selectable even where it is not installed (a fake one)."""
    calls: list[int] = []
    if not HAS_TORCH_SCATTER:
        monkeypatch.setattr(backend_module, "_TORCH_SCATTER", fake_torch_scatter(calls))
    assert available_backends() == ["torch", "torch_scatter"]
    return calls


def test_available_backends_and_default():
    backends = available_backends()
    assert backends[0] == "torch"
    assert set(backends) <= {"torch", "torch_scatter"}
    assert get_backend() in backends
    assert sparse_lrp.available_backends is available_backends


def test_backend_fixture_selects_each_backend(backend):
    assert get_backend() == backend
    assert backend in available_backends()


def test_set_backend_unknown_name_raises():
    before = get_backend()
    with pytest.raises(ValueError, match="unknown scatter backend 'nope'"):
        set_backend("nope")
    assert get_backend() == before


@pytest.mark.skipif(HAS_TORCH_SCATTER, reason="torch_scatter is installed and works")
def test_set_backend_unavailable_torch_scatter_raises():
    with pytest.raises(ValueError, match="'torch_scatter' is not available"):
        set_backend("torch_scatter")
    assert get_backend() == "torch"


def test_use_backend_unknown_name_leaves_backend_unchanged():
    before = get_backend()
    with pytest.raises(ValueError, match="unknown scatter backend"), use_backend("nope"):
        pytest.fail("the body must not run")
    assert get_backend() == before


def test_use_backend_switches_and_restores(two_backends):
    with use_backend("torch"):
        with use_backend("torch_scatter"):
            assert get_backend() == "torch_scatter"
            with use_backend("torch"):
                assert get_backend() == "torch"
            assert get_backend() == "torch_scatter"
        assert get_backend() == "torch"


@pytest.mark.parametrize("outer,inner", [("torch", "torch_scatter"), ("torch_scatter", "torch")])
def test_use_backend_restores_after_exception(outer, inner, two_backends):
    before = get_backend()
    set_backend(outer)
    try:
        with pytest.raises(RuntimeError, match="boom"), use_backend(inner):
            assert get_backend() == inner
            raise RuntimeError("boom")
        assert get_backend() == outer
        # also when the body raises something pytest does not expect to catch here
        with pytest.raises(KeyError), use_backend(inner):
            raise KeyError("x")
        assert get_backend() == outer
    finally:
        set_backend(before)


def test_selected_backend_is_the_one_called(two_backends):
    """The scatter strategy sums its messages with the selected backend's scatter_add."""
    if HAS_TORCH_SCATTER:
        pytest.skip("counts calls of the fake backend, which is only installed without torch_scatter")
    ei = random_graph(0)
    x = torch.rand(9, 2, dtype=torch.float64)
    R = torch.rand(9, 2, dtype=torch.float64)
    with use_backend("torch"):
        expected = edge_lrp(x, ei, None, R, sparse_lrp.Epsilon(), strategy="scatter")
    assert two_backends == []  # the torch backend never calls torch_scatter
    with use_backend("torch_scatter"):
        got = edge_lrp(x, ei, None, R, sparse_lrp.Epsilon(), strategy="scatter")
    assert len(two_backends) > 0
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)


def _results(rule_id, spec):
    g = torch.Generator().manual_seed(3)
    ei = random_graph(2)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    w = torch.randn(ei.shape[1], generator=g, dtype=torch.float64)
    R = torch.randn(9, 3, generator=g, dtype=torch.float64)
    b = torch.randn(9, 3, generator=g, dtype=torch.float64)
    rule = make_rule(spec, 3) if rule_id != "ZBoxVec" else sparse_lrp.ZBox(-torch.ones(9, 1), torch.ones(9, 1))
    out = []
    for strategy in ("scatter", "spmm"):
        out += list(
            edge_lrp(x, ei, w, R, rule, bias=b, strategy=strategy, return_edge_relevance=True, return_absorbed=True)
        )
        for max_memory in (200, 2**20):
            out += list(
                edge_lrp(x, ei, w, R, rule, strategy=strategy, max_memory=max_memory, return_edge_relevance=True)
            )
    xl = torch.randn(4, 9, generator=g, dtype=torch.float64)
    Wl = torch.randn(5, 9, generator=g, dtype=torch.float64) * (torch.rand(5, 9, generator=g) < 0.5)
    Rl = torch.randn(4, 5, generator=g, dtype=torch.float64)
    for strategy in ("scatter", "spmm"):
        out.append(linear_lrp(xl, Wl.to_sparse_csr(), Rl, make_rule(spec, 9), strategy=strategy))
    return out


@pytest.mark.parametrize("rule_id,spec", RULES, ids=[r[0] for r in RULES])
def test_torch_and_torch_scatter_identical(rule_id, spec):
    if not HAS_TORCH_SCATTER:
        pytest.skip("torch_scatter is not installed (or broken)")
    with use_backend("torch"):
        ref = _results(rule_id, spec)
    with use_backend("torch_scatter"):
        got = _results(rule_id, spec)
    assert len(ref) == len(got) > 0
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule_id,spec", RULES, ids=[r[0] for r in RULES])
def test_fake_second_backend_identical(rule_id, spec, two_backends):
    """Where torch_scatter is missing, the backend plumbing still runs end to end."""
    with use_backend("torch"):
        ref = _results(rule_id, spec)
    with use_backend("torch_scatter"):
        got = _results(rule_id, spec)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
