"""NNConv (edge-conditioned convolution) and the per-row operator behind it.

The per-edge matrices ``Θ(e) = nn(e)`` are held at their forward values, so a message
``x_j Θ_e`` is a linear map with a weight matrix per edge (:class:`RowwiseOperator`).
The operator is checked rule by rule against the dense rule formulas written out per row
(``gnn_reference.rule_groups``); the layer against NNConv written out with ``Θ`` detached
(LRP-0 of a bias-free ReLU model is its gradient x input, on node features and on each
edge's message), and every rule against a two-stage reference of one layer.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import (
    DT,
    assert_close,
    assert_conserved,
    lrp_explainer,
    make_batch,
    make_graph,
    randomise,
    rule_groups,
    stab,
)
from gnn_reference import RULES as ALL_RULES
from test_model_safety import assert_unchanged, snapshot
from torch import nn

import sparse_lrp
from sparse_lrp import AlphaBeta, Epsilon, ZPlus
from sparse_lrp.kernel import propagate
from sparse_lrp.operators import RowwiseOperator

N, F, H, D, C = 12, 4, 5, 3, 3
EI = make_graph(N, extra=14, seed=3)  # self-loops, an isolated node, multi-edges, directed edges
E = EI.shape[1]

RULES = {"lrp0": lambda: Epsilon(0.0), **ALL_RULES, "alphabeta10": lambda: AlphaBeta(1.0, 0.0)}


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(11)
    return torch.randn(N, F, generator=g, dtype=DT), torch.randn(E, D, generator=g, dtype=DT)


# -- (1) the operator: one dense map per row ------------------------------------------
def rowwise_reference(x, W, R, rule, bias):
    """Per row ``r``: the rule on ``z = x[r] W[r] + b`` from its formulas, written out densely.
    Returns ``(R_in [R, in], connection relevance [R, in, out], absorbed [R, out])``."""
    r_in, conn, absorbed = [], [], []
    for r in range(x.shape[0]):
        xr, wr, rr = x[r : r + 1], W[r].T, R[r : r + 1]  # [1, in], [out, in], [1, out]
        b = xr.new_zeros(1, wr.shape[0]) if bias is None else bias[None]
        ri, cr, flowed = torch.zeros_like(xr), torch.zeros_like(wr), torch.zeros_like(rr)
        for coef, c, share, where in rule_groups(rule, xr, wr, b, torch.ones(wr.shape, dtype=torch.bool)):
            d = stab(c.sum(-1) + share, rule.stabilizer)
            s = torch.where(d == 0, 0.0, rr / torch.where(d == 0, 1.0, d)) * where.to(DT) * coef
            ri = ri + (c * s[..., None]).sum(1)
            cr = cr + (c * s[..., None])[0]
            flowed = flowed + s * c.sum(-1)
        r_in.append(ri[0])
        conn.append(cr.T)
        absorbed.append((rr - flowed)[0])
    return torch.stack(r_in), torch.stack(conn), torch.stack(absorbed)


ROW_CASES = ["random", "one row", "zero inputs", "negative inputs", "some zero rows"]


def _row_case(case: str):
    g = torch.Generator().manual_seed(5)
    rows, n_in, n_out = (1 if case == "one row" else 7), 4, 3
    x = torch.randn(rows, n_in, generator=g, dtype=DT)
    if case == "zero inputs":
        x = torch.zeros_like(x)
    if case == "negative inputs":
        x = -x.abs() - 0.1
    if case == "some zero rows":
        x[[1, 4]] = 0.0
    W = torch.randn(rows, n_in, n_out, generator=g, dtype=DT)
    R = torch.randn(rows, n_out, generator=g, dtype=DT)
    return x, W, R, torch.randn(n_out, generator=g, dtype=DT)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("rule_name", list(RULES))
def test_rowwise_operator_every_rule_equals_the_dense_formulas_per_row(rule_name, case, with_bias):
    x, W, R, bias = _row_case(case)
    bias = bias if with_bias else None
    rule = RULES[rule_name]()
    res = propagate(RowwiseOperator(W), x, W, R, rule, bias=bias, want_edge=True, want_absorbed=True)
    r_in, conn, absorbed = rowwise_reference(x, W, R, rule, bias)
    assert_close(res.node, r_in)
    assert res.edge.shape == W.shape
    assert_close(res.edge, conn)
    assert_close(res.absorbed, absorbed)
    # (the operator's forward is NNConv's per-edge product)
    assert_close(RowwiseOperator(W).forward(W, x, "dense", 0), torch.matmul(x.unsqueeze(1), W).squeeze(1))


def test_rowwise_operator_differs_from_one_shared_matrix():
    """Rows really take their own matrices: the same inputs through row 0's matrix alone differ."""
    x, W, R, _ = _row_case("random")
    got = propagate(RowwiseOperator(W), x, W, R, ZPlus()).node
    shared = W[:1].expand_as(W).contiguous()
    assert not torch.allclose(got, propagate(RowwiseOperator(shared), x, shared, R, ZPlus()).node)


