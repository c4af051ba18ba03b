"""Input validation: every misuse raises a ValueError/TypeError whose message names the
problem; degenerate-but-valid inputs (zero denominators) never produce NaN."""

from __future__ import annotations

import math

import pytest
import torch

import sparse_lrp
from sparse_lrp import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Pass,
    WSquare,
    Z,
    ZBox,
    ZPlus,
    edge_lrp,
    linear_lrp,
    prepare,
)

ALL_RULES = [
    Epsilon(0.0),
    Epsilon(1e-6),
    ZPlus(),
    ZPlus(stabilizer=0.0),
    AlphaBeta(2, 1),
    AlphaBeta(1, 0, stabilizer=0.0),
    Gamma(0.25),
    Gamma(0.25, stabilizer=0.0),
    WSquare(),
    WSquare(stabilizer=0.0),
    Flat(),
    Flat(stabilizer=0.0),
    ZBox(-1.0, 1.0),
    ZBox(-1.0, 1.0, stabilizer=0.0),
]


def linear_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g, dtype=dtype)
    W = torch.randn(4, 3, generator=g, dtype=dtype)
    R = torch.randn(2, 4, generator=g, dtype=dtype)
    b = torch.randn(4, generator=g, dtype=dtype)
    return x, W, R, b


def graph_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 0, 0]])
    x = torch.randn(4, 2, generator=g, dtype=dtype)
    w = torch.randn(4, generator=g, dtype=dtype)
    R = torch.randn(3, 2, generator=g, dtype=dtype)
    return ei, x, w, R


# --------------------------------------------------------------------------------------
# Shapes and types: linear_lrp
# --------------------------------------------------------------------------------------


def test_linear_x_weight_feature_mismatch():
    x, W, R, _ = linear_inputs()
    with pytest.raises(ValueError, match=r"x has 2 features but weight \[out, in\] = \(4, 3\) expects 3"):
        linear_lrp(x[:, :2], W, R, Epsilon())
    with pytest.raises(ValueError, match="x has 2 features"):
        linear_lrp(x[:, :2], W.to_sparse_csr(), R, Epsilon())


def test_linear_relevance_shape_mismatch():
    x, W, R, _ = linear_inputs()
    with pytest.raises(ValueError, match=r"relevance must have shape \[B, out\] = \(2, 4\), got \(2, 3\)"):
        linear_lrp(x, W, R[:, :3], Epsilon())
    with pytest.raises(ValueError, match=r"relevance must have shape \[B, out\] = \(2, 4\), got \(1, 4\)"):
        linear_lrp(x, W.to_sparse_coo(), R[:1], Epsilon())


def test_linear_bias_shape_mismatch():
    x, W, R, b = linear_inputs()
    with pytest.raises(ValueError, match="bias has 3 entries but weight has 4 outputs"):
        linear_lrp(x, W, R, Epsilon(), b[:3])
    with pytest.raises(ValueError, match="bias must be 1-dimensional"):
        linear_lrp(x, W, R, Epsilon(), b[None])


@pytest.mark.parametrize(
    "which,pattern",
    [("x", "x must be 2-dimensional"), ("weight", "weight must be 2-dimensional"), ("R", "relevance must be 2-dim")],
)
def test_linear_wrong_ndim(which, pattern):
    x, W, R, _ = linear_inputs()
    args = {"x": x, "weight": W, "R": R}
    args[which] = args[which][None]
    with pytest.raises(ValueError, match=pattern):
        linear_lrp(args["x"], args["weight"], args["R"], Epsilon())


def test_linear_non_float_and_non_tensor_inputs():
    x, W, R, _ = linear_inputs()
    with pytest.raises(TypeError, match=r"x must have a floating dtype, got torch\.int64"):
        linear_lrp(x.long(), W, R, Epsilon())
    with pytest.raises(TypeError, match=r"weight must have a floating dtype"):
        linear_lrp(x, W.long(), R, Epsilon())
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got list"):
        linear_lrp(x.tolist(), W, R, Epsilon())


def test_linear_unsupported_weight_layout():
    """A CSC weight is neither dense, COO nor CSR: the error must say so."""
    x, W, R, _ = linear_inputs()
    with pytest.raises(TypeError, match="layout"):
        linear_lrp(x, W.to_sparse_csc(), R, Epsilon())


