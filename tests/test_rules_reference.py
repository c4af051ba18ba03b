"""Every rule against an independent, deliberately naive dense reference.

The reference below builds the full contribution tensor ``c[b, j, i]`` of each rule
straight from the formulas (no code shared with ``sparse_lrp``), normalises it per
output with the stabilised denominator, multiplies by ``R[b, j]`` and sums over ``j``.
``linear_lrp`` (dense, COO and CSR weights; spmm and scatter strategies) and
``edge_lrp`` (a random graph with self-loops, isolated nodes and multi-edges) must
agree with it.
"""

from __future__ import annotations

import pytest
import torch

import sparse_lrp
from sparse_lrp import AlphaBeta, Epsilon, Flat, Gamma, WSquare, Z, ZBox, ZPlus, edge_lrp, linear_lrp

# --------------------------------------------------------------------------------------
# The independent dense reference
# --------------------------------------------------------------------------------------


def ref_stab(d: torch.Tensor, eps: float) -> torch.Tensor:
    """``d + eps * sign(d)`` with ``sign(0) = +1``."""
    sign = torch.where(d >= 0, torch.ones_like(d), -torch.ones_like(d))
    return d + eps * sign


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)


def ref_groups(rule, x, W, mask, b, bounds=None):
    """The rule's contribution groups, written out from the formulas.

    ``x [B, in]``, ``W [out, in]`` dense, ``mask [out, in]`` the existing connections
    (every entry for a dense weight, the stored pattern for a sparse one), ``b`` None or
    broadcastable to ``[B, out]``.

    ``bounds``: ZBox's ``(low, high)`` already laid out like ``x`` (default: the rule's
    bounds broadcast against ``x``).

    Returns a list of ``(coef, c [B, out, in], bias_share [B, out], where [B, out])``.
    """
    B, n_in = x.shape
    n_out = W.shape[0]
    xi = x[:, None, :]  # [B, 1, in]
    w = W[None, :, :]  # [1, out, in]
    xp, xn = _pos(xi), _neg(xi)
    wp, wn = _pos(w), _neg(w)
    zeros_bo = x.new_zeros(B, n_out)
    ones_bo = torch.ones(B, n_out, dtype=torch.bool)
    bb = zeros_bo if b is None else torch.broadcast_to(b, (B, n_out)).to(x)
    use_bias = b is not None and not rule.zero_bias

    def share(v):
        return v if use_bias else zeros_bo

    if isinstance(rule, Epsilon):
        return [(1.0, xi * w, share(bb), ones_bo)]
    if isinstance(rule, ZPlus):
        return [(1.0, xp * wp + xn * wn, share(_pos(bb)), ones_bo)]
    if isinstance(rule, AlphaBeta):
        p = xp * wp + xn * wn
        n = xp * wn + xn * wp
        return [
            (rule.alpha, p, share(_pos(bb)), ones_bo),
            (-rule.beta, n, share(_neg(bb)), ones_bo),
        ]
    if isinstance(rule, Gamma):
        g = rule.gamma
        z = (x @ W.T) + bb  # the plain forward, including the bias
        up = xp * (w + g * wp) + xn * (w + g * wn)
        down = xp * (w + g * wn) + xn * (w + g * wp)
        return [
            (1.0, up, share(bb + g * _pos(bb)), z >= 0),
            (1.0, down, share(bb + g * _neg(bb)), z < 0),
        ]
    if isinstance(rule, WSquare):
        return [(1.0, (w * w).expand(B, n_out, n_in), share(bb * bb), ones_bo)]
    if isinstance(rule, Flat):
        c = mask.to(x.dtype)[None].expand(B, n_out, n_in)
        return [(1.0, c, zeros_bo, ones_bo)]
    if isinstance(rule, ZBox):
        low, high = bounds if bounds is not None else (rule.low, rule.high)
        low = torch.broadcast_to(low.to(x), x.shape)[:, None, :]
        high = torch.broadcast_to(high.to(x), x.shape)[:, None, :]
        return [(1.0, xi * w - low * wp - high * wn, share(bb), ones_bo)]
    raise AssertionError(f"no reference for {rule!r}")