def test_rowwise_lrp0_without_bias_is_gradient_times_input():
    x, W, _, _ = _row_case("random")
    g = torch.randn(x.shape[0], W.shape[2], generator=torch.Generator().manual_seed(1), dtype=DT)
    z = torch.einsum("ri,rio->ro", x, W)
    res = propagate(RowwiseOperator(W), x, W, z * g, Epsilon(0.0), want_absorbed=True)
    xg = x.clone().requires_grad_(True)
    (torch.einsum("ri,rio->ro", xg, W) * g).sum().backward()
    assert_close(res.node, xg.grad * x)
    assert_close(res.absorbed, torch.zeros_like(z), atol=1e-12, rtol=0)


def test_rowwise_map_cut_to_its_active_rows_keeps_each_rows_matrix():
    """A map cut to the rows that carry relevance (layers.base._Restricted) takes those rows'
    matrices with them, and hands back connection relevance at every row."""
    from sparse_lrp.kernel import propagate_branches
    from sparse_lrp.layers.base import MapBranch, _Restricted

    x, W, R, _ = _row_case("random")
    R[[0, 3, 5]] = 0.0
    branch = MapBranch(RowwiseOperator(W), W, x)
    sub = _Restricted(torch.tensor([1, 2, 4, 6]), [branch], [x])
    results, _ = propagate_branches([p[0] for p in sub.parts], sub.rows_of(R, 7), ZPlus(), want_edge=True)
    ((r_in, edge),) = sub.expand(results, [branch], [x])
    whole = propagate(RowwiseOperator(W), x, W, R, ZPlus(), want_edge=True)
    assert_close(r_in, whole.node)
    assert_close(edge, whole.edge)


def test_rowwise_operator_without_rows():
    W = torch.zeros(0, 4, 3, dtype=DT)
    res = propagate(RowwiseOperator(W), torch.zeros(0, 4, dtype=DT), W, torch.zeros(0, 3, dtype=DT), ZPlus())
    assert res.node.shape == (0, 4)


# -- NNConv written out, Θ detached ------------------------------------------------------
def edge_net(n_in: int, n_out: int) -> nn.Module:
    """NNConv's edge network (with biases and a ReLU: it is not explained, only run)."""
    return nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, n_in * n_out))


def nnconv_ref(m, x, ei, ea, scale=None):
    """NNConv with ``Θ = nn(edge_attr)`` detached; ``scale [E]`` multiplies each message
    (at 1, its gradient x 1 is the message's LRP-0 relevance)."""
    n = x.shape[0]
    theta = m.nn(ea).detach().view(-1, x.shape[1], m.out_channels)
    msg = torch.einsum("ei,eio->eo", x[ei[0]], theta)
    if scale is not None:
        msg = msg * scale[:, None]
    if m.aggr == "max":
        dst = ei[1][:, None].expand_as(msg)
        out = msg.new_zeros(n, msg.shape[1]).scatter_reduce(0, dst, msg, "amax", include_self=False)
    else:
        out = msg.new_zeros(n, msg.shape[1]).index_add(0, ei[1], msg)
        if m.aggr == "mean":
            out = out / torch.bincount(ei[1], minlength=n).clamp(min=1).to(DT)[:, None]
    if m.root_weight:
        out = out + x @ m.lin.weight.T
    return out if m.bias is None else out + m.bias