@pytest.mark.parametrize(
    "indices, pattern",
    [([[0], [7]], "index 7 in dimension 1"), ([[9], [0]], "index 9 in dimension 0"), ([[0], [-1]], "negative index")],
)
def test_sparse_weight_indices_out_of_range(indices, pattern):
    """A COO weight built without torch's invariant checks with an index past its shape read
    out of bounds (uninitialised values came back) or crashed in bincount."""
    w = torch.sparse_coo_tensor(torch.tensor(indices), torch.ones(1), (5, 4), check_invariants=False)
    with pytest.raises(ValueError, match=pattern):
        sparse_lrp.linear_lrp(torch.randn(2, 4), w, torch.randn(2, 5), Epsilon())
    with pytest.raises(ValueError, match=pattern):
        sparse_lrp.SparseLinear(w)
    csr = torch.sparse_csr_tensor(
        torch.tensor([0, 1, 1, 1, 1, 1]), torch.tensor([4]), torch.ones(1), (5, 4), check_invariants=False
    )
    with pytest.raises(ValueError, match="index 4 in dimension 1"):
        sparse_lrp.linear_lrp(torch.randn(2, 4), csr, torch.randn(2, 5), Epsilon())


@pytest.mark.parametrize("other", ["weight", "relevance", "bias"])
def test_linear_dtype_mismatch(other):
    x, W, R, b = linear_inputs(torch.float32)
    args = {"weight": W, "relevance": R, "bias": b}
    args[other] = args[other].double()
    with pytest.raises(TypeError, match=f"{other} has dtype torch.float64 but x has dtype torch.float32"):
        linear_lrp(x, args["weight"], args["relevance"], Epsilon(), args["bias"])
    if other == "weight":
        with pytest.raises(TypeError, match=r"weight has dtype torch\.float64"):
            linear_lrp(x, W.double().to_sparse_csr(), R, Epsilon())


def test_linear_device_mismatch_meta():
    x, W, R, _ = linear_inputs()
    with pytest.raises(ValueError, match="weight is on cpu but x is on meta"):
        linear_lrp(x.to("meta"), W, R.to("meta"), Epsilon())
    with pytest.raises(ValueError, match="relevance is on meta but x is on cpu"):
        linear_lrp(x, W, R.to("meta"), Epsilon())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_linear_device_mismatch_cuda():
    x, W, R, _ = linear_inputs()
    with pytest.raises(ValueError, match="weight is on cpu but x is on cuda"):
        linear_lrp(x.cuda(), W, R.cuda(), Epsilon())
    with pytest.raises(ValueError, match="on cuda"):
        linear_lrp(x, W.cuda().to_sparse_csr(), R, Epsilon())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["x", "weight", "weight_coo", "weight_csr", "relevance", "bias"])
def test_linear_non_finite_inputs(where, bad):
    x, W, R, b = linear_inputs()
    name = where.split("_")[0]
    t = {"x": x, "weight": W, "weight_coo": W, "weight_csr": W, "relevance": R, "bias": b}[where].clone()
    t.view(-1)[1] = bad
    args = {"x": x, "weight": W, "relevance": R, "bias": b}
    args[name] = t
    if where == "weight_coo":
        args[name] = t.to_sparse_coo()
    elif where == "weight_csr":
        args[name] = t.to_sparse_csr()
    kind = "NaN" if math.isnan(bad) else "Inf"
    with pytest.raises(ValueError, match=f"{name} contains {kind} values"):
        linear_lrp(args["x"], args["weight"], args["relevance"], Epsilon(), args["bias"])


# --------------------------------------------------------------------------------------
# Shapes and types: edge_lrp
# --------------------------------------------------------------------------------------


def test_edge_channel_mismatch():
    ei, x, w, R = graph_inputs()
    with pytest.raises(ValueError, match="relevance has 1 channels but x has 2"):
        edge_lrp(x, ei, w, R[:, :1], Epsilon())


def test_edge_weight_length_and_shape():
    ei, x, w, R = graph_inputs()
    with pytest.raises(ValueError, match="edge_weight has 3 entries but edge_index has 4 edges"):
        edge_lrp(x, ei, w[:3], R, Epsilon())
    with pytest.raises(ValueError, match="edge_weight must be 1-dimensional"):
        edge_lrp(x, ei, w[:, None], R, Epsilon())
    with pytest.raises(TypeError, match="edge_weight must have a floating dtype"):
        edge_lrp(x, ei, torch.ones(4, dtype=torch.long), R, Epsilon())


def test_edge_weight_not_a_tensor():
    ei, x, w, R = graph_inputs()
    with pytest.raises(TypeError, match=r"edge_weight must be a torch\.Tensor"):
        edge_lrp(x, ei, w.tolist(), R, Epsilon())


def test_edge_index_out_of_range():
    ei, x, w, R = graph_inputs()
    bad = ei.clone()
    bad[0, 2] = 4  # 4 inputs: 0..3
    with pytest.raises(ValueError, match=r"edge_index\[0\] \(inputs\) has index 4, out of range for 4 inputs"):
        edge_lrp(x, bad, w, R, Epsilon())
    bad = ei.clone()
    bad[1, 0] = 3  # 3 outputs: 0..2
    with pytest.raises(ValueError, match=r"edge_index\[1\] \(outputs\) has index 3, out of range for 3 outputs"):
        edge_lrp(x, bad, w, R, Epsilon())
    with pytest.raises(ValueError, match="out of range"):
        prepare(bad, 4, 3)


