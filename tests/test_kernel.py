"""The edge-wise kernel: strategies, edge relevance, conservation, gradient×input,
prepared operators and memory-bounded chunking."""

from __future__ import annotations

import pytest
import torch
from test_rules_reference import RULES, ZBox, make_rule, random_graph, ref_edge_lrp, ref_epsilon_multigraph

from sparse_lrp import AlphaBeta, Epsilon, Gamma, WSquare, ZPlus, edge_lrp, linear_lrp, prepare
from sparse_lrp.operators import _PAD_FROM, _RADIX_MIN, _ROWDOT_BMM_FROM, EdgeOperator, rowdot, sort_ints

RULE_IDS = [r[0] for r in RULES]
DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["f64", "f32"]


def tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}


def graph_rule(rule_id, spec, n_in):
    """A rule for an edge_lrp input ``[n_in, C]`` (ZBoxVec gets per-node bounds)."""
    if rule_id == "ZBoxVec":
        return ZBox(-torch.linspace(0.5, 2.0, n_in)[:, None], torch.linspace(1.0, 3.0, n_in)[:, None])
    return make_rule(spec, 1)


def graph_data(seed=0, dtype=torch.float64, n_in=9, n_out=9, C=3, multi=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    ei = random_graph(seed, n_in=n_in, n_out=n_out, multi=multi)
    x = torch.randn(n_in, C, generator=g, dtype=torch.float64)
    w = torch.randn(ei.shape[1], generator=g, dtype=torch.float64)
    R = torch.randn(n_out, C, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, C, generator=g, dtype=torch.float64) if bias else None

    def cast(t):
        return None if t is None else t.to(dtype)

    return ei, cast(x), cast(w), cast(R), cast(b)


def run_edge(x, ei, w, R, rule, b, strategy, **kw):
    return edge_lrp(
        x, ei, w, R, rule, bias=b, strategy=strategy, return_edge_relevance=True, return_absorbed=True, **kw
    )


# --------------------------------------------------------------------------------------
# Strategy agreement
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_strategies_agree_edge_lrp(rule_id, spec, dtype, backend):
    for multi in (True, False):
        for bias in (True, False):
            ei, x, w, R, b = graph_data(1, dtype, multi=multi, bias=bias)
            rule = graph_rule(rule_id, spec, x.shape[0])
            outs = {s: run_edge(x, ei, w, R, rule, b, s) for s in ("scatter", "spmm", "auto")}
            for s in ("spmm", "auto"):
                for name, a, e in zip(("R_in", "edge", "absorbed"), outs[s], outs["scatter"]):
                    assert a.dtype == dtype and a.shape == e.shape
                    torch.testing.assert_close(a, e, **tol(dtype), msg=lambda m, s=s, n=name: f"{s} {n}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_strategies_agree_linear_lrp(rule_id, spec, dtype, backend):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 10, generator=g, dtype=torch.float64).to(dtype)
    W = (torch.randn(8, 10, generator=g, dtype=torch.float64) * (torch.rand(8, 10, generator=g) < 0.4)).to(dtype)
    R = torch.randn(4, 8, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(8, generator=g, dtype=torch.float64).to(dtype)
    rule = make_rule(spec, 10)
    for Ws in (W.to_sparse_coo(), W.to_sparse_csr()):
        ref, ref_abs = linear_lrp(x, Ws, R, rule, b, strategy="scatter", return_absorbed=True)
        for s in ("spmm", "auto"):
            r, a = linear_lrp(x, Ws, R, rule, b, strategy=s, return_absorbed=True)
            torch.testing.assert_close(r, ref, **tol(dtype))
            torch.testing.assert_close(a, ref_abs, **tol(dtype))


# --------------------------------------------------------------------------------------
# Edge relevance
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_edge_relevance_sums_to_input_relevance(rule_id, spec, strategy, backend):
    """Every input relevance is the sum of its edges' messages, so in total
    ``edge.sum() == R_in.sum()`` (for every rule, also the non-proportional ones),
    and per input node the edges leaving it sum to its relevance (summed over channels)."""
    for multi in (True, False):
        ei, x, w, R, b = graph_data(4, multi=multi)
        r_in, edge, _ = run_edge(x, ei, w, R, graph_rule(rule_id, spec, x.shape[0]), b, strategy)
        torch.testing.assert_close(edge.sum(), r_in.sum(), rtol=1e-10, atol=1e-10)
        per_node = torch.zeros(x.shape[0], dtype=edge.dtype).index_add_(0, ei[0], edge)
        torch.testing.assert_close(per_node, r_in.sum(1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_edge_relevance_matches_dense_per_edge_reference(rule_id, spec, strategy, backend):
    ei, x, w, R, b = graph_data(5, multi=False)
    rule = graph_rule(rule_id, spec, x.shape[0])
    exp_r, exp_e, exp_a = ref_edge_lrp(rule, x, ei, w, R, b)
    r_in, edge, absorbed = run_edge(x, ei, w, R, rule, b, strategy)
    torch.testing.assert_close(edge, exp_e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r_in, exp_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(absorbed, exp_a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
def test_edge_relevance_multigraph_keeps_each_edge_separate(strategy, backend):
    """Two parallel edges of weight 1 and 3 carry relevance in the ratio 1 : 3."""
    ei = torch.tensor([[0, 0, 1], [0, 0, 0]])
    w = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    R = torch.tensor([[8.0]], dtype=torch.float64)
    r_in, edge = edge_lrp(x, ei, w, R, Epsilon(0.0), strategy=strategy, return_edge_relevance=True)
    # z = 1*1 + 3*1 + 2*2 = 8 -> messages 1, 3, 4
    torch.testing.assert_close(edge, torch.tensor([1.0, 3.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(r_in, torch.tensor([[4.0], [4.0]], dtype=torch.float64))
    _, exp_e, _ = ref_epsilon_multigraph(0.0, x, ei, w, R)
    torch.testing.assert_close(edge, exp_e)


# --------------------------------------------------------------------------------------
# Conservation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
def test_conservation_epsilon0_without_bias(strategy, backend):
    g = torch.Generator().manual_seed(6)
    # a complete bipartite graph with positive inputs and weights: no zero denominators
    src, dst = torch.meshgrid(torch.arange(6), torch.arange(4), indexing="ij")
    ei = torch.stack([src.flatten(), dst.flatten()])
    x = torch.rand(6, 3, generator=g, dtype=torch.float64) + 0.1
    w = torch.rand(ei.shape[1], generator=g, dtype=torch.float64) + 0.1
    R = torch.randn(4, 3, generator=g, dtype=torch.float64)
    r_in, absorbed = edge_lrp(x, ei, w, R, Epsilon(0.0), strategy=strategy, return_absorbed=True)
    torch.testing.assert_close(r_in.sum(0), R.sum(0), rtol=1e-12, atol=1e-12)  # per channel
    torch.testing.assert_close(absorbed, torch.zeros_like(R), rtol=0, atol=1e-12)
    # also for mixed signs, as long as no denominator is zero
    x2 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(ei.shape[1], generator=g, dtype=torch.float64)
    r2 = edge_lrp(x2, ei, w2, R, Epsilon(0.0), strategy=strategy)
    torch.testing.assert_close(r2.sum(), R.sum(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_conservation_with_bias_and_absorbed(rule_id, spec, strategy, backend):
    """``R_in.sum() + absorbed.sum() == R.sum()`` per channel, for every rule."""
    ei, x, w, R, b = graph_data(7, bias=True)
    r_in, _, absorbed = run_edge(x, ei, w, R, graph_rule(rule_id, spec, x.shape[0]), b, strategy)
    torch.testing.assert_close(r_in.sum(0) + absorbed.sum(0), R.sum(0), rtol=1e-10, atol=1e-10)
    # linear_lrp too
    g = torch.Generator().manual_seed(8)
    xl = torch.randn(3, 6, generator=g, dtype=torch.float64)
    W = torch.randn(5, 6, generator=g, dtype=torch.float64) * (torch.rand(5, 6, generator=g) < 0.5)
    Rl = torch.randn(3, 5, generator=g, dtype=torch.float64)
    bl = torch.randn(5, generator=g, dtype=torch.float64)
    for Ws in (W, W.to_sparse_csr()):
        r, a = linear_lrp(xl, Ws, Rl, make_rule(spec, 6), bl, strategy=strategy, return_absorbed=True)
        torch.testing.assert_close(r.sum(1) + a.sum(1), Rl.sum(1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
def test_alphabeta_conserves_without_bias(strategy, backend):
    """With alpha - beta = 1, no bias, no stabiliser and every output having both positive
    and negative contributions, AlphaBeta conserves exactly and absorbs nothing."""
    g = torch.Generator().manual_seed(9)
    src, dst = torch.meshgrid(torch.arange(5), torch.arange(4), indexing="ij")
    ei = torch.stack([src.flatten(), dst.flatten()])
    x = torch.rand(5, 2, generator=g, dtype=torch.float64) + 0.5
    w = torch.randn(ei.shape[1], generator=g, dtype=torch.float64)
    w[:4] = w[:4].abs() + 0.1  # input 0 -> every output: positive
    w[4:8] = -w[4:8].abs() - 0.1  # input 1 -> every output: negative
    R = torch.randn(4, 2, generator=g, dtype=torch.float64)
    for alpha, beta in ((1, 0), (2, 1), (3, 2)):
        r, a = edge_lrp(x, ei, w, R, AlphaBeta(alpha, beta, stabilizer=0.0), strategy=strategy, return_absorbed=True)
        torch.testing.assert_close(r.sum(0), R.sum(0), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a, torch.zeros_like(R), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------
# LRP-0 equals gradient × input
# --------------------------------------------------------------------------------------


def sparse_relu_net(seed=10, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(16, 10, generator=g, dtype=dtype) * (torch.rand(16, 10, generator=g) < 0.4)
    W2 = torch.randn(4, 16, generator=g, dtype=dtype) * (torch.rand(4, 16, generator=g) < 0.5)
    x = torch.randn(3, 10, generator=g, dtype=dtype)
    return W1, W2, x


@pytest.mark.parametrize("target", [0, 2])
@pytest.mark.parametrize("strategy", ["auto", "scatter", "spmm"])
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_epsilon0_equals_gradient_times_input(layout, strategy, target, backend):
    W1, W2, x = sparse_relu_net()
    W1s, W2s = W1.to_sparse_coo(), W2.to_sparse_coo()
    # autograd forward through the sparse weights
    xg = x.clone().requires_grad_(True)
    h = torch.relu(torch.sparse.mm(W1s, xg.T).T)
    logits = torch.sparse.mm(W2s, h.T).T
    logits[:, target].sum().backward()
    expected = (x * xg.grad).detach()
    assert expected.abs().sum() > 0

    def lay(W):
        return {"dense": W, "coo": W.to_sparse_coo(), "csr": W.to_sparse_csr()}[layout]

    with torch.no_grad():
        h = torch.relu(x @ W1.T)
        out = h @ W2.T
        R2 = torch.zeros_like(out)
        R2[:, target] = out[:, target]
        R1 = linear_lrp(h, lay(W2), R2, Epsilon(0.0), strategy=strategy)  # ReLU passes R1 unchanged
        R0 = linear_lrp(x, lay(W1), R1, Epsilon(0.0), strategy=strategy)
    torch.testing.assert_close(R0, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(R0.sum(1), out[:, target], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
def test_edge_lrp_epsilon0_equals_gradient_times_input(strategy, backend):
    """A graph aggregation ``z = A x``; with ``R = z`` LRP-0 gives ``x * d(sum z)/dx``."""
    ei, x, w, _, _ = graph_data(11, bias=False)
    xg = x.clone().requires_grad_(True)
    z = torch.zeros(9, x.shape[1], dtype=x.dtype).index_add(0, ei[1], xg[ei[0]] * w[:, None])
    z.sum().backward()
    r = edge_lrp(x, ei, w, z.detach(), Epsilon(0.0), strategy=strategy)
    torch.testing.assert_close(r, x * xg.grad, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# Prepared operators, z, index dtypes, chunking
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["scatter", "spmm", "auto"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_prepared_operator_identical_and_reusable(rule_id, spec, strategy, backend):
    ei, x, w, R, b = graph_data(12)
    rule = graph_rule(rule_id, spec, x.shape[0])
    op = prepare(ei, x.shape[0], R.shape[0])
    assert isinstance(op, EdgeOperator)
    raw = run_edge(x, ei, w, R, rule, b, strategy)
    prepared = run_edge(x, op, w, R, rule, b, strategy)
    for a, e in zip(prepared, raw):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    # the same operator again with different edge weights, inputs and no weights at all
    g = torch.Generator().manual_seed(13)
    for w2 in (torch.randn(ei.shape[1], generator=g, dtype=torch.float64), None):
        x2 = torch.randn(x.shape, generator=g, dtype=torch.float64)
        again = run_edge(x2, op, w2, R, rule, b, strategy)
        fresh = run_edge(x2, ei, w2, R, rule, b, strategy)
        for a, e in zip(again, fresh):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_prepare_defaults_to_square_graph(backend):
    ei = torch.tensor([[0, 1, 4], [1, 2, 0]])
    op = prepare(ei)
    assert (op.num_in, op.num_out, op.num_edges) == (5, 5, 3)
    x = torch.rand(5, 2, dtype=torch.float64)
    R = torch.rand(5, 2, dtype=torch.float64)
    torch.testing.assert_close(edge_lrp(x, op, None, R, Epsilon()), edge_lrp(x, ei, None, R, Epsilon()))


def test_prepared_operator_size_mismatch_raises():
    ei = torch.tensor([[0, 1], [1, 0]])
    op = prepare(ei, 3, 2)
    with pytest.raises(ValueError, match="prepared operator maps 3 -> 2"):
        edge_lrp(torch.rand(4, 1), op, None, torch.rand(2, 1), Epsilon())


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
def test_a_prepared_operator_whose_edges_were_edited_in_place_is_refused(strategy):
    """Its sorted structures describe the old edges (spmm gave the old graph's relevance,
    scatter the new one's): refused under both strategies; prepared again, it is exact."""
    ei = torch.tensor([[0, 1, 4, 2], [1, 2, 0, 3]])
    op = prepare(ei)
    x, R = torch.rand(5, 2, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
    ei[1, 0] = 4
    with pytest.raises(ValueError, match="changed in place after prepare"):
        edge_lrp(x, op, None, R, Epsilon(), strategy=strategy)
    torch.testing.assert_close(
        edge_lrp(x, prepare(ei), None, R, Epsilon(), strategy=strategy), edge_lrp(x, ei.clone(), None, R, Epsilon())
    )


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_tiny_max_memory_chunks_give_identical_results(rule_id, spec, strategy, backend):
    ei, x, w, R, b = graph_data(14, C=5)
    rule = graph_rule(rule_id, spec, x.shape[0])
    full = run_edge(x, ei, w, R, rule, b, strategy)
    for budget in (1, 100, 1000):  # 1000 bytes: a handful of edges per chunk
        chunked = run_edge(x, ei, w, R, rule, b, strategy, max_memory=budget)
        for a, e in zip(chunked, full):
            torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13)
    g = torch.Generator().manual_seed(15)
    xl = torch.randn(5, 12, generator=g, dtype=torch.float64)
    W = torch.randn(7, 12, generator=g, dtype=torch.float64) * (torch.rand(7, 12, generator=g) < 0.5)
    Rl = torch.randn(5, 7, generator=g, dtype=torch.float64)
    lrule = make_rule(spec, 12)
    torch.testing.assert_close(
        linear_lrp(xl, W.to_sparse_csr(), Rl, lrule, strategy=strategy, max_memory=1000),
        linear_lrp(xl, W.to_sparse_csr(), Rl, lrule, strategy=strategy),
        rtol=1e-13,
        atol=1e-13,
    )


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
@pytest.mark.parametrize(
    "rule", [Epsilon(0.0), Epsilon(0.01), Epsilon(0.01, zero_bias=True), Gamma(0.5), ZPlus()], ids=repr
)
def test_given_forward_z_gives_same_result(rule, strategy, backend):
    ei, x, w, R, b = graph_data(16)
    z = torch.zeros_like(R).index_add_(0, ei[1], x[ei[0]] * w[:, None]) + b
    with_z = run_edge(x, ei, w, R, rule, b, strategy, z=z)
    without = run_edge(x, ei, w, R, rule, b, strategy)
    for a, e in zip(with_z, without):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", ["scatter", "spmm"])
def test_int32_edge_index_equals_int64(strategy, backend):
    ei, x, w, R, b = graph_data(17)
    for rule in (Epsilon(), WSquare(), Gamma()):
        a = run_edge(x, ei.to(torch.int32), w, R, rule, b, strategy)
        e = run_edge(x, ei, w, R, rule, b, strategy)
        for u, v in zip(a, e):
            torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("strategy", ["scatter", "spmm", "auto"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_graph_without_edges(rule_id, spec, strategy, backend):
    ei = torch.zeros(2, 0, dtype=torch.long)
    x = torch.randn(4, 2, dtype=torch.float64)
    R = torch.randn(3, 2, dtype=torch.float64)
    r, edge, absorbed = run_edge(
        x, ei, torch.zeros(0, dtype=torch.float64), R, graph_rule(rule_id, spec, 4), None, strategy
    )
    assert r.shape == (4, 2) and edge.shape == (0,)
    assert torch.all(r == 0)
    torch.testing.assert_close(absorbed, R)  # nothing flows: everything is dropped


def test_stabilizer_is_exact_in_float64(backend):
    """``stab(d) = d + eps * sign(d)`` in the input's precision: for float64 the epsilon
    must not be rounded to float32 first (0.1 and 1e-6 are not float32 numbers)."""
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)  # z = 0 -> stab(0) = eps
    W = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    R = torch.ones(1, 1, dtype=torch.float64)
    for eps in (0.1, 1e-6):
        for Ws in (W, W.to_sparse_csr()):
            r = linear_lrp(x, Ws, R, Epsilon(eps))
            # R_0 = 1 * 1 / (0 + eps), R_1 = -1 * 1 / (0 + eps)
            torch.testing.assert_close(r, torch.tensor([[1 / eps, -1 / eps]], dtype=torch.float64), rtol=1e-14, atol=0)
    # a negative denominator: z = -2 -> stab = -2 - 0.1
    r = linear_lrp(torch.tensor([[-2.0]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64), R, Epsilon(0.1))
    torch.testing.assert_close(r, torch.tensor([[-2.0 / (-2.1)]], dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_half_precision_runs_and_keeps_dtype(layout, dtype, backend):
    """Half precisions are supported ("auto" falls back to edge messages for them):
    the result keeps the input dtype and matches float64 to half-precision accuracy."""
    g = torch.Generator().manual_seed(18)
    x = torch.rand(3, 6, generator=g, dtype=torch.float64) + 0.1
    W = torch.rand(4, 6, generator=g, dtype=torch.float64) * (torch.rand(4, 6, generator=g) < 0.6)
    W[:, 0] = 0.5  # every output has a connection
    R = torch.rand(3, 4, generator=g, dtype=torch.float64)
    for rule in (Epsilon(), ZPlus(), Gamma(), WSquare()):
        expected = linear_lrp(x, W, R, rule)
        Wh = W.to(dtype)
        Wh = {"dense": Wh, "coo": Wh.to_sparse_coo(), "csr": Wh.to_sparse_csr()}[layout]
        r = linear_lrp(x.to(dtype), Wh, R.to(dtype), rule)
        assert r.dtype == dtype
        torch.testing.assert_close(r.double(), expected, rtol=3e-2, atol=3e-2)
    ei = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    xe, we, Re = (
        torch.rand(3, 2, dtype=torch.float64),
        torch.rand(4, dtype=torch.float64),
        torch.rand(3, 2, dtype=torch.float64),
    )
    r, e = edge_lrp(xe.to(dtype), ei, we.to(dtype), Re.to(dtype), Epsilon(), return_edge_relevance=True)
    r64, e64 = edge_lrp(xe, ei, we, Re, Epsilon(), return_edge_relevance=True)
    assert r.dtype == dtype and e.dtype == dtype
    torch.testing.assert_close(r.double(), r64, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(e.double(), e64, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("change", ["tensor", "values"])
def test_linear_lrp_reuses_a_sparse_weight_until_it_changes(layout, change):
    g = torch.Generator().manual_seed(5)
    dense = torch.randn(6, 9, generator=g, dtype=torch.float64) * (torch.rand(6, 9, generator=g) < 0.4)
    weight = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    x = torch.rand(4, 9, generator=g, dtype=torch.float64)
    r = torch.randn(4, 6, generator=g, dtype=torch.float64)
    first = linear_lrp(x, weight, r, ZPlus())
    torch.testing.assert_close(linear_lrp(x, weight, r, ZPlus()), first)  # cached operator
    # An in-place change of the same weight tensor must be seen (dense reference below).
    if change == "tensor":
        weight.mul_(-2.0)
    else:
        weight.values().mul_(-2.0)
    changed = linear_lrp(x, weight, r, ZPlus())
    torch.testing.assert_close(changed, linear_lrp(x, dense * -2.0, r, ZPlus()))
    assert not torch.allclose(changed, first)


# --------------------------------------------------------------------------------------
# Operator helpers the subgraph code and the model adapters build on
# --------------------------------------------------------------------------------------


def test_incident_edges_and_in_degree_against_a_loop():
    g = torch.Generator().manual_seed(3)
    ei = torch.randint(0, 9, (2, 40), generator=g)
    op = EdgeOperator(ei, 9, 9)
    nodes = torch.tensor([4, 0, 4, 8])  # repeats and any order
    for end in (0, 1):
        owner, pos = op.incident(end, nodes)
        want = [(k, e) for k, v in enumerate(nodes.tolist()) for e in range(40) if int(ei[end, e]) == v]
        got = sorted(zip(owner.tolist(), pos.tolist()))
        assert got == sorted(want)
        # grouped by entry, in CSR order (stable: input order within a node)
        assert owner.tolist() == sorted(owner.tolist())
    assert op.in_degree(nodes).tolist() == [int((ei[1] == v).sum()) for v in nodes.tolist()]


@pytest.mark.parametrize("rule", [Epsilon(1e-3), ZPlus(), Gamma(0.3)], ids=["epsilon", "zplus", "gamma"])
def test_identity_pattern_runs_as_row_scaling(rule, backend):
    """Self-loop operators scale rows instead of running sparse products: same results."""
    g = torch.Generator().manual_seed(4)
    n, c = 30, 5
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    r = torch.randn(n, c, generator=g, dtype=torch.float64)
    loops = torch.arange(n).expand(2, n)
    diag = EdgeOperator(loops, n, n).identity_pattern()
    for strategy in ("spmm", "scatter"):
        got, got_e = edge_lrp(x, diag, w, r, rule, strategy=strategy, return_edge_relevance=True)
        want, want_e = edge_lrp(x, loops.clone(), w, r, rule, strategy=strategy, return_edge_relevance=True)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_e, want_e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "n", [0, 1, _PAD_FROM - 1, _PAD_FROM, (_PAD_FROM + _RADIX_MIN) // 2, _RADIX_MIN - 1, _RADIX_MIN, 40_000]
)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_sort_ints_is_a_stable_sort(n, dtype):
    """Keys padded up to torch's radix-sort length sort exactly as a stable sort would."""
    g = torch.Generator().manual_seed(n)
    bound = max(1, n // 7)  # many duplicates: stability is visible in the order
    key = torch.randint(0, bound, (n,), generator=g).to(dtype)
    values, order = sort_ints(key, bound)
    assert values.dtype == dtype and values.shape == (n,) and order.shape == (n,)
    assert torch.equal(values, key[order])
    # stable: equal keys keep their input order, i.e. (key, position) increases
    combined = key[order].long() * max(n, 1) + order
    assert bool((combined[1:] > combined[:-1]).all())
    assert sorted(order.tolist()) == list(range(n))


def _dense_map(ei, w, n):
    """``W [n, n]`` with ``W[j, i]`` the summed weights of the edges ``i -> j``."""
    return torch.zeros(n, n, dtype=w.dtype).index_put_((ei[1], ei[0]), w, accumulate=True)


def test_csr_in_the_padded_sort_range_equals_dense_product():
    """An operator whose edge count falls in the padded range builds the same CSR map."""
    g = torch.Generator().manual_seed(5)
    n, e = 700, (_PAD_FROM + _RADIX_MIN) // 2
    ei = torch.randint(0, n, (2, e), generator=g)
    w = torch.randn(e, generator=g, dtype=torch.float64)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dense = _dense_map(ei, w, n)
    op = EdgeOperator(ei, n, n)
    torch.testing.assert_close(op.csr(w) @ x, dense @ x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.csr_t(w) @ x, dense.T @ x, rtol=1e-12, atol=1e-12)
    crow, col, perm = op.grouped(1)[0], op._csr_by_dst()[1], op._csr_by_dst()[2]
    assert torch.equal(ei[1][perm], torch.repeat_interleave(torch.arange(n), crow[1:] - crow[:-1]))
    assert torch.equal(col, ei[0][perm])


def test_csr_of_edges_already_grouped_skips_the_sort_and_equals_dense_product():
    """Edges grouped by target (or by source, as in a coalesced edge_index) keep their
    order as the CSR order; the maps equal the dense ones, multi-edges included."""
    g = torch.Generator().manual_seed(6)
    n, e = 50, 400
    ei = torch.randint(0, n, (2, e), generator=g)
    ei[:, :5] = ei[:, 5:10]  # some multi-edges
    w = torch.randn(e, generator=g, dtype=torch.float64)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    for end in (1, 0):
        order = torch.argsort(ei[end], stable=True)
        sorted_ei, sorted_w = ei[:, order], w[order]
        op = EdgeOperator(sorted_ei, n, n)
        perm = (op._csr_by_dst if end == 1 else op._csr_by_src)()[2]
        assert torch.equal(perm, torch.arange(e))  # no reordering needed
        dense = _dense_map(sorted_ei, sorted_w, n)
        torch.testing.assert_close(op.csr(sorted_w) @ x, dense @ x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(op.csr_t(sorted_w) @ x, dense.T @ x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((5, 3), (3,)),
        ((5, 3), (5, 1)),
        ((5, 3), (1, 3)),
        ((5, 3), (5, 3)),
        ((5, 3), ()),
        ((4, 5, 3), (5, 1)),
        ((4, 5, 3), (1, 1, 3)),
        ((5, 3), (1, 1, 3)),
        ((0, 3), (3,)),
        ((5, 3), (1, 1)),
    ],
)
def test_dot_of_a_broadcast_operand_equals_the_elementwise_sum(a_shape, b_shape):
    """The absorbed-relevance helper: sum(a * b) for a bias b broadcasting against a."""
    from sparse_lrp.kernel import _dot

    g = torch.Generator().manual_seed(len(a_shape) * 10 + len(b_shape))
    a = torch.randn(a_shape, generator=g, dtype=torch.float64)
    b = torch.randn(b_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_dot(a, b), (a * b).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows,cols", [(0, 4), (7, 3), (_ROWDOT_BMM_FROM // 64, 64), (_ROWDOT_BMM_FROM // 70 - 3, 70)])
def test_rowdot_equals_the_rowwise_sum_of_products(rows, cols):
    """Per-row dot products, on both sides of the size where the batched product takes over."""
    g = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, 2 * cols, generator=g, dtype=torch.float64)[:, ::2]  # strided rows too
    b = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    got = rowdot(a, b)
    assert got.shape == (rows,)
    torch.testing.assert_close(got, (a * b).sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_has_nonzero_matches_any(dtype):
    """The vanishing-term check: True exactly where ``any`` is (also -0.0, NaN, empty)."""
    from sparse_lrp.operators import has_nonzero

    cases = [[], [0.0, -0.0], [0.0, 2.0], [-3.0, 0.0], [float("nan")], [0.0] * 1000 + [1e-3]]
    for values in cases:
        t = torch.tensor(values, dtype=dtype)
        assert has_nonzero(t) == bool(t.any()), values
    w = torch.randn(40, 30, dtype=torch.float64).to(dtype)
    assert has_nonzero(w.clamp(min=0)) and has_nonzero(w.clamp(max=0))
    assert not has_nonzero(w.abs().clamp(max=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonzero_rows_are_the_rows_with_an_entry_other_than_zero(dtype):
    """The active-row test of the row cut: rows holding only +-0.0 are not active."""
    from sparse_lrp.operators import nonzero_rows

    t = torch.zeros(7, 5, dtype=dtype)
    t[1, 3] = 2.0
    t[4, 0] = -1e-30
    t[5] = -0.0
    t[6, 4] = -3.0
    assert nonzero_rows(t).tolist() == [1, 4, 6]
    assert nonzero_rows(t[:0]).tolist() == []
    g = torch.Generator().manual_seed(0)
    r = torch.randn(300, 8, generator=g, dtype=torch.float64).to(dtype)
    r[torch.randperm(300, generator=g)[:200]] = 0
    assert torch.equal(nonzero_rows(r), (r != 0).any(1).nonzero().squeeze(1))


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_float16_dead_output_gives_no_nan(layout, backend):
    """An output with no positive contribution has z⁺ = 0, so its ratio is R / eps: in
    float16 that overflows (65504 * 1e-6 is 0.07) and inf times a zero weight was NaN.
    Half precisions compute in float32 and must equal the float64 result."""
    x = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    W = torch.tensor([[-1.0, -0.5, -2.0], [0.5, 1.0, 0.25]], dtype=torch.float64)  # output 0 is dead for z+
    R = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    for rule in (ZPlus(), AlphaBeta(), Gamma(), Epsilon()):
        expected = linear_lrp(x, W, R, rule)
        Wh = W.half() if layout == "dense" else W.half().to_sparse_csr()
        r = linear_lrp(x.half(), Wh, R.half(), rule)
        assert r.dtype == torch.float16 and torch.isfinite(r).all(), rule
        torch.testing.assert_close(r.double(), expected, rtol=2e-3, atol=2e-3)


def test_prepared_operator_never_serves_another_weights_cached_values(backend):
    """A prepared operator caches its weights in CSR order. Two weight tensors that
    share storage address, shape, version and dtype (a view with another stride; or a
    new tensor where a freed one lived), or a weight re-pointed with ``.data =``, must
    still give their own results."""
    g = torch.Generator().manual_seed(8)
    n, e, c = 30, 120, 4
    ei = torch.randint(0, n, (2, e), generator=g)
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    R = torch.randn(n, c, generator=g, dtype=torch.float64)
    base = torch.randn(2 * e, generator=g, dtype=torch.float64)
    op = prepare(ei, n, n)
    for rule in (Epsilon(1e-3), ZPlus(), Gamma()):
        for w in (base[:e], base[::2]):  # same data_ptr, shape, version, dtype
            expected = edge_lrp(x, ei, w, R, rule, strategy="spmm")
            torch.testing.assert_close(edge_lrp(x, op, w, R, rule, strategy="spmm"), expected, rtol=1e-12, atol=1e-12)
        for _ in range(4):  # fresh weights each call, as a layer computes them
            w = torch.randn(e, generator=g, dtype=torch.float64)
            expected = edge_lrp(x, ei, w, R, rule, strategy="spmm")
            torch.testing.assert_close(edge_lrp(x, op, w, R, rule, strategy="spmm"), expected, rtol=1e-12, atol=1e-12)
            del w
        w = torch.randn(e, generator=g, dtype=torch.float64)
        edge_lrp(x, op, w, R, rule, strategy="spmm")
        w.data = torch.randn(e, generator=g, dtype=torch.float64)  # re-pointed: no version bump
        expected = edge_lrp(x, ei, w, R, rule, strategy="spmm")
        torch.testing.assert_close(edge_lrp(x, op, w, R, rule, strategy="spmm"), expected, rtol=1e-12, atol=1e-12)


def test_inference_mode_weights_and_inputs_that_require_grad(backend):
    """Weights made under torch.inference_mode (no version counter) are used uncached;
    inputs that require grad give plain results (both strategies, edge relevance too)."""
    g = torch.Generator().manual_seed(9)
    ei = torch.tensor([[0, 1, 2, 2, 3], [1, 2, 0, 3, 1]])
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    R = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    W = torch.randn(3, 4, generator=g, dtype=torch.float64)
    with torch.inference_mode():
        w_inf = w.clone()
        W_inf = W.to_sparse_csr()
    for strategy in ("spmm", "scatter"):
        expected = edge_lrp(x, ei, w, R, ZPlus(), strategy=strategy, return_edge_relevance=True)
        got = edge_lrp(x, prepare(ei, 4, 4), w_inf, R, ZPlus(), strategy=strategy, return_edge_relevance=True)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
        got = edge_lrp(x.requires_grad_(), ei, w.requires_grad_(), R, ZPlus(), strategy=strategy,
                       return_edge_relevance=True)  # fmt: skip
        x, w = x.detach(), w.detach()
        for a, b in zip(got, expected):
            assert not a.requires_grad
            torch.testing.assert_close(a, b)
    xb = torch.randn(2, 4, generator=g, dtype=torch.float64)
    Rb = torch.randn(2, 3, generator=g, dtype=torch.float64)
    r = linear_lrp(xb, W_inf, Rb, ZPlus())
    torch.testing.assert_close(r, linear_lrp(xb, W, Rb, ZPlus()))


@pytest.mark.parametrize("layout", ["dense", "coo", "edges"])
def test_zbox_keeps_float32_precision_where_an_output_has_no_contributions(layout):
    """Inputs at the lower bound give an output with all contributions 0 (its R / eps is
    huge); the other outputs' relevance must keep float32 precision (the formula in float64)."""
    low, high = -1.0, 1.0
    x = torch.tensor([[-1.0, -1.0, 0.3]])
    W = torch.tensor([[0.7, 0.9, 0.0], [0.5, -0.4, 0.8]])  # output 0 reads only inputs at low
    R = torch.tensor([[1.0, 1.0]])
    xd, Wd, Rd = x.double(), W.double(), R.double()
    c = xd[:, None, :] * Wd - low * Wd.clamp(min=0) - high * Wd.clamp(max=0)  # [B, out, in]
    d = c.sum(2)
    ref = (c * (Rd / (d + 1e-6 * torch.where(d >= 0, 1.0, -1.0)))[:, :, None]).sum(1)
    rule = ZBox(low, high)
    if layout == "edges":
        ei = W.T.nonzero().T
        got = edge_lrp(x.T, ei, W.T[ei[0], ei[1]], R.T, rule).T
    else:
        got = linear_lrp(x, W if layout == "dense" else W.to_sparse(), R, rule)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)


def test_a_prepared_operator_sees_weights_edited_through_data():
    """``w.data.mul_(-1)`` keeps the version counter and storage: the fused z+ structure
    cached for ``w`` must still follow the new values."""
    ei = torch.tensor([[0, 1, 2, 0], [1, 0, 1, 2]])
    op = prepare(ei, 3, 3)
    x = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    R = torch.ones(3, 1, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    for rule in (ZPlus(), Gamma(0.25)):
        edge_lrp(x, op, w, R, rule)
        w.data.mul_(-1)
        torch.testing.assert_close(edge_lrp(x, op, w, R, rule), edge_lrp(x, ei, w.clone(), R, rule))
