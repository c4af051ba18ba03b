"""Property tests (hypothesis): random shapes, densities and signs in float64.

Values are drawn as multiples of 1/4 in [-3, 3] for the exactness properties: every
denominator is then computed exactly whatever the summation order, so exact zeros
(dead units) occur often and are detected identically by library and reference.
Stabilisers are drawn from values that are exact in float32 too (0, 2**-10, 1/2) so that
these properties stay informative independently of the stabiliser's own precision,
which ``test_kernel.test_stabilizer_is_exact_in_float64`` pins down.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rules_reference import RULE_SPECS, ref_edge_lrp, ref_epsilon_multigraph, ref_lrp

from sparse_lrp import Epsilon, Flat, Z, ZBox, edge_lrp, linear_lrp

F64 = torch.float64
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STABILIZERS = [0.0, 2.0**-10, 0.5]
QUARTERS = st.integers(-12, 12).map(lambda k: k / 4)


def build_rule(spec, n_in, stabilizer, zero_bias=False):
    _, cls, kwargs = spec
    kw = kwargs(n_in)
    if cls is Z:
        return Epsilon(0.0, zero_bias=zero_bias)
    if cls is Epsilon:
        kw["epsilon"] = stabilizer
    else:
        kw["stabilizer"] = stabilizer
    return cls(**kw, zero_bias=zero_bias)


def tensor(draw, shape, values=QUARTERS):
    n = 1
    for s in shape:
        n *= s
    return torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=F64).reshape(shape)


@st.composite
def linear_cases(draw, values=QUARTERS, stabilizers=tuple(STABILIZERS)):
    B = draw(st.integers(1, 4))
    n_in = draw(st.integers(1, 6))
    n_out = draw(st.integers(1, 6))
    x = tensor(draw, (B, n_in), values)
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    keep = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=n_out * n_in, max_size=n_out * n_in)))
    W = tensor(draw, (n_out, n_in), values) * (keep.reshape(n_out, n_in) < density)
    # force some all-zero input rows and all-zero weight rows
    if draw(st.booleans()):
        x[draw(st.integers(0, B - 1))] = 0.0
    if draw(st.booleans()):
        W[draw(st.integers(0, n_out - 1))] = 0.0
    R = tensor(draw, (B, n_out), values)
    b = tensor(draw, (n_out,), values) if draw(st.booleans()) else None
    spec = draw(st.sampled_from(RULE_SPECS))
    rule = build_rule(spec, n_in, draw(st.sampled_from(stabilizers)), zero_bias=draw(st.booleans()))
    return x, W, R, b, rule


@st.composite
def graph_cases(draw, simple: bool, values=QUARTERS):
    n_in = draw(st.integers(1, 6))
    n_out = draw(st.integers(1, 6))
    C = draw(st.integers(1, 3))
    n_edges = draw(st.integers(0, 14))
    src = draw(st.lists(st.integers(0, n_in - 1), min_size=n_edges, max_size=n_edges))
    dst = draw(st.lists(st.integers(0, n_out - 1), min_size=n_edges, max_size=n_edges))
    ei = torch.tensor([src, dst], dtype=torch.long).reshape(2, n_edges)
    if simple and n_edges:
        ei = torch.unique(ei, dim=1)
    E = ei.shape[1]
    x = tensor(draw, (n_in, C), values)
    w = tensor(draw, (E,), values)
    R = tensor(draw, (n_out, C), values)
    bias = tensor(draw, (n_out, C), values) if draw(st.booleans()) else None
    return ei, x, w, R, bias


def assert_close_scaled(a, b, what=""):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale, msg=lambda m: f"{what}: {m}")


@SETTINGS
@given(case=linear_cases())
def test_sparse_and_dense_equal_reference(case, backend):
    x, W, R, b, rule = case
    for layout in ("dense", "coo", "csr"):
        Ws = {"dense": W, "coo": W.to_sparse_coo(), "csr": W.to_sparse_csr()}[layout]
        mask = torch.ones(W.shape, dtype=torch.bool) if layout == "dense" else W != 0
        exp_r, exp_a = ref_lrp(rule, x, W, R, b, mask)
        for strategy in ("spmm", "scatter"):
            r, a = linear_lrp(x, Ws, R, rule, b, strategy=strategy, return_absorbed=True)
            assert torch.isfinite(r).all() and torch.isfinite(a).all()
            assert_close_scaled(r, exp_r, f"{rule!r} {layout} {strategy} R_in")
            assert_close_scaled(a, exp_a, f"{rule!r} {layout} {strategy} absorbed")


@SETTINGS
@given(case=linear_cases())
def test_conservation_with_absorbed(case, backend):
    """``R_in.sum() + absorbed.sum() == R.sum()`` per sample, for every rule and layout."""
    x, W, R, b, rule = case
    for Ws in (W, W.to_sparse_csr()):
        r, a = linear_lrp(x, Ws, R, rule, b, return_absorbed=True)
        assert_close_scaled(r.sum(1) + a.sum(1), R.sum(1), repr(rule))


@SETTINGS
@given(case=linear_cases())
def test_epsilon0_conserves_over_nonzero_denominators(case, backend):
    """LRP-0 without bias: the input relevance sums to the relevance of exactly those
    outputs whose forward z_j is non-zero; the others are dropped."""
    x, W, R, _, _ = case
    z = x @ W.T  # exact: quarter-integers
    live = z != 0
    for Ws in (W.to_sparse_coo(), W.to_sparse_csr(), W):
        for strategy in ("spmm", "scatter"):
            r = linear_lrp(x, Ws, R, Epsilon(0.0), strategy=strategy)
            assert_close_scaled(r.sum(1), (R * live).sum(1), "Epsilon(0)")


@SETTINGS
@given(case=graph_cases(simple=False))
def test_edge_strategies_agree_and_epsilon_matches_multigraph_reference(case, backend):
    ei, x, w, R, bias = case
    for eps in STABILIZERS:
        outs = [
            edge_lrp(
                x,
                ei,
                w,
                R,
                Epsilon(eps),
                bias=bias,
                strategy=s,
                return_edge_relevance=True,
                return_absorbed=True,
            )
            for s in ("scatter", "spmm", "auto")
        ]
        for other in outs[1:]:
            for a, e in zip(other, outs[0]):
                assert_close_scaled(a, e, "strategy")
        exp = ref_epsilon_multigraph(eps, x, ei, w, R, bias)
        for a, e, name in zip(outs[0], exp, ("R_in", "edge", "absorbed")):
            assert_close_scaled(a, e, name)
        r_in, edge, _ = outs[0]
        assert_close_scaled(edge.sum(), r_in.sum(), "edge sum")


@SETTINGS
@given(case=graph_cases(simple=True), spec=st.sampled_from(RULE_SPECS), stab=st.sampled_from(STABILIZERS))
def test_edge_lrp_all_rules_match_reference(case, spec, stab, backend):
    ei, x, w, R, bias = case
    if spec[1] is ZBox and spec[0] == "ZBoxVec":
        n = x.shape[0]
        rule = ZBox(-torch.arange(1, n + 1, dtype=F64)[:, None] / 4, 1.0, stabilizer=stab)
    else:
        rule = build_rule(spec, 1, stab)
    exp_r, exp_e, exp_a = ref_edge_lrp(rule, x, ei, w, R, bias)
    for s in ("scatter", "spmm"):
        r, e, a = edge_lrp(x, ei, w, R, rule, bias=bias, strategy=s, return_edge_relevance=True, return_absorbed=True)
        assert_close_scaled(r, exp_r, f"{rule!r} {s} R_in")
        assert_close_scaled(e, exp_e, f"{rule!r} {s} edge")
        assert_close_scaled(a, exp_a, f"{rule!r} {s} absorbed")
        assert_close_scaled(e.sum(), r.sum(), f"{rule!r} {s} edge sum")


FINITE = st.one_of(st.just(0.0), st.floats(1e-3, 10.0), st.floats(-10.0, -1e-3))


@SETTINGS
@given(case=linear_cases(values=FINITE, stabilizers=(0.0, 1e-6, 0.1)))
def test_no_nan_for_finite_inputs(case, backend):
    """Any finite input (including all-zero rows of x and W) gives finite relevance."""
    x, W, R, b, rule = case
    for Ws in (W, W.to_sparse_coo(), W.to_sparse_csr()):
        for strategy in ("spmm", "scatter"):
            r, a = linear_lrp(x, Ws, R, rule, b, strategy=strategy, return_absorbed=True)
            assert torch.isfinite(r).all(), f"{rule!r}: {r}"
            assert torch.isfinite(a).all(), f"{rule!r}: {a}"


@SETTINGS
@given(case=graph_cases(simple=False, values=FINITE), spec=st.sampled_from(RULE_SPECS))
def test_no_nan_edge_lrp(case, spec, backend):
    ei, x, w, R, bias = case
    x[0] = 0.0  # an all-zero input node
    rule = build_rule(spec, 1, 1e-6) if spec[0] != "ZBoxVec" else ZBox(-1.0, 1.0)
    for s in ("scatter", "spmm"):
        r, e, a = edge_lrp(x, ei, w, R, rule, bias=bias, strategy=s, return_edge_relevance=True, return_absorbed=True)
        assert torch.isfinite(r).all() and torch.isfinite(e).all() and torch.isfinite(a).all()


@SETTINGS
@given(case=linear_cases())
def test_flat_sparse_spreads_over_stored_connections(case, backend):
    """Flat on a sparse weight: input i gets sum_j R_j / n_j over stored j <- i."""
    x, W, R, _, _ = case
    n = (W != 0).sum(1).to(F64)  # stored connections per output
    expected = (R / torch.where(n == 0, 1.0, n) * (n > 0)) @ (W != 0).to(F64)
    r = linear_lrp(x, W.to_sparse_csr(), R, Flat(stabilizer=0.0))
    assert_close_scaled(r, expected, "Flat")


@pytest.mark.parametrize("spec", RULE_SPECS, ids=[s[0] for s in RULE_SPECS])
def test_build_rule_sets_stabilizer(spec):
    rule = build_rule(spec, 3, 0.5, zero_bias=True)
    assert rule.zero_bias
    assert rule.stabilizer == (0.0 if spec[1] is Z else 0.5)