def test_edge_index_negative():
    ei, x, w, R = graph_inputs()
    bad = ei.clone()
    bad[1, 3] = -1
    with pytest.raises(ValueError, match="edge_index contains negative indices"):
        edge_lrp(x, bad, w, R, Epsilon())
    with pytest.raises(ValueError, match="negative"):
        prepare(bad, 4, 3)


def test_edge_index_float_dtype():
    ei, x, w, R = graph_inputs()
    with pytest.raises(TypeError, match=r"edge_index must have dtype torch\.int64 or torch\.int32, got torch\.float32"):
        edge_lrp(x, ei.float(), w, R, Epsilon())
    with pytest.raises(TypeError, match="edge_index must have dtype"):
        prepare(ei.float(), 4, 3)


@pytest.mark.parametrize(
    "shape_fn",
    [lambda e: e[0], lambda e: torch.cat([e, e[:1]]), lambda e: e.T],
    ids=["one row", "three rows", "transposed"],
)
def test_edge_index_wrong_shape(shape_fn):
    ei, x, _, R = graph_inputs()
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        edge_lrp(x, shape_fn(ei), None, R, Epsilon())


def test_edge_index_not_a_tensor():
    ei, x, w, R = graph_inputs()
    with pytest.raises(TypeError, match=r"edge_index must be a torch\.Tensor, got list"):
        edge_lrp(x, ei.tolist(), w, R, Epsilon())


def test_edge_num_out_bias_and_z_shapes():
    ei, x, w, R = graph_inputs()
    with pytest.raises(ValueError, match="num_out=5 but relevance has 3 rows"):
        edge_lrp(x, ei, w, R, Epsilon(), num_out=5)
    with pytest.raises(ValueError, match=r"bias of shape \(2, 2\) does not broadcast against relevance \(3, 2\)"):
        edge_lrp(x, ei, w, R, Epsilon(), bias=torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"z has shape \(2, 2\) but relevance has \(3, 2\)"):
        edge_lrp(x, ei, w, R, Epsilon(), z=torch.zeros(2, 2, dtype=torch.float64))
    # num_out equal to the relevance rows is fine
    assert edge_lrp(x, ei, w, R, Epsilon(), num_out=3).shape == x.shape


def test_edge_x_and_relevance_ndim():
    ei, x, w, R = graph_inputs()
    with pytest.raises(ValueError, match="x must be 2-dimensional"):
        edge_lrp(x[:, 0], ei, w, R, Epsilon())
    with pytest.raises(ValueError, match="relevance must be 2-dimensional"):
        edge_lrp(x, ei, w, R[:, 0], Epsilon())


@pytest.mark.parametrize("other", ["relevance", "edge_weight", "bias", "z"])
def test_edge_dtype_mismatch(other):
    ei, x, w, R = graph_inputs(torch.float32)
    args = {"relevance": R, "edge_weight": w, "bias": None, "z": None}
    args[other] = {"relevance": R, "edge_weight": w, "bias": torch.zeros(3, 2), "z": torch.zeros(3, 2)}[other].double()
    with pytest.raises(TypeError, match=f"{other} has dtype torch.float64 but x has dtype torch.float32"):
        edge_lrp(x, ei, args["edge_weight"], args["relevance"], Epsilon(), bias=args["bias"], z=args["z"])


def test_edge_device_mismatch_meta():
    ei, x, w, R = graph_inputs()
    with pytest.raises(ValueError, match="relevance is on meta but x is on cpu"):
        edge_lrp(x, ei, w, R.to("meta"), Epsilon())
    with pytest.raises(ValueError, match="edge_weight is on meta but x is on cpu"):
        edge_lrp(x, ei, w.to("meta"), R, Epsilon())
    with pytest.raises(ValueError, match="edge_index is on cpu but x is on meta"):
        edge_lrp(x.to("meta"), ei, w.to("meta"), R.to("meta"), Epsilon())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_edge_device_mismatch_cuda():
    ei, x, w, R = graph_inputs()
    with pytest.raises(ValueError, match="edge_index is on cpu but x is on cuda"):
        edge_lrp(x.cuda(), ei, w.cuda(), R.cuda(), Epsilon())
    with pytest.raises(ValueError, match="edge_weight is on cuda"):
        edge_lrp(x, ei, w.cuda(), R, Epsilon())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("where", ["x", "relevance", "edge_weight", "bias"])