def ref_messages(rule, x, W, R, b=None, mask=None, bounds=None):
    """``M[b, j, i]``: the relevance flowing from output ``j`` to input ``i``."""
    if mask is None:
        mask = torch.ones(W.shape, dtype=torch.bool)
    M = torch.zeros(x.shape[0], W.shape[0], W.shape[1], dtype=x.dtype)
    for coef, c, bias_share, where in ref_groups(rule, x, W, mask, b, bounds):
        d = ref_stab(c.sum(-1) + bias_share, rule.stabilizer)
        # an output whose stabilised denominator is exactly zero passes nothing on
        s = torch.where(d == 0, torch.zeros_like(R), R / torch.where(d == 0, torch.ones_like(d), d))
        s = s * where.to(x.dtype) * coef
        M = M + c * s[..., None]
    return M


def ref_lrp(rule, x, W, R, b=None, mask=None):
    """``(R_in [B, in], absorbed [B, out])`` computed densely."""
    M = ref_messages(rule, x, W, R, b, mask)
    return M.sum(1), R - M.sum(2)


def ref_edge_lrp(rule, x, edge_index, edge_weight, R, bias=None):
    """Reference for ``edge_lrp`` on a graph WITHOUT multi-edges (any rule).

    Channels become the batch: ``x [N_in, C] -> [C, N_in]``.
    Returns ``(R_in [N_in, C], edge relevance [E], absorbed [N_out, C])``.
    """
    n_in, n_out = x.shape[0], R.shape[0]
    src, dst = edge_index
    W = torch.zeros(n_out, n_in, dtype=x.dtype)
    mask = torch.zeros(n_out, n_in, dtype=torch.bool)
    W[dst, src] = edge_weight
    mask[dst, src] = True
    b = None if bias is None else torch.broadcast_to(bias, R.shape).T
    bounds = None
    if isinstance(rule, ZBox):  # bounds broadcast against x [N_in, C]; the reference works on x.T
        bounds = tuple(torch.broadcast_to(t.to(x), x.shape).T for t in (rule.low, rule.high))
    M = ref_messages(rule, x.T, W, R.T, b, mask, bounds)  # [C, out, in]
    edge = M[:, dst, src].sum(0)
    return M.sum(1).T, edge, (R.T - M.sum(2)).T


def ref_epsilon_multigraph(eps, x, edge_index, edge_weight, R, bias=None):
    """Epsilon on a multigraph: multi-edges sum into one dense weight (it is linear in w).

    Also returns the per-edge relevance ``w_e * sum_c x[i, c] * R[j, c] / stab(z[j, c])``.
    """
    n_in, n_out = x.shape[0], R.shape[0]
    src, dst = edge_index
    W = torch.zeros(n_out, n_in, dtype=x.dtype)
    W.index_put_((dst, src), edge_weight, accumulate=True)
    z = W @ x
    if bias is not None:
        z = z + bias
    d = ref_stab(z, eps)
    s = torch.where(d == 0, torch.zeros_like(R), R / torch.where(d == 0, torch.ones_like(d), d))
    r_in = x * (W.T @ s)
    edge = edge_weight * (x[src] * s[dst]).sum(1)
    return r_in, edge, R - s * (W @ x)


# --------------------------------------------------------------------------------------
# Sanity checks of the reference itself (so a wrong reference cannot hide a bug)
# --------------------------------------------------------------------------------------


def test_reference_by_hand_epsilon_and_zplus():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    W = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    R = torch.tensor([[5.0]], dtype=torch.float64)
    # Epsilon(0): z = 3 - 2 = 1 -> R_in = [3/1*5, -2/1*5]
    r, _ = ref_lrp(Epsilon(0.0), x, W, R)
    torch.testing.assert_close(r, torch.tensor([[15.0, -10.0]], dtype=torch.float64))
    # ZPlus: contributions x+w+ = [3, 0] (x- w- = 0 since w >= 0) -> [5, 0]
    r, _ = ref_lrp(ZPlus(stabilizer=0.0), x, W, R)
    torch.testing.assert_close(r, torch.tensor([[5.0, 0.0]], dtype=torch.float64))
    # AlphaBeta(2, 1): p = [3, 0], n = [0, -2]; R = 2*p/3*5 - 1*n/(-2)*5 = [10, -5]
    r, absorbed = ref_lrp(AlphaBeta(2, 1, stabilizer=0.0), x, W, R)
    torch.testing.assert_close(r, torch.tensor([[10.0, -5.0]], dtype=torch.float64))
    torch.testing.assert_close(absorbed, torch.zeros(1, 1, dtype=torch.float64))