class Net(nn.Module):
    """``head(relu(conv2(relu(conv1(x)))))``, two NNConv layers, bias-free outside ``nn``."""

    def __init__(self, aggr="add", root_weight=True, bias=False):
        super().__init__()
        self.conv1 = gnn.NNConv(F, H, edge_net(F, H), aggr=aggr, root_weight=root_weight, bias=bias)
        self.conv2 = gnn.NNConv(H, H, edge_net(H, H), aggr=aggr, root_weight=root_weight, bias=bias)
        self.head = nn.Linear(H, C, bias=False)

    def forward(self, x, edge_index, edge_attr, scales=None, ref=False):
        s1, s2 = scales if scales is not None else (None, None)

        def conv(m, h, s):
            return nnconv_ref(m, h, edge_index, edge_attr, s) if ref else m(h, edge_index, edge_attr)

        h = torch.relu(conv(self.conv1, x, s1))
        return self.head(torch.relu(conv(self.conv2, h, s2)))


VARIANTS = {
    "add": {"aggr": "add"},
    "mean": {"aggr": "mean"},
    "max": {"aggr": "max"},
    "add_no_root": {"aggr": "add", "root_weight": False},
    "max_no_root": {"aggr": "max", "root_weight": False},
}


def make_net(variant: str, seed: int = 0, bias: bool = False) -> Net:
    torch.manual_seed(seed)
    return Net(**VARIANTS[variant], bias=bias).double().eval()