def test_edge_non_finite_inputs(where, bad):
    ei, x, w, R = graph_inputs()
    args = {"x": x.clone(), "relevance": R.clone(), "edge_weight": w.clone(), "bias": torch.zeros(3, 2).double()}
    args[where].view(-1)[0] = bad
    kind = "NaN" if math.isnan(bad) else "Inf"
    with pytest.raises(ValueError, match=f"{where} contains {kind} values"):
        edge_lrp(args["x"], ei, args["edge_weight"], args["relevance"], Epsilon(), bias=args["bias"])


# --------------------------------------------------------------------------------------
# Rules and options
# --------------------------------------------------------------------------------------


def test_alphabeta_parameter_checks():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(alpha=1, beta=1)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(alpha=3, beta=1)
    with pytest.raises(ValueError, match="alpha, beta >= 0"):
        AlphaBeta(alpha=0.5, beta=-0.5)
    assert AlphaBeta(1, 0).alpha == 1.0 and AlphaBeta(2, 1).beta == 1.0


@pytest.mark.parametrize("alpha,beta", [(math.nan, math.nan), (math.inf, math.inf)])
def test_alphabeta_rejects_non_finite_parameters(alpha, beta):
    """NaN/Inf are not ``>= 0`` numbers with ``alpha - beta = 1``."""
    with pytest.raises(ValueError, match="AlphaBeta"):
        AlphaBeta(alpha=alpha, beta=beta)


def test_other_rule_parameter_checks():
    with pytest.raises(ValueError, match="stabilizer must be a finite number >= 0"):
        Epsilon(-1e-3)
    with pytest.raises(ValueError, match="stabilizer must be a finite number >= 0"):
        ZPlus(stabilizer=math.inf)
    with pytest.raises(ValueError, match="stabilizer must be a finite number >= 0"):
        WSquare(stabilizer=math.nan)
    with pytest.raises(ValueError, match="Gamma needs gamma >= 0"):
        Gamma(-0.1)
    assert Z().epsilon == 0.0 and Z(zero_bias=True).zero_bias


def test_zbox_bounds_that_do_not_broadcast():
    x, W, R, _ = linear_inputs()
    with pytest.raises(ValueError, match="ZBox low of shape"):
        linear_lrp(x, W, R, ZBox(torch.zeros(5), 1.0))
    ei, xg, w, Rg = graph_inputs()
    with pytest.raises(ValueError, match="ZBox high of shape"):
        edge_lrp(xg, ei, w, Rg, ZBox(0.0, torch.ones(7)))
    # a sparse weight runs the edge kernel on the transposed input: the bounds too
    with pytest.raises(ValueError, match=r"ZBox bound\) of shape \(5,\)"):
        linear_lrp(x, W.to_sparse(), R, ZBox(torch.zeros(5), 1.0))
    layer = sparse_lrp.SparseLinear(W.to_sparse())
    first = sparse_lrp.Composite(Epsilon(), first=ZBox(torch.zeros(5), 1.0))
    with pytest.raises(ValueError, match=r"ZBox bound\) of shape \(5,\)"):
        sparse_lrp.explain(layer, x, None, composite=first, target=0)


@pytest.mark.parametrize("sizes", [(-1, 3), (4, -2), (4.0, 3), (True, 3)])
def test_prepare_names_a_bad_number_of_nodes(sizes):
    ei, _, _, _ = graph_inputs()
    with pytest.raises(ValueError, match="must be an int >= 0"):
        prepare(ei, *sizes)


@pytest.mark.parametrize("rule", [Pass(), "epsilon", Epsilon, None], ids=["Pass()", "str", "class", "None"])
def test_non_linear_map_rules_raise_type_error(rule):
    x, W, R, _ = linear_inputs()
    with pytest.raises(TypeError, match="linear_lrp needs a linear-map rule"):
        linear_lrp(x, W, R, rule)
    ei, xg, w, Rg = graph_inputs()
    with pytest.raises(TypeError, match="edge_lrp needs a linear-map rule"):
        edge_lrp(xg, ei, w, Rg, rule)


@pytest.mark.parametrize("strategy", ["fast", "SPMM", "", "dense"])
def test_unknown_strategy(strategy):
    x, W, R, _ = linear_inputs()
    for Ws in (W, W.to_sparse_coo(), W.to_sparse_csr()):
        with pytest.raises(ValueError, match=f"unknown strategy {strategy!r}"):
            linear_lrp(x, Ws, R, Epsilon(), strategy=strategy)
    ei, xg, w, Rg = graph_inputs()
    with pytest.raises(ValueError, match="unknown strategy"):
        edge_lrp(xg, ei, w, Rg, Epsilon(), strategy=strategy)