def test_reference_by_hand_gamma_wsquare_flat_zbox():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    W = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    R = torch.tensor([[5.0]], dtype=torch.float64)
    # Gamma(1): z = 1 >= 0; c = x+(w + w+) + x-(w + w-) = [1*6, -2*1] = [6, -2]; sum 4
    r, _ = ref_lrp(Gamma(1.0, stabilizer=0.0), x, W, R)
    torch.testing.assert_close(r, torch.tensor([[7.5, -2.5]], dtype=torch.float64))
    # WSquare: [9, 1] / 10 * 5
    r, _ = ref_lrp(WSquare(stabilizer=0.0), x, W, R)
    torch.testing.assert_close(r, torch.tensor([[4.5, 0.5]], dtype=torch.float64))
    # Flat on a pattern with one connection
    r, _ = ref_lrp(Flat(stabilizer=0.0), x, W, R, mask=torch.tensor([[False, True]]))
    torch.testing.assert_close(r, torch.tensor([[0.0, 5.0]], dtype=torch.float64))
    # ZBox(low=-1, high=2): c = x w - low w+ - high w- = [3 + 3, -2 + 1] = [6, -1]; sum 5
    r, _ = ref_lrp(ZBox(-1.0, 2.0, stabilizer=0.0), x, W, R)
    torch.testing.assert_close(r, torch.tensor([[6.0, -1.0]], dtype=torch.float64))
    # Gamma with z < 0: x = [-1, 1], W = [3, 1] -> z = -2 < 0; gamma = 1
    # c = x+(w + w-) + x-(w + w+) = [(-1)*(3+3), 1*(1+0)] = [-6, 1]; sum -5
    r, _ = ref_lrp(Gamma(1.0, stabilizer=0.0), -x.abs() * torch.tensor([[1.0, -0.5]], dtype=torch.float64), W, R)
    torch.testing.assert_close(r, torch.tensor([[6.0, -1.0]], dtype=torch.float64))


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


# (id, constructor, keyword arguments given the input width); ZBox bounds depend on it.
RULE_SPECS = [
    ("Epsilon0", Epsilon, lambda n: {"epsilon": 0.0}),
    ("Epsilon", Epsilon, lambda n: {"epsilon": 1e-6}),
    ("Epsilon0.1", Epsilon, lambda n: {"epsilon": 0.1}),
    ("Z", Z, lambda n: {}),
    ("ZPlus", ZPlus, lambda n: {}),
    ("AlphaBeta21", AlphaBeta, lambda n: {"alpha": 2, "beta": 1}),
    ("AlphaBeta10", AlphaBeta, lambda n: {"alpha": 1, "beta": 0}),
    ("Gamma", Gamma, lambda n: {"gamma": 0.25}),
    ("Gamma0", Gamma, lambda n: {"gamma": 0.0}),
    ("WSquare", WSquare, lambda n: {}),
    ("Flat", Flat, lambda n: {}),
    ("ZBox", ZBox, lambda n: {"low": -1.5, "high": 2.0}),
    ("ZBoxVec", ZBox, lambda n: {"low": -torch.linspace(0.5, 2.0, n), "high": torch.linspace(1.0, 3.0, n)}),
]


def make_rule(spec, n_in: int, zero_bias: bool = False):
    _, cls, kwargs = spec
    return cls(**kwargs(n_in), zero_bias=zero_bias)


RULES = [(spec[0], spec) for spec in RULE_SPECS]
RULE_IDS = [r[0] for r in RULES]