# -- (2)-(4) LRP-0 is gradient x input, conserved, and its edge relevance lands per edge --
def _check_lrp0(model, x, ea, cases) -> None:
    """LRP-0 against gradient x input of the written-out model (per-edge weights detached):
    node features, each layer's edge relevance (gradient x message, at each edge's
    position), conservation, and no relevance for edge_attr (it only makes the fixed weights)."""
    assert_close(model(x, EI, ea, ref=True), model(x, EI, ea))  # (the reference is the layer)
    for index, target in cases:
        res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=Epsilon(0.0), edge_attr=ea)
        xg = x.clone().requires_grad_(True)
        scales = (torch.ones(E, dtype=DT, requires_grad=True), torch.ones(E, dtype=DT, requires_grad=True))
        y = model(xg, EI, ea, scales=scales, ref=True)[index, target]
        y.backward()
        assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        assert_close(res.layers["conv1"]["edge"], scales[0].grad, atol=1e-12, rtol=1e-9)
        assert_close(res.layers["conv2"]["edge"], scales[1].grad, atol=1e-12, rtol=1e-9)
        assert_close(res.edge, scales[0].grad + scales[1].grad, atol=1e-12, rtol=1e-9)
        assert res.node_feat.sum().item() == pytest.approx(y.item(), abs=1e-12)
        assert res.edge_attr is None or not torch.any(res.edge_attr != 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lrp0_is_gradient_x_input_with_theta_detached(variant, inputs, rows_mode):
    x, ea = inputs
    model = make_net(variant)
    _check_lrp0(model, x, ea, [(2, 0), (9, 2), (0, 1)])
    res = sparse_lrp.explain(model, x, EI, index=2, target=0, composite=Epsilon(0.0), edge_attr=ea)
    assert abs(res.conservation["absorbed"]) < 1e-12 and res.conservation["lost"] == 0


def test_one_layer_edge_relevance_by_hand(inputs):
    """One NNConv, no root term, LRP-0 at output channel k of node i: each edge ``j -> i``
    carries its whole message ``(x_j Θ_e)_k`` (ratio 1 at the logit), every other edge 0,
    multi-edges each their own."""
    x, ea = inputs
    torch.manual_seed(3)
    conv = gnn.NNConv(F, C, edge_net(F, C), root_weight=False, bias=False).double().eval()
    target = 2  # (node 2 has the triple edge 1 -> 2)
    res = sparse_lrp.explain(conv, x, EI, index=target, target=1, composite=Epsilon(0.0), edge_attr=ea)
    theta = conv.nn(ea).detach().view(E, F, C)
    msg = torch.einsum("ei,ei->e", x[EI[0]], theta[:, :, 1])
    want = torch.where(EI[1] == target, msg, 0.0)
    assert int((EI[1] == target).sum()) >= 3 and torch.unique(want[EI[1] == target]).numel() >= 3
    assert_close(res.edge, want, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("variant", ["add", "mean"])
def test_conservation_with_biases_and_every_preset(variant, inputs):
    x, ea = inputs
    model = randomise(make_net(variant, bias=True), seed=4, scale=0.5)
    for preset in ("epsilon", "zplus", "gamma"):
        res = sparse_lrp.explain(model, x, EI, index=[1, 6], composite=preset, edge_attr=ea)
        assert_conserved(res, abs=1e-10)  # (summed over the targets)
    res = sparse_lrp.explain(model, x, EI, index=1, composite=Epsilon(0.0), edge_attr=ea)
    assert abs(res.conservation["absorbed"]) > 1e-6  # (the biases take their share)


# -- every rule against a two-stage reference of one layer ------------------------------
def one_layer_reference(m, x, ei, theta, root, R, rule):
    """NNConv (GMMConv) explained stage by stage: the aggregation (messages, the root term's
    output ``x Θ_root`` as a self-loop, and the bias as one map with one denominator, written
    out as a dense matrix over the flattened inputs), then each edge's message ``x_j Θ_e``
    under the rule (``rowwise_reference``) and the root term's own feature map."""
    n, e, f, c = x.shape[0], ei.shape[1], x.shape[1], m.out_channels
    msg = torch.einsum("ei,eio->eo", x[ei[0]], theta)
    w = torch.ones(e, dtype=DT)
    if m.aggr == "mean":
        w = w / torch.bincount(ei[1], minlength=n).clamp(min=1).to(DT)[ei[1]]
    own = torch.zeros(n, c, dtype=DT) if root is None else x @ root.weight.detach().T
    # Inputs [msg (e*c), own (n*c)] -> outputs (n*c): msg[e, k] reaches (dst_e, k), own[j, k] (j, k).
    inp = torch.cat([msg.reshape(-1), own.reshape(-1)])[None]
    W = torch.zeros(n * c, e * c + n * c, dtype=DT)
    mask = torch.zeros(W.shape, dtype=torch.bool)
    for k in range(c):
        W[ei[1] * c + k, torch.arange(e) * c + k] = w
        mask[ei[1] * c + k, torch.arange(e) * c + k] = True
    if root is not None:
        W[torch.arange(n * c), e * c + torch.arange(n * c)] = 1.0
        mask[torch.arange(n * c), e * c + torch.arange(n * c)] = True
    bias = None if m.bias is None else m.bias.detach().repeat(n)[None]
    out = (inp @ W.T + (0 if bias is None else bias)).view(n, c)
    R = torch.where(out == 0, 0.0, R)
    b = torch.zeros(1, n * c, dtype=DT) if bias is None else bias
    r_inp = torch.zeros_like(inp)
    for coef, contrib, share, where in rule_groups(rule, inp, W, b, mask):
        d = stab(contrib.sum(-1) + share, rule.stabilizer)
        s = torch.where(d == 0, 0.0, R.view(1, -1) / torch.where(d == 0, 1.0, d)) * where.to(DT) * coef
        r_inp = r_inp + (contrib * s[..., None]).sum(1)
    r_msg, r_own = r_inp[0, : e * c].view(e, c), r_inp[0, e * c :].view(n, c)
    r_msg = torch.where(msg == 0, 0.0, r_msg)  # (carried as a ratio: none where a message is 0)
    r_xj, _, _ = rowwise_reference(x[ei[0]], theta, r_msg, rule, None)
    r_root = torch.zeros_like(x)
    if root is not None:  # (the root term's feature map: each node's row through Θ_root)
        r_own = torch.where(own == 0, 0.0, r_own)
        r_root, _, _ = rowwise_reference(x, root.weight.detach().T.expand(n, f, c), r_own, rule, None)
    return out, r_root.index_add(0, ei[0], r_xj), r_msg.sum(1)


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", ["add", "mean", "add_no_root"])
def test_every_rule_matches_the_two_stage_reference(variant, rule_name, inputs):
    x, ea = inputs
    torch.manual_seed(7)
    m = gnn.NNConv(F, C, edge_net(F, C), **VARIANTS[variant]).double().eval()
    randomise(m, seed=8, scale=0.6)
    rule = RULES[rule_name]()
    out = m(x, EI, ea).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(9), dtype=DT) + 0.1
    theta = m.nn(ea).detach().view(E, F, C)
    ref_out, ref_x, ref_edge = one_layer_reference(m, x, EI, theta, m.lin if m.root_weight else None, R, rule)
    assert_close(ref_out, out)
    res = sparse_lrp.explain(m, x, EI, target=R, composite=rule, edge_attr=ea)
    assert_close(res.node_feat, ref_x)
    assert_close(res.edge, ref_edge)
    assert_conserved(res, rel=1e-7, abs=1e-8)


# -- (5) batched targets, subgraphs and the whole graph -----------------------------------
@pytest.mark.parametrize("variant", ["add", "mean", "max_no_root"])
def test_batched_targets_equal_single_calls_and_the_whole_graph(variant, inputs, rows_mode, monkeypatch):
    x, ea = inputs
    model = randomise(make_net(variant, bias=True), seed=2, scale=0.6)
    index = [0, 2, 5, 9]
    explain_module = importlib.import_module("sparse_lrp.explain")
    for preset in ("epsilon", "zplus", "gamma"):
        batched = sparse_lrp.explain(model, x, EI, index=index, composite=preset, edge_attr=ea)
        for row, i in enumerate(index):
            single = sparse_lrp.explain(model, x, EI, index=i, composite=preset, edge_attr=ea)  # (its subgraph)
            with monkeypatch.context() as mp:
                mp.setattr(explain_module, "WHOLE_GRAPH_ROWS", 10**9)
                whole = sparse_lrp.explain(model, x, EI, index=i, composite=preset, edge_attr=ea)
            for got in (batched.node_feat[row], single.node_feat):
                assert_close(got, whole.node_feat, atol=1e-12, rtol=1e-9)
            for got in (batched.edge[row], single.edge):
                assert_close(got, whole.edge, atol=1e-12, rtol=1e-9)
            assert whole.node_feat.abs().sum() > 0


# -- GMMConv: Θ(e) = sum_k w_k(e) G_k, the Gaussian kernel weights fixed ---------------------
def gmm_weights(m, ea):
    """The Gaussian kernel weights ``exp(-1/2 sum_d (e_d - μ_d)² / σ_d²)``, detached:
    ``[E, K]``, or ``[E, in, out, K]`` with ``separate_gaussians``."""
    mu, sigma = m.mu.detach(), m.sigma.detach()
    e = ea[:, None, None, None] if m.separate_gaussians else ea[:, None]
    return torch.exp((-0.5 * (e - mu[None]) ** 2 / (1e-15 + sigma[None] ** 2)).sum(-1))


def gmm_ref(m, x, ei, ea, scale=None):
    """GMMConv as PyG computes it (the kernel weights detached); ``scale`` as in ``nnconv_ref``."""
    n, e, k, c = x.shape[0], ei.shape[1], m.kernel_size, m.out_channels
    w = gmm_weights(m, ea)
    if m.separate_gaussians:  # w [E, in, out, K], each (in, out) pair its own Gaussians
        msg = torch.einsum("ef,efc->ec", x[ei[0]], (w * m.g.view(1, x.shape[1], c, k)).sum(-1))
    else:  # w [E, K] mixing the K blocks of x_j G
        msg = ((x @ m.g)[ei[0]].view(e, k, c) * w[:, :, None]).sum(1)
    if scale is not None:
        msg = msg * scale[:, None]
    if m.aggr == "max":
        dst = ei[1][:, None].expand_as(msg)
        out = msg.new_zeros(n, c).scatter_reduce(0, dst, msg, "amax", include_self=False)
    else:
        out = msg.new_zeros(n, c).index_add(0, ei[1], msg)
        if m.aggr == "mean":
            out = out / torch.bincount(ei[1], minlength=n).clamp(min=1).to(DT)[:, None]
    out = out + x @ m.root.weight.T
    return out if m.bias is None else out + m.bias


GMM_VARIANTS = {
    "mean": {},
    "add_separate": {"aggr": "add", "separate_gaussians": True},
    "max": {"aggr": "max"},
}


class GMMNet(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        kw = GMM_VARIANTS[variant]
        self.conv1 = gnn.GMMConv(F, H, dim=D, kernel_size=3, bias=False, **kw)
        self.conv2 = gnn.GMMConv(H, H, dim=D, kernel_size=2, bias=False, **kw)
        self.head = nn.Linear(H, C, bias=False)
        with torch.no_grad():  # (Gaussians wide enough for weights well away from 0)
            for conv in (self.conv1, self.conv2):
                conv.sigma.mul_(4.0)

    def forward(self, x, edge_index, edge_attr, scales=None, ref=False):
        s1, s2 = scales if scales is not None else (None, None)

        def conv(m, h, s):
            return gmm_ref(m, h, edge_index, edge_attr, s) if ref else m(h, edge_index, edge_attr)

        h = torch.relu(conv(self.conv1, x, s1))
        return self.head(torch.relu(conv(self.conv2, h, s2)))


@pytest.mark.parametrize("variant", list(GMM_VARIANTS))
def test_gmm_lrp0_is_gradient_x_input_with_the_kernel_weights_detached(variant, inputs, rows_mode):
    x, ea = inputs
    torch.manual_seed(12)
    model = GMMNet(variant).double().eval()
    _check_lrp0(model, x, ea, [(2, 0), (9, 2)])


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("separate", [False, True])
def test_gmm_every_rule_matches_the_two_stage_reference(separate, rule_name, inputs):
    x, ea = inputs
    torch.manual_seed(13)
    m = randomise(gnn.GMMConv(F, C, dim=D, kernel_size=3, separate_gaussians=separate).double(), seed=8).eval()
    with torch.no_grad():
        m.sigma.abs_().add_(1.0)
    rule = RULES[rule_name]()
    out = m(x, EI, ea).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(9), dtype=DT) + 0.1
    # Θ_e = sum_k w_k(e) G_k, one term per kernel (checked through the forward below).
    w = gmm_weights(m, ea)
    k = m.kernel_size
    if separate:
        theta = sum(w[..., i] * m.g.detach().view(F, C, k)[..., i] for i in range(k))
    else:
        theta = sum(w[:, i, None, None] * m.g.detach().view(F, k, C)[:, i] for i in range(k))
    ref_out, ref_x, ref_edge = one_layer_reference(m, x, EI, theta, m.root, R, rule)
    assert_close(ref_out, out)
    res = sparse_lrp.explain(m, x, EI, target=R, composite=rule, edge_attr=ea)
    assert_close(res.node_feat, ref_x)
    assert_close(res.edge, ref_edge)


# -- (6) PyG's Explainer on a graph classifier -------------------------------------------
class GraphNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = gnn.NNConv(F, H, edge_net(F, H), aggr="mean")
        self.conv2 = gnn.NNConv(H, H, edge_net(H, H))
        self.lin = nn.Linear(H, C)

    def forward(self, x, edge_index, edge_attr, batch):
        h = torch.relu(self.conv1(x, edge_index, edge_attr))
        h = torch.relu(self.conv2(h, edge_index, edge_attr))
        return self.lin(gnn.global_add_pool(h, batch))


def test_pyg_explainer_graph_classification():
    ei, batch = make_batch((5, 6, 7), seed=8)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch.numel(), F, generator=g, dtype=DT)
    ea = torch.randn(ei.shape[1], D, generator=g, dtype=DT)
    model = randomise(GraphNet().double(), seed=5, scale=0.6).eval()
    explainer = lrp_explainer(model, task_level="graph")
    expl = explainer(x, ei, edge_attr=ea, batch=batch, index=1)
    assert expl.node_mask.shape == x.shape and expl.edge_mask.shape == (ei.shape[1],)
    y = model(x, ei, ea, batch).detach()
    res = sparse_lrp.explain(
        model, x, ei, index=1, target=int(y[1].argmax()), composite="zplus", edge_attr=ea, batch=batch
    )
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert torch.all(expl.node_mask[batch != 1] == 0) and torch.all(expl.edge_mask[batch[ei[1]] != 1] == 0)
    assert expl.node_mask[batch == 1].abs().sum() > 0 and expl.edge_mask[batch[ei[1]] == 1].abs().sum() > 0