# --------------------------------------------------------------------------------------
# Zero denominators: no NaN, and the relevance of such outputs is DROPPED
# (it flows to no input and shows up entirely in ``absorbed``).
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["spmm", "scatter"])
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_dead_unit_relevance_is_dropped(layout, strategy, backend):
    """z_0 = 1 - 1 = 0 exactly under Epsilon(0): output 0's relevance is dropped
    (absorbed), output 1 (z = 2) is conserved."""
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    W = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    Ws = {"dense": W, "coo": W.to_sparse_coo(), "csr": W.to_sparse_csr()}[layout]
    R = torch.tensor([[5.0, 4.0]], dtype=torch.float64)
    r, absorbed = linear_lrp(x, Ws, R, Epsilon(0.0), strategy=strategy, return_absorbed=True)
    # only output 1 flows: R_i = x_i * 1 / 2 * 4 = [2, 2]
    torch.testing.assert_close(r, torch.tensor([[2.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(absorbed, torch.tensor([[5.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("strategy", ["spmm", "scatter"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_empty_weight_row_is_dropped(rule, strategy, backend):
    """Output 1 has no stored connections: its relevance reaches no input."""
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]], dtype=torch.float64)
    W = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, -1.0, 1.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 7.0, 2.0], [3.0, -7.0, 1.0]], dtype=torch.float64)
    R_zero = R.clone()
    R_zero[:, 1] = 0.0
    for Ws in (W.to_sparse_coo(), W.to_sparse_csr()):
        r, absorbed = linear_lrp(x, Ws, R, rule, strategy=strategy, return_absorbed=True)
        assert torch.isfinite(r).all() and torch.isfinite(absorbed).all()
        torch.testing.assert_close(absorbed[:, 1], R[:, 1])  # all of it
        # identical to giving output 1 no relevance at all
        torch.testing.assert_close(r, linear_lrp(x, Ws, R_zero, rule, strategy=strategy))


@pytest.mark.parametrize("strategy", ["spmm", "scatter"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_all_zero_input_gives_no_nan(rule, strategy, backend):
    x = torch.zeros(2, 3, dtype=torch.float64)
    W = torch.tensor([[1.0, -2.0, 0.0], [0.5, 1.0, 3.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 2.0], [-1.0, 4.0]], dtype=torch.float64)
    for Ws in (W, W.to_sparse_coo(), W.to_sparse_csr()):
        for b in (None, torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)):
            r, absorbed = linear_lrp(x, Ws, R, rule, b, strategy=strategy, return_absorbed=True)
            assert torch.isfinite(r).all() and torch.isfinite(absorbed).all()
            torch.testing.assert_close(r.sum() + absorbed.sum(), R.sum())
            if rule.proportional:  # R_i = x_i * (...) = 0: everything is dropped/absorbed
                assert torch.all(r == 0)
                torch.testing.assert_close(absorbed, R)


@pytest.mark.parametrize("strategy", ["spmm", "scatter"])
@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_all_zero_weight_gives_no_nan(rule, strategy, backend):
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    R = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    W = torch.zeros(2, 3, dtype=torch.float64)
    # sparse: no stored connections -> every output is dropped
    for Ws in (W.to_sparse_coo(), W.to_sparse_csr()):
        assert Ws.values().numel() == 0
        r, absorbed = linear_lrp(x, Ws, R, rule, strategy=strategy, return_absorbed=True)
        assert torch.all(r == 0)
        torch.testing.assert_close(absorbed, R)
    # dense: finite; Flat still sees every entry as a connection and spreads R evenly
    r, absorbed = linear_lrp(x, W, R, rule, strategy=strategy, return_absorbed=True)
    assert torch.isfinite(r).all() and torch.isfinite(absorbed).all()
    torch.testing.assert_close(r.sum() + absorbed.sum(), R.sum())
    if isinstance(rule, Flat):
        n = 3 + rule.stabilizer
        torch.testing.assert_close(r, torch.full((1, 3), 3.0 / n, dtype=torch.float64))


@pytest.mark.parametrize("strategy", ["spmm", "scatter"])
def test_alphabeta_without_negative_part_drops_only_beta_term(strategy, backend):
    """N_j = 0 (no negative contributions) with no stabiliser: the beta term is dropped,
    not NaN; the alpha term alone redistributes alpha * R_j."""
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    W = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    R = torch.tensor([[4.0]], dtype=torch.float64)
    r, absorbed = linear_lrp(
        x, W.to_sparse_csr(), R, AlphaBeta(2, 1, stabilizer=0.0), strategy=strategy, return_absorbed=True
    )
    # P = 4 -> 2 * [1, 3] / 4 * 4 = [2, 6]; N = 0 -> dropped
    torch.testing.assert_close(r, torch.tensor([[2.0, 6.0]], dtype=torch.float64))
    torch.testing.assert_close(absorbed, torch.tensor([[-4.0]], dtype=torch.float64))


def test_edge_lrp_isolated_output_is_dropped(backend):
    """Output 2 receives no edge: its relevance is dropped, no NaN."""
    ei = torch.tensor([[0, 1], [0, 1]])
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    R = torch.tensor([[1.0], [1.0], [9.0]], dtype=torch.float64)
    for rule in ALL_RULES:
        r, absorbed = edge_lrp(x, ei, None, R, rule, return_absorbed=True)
        assert torch.isfinite(r).all()
        assert r[2, 0] == 0
        torch.testing.assert_close(absorbed[2], R[2])


def test_explain_rechecks_an_edge_index_changed_in_place():
    """The range check of a graph explained call after call is reused only while the
    edge_index tensor is unchanged."""
    from torch_geometric.nn import GCN

    import sparse_lrp

    torch.manual_seed(0)
    model = GCN(3, 4, 2, 2).eval()
    x = torch.randn(5, 3)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    sparse_lrp.explain(model, x, ei, index=1)
    sparse_lrp.explain(model, x, ei, index=2)  # the cached check
    ei[0, 0] = 7
    with pytest.raises(ValueError, match="out of range for 5"):
        sparse_lrp.explain(model, x, ei, index=1)
    ok = torch.tensor([[0, 1], [1, 4]])
    sparse_lrp.explain(model, x, ok, index=1)
    with pytest.raises(ValueError, match="out of range for 4"):  # the same graph on fewer nodes
        sparse_lrp.explain(model, x[:4], ok, index=1)


def test_explain_names_a_sparse_adjacency_and_an_empty_index():
    """A sparse adjacency (as PyG's ToSparseTensor makes) gets an error that says how to
    pass the edge list; an empty target list is named, not a failure deep inside."""
    from torch_geometric.nn import GCN
    from torch_geometric.utils import to_edge_index, to_torch_coo_tensor, to_torch_csr_tensor

    import sparse_lrp

    torch.manual_seed(0)
    model = GCN(3, 4, 2, 2).eval()
    x = torch.randn(5, 3)
    ei = torch.tensor([[0, 1, 2, 4], [1, 2, 3, 0]])
    for adj in (to_torch_csr_tensor(ei, size=(5, 5)), to_torch_coo_tensor(ei, size=(5, 5))):
        with pytest.raises(TypeError, match=r"sparse adjacency matrix.*to_edge_index"):
            sparse_lrp.explain(model, x, adj.t(), index=1)
        # the conversion the message gives restores the edge list of adj_t
        back, _ = to_edge_index(adj.t().to_sparse_csr())
        assert sorted(map(tuple, back.flip(0).T.tolist())) == sorted(map(tuple, ei.T.tolist()))
    for empty in ([], torch.zeros(5, dtype=torch.bool)):
        with pytest.raises(ValueError, match="index is empty"):
            sparse_lrp.explain(model, x, ei, index=empty)


def test_kernel_refuses_widening_bias_non_finite_rule_parameters_hybrid_weights_and_bad_budgets():
    from sparse_lrp import Gamma, ZBox, ZPlus, edge_lrp, linear_lrp

    x = torch.randn(4, 3, dtype=torch.float64)
    R = torch.randn(4, 3, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    for bias in (torch.zeros(1, 4, 3, dtype=torch.float64), torch.zeros(2, 1, 1, dtype=torch.float64)):
        with pytest.raises(ValueError, match="does not broadcast against relevance"):
            edge_lrp(x, ei, None, R, ZPlus(), bias=bias)
    with pytest.raises(ValueError, match="Gamma needs gamma >= 0 \\(and finite\\)"):
        Gamma(float("inf"))
    with pytest.raises(ValueError, match="ZBox low must be finite"):
        ZBox(float("-inf"), 1.0)
    hybrid = torch.randn(3, 4, 2, dtype=torch.float64).to_sparse(1)
    with pytest.raises(TypeError, match="hybrid sparse"):
        linear_lrp(torch.randn(2, 4, dtype=torch.float64), hybrid, torch.randn(2, 3, dtype=torch.float64), ZPlus())
    for budget in (float("inf"), 0, -5, True):
        with pytest.raises(ValueError, match="max_memory"):
            edge_lrp(x, ei, None, R, ZPlus(), max_memory=budget)
    with pytest.raises(ValueError, match="z contains"):
        edge_lrp(x, ei, None, R, ZPlus(), z=torch.full_like(R, float("nan")))


def test_explain_names_bad_indices_non_finite_targets_and_weights_and_an_empty_graph():
    """Each of these once gave a silent wrong result or an obscure internal error: a float
    index was truncated (1.5 -> node 1), a 2-D index flattened, a bool mask of the wrong
    length read as positions; a NaN/Inf target relevance or model weight gave NaN
    relevance; an overflowing model an infinite one; a graph of 0 nodes a reshape error."""
    from torch_geometric.nn import GCN

    import sparse_lrp

    torch.manual_seed(0)
    model = GCN(5, 8, 2, 3).eval()
    x, ei = torch.randn(8, 5), torch.randint(0, 8, (2, 20))
    for index, err, match in [
        (1.5, TypeError, "index must hold integers"),
        (torch.tensor([2.9]), TypeError, "index must hold integers"),
        (torch.tensor([[1, 2], [3, 4]]), ValueError, r"index must be an int or 1-D, got shape \(2, 2\)"),
        (torch.ones(5, dtype=torch.bool), ValueError, r"one entry per row \(8\), got 5"),
        ("a", TypeError, "index must"),
    ]:
        with pytest.raises(err, match=match):
            sparse_lrp.explain(model, x, ei, index=index)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[2, 5]] = True  # a mask of the right length still names its nodes
    torch.testing.assert_close(
        sparse_lrp.explain(model, x, ei, index=mask).node_feat, sparse_lrp.explain(model, x, ei, index=[2, 5]).node_feat
    )
    for bad, word in ((float("nan"), "NaN"), (float("inf"), "Inf")):
        t = torch.ones(8, 3)
        t[0, 0] = bad
        with pytest.raises(ValueError, match=f"target relevance contains {word}"):
            sparse_lrp.explain(model, x, ei, target=t)
    broken = GCN(5, 8, 2, 3).eval()
    with torch.no_grad():
        broken.convs[1].lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model parameter 'convs.1.lin.weight' contains NaN"):
        sparse_lrp.explain(broken, x, ei, index=2)
    with torch.no_grad():
        broken.convs[1].lin.weight[0, 0] = 0.0  # mended in place: checked again, explained
    sparse_lrp.explain(broken, x, ei, index=2)
    with torch.no_grad():  # a weight that passed, then broken in place: its version moved on
        broken.convs[0].lin.weight[1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"model parameter 'convs.0.lin.weight' contains Inf"):
        sparse_lrp.explain(broken, x, ei, index=2)
    bn = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3)).eval()
    bn[1].running_var[1] = float("inf")
    with pytest.raises(ValueError, match=r"model buffer '1.running_var' contains Inf"):
        sparse_lrp.explain(bn, x)
    huge = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    with torch.no_grad():
        huge[0].weight.fill_(1e30)
        huge[2].weight.fill_(1e30)
    with pytest.raises(ValueError, match="the explained output is not finite"):
        sparse_lrp.explain(huge, x.abs())
    with pytest.raises(ValueError, match=r"x has no rows \(shape \(0, 5\)\)"):
        sparse_lrp.explain(model, torch.empty(0, 5), torch.empty(2, 0, dtype=torch.long))


def test_non_finite_denominators_are_named_not_returned():
    """A rule whose contributions overflow (Gamma(1e38) in float32: (1+γ)P is inf) returned
    zero relevance with a NaN absorbed sum; a NaN written through ``.data`` after a first
    explanation (no version bump, so the cached weight check passes) gave NaN relevance."""
    from torch_geometric.nn import GCN

    import sparse_lrp

    x = torch.tensor([[10.0], [20.0]])
    ei = torch.tensor([[0, 1], [0, 0]])
    R = torch.ones(1, 1)
    with pytest.raises(ValueError, match=r"Gamma.*sum to Inf in torch.float32"):
        edge_lrp(x, ei, torch.ones(2), R, Gamma(1e38), num_out=1)
    got = edge_lrp(x.double(), ei, torch.ones(2, dtype=torch.float64), R.double(), Gamma(1e38), num_out=1)
    torch.testing.assert_close(got, torch.tensor([[1 / 3], [2 / 3]], dtype=torch.float64))  # float64 holds it

    torch.manual_seed(0)
    model = GCN(5, 8, 2, 3).eval()
    xg, eg = torch.randn(8, 5), torch.randint(0, 8, (2, 20))
    sparse_lrp.explain(model, xg, eg, index=2, target=0)
    model.convs[1].lin.weight.data[1, 0] = float("nan")  # bypasses the version counter
    with pytest.raises(ValueError, match="sum to NaN"):  # (class 1's row: the explained output is finite)
        sparse_lrp.explain(model, xg, eg, index=2, target=0)
    with pytest.raises(ValueError, match=r"explained output is not finite.*'convs.1.lin.weight' contains NaN"):
        sparse_lrp.explain(model, xg, eg, index=2, target=1)


@pytest.mark.parametrize(
    ("option", "value", "err", "match"),
    [
        ("hops", -1, ValueError, "hops must be >= 0, got -1"),
        ("hops", 1.5, TypeError, "hops must be an int"),
        ("max_union", 0, ValueError, "max_union must be >= 1, got 0"),
        ("max_union", True, TypeError, "max_union must be an int"),
    ],
)
def test_explain_names_bad_hops_and_max_union(option, value, err, match):
    """hops=-1 and max_union=0 were accepted silently; integer-like values still are."""
    from torch_geometric.nn import GCN

    import sparse_lrp

    model = GCN(3, 4, 2, 2).eval()
    x, ei = torch.randn(5, 3), torch.tensor([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(err, match=match):
        sparse_lrp.explain(model, x, ei, index=[1, 2], **{option: value})
    ref = sparse_lrp.explain(model, x, ei, index=[1, 2])
    again = sparse_lrp.explain(model, x, ei, index=[1, 2], hops=torch.tensor(2), max_union=torch.tensor(64))
    torch.testing.assert_close(again.node_feat, ref.node_feat)


@pytest.mark.parametrize("layout", ["dense", "coo", "edges"])
def test_an_overflowing_ratio_gives_no_nan(layout):
    """R / d overflows float32 (d near 1e-40; or a dead unit's R / eps under huge R): an
    infinite ratio times a zero contribution would be NaN. The formula in float64 holds."""

    def run(x, W, R, rule):
        if layout == "edges":
            ei = W.T.nonzero().T
            return edge_lrp(x.T, ei, W.T[ei[0], ei[1]], R.T, rule).T
        return linear_lrp(x, W if layout == "dense" else W.to_sparse(), R, rule)

    x = torch.tensor([[1e-20, 0.0, 1.0]])
    W = torch.tensor([[1e-20, 5.0, 0.0]])  # z = 1e-40, a float32 subnormal
    torch.testing.assert_close(run(x, W, torch.ones(1, 1), Z()), torch.tensor([[1.0, 0.0, 0.0]]))
    x = torch.tensor([[1.0, 2.0]])
    W = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # output 0 dead: its R / eps is 1e39 (inf)
    got = run(x, W, torch.tensor([[1e33, 1.0]]), Epsilon())
    torch.testing.assert_close(got, torch.tensor([[1.0, 2.0]]) / (3 + 1e-6))  # output 1's share only


def test_an_overflowing_ratio_in_a_model_gives_no_nan():
    """In a model: z+ without stabiliser, a positive part near 1e-40 under relevance -1."""
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1e-20, -1.0]]))
    x = torch.tensor([[1e-20, 1.0]])  # x+w+ = 1e-40; the output, -1, is all opposing
    res = sparse_lrp.explain(lin, x, None, target=1, composite=ZPlus(stabilizer=0.0))
    assert torch.isfinite(res.node_feat).all()
    torch.testing.assert_close(res.node_feat, torch.tensor([[-1.0, 0.0]]))  # the formula: all of R to x0


def test_an_overflowing_sum_gives_the_float64_result():
    """Relevance near float32's limit: no ratio overflows, a sum on the way does; the
    results fit float32 and must come back finite (the formula in float64)."""
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    R = torch.randn(3, 5, generator=g) * 1e38
    xd, Wd, Rd = x.double(), W.double(), R.double()
    c = xd.clamp(min=0)[:, None] * Wd.clamp(min=0)[None] + xd.clamp(max=0)[:, None] * Wd.clamp(max=0)[None]
    ref = (c / c.sum(-1, keepdim=True) * Rd[..., None]).sum(1)
    assert ref.abs().max() < torch.finfo(torch.float32).max
    got = linear_lrp(x, W, R, ZPlus(stabilizer=0.0))
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0.0)