def make_case(kind: str, seed: int = 0):
    """``(x [B, in], W [out, in], R [B, out], b [out])`` in float64."""
    g = torch.Generator().manual_seed(seed)
    B, n_in, n_out = 5, 7, 6
    if kind == "batch1":
        B = 1
    x = torch.randn(B, n_in, generator=g, dtype=torch.float64)
    W = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    W = W * (torch.rand(n_out, n_in, generator=g, dtype=torch.float64) < 0.6)
    R = torch.randn(B, n_out, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, generator=g, dtype=torch.float64)
    if kind == "empty_rows_cols":
        W[1] = 0.0  # output 1 has no connections
        W[4] = 0.0
        W[:, 2] = 0.0  # input 2 feeds nothing
        W[:, 6] = 0.0
    elif kind == "zero_activations":
        x = x.clamp(min=0)  # post-ReLU inputs
        x[:, 3] = 0.0
        x[2] = 0.0  # a sample with all-zero input
    elif kind == "negative_inputs":
        x = -x.abs() - 0.1
    elif kind == "mixed_integer":
        # small integers: every denominator is computed exactly, including exact zeros
        x = torch.randint(-2, 3, (B, n_in), generator=g).to(torch.float64)
        W = torch.randint(-2, 3, (n_out, n_in), generator=g).to(torch.float64)
        b = torch.randint(-1, 2, (n_out,), generator=g).to(torch.float64)
    return x, W, R, b


CASES = ["random", "batch1", "empty_rows_cols", "zero_activations", "negative_inputs", "mixed_integer"]

# (layout, strategy) combinations for linear_lrp; a dense weight ignores the strategy.
LAYOUT_STRATEGIES = [
    ("dense", "auto"),
    ("coo", "spmm"),
    ("coo", "scatter"),
    ("csr", "spmm"),
    ("csr", "scatter"),
]


def to_layout(W: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "dense":
        return W
    if layout == "coo":
        return W.to_sparse_coo()
    return W.to_sparse_csr()


def tolerances(dtype):
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}


def assert_matches(actual, expected, dtype, what=""):
    assert actual.dtype == dtype, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite result"
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    tol = tolerances(dtype)
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{what}: {m}"
    )


# --------------------------------------------------------------------------------------
# linear_lrp against the reference
# --------------------------------------------------------------------------------------


# float32 on a subset of the cases (the code paths do not depend on the dtype otherwise)
DTYPE_CASES = [(torch.float64, c) for c in CASES] + [
    (torch.float32, c) for c in ("random", "zero_activations", "negative_inputs", "batch1")
]


@pytest.mark.parametrize("dtype,case", DTYPE_CASES, ids=[f"{str(d)[-7:]}-{c}" for d, c in DTYPE_CASES])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_linear_lrp_matches_reference(rule_id, spec, case, dtype, backend):
    """All bias modes x layouts x strategies of one (rule, case, dtype); every mismatch
    is collected so that one failing combination does not hide the others."""
    x, W, R, b = make_case(case)
    x, W, R, b = (t.to(dtype) for t in (x, W, R, b))
    x64, W64, R64 = x.double(), W.double(), R.double()
    failures = []
    for bias_mode in ("none", "bias", "zero_bias"):
        rule = make_rule(spec, x.shape[1], zero_bias=bias_mode == "zero_bias")
        assert rule.zero_bias == (bias_mode == "zero_bias")
        bias = None if bias_mode == "none" else b
        b64 = None if bias is None else bias.double()
        for layout, strategy in LAYOUT_STRATEGIES:
            what = f"{rule_id}/{case}/{bias_mode}/{layout}/{strategy}"
            mask = torch.ones(W.shape, dtype=torch.bool) if layout == "dense" else W != 0
            exp_r, exp_abs = ref_lrp(rule, x64, W64, R64, b64, mask)
            Ws = to_layout(W, layout)
            r_in, absorbed = linear_lrp(x, Ws, R, rule, bias, strategy=strategy, return_absorbed=True)
            assert r_in.shape == x.shape and absorbed.shape == R.shape
            try:
                assert_matches(r_in, exp_r, dtype, what + " R_in")
                assert_matches(absorbed, exp_abs, dtype, what + " absorbed")
            except AssertionError as err:
                failures.append(str(err).splitlines()[0] + " " + str(err).splitlines()[-1])
            if bias_mode == "bias":  # without return_absorbed the same R_in comes back alone
                r_only = linear_lrp(x, Ws, R, rule, bias, strategy=strategy)
                assert isinstance(r_only, torch.Tensor)
                torch.testing.assert_close(r_only, r_in, rtol=0, atol=0)
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures)


