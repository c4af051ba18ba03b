"""``sparse_lrp.reference``: the public dense reference users check their results against.

It is itself checked against independent references: the seed notebook's values by
hand, the tests' own formulas written from the papers (``test_rules_reference``, no
code shared with the library), gradient x input, conservation, and parallel edges
worked out by hand. Then the kernel must agree with it, which is how users use it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_notebook import Q_BATCH, W_BATCH, X_BATCH, Z_PLUS, Z_RULE
from test_rules_reference import RULES, make_case, make_rule, random_graph, ref_edge_lrp, ref_lrp
from test_rules_reference import to_layout as _to_layout

import sparse_lrp
from sparse_lrp import Epsilon, Flat, Pass, WSquare, Z, ZPlus, reference

DT = torch.float64
NOTEBOOK_EPS = 1e-5  # the notebook's ``10e-6``


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def to_layout(W: torch.Tensor, layout: str) -> torch.Tensor:
    with warnings.catch_warnings():  # (torch's once-per-process note that CSR support is in beta)
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return _to_layout(W, layout)


def graph_case(seed: int, multi: bool):
    """A random graph (self-loops, isolated nodes, repeated edges with ``multi``), 9 -> 7
    nodes, and its inputs ``x [9, 4]``, weights, relevance ``[7, 4]`` and bias, float64."""
    g = torch.Generator().manual_seed(seed)
    ei = random_graph(seed, n_in=9, n_out=7, multi=multi)
    x = torch.randn(9, 4, generator=g, dtype=DT)
    w = torch.randn(ei.shape[1], generator=g, dtype=DT)
    R = torch.randn(7, 4, generator=g, dtype=DT)
    return x, ei, w, R, torch.randn(7, 4, generator=g, dtype=DT)


def test_seed_notebook_batch_by_hand():
    W, x, Q = (torch.tensor(t, dtype=DT) for t in (W_BATCH, X_BATCH, Q_BATCH))
    assert_close(reference.linear_lrp(x, W, Q, Epsilon(NOTEBOOK_EPS)), torch.tensor(Z_RULE, dtype=DT))
    assert_close(reference.linear_lrp(x, W, Q, ZPlus(stabilizer=NOTEBOOK_EPS)), torch.tensor(Z_PLUS, dtype=DT))


@pytest.mark.parametrize("case", ["empty_rows_cols", "mixed_integer"])  # (exact zero denominators too)
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
@pytest.mark.parametrize("zero_bias", [False, True])
@pytest.mark.parametrize("rule_id,spec", RULES)
def test_linear_equals_the_formulas_from_the_papers(rule_id, spec, zero_bias, layout, case):
    x, W, R, b = make_case(case, seed=3)
    rule = make_rule(spec, x.shape[1], zero_bias=zero_bias)
    # A sparse weight's connections are its stored entries; a dense one's, every entry.
    mask = torch.ones(W.shape, dtype=torch.bool) if layout == "dense" else W != 0
    expected, absorbed = ref_lrp(rule, x, W, R, b, mask)
    r_in, got_absorbed = reference.linear_lrp(x, to_layout(W, layout), R, rule, b, return_absorbed=True)
    assert_close(r_in, expected)
    assert_close(got_absorbed, absorbed)


@pytest.mark.parametrize("rule_id,spec", RULES)
def test_edges_equal_the_formulas_from_the_papers(rule_id, spec):
    x, ei, w, R, bias = graph_case(5, multi=False)
    rule = make_rule(spec, x.shape[1])
    expected = ref_edge_lrp(rule, x, ei, w, R, bias)
    got = reference.edge_lrp(x, ei, w, R, rule, bias=bias, return_edge_relevance=True, return_absorbed=True)
    for a, b in zip(got, expected):
        assert_close(a, b)


def test_lrp0_is_gradient_times_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g, dtype=DT, requires_grad=True)
    W = torch.randn(5, 9, generator=g, dtype=DT)
    z = x @ W.T
    (grad,) = torch.autograd.grad(z.sum(), x)  # LRP-0 of R = z without bias: x * W^T 1
    assert_close(reference.linear_lrp(x.detach(), W, z.detach(), Z()), x.detach() * grad)


@pytest.mark.parametrize("rule", [Z(), ZPlus(), WSquare(), Flat()], ids=repr)
def test_relevance_is_conserved_without_bias(rule):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 8, generator=g, dtype=DT)  # >= 0: z+ denominators are positive
    W = torch.rand(6, 8, generator=g, dtype=DT)
    R = torch.rand(3, 6, generator=g, dtype=DT)
    r_in, absorbed = reference.linear_lrp(x, W, R, rule, return_absorbed=True)
    assert float(r_in.sum()) == pytest.approx(float(R.sum()), rel=1e-6)
    assert float(absorbed.abs().max()) < 1e-5 * float(R.abs().max())


def test_parallel_edges_stay_separate_connections():
    # Two edges 0 -> 0 with weights 2 and -1, x = 1, R = 1 (one channel).
    x, R = torch.ones(1, 1, dtype=DT), torch.ones(1, 1, dtype=DT)
    ei, w = torch.tensor([[0, 0], [0, 0]]), torch.tensor([2.0, -1.0], dtype=DT)
    # w²: contributions 4 and 1 over 5 -> the edges carry 0.8 and 0.2 (merged into one
    # weight 1 they could not be told apart)
    r_in, edge = reference.edge_lrp(x, ei, w, R, WSquare(stabilizer=0.0), return_edge_relevance=True)
    assert_close(edge, torch.tensor([0.8, 0.2], dtype=DT))
    assert_close(r_in, torch.ones(1, 1, dtype=DT))
    # z+: contributions x⁺w⁺ = 2 and 0 -> all through the positive edge
    _, edge = reference.edge_lrp(x, ei, w, R, ZPlus(stabilizer=0.0), return_edge_relevance=True)
    assert_close(edge, torch.tensor([1.0, 0.0], dtype=DT))
    # LRP-0: contributions 2 and -1 over z = 1 -> 2 and -1
    _, edge = reference.edge_lrp(x, ei, w, R, Z(), return_edge_relevance=True)
    assert_close(edge, torch.tensor([2.0, -1.0], dtype=DT))


def test_an_output_without_connections_passes_nothing_and_no_nan():
    x = torch.tensor([[1.0, 2.0]], dtype=DT)
    W = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=DT).to_sparse_coo()  # output 1 has no connection
    R = torch.tensor([[1.0, 3.0]], dtype=DT)
    for rule in (Z(), Flat(stabilizer=0.0), WSquare(stabilizer=0.0)):
        r_in, absorbed = reference.linear_lrp(x, W, R, rule, return_absorbed=True)
        assert_close(r_in, torch.tensor([[1.0, 0.0]], dtype=DT))
        assert_close(absorbed, torch.tensor([[0.0, 3.0]], dtype=DT))


@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
@pytest.mark.parametrize("rule_id,spec", RULES)
def test_the_kernel_agrees_with_it(rule_id, spec, layout, backend):
    """What a user does with it: a sparse result against the dense reference."""
    x, W, R, b = make_case("random", seed=7)
    rule = make_rule(spec, x.shape[1])
    fast = sparse_lrp.linear_lrp(x, to_layout(W, layout), R, rule, b, return_absorbed=True)
    for a, e in zip(fast, reference.linear_lrp(x, to_layout(W, layout), R, rule, b, return_absorbed=True)):
        assert_close(a, e)
    gx, ei, w, gR, bias = graph_case(9, multi=True)
    graph_rule = make_rule(spec, gx.shape[1])
    for strategy in ("spmm", "scatter"):
        fast = sparse_lrp.edge_lrp(
            gx, ei, w, gR, graph_rule, bias=bias, strategy=strategy, return_edge_relevance=True, return_absorbed=True
        )
        slow = reference.edge_lrp(
            gx, ei, w, gR, graph_rule, bias=bias, return_edge_relevance=True, return_absorbed=True
        )
        for a, e in zip(fast, slow):
            assert_close(a, e)


def test_bad_input_gets_the_librarys_errors():
    x, W, R = torch.ones(2, 3), torch.ones(4, 3), torch.ones(2, 4)
    with pytest.raises(TypeError, match=r"reference\.linear_lrp needs a linear-map rule"):
        reference.linear_lrp(x, W, R, Pass())
    with pytest.raises(ValueError, match="x has 2 features"):
        reference.linear_lrp(torch.ones(2, 2), W, R, Z())
    with pytest.raises(ValueError, match="NaN"):
        reference.linear_lrp(torch.full((2, 3), float("nan")), W, R, Z())
    with pytest.raises(ValueError, match=r"edge_index\[0\] \(inputs\) has index 5, out of range for 3 inputs"):
        reference.edge_lrp(torch.ones(3, 2), torch.tensor([[0, 5], [0, 1]]), None, torch.ones(2, 2), Z())
    with pytest.raises(TypeError, match="edge_index must be a"):
        reference.edge_lrp(torch.ones(3, 2), sparse_lrp.prepare(torch.tensor([[0], [0]]), 3, 2), None, R[:, :2], Z())


def test_a_size_beyond_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(reference, "MAX_ELEMENTS", 2 * 3 * 4 - 1)
    with pytest.raises(ValueError, match=r"24 contributions .*\[2, 3, 4\].*MAX_ELEMENTS"):
        reference.linear_lrp(torch.ones(2, 4), torch.ones(3, 4), torch.ones(2, 3), Z())
    monkeypatch.setattr(reference, "MAX_ELEMENTS", 2 * 3 * 4)
    assert reference.linear_lrp(torch.ones(2, 4), torch.ones(3, 4), torch.ones(2, 3), Z()).shape == (2, 4)


def test_a_zero_denominator_is_stabilised_upwards():
    # z = 1 * 1 + 1 * (-1) = 0: stab(0) = 0 + 0.5 * sign(0) = +0.5, so the ratio R / stab = 2
    # gives R_in = [1 * 1 * 2, 1 * (-1) * 2] = [2, -2]; nothing net reaches the inputs, so
    # the stabiliser absorbs all of R = 1.
    r_in, absorbed = reference.linear_lrp(
        torch.ones(1, 2, dtype=DT),
        torch.tensor([[1.0, -1.0]], dtype=DT),
        torch.ones(1, 1, dtype=DT),
        Epsilon(0.5),
        return_absorbed=True,
    )
    assert_close(r_in, torch.tensor([[2.0, -2.0]], dtype=DT))
    assert_close(absorbed, torch.ones(1, 1, dtype=DT))