def test_batched_graph_targets_need_separate_graphs():
    import torch_geometric.nn as gnn

    conv = gnn.GraphConv(3, 2).double().eval()

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x, edge_index, batch):
            return gnn.global_add_pool(self.conv(x, edge_index), batch)

    x = torch.randn(4, 3, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])  # 1 -> 2 joins the two graphs
    batch = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="different graphs"):
        sparse_lrp.explain(Pooled(), x, ei, index=[0, 1], batch=batch)
    sparse_lrp.explain(Pooled(), x, ei, index=1, batch=batch)  # one graph at a time is exact


def test_a_model_with_uninitialised_lazy_layers_is_named():
    """Lazy layers (in_channels=-1, LazyLinear, LazyBatchNorm1d) have no weights until a first
    forward: the error names the parameter and says to run the model once."""
    for model in (
        torch.nn.Sequential(torch.nn.LazyLinear(4)),
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LazyBatchNorm1d()),
    ):
        with pytest.raises(ValueError, match=r"model parameter '\d\.weight' is not initialised yet .* run the model"):
            sparse_lrp.explain(model, torch.randn(5, 3), index=0)
        with torch.no_grad():
            model(torch.randn(5, 3))
        res = sparse_lrp.explain(model.eval(), torch.randn(5, 3), index=0)
        assert res.node_feat.shape == (5, 3)