def test_zero_bias_equals_no_bias(backend):
    """``zero_bias=True`` leaves the bias out: identical to passing no bias.

    (Gamma is excluded: its choice of group still follows the sign of the real output
    ``z = Wx + b``; the reference test covers it.)
    """
    x, W, R, b = make_case("random", seed=3)
    for rule_id, spec in RULES:
        if spec[1] is Gamma:
            continue
        for Ws in (W, W.to_sparse_csr()):
            with_bias, absorbed = linear_lrp(
                x, Ws, R, make_rule(spec, x.shape[1], zero_bias=True), b, return_absorbed=True
            )
            without, absorbed_nb = linear_lrp(x, Ws, R, make_rule(spec, x.shape[1]), return_absorbed=True)
            torch.testing.assert_close(with_bias, without, rtol=1e-12, atol=1e-12, msg=rule_id)
            torch.testing.assert_close(absorbed, absorbed_nb, rtol=1e-12, atol=1e-12, msg=rule_id)


# --------------------------------------------------------------------------------------
# Sparse weights that are not canonical
# --------------------------------------------------------------------------------------


def uncoalesced_coo(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A COO tensor equal to ``W`` with every entry split in two halves (duplicates),
    entries listed in reverse order, plus a cancelling pair ``+1, -1`` at a position where
    ``W`` is zero (a stored zero after coalescing). Returns ``(coo, stored_mask)``."""
    rows, cols = W.nonzero(as_tuple=True)
    vals = W[rows, cols]
    zr, zc = (W == 0).nonzero(as_tuple=True)
    zr, zc = zr[:1], zc[:1]
    idx_r = torch.cat([rows, rows, zr, zr]).flip(0)
    idx_c = torch.cat([cols, cols, zc, zc]).flip(0)
    v = torch.cat([vals / 2, vals / 2, torch.ones(1, dtype=W.dtype), -torch.ones(1, dtype=W.dtype)]).flip(0)
    coo = torch.sparse_coo_tensor(torch.stack([idx_r, idx_c]), v, W.shape, check_invariants=True)
    assert not coo.is_coalesced()
    mask = W != 0
    mask[zr, zc] = True
    return coo, mask


@pytest.mark.parametrize("strategy", ["spmm", "scatter", "auto"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_uncoalesced_coo_duplicates_are_summed(rule_id, spec, strategy, backend):
    x, W, R, b = make_case("random", seed=5)
    coo, mask = uncoalesced_coo(W)
    torch.testing.assert_close(coo.to_dense(), W)
    rule = make_rule(spec, x.shape[1])
    exp_r, exp_abs = ref_lrp(rule, x, W, R, b, mask)
    r_in, absorbed = linear_lrp(x, coo, R, rule, b, strategy=strategy, return_absorbed=True)
    assert_matches(r_in, exp_r, torch.float64, rule_id)
    assert_matches(absorbed, exp_abs, torch.float64, rule_id)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_flat_counts_stored_pattern_including_stored_zero(layout, backend):
    """Flat on a sparse weight: every STORED connection counts, even a stored 0.0."""
    W = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    # store an explicit zero at (0, 1) and (1, 2)
    idx = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 2]])
    val = torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    coo = torch.sparse_coo_tensor(idx, val, (2, 3), check_invariants=True).coalesce()
    Ws = coo if layout == "coo" else coo.to_sparse_csr()
    assert Ws.values().numel() == 4
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    R = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    r = linear_lrp(x, Ws, R, Flat(stabilizer=0.0))
    # output 0 has 3 stored connections -> 1 each; output 1 has 1 (to input 2) -> 4
    torch.testing.assert_close(r, torch.tensor([[1.0, 1.0, 1.0 + 4.0]], dtype=torch.float64))
    # dense: every entry is a connection -> 3/3 + 4/3 for each input
    r_dense = linear_lrp(x, W, R, Flat(stabilizer=0.0))
    torch.testing.assert_close(r_dense, torch.full((1, 3), 7.0 / 3.0, dtype=torch.float64))


# --------------------------------------------------------------------------------------
# edge_lrp against the reference
# --------------------------------------------------------------------------------------


def random_graph(seed: int, n_in: int = 9, n_out: int = 9, n_edges: int = 24, multi: bool = True):
    """A random graph with self-loops, isolated nodes (the last two inputs and outputs
    take no edges) and, when ``multi``, repeated edges."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_in - 2, (n_edges,), generator=g)
    dst = torch.randint(0, n_out - 2, (n_edges,), generator=g)
    loops = torch.arange(min(3, n_in - 2, n_out - 2))
    src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
    ei = torch.stack([src, dst])
    if multi:
        ei = torch.cat([ei, ei[:, :5], ei[:, 2:4]], dim=1)
    else:
        ei = torch.unique(ei, dim=1)
        ei = ei[:, torch.randperm(ei.shape[1], generator=g)]
    return ei


def test_random_graph_has_the_advertised_features():
    ei = random_graph(0)
    pairs = [tuple(p) for p in ei.T.tolist()]
    assert len(set(pairs)) < len(pairs)  # multi-edges
    assert any(a == b for a, b in pairs)  # self-loops
    assert 7 not in ei[0].tolist() and 8 not in ei[1].tolist()  # isolated nodes
    simple = random_graph(0, multi=False)
    assert len({tuple(p) for p in simple.T.tolist()}) == simple.shape[1]


@pytest.mark.parametrize("bias_kind", ["none", "full", "column"])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.5])
@pytest.mark.parametrize("strategy", ["spmm", "scatter", "auto"])
@pytest.mark.parametrize("seed", [0, 1])
def test_edge_lrp_epsilon_multigraph_matches_dense(seed, strategy, eps, bias_kind, backend):
    g = torch.Generator().manual_seed(100 + seed)
    ei = random_graph(seed)
    n, C = 9, 3
    x = torch.randn(n, C, generator=g, dtype=torch.float64)
    w = torch.randn(ei.shape[1], generator=g, dtype=torch.float64)
    R = torch.randn(n, C, generator=g, dtype=torch.float64)
    bias = {
        "none": None,
        "full": torch.randn(n, C, generator=g, dtype=torch.float64),
        "column": torch.randn(n, 1, generator=g, dtype=torch.float64),
    }[bias_kind]
    exp_r, exp_e, exp_a = ref_epsilon_multigraph(eps, x, ei, w, R, bias)
    r_in, edge, absorbed = edge_lrp(
        x, ei, w, R, Epsilon(eps), bias=bias, strategy=strategy, return_edge_relevance=True, return_absorbed=True
    )
    assert edge.shape == (ei.shape[1],)
    assert_matches(r_in, exp_r, torch.float64, "R_in")
    assert_matches(edge, exp_e, torch.float64, "edge")
    assert_matches(absorbed, exp_a, torch.float64, "absorbed")
    # isolated inputs receive nothing
    assert torch.all(r_in[7:] == 0)