# -- (7) refusals ----------------------------------------------------------------------
class Wrapped(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = gnn.NNConv(F, C, edge_net(F, C))

    def forward(self, x, edge_index, edge_attr=None):
        if self.how == "bipartite":
            return self.conv((x, x), edge_index, edge_attr)
        if self.how == "sparse":
            from torch_geometric.utils import to_torch_coo_tensor

            return self.conv(x, to_torch_coo_tensor(edge_index, edge_attr, size=x.shape[0]), edge_attr)
        if self.how == "size":
            return self.conv(x, edge_index, edge_attr, size=(x.shape[0], x.shape[0] - 1))
        return self.conv(x, edge_index)  # (no edge_attr)


@pytest.mark.parametrize(
    "how,match",
    [
        ("bipartite", "conv.*bipartite"),
        ("sparse", "conv.*SparseTensor"),
        ("size", "conv.*NNConv.*size"),
        ("no edge_attr", "conv.*NNConv.*needs edge_attr"),
    ],
)
def test_what_cannot_be_explained_is_refused(how, match, inputs):
    x, ea = inputs
    model = Wrapped(how).double().eval()
    with pytest.raises(ValueError, match=match):
        sparse_lrp.explain(model, x, EI, index=0, edge_attr=None if how == "no edge_attr" else ea)


# -- (8) the model is untouched --------------------------------------------------------
class TrainNet(nn.Module):
    """NNConv whose edge network has batch norm and dropout, in train mode."""

    def __init__(self):
        super().__init__()
        mlp = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, F * H))
        self.conv1 = gnn.NNConv(F, H, mlp, aggr="mean")
        self.drop = nn.Dropout(0.3)
        self.conv2 = gnn.NNConv(H, C, edge_net(H, C), aggr="max")

    def forward(self, x, edge_index, edge_attr):
        h = self.drop(torch.relu(self.conv1(x, edge_index, edge_attr)))
        return self.conv2(h, edge_index, edge_attr)


def test_model_untouched_after_explaining(inputs):
    x, ea = inputs
    torch.manual_seed(1)
    model = TrainNet().double()
    model(x, EI, ea)  # (batch norm running statistics away from their start)
    model.train()
    model.conv2.nn[0].weight.requires_grad_(False)
    before = snapshot(model)
    for index in (3, [2, 5], None):
        sparse_lrp.explain(model, x, EI, index=index, composite="gamma", edge_attr=ea)
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())
    # Explained in eval mode: LRP-0 of the (bias-free) eval model equals its gradient x input.
    model.eval()
    for m in (model.conv1, model.conv2):
        m.bias.data.zero_()
    res0 = sparse_lrp.explain(model, x, EI, index=4, target=0, composite=Epsilon(0.0), edge_attr=ea)
    xg = x.clone().requires_grad_(True)
    model(xg, EI, ea)[4, 0].backward()
    assert_close(res0.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