@pytest.mark.parametrize("bias_kind", ["none", "full"])
@pytest.mark.parametrize("strategy", ["spmm", "scatter"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_edge_lrp_simple_graph_matches_dense(rule_id, spec, dtype, strategy, bias_kind, backend):
    g = torch.Generator().manual_seed(7)
    n_in, n_out, C = 9, 7, 4  # rectangular: inputs and outputs are different node sets
    ei = random_graph(3, n_in=n_in, n_out=n_out, multi=False)
    x = torch.randn(n_in, C, generator=g, dtype=torch.float64)
    x[2] = 0.0  # a zero input node
    w = torch.randn(ei.shape[1], generator=g, dtype=torch.float64)
    R = torch.randn(n_out, C, generator=g, dtype=torch.float64)
    bias = None if bias_kind == "none" else torch.randn(n_out, C, generator=g, dtype=torch.float64)
    # ZBox bounds broadcast against [N_in, C]
    rule = (
        make_rule(spec, C) if rule_id != "ZBoxVec" else ZBox(-torch.rand(n_in, 1, generator=g), 1 + torch.rand(n_in, 1))
    )
    exp_r, exp_e, exp_a = ref_edge_lrp(rule, x, ei, w, R, bias)

    def cast(t):
        return None if t is None else t.to(dtype)

    r_in, edge, absorbed = edge_lrp(
        cast(x),
        ei,
        cast(w),
        cast(R),
        rule,
        bias=cast(bias),
        strategy=strategy,
        return_edge_relevance=True,
        return_absorbed=True,
    )
    assert_matches(r_in, exp_r, dtype, f"{rule_id} R_in")
    assert_matches(edge, exp_e, dtype, f"{rule_id} edge")
    assert_matches(absorbed, exp_a, dtype, f"{rule_id} absorbed")


@pytest.mark.parametrize("rule_id,spec", RULES, ids=RULE_IDS)
def test_edge_lrp_without_edge_weight_means_weight_one(rule_id, spec, backend):
    g = torch.Generator().manual_seed(11)
    ei = random_graph(4, multi=False)
    x = torch.randn(9, 2, generator=g, dtype=torch.float64)
    R = torch.randn(9, 2, generator=g, dtype=torch.float64)
    rule = make_rule(spec, 2) if rule_id != "ZBoxVec" else ZBox(-torch.ones(9, 1), torch.ones(9, 1))
    exp_r, _, _ = ref_edge_lrp(rule, x, ei, torch.ones(ei.shape[1], dtype=torch.float64), R)
    r_in = edge_lrp(x, ei, None, R, rule)
    assert_matches(r_in, exp_r, torch.float64, rule_id)


def test_module_exports_all_rules():
    for name in ["Epsilon", "Z", "ZPlus", "AlphaBeta", "Gamma", "WSquare", "Flat", "ZBox", "Pass"]:
        assert getattr(sparse_lrp, name) is getattr(sparse_lrp.rules, name)


@pytest.mark.parametrize("where", [">=0", "<0", "none"])
def test_gamma_with_relevance_on_one_output_sign_matches_reference(where, backend):
    """Relevance on outputs of one sign only (below a ReLU nothing reaches z < 0; an
    explained logit has one sign): the kernel then runs the live group alone, which
    must still equal the reference, absorbed relevance and edge relevance included."""
    x, W, R, b = make_case("random", seed=3)
    x[:, 1] = -x[:, 1].abs()  # negative inputs too: both input signs in the live group
    z = x @ W.T + b
    assert (z >= 0).any() and (z < 0).any()
    keep = {">=0": z >= 0, "<0": z < 0, "none": torch.zeros_like(z, dtype=torch.bool)}[where]
    R = torch.where(keep, R, 0.0)
    rule = Gamma(0.5)
    exp_r, exp_abs = ref_lrp(rule, x, W, R, b)
    for layout, strategy in LAYOUT_STRATEGIES:
        r_in, absorbed = linear_lrp(x, to_layout(W, layout), R, rule, b, strategy=strategy, return_absorbed=True)
        assert_matches(r_in, exp_r, torch.float64, f"{where}/{layout}/{strategy} R_in")
        assert_matches(absorbed, exp_abs, torch.float64, f"{where}/{layout}/{strategy} absorbed")
    # The same operator as edges (channels = the batch), z given as a model would.
    ei = W.T.nonzero().T  # (input i, output j) pairs
    w = W[ei[1], ei[0]]
    exp_r, exp_e, exp_a = ref_edge_lrp(rule, x.T, ei, w, R.T, b[:, None])
    for strategy in ("spmm", "scatter"):
        r_in, edge, absorbed = edge_lrp(
            x.T, ei, w, R.T, rule, bias=b[:, None], z=z.T, strategy=strategy,
            return_edge_relevance=True, return_absorbed=True,
        )  # fmt: skip
        assert_matches(r_in, exp_r, torch.float64, f"{where}/edges/{strategy} R_in")
        assert_matches(edge, exp_e, torch.float64, f"{where}/edges/{strategy} edge")
        assert_matches(absorbed, exp_a, torch.float64, f"{where}/edges/{strategy} absorbed")


def test_a_rules_repr_shows_that_it_leaves_the_bias_out():
    from sparse_lrp import AlphaBeta, Epsilon, Gamma, ZPlus

    assert repr(ZPlus()) == "ZPlus(stabilizer=1e-06)"
    assert repr(ZPlus(zero_bias=True)) == "ZPlus(stabilizer=1e-06, zero_bias=True)"
    assert repr(Gamma(0.5, zero_bias=True)).endswith(", zero_bias=True)")
    assert "zero_bias" not in repr(AlphaBeta(2.0, 1.0))
    assert repr(Epsilon(0.1, zero_bias=True)) == "Epsilon(epsilon=0.1, zero_bias=True)"
