"""DirGNNConv, PointTransformerConv, FeaStConv, EGConv, SuperGATConv, AntiSymmetricConv,
PDNConv, GatedGraphConv and DeepGCNLayer against the layers written out by hand.

Each reference computes the layer's fixed parts from PyG's definition (attention, soft
assignments, combination weights, gates, edge weights) and runs LRP through the layer's
linear maps stage by stage with the rule formulas written out densely
(``gnn_reference.dense_rule_lrp`` / ``edge_lrp``): max/min aggregation as winner-take-all,
element-wise activations under the Pass rule, sums in the layer's code in proportion to
their summands. On bias-free ReLU models LRP-0 equals gradient x input of the formulas with
the fixed parts detached.
"""

from __future__ import annotations

import functools
import importlib
import math

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import (
    DT,
    Conn,
    _lin,
    assert_close,
    carry,
    dense_rule_lrp,
    edge_forward,
    edge_lrp,
    gcn_connections,
    loops,
    lrp_explainer,
    randomise,
    ref_gat,
    ref_gcn,
    ref_graph_conv,
    ref_sage,
    to_model_edges,
    zero_biases,
)
from test_film_general_pointnet import EI, RULES, TIGHT, C, D, E, F, H, N, P, _conserved, per_row_lrp, point_graph
from test_model_safety import assert_unchanged, snapshot
from torch import nn

import sparse_lrp
from sparse_lrp import Epsilon

# (the graph, sizes and rules of test_film_general_pointnet: every awkward case present)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(21)
    x = torch.randn(N, F, generator=g, dtype=DT)
    return x, torch.randn(E, D, generator=g, dtype=DT), torch.randn(N, P, generator=g, dtype=DT)


def _relevance(out, seed=9):
    return torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=DT) + 0.1


def _mask(R, out):
    """Relevance lives where the output is non-zero (it travels as R / output)."""
    return torch.where(out == 0, 0.0, R)


def _ratio(R, out):
    return torch.where(out == 0, 0.0, R / torch.where(out == 0, 1.0, out))


def group_softmax(a, index, n):
    """``softmax`` over the rows that share ``index`` (per column), as PyG's ``softmax``."""
    idx = index.view(-1, *[1] * (a.dim() - 1)).expand_as(a)
    top = torch.full((n, *a.shape[1:]), -math.inf, dtype=a.dtype).scatter_reduce(0, idx, a, "amax")
    ex = (a - top[index]).exp()
    return ex / torch.zeros(n, *a.shape[1:], dtype=a.dtype).index_add(0, index, ex)[index]


def select(msg, dst, n, kind):
    """``(best [n, C], share [E, C])``: the max (or min) per target and channel, and each
    message's share of it (1, or 1/k among k ties; 0 for the others)."""
    idx = dst[:, None].expand_as(msg)
    reduce = "amax" if kind == "max" else "amin"
    best = msg.new_zeros(n, msg.shape[1]).scatter_reduce(0, idx, msg, reduce, include_self=False)
    won = (msg == best[dst]).to(DT)
    return best, won / torch.zeros_like(best).index_add(0, dst, won)[dst]


def aggregate_ref(msg, dst, n, R, rule, kind, w=None, bias=None):
    """``out_i = aggr_{e: dst_e = i} w_e msg_e + bias`` and, given ``R``, LRP through it:
    ``(out, R_msg [E, C])``. Sums are one map over the messages; max/min select (winner
    takes all), then a map adds the bias."""
    w = torch.ones(msg.shape[0], dtype=DT) if w is None else w
    if kind in ("add", "sum", "mean"):
        if kind == "mean":
            w = w / torch.bincount(dst, minlength=n).clamp(min=1).to(DT)[dst]
        conn = Conn(torch.arange(msg.shape[0]), dst, w, msg)
        out = edge_forward([conn], n, bias)
        if R is None:
            return out, None
        ((r_msg, _),) = edge_lrp([conn], _mask(R, out), rule, n, bias)
        return out, r_msg
    best, share = select(w[:, None] * msg, dst, n, kind)
    if bias is None:
        return best, None if R is None else share * _mask(R, best)[dst]
    lp = loops(n, 1.0, best)
    out = edge_forward([lp], n, bias)
    if R is None:
        return out, None
    ((r_best, _),) = edge_lrp([lp], _mask(R, out), rule, n, bias)
    return out, share * carry(r_best, best)[dst]


def _scatter(msg, dst, n, kind):
    """A differentiable aggregation (gradient x input references)."""
    if kind in ("max", "min"):
        idx = dst[:, None].expand_as(msg)
        reduce = "amax" if kind == "max" else "amin"
        return msg.new_zeros(n, msg.shape[1]).scatter_reduce(0, idx, msg, reduce, include_self=False)
    out = torch.zeros(n, msg.shape[1], dtype=DT).index_add(0, dst, msg)
    if kind == "mean":
        out = out / torch.bincount(dst, minlength=n).clamp(min=1).to(DT)[:, None]
    return out


def _explain_rule(model, x, R, rule, **kw):
    return sparse_lrp.explain(model, x, EI, target=R, composite=rule, **kw)


def _check(res, ref_x, ref_edge):
    assert_close(res.node_feat, ref_x, **TIGHT)
    assert_close(res.edge, ref_edge, **TIGHT)
    _conserved(res)


def _check_written_out(m, x, reference, rule_name):
    """Layer ``m`` under the rule ``rule_name`` against ``reference(m, x, EI, R, rule)``, the
    layer written out: its output, and the node and edge relevance of random output relevance."""
    rule = RULES[rule_name]()
    out = m(x, EI).detach()
    R = _relevance(out)
    ref_out, ref_x, ref_edge = reference(m, x, EI, R, rule)
    assert_close(ref_out, out)
    _check(_explain_rule(m, x, R, rule), ref_x, ref_edge)


def _grad_x_input(model, x, index, target, **kw):
    xg = x.clone().requires_grad_(True)
    model(xg, EI, dense=True, **kw)[index, target].backward()
    return (xg.grad * x).detach()


def _check_lrp0(model, x, **kw):
    """LRP-0 is gradient x input of the model written out with its fixed parts detached
    (bias-free: the node relevance sums to the logit)."""
    assert_close(model(x, EI, dense=True, **kw), model(x, EI, **kw))
    for index, target in [(2, 0), (9, 2)]:
        res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=Epsilon(0.0), **kw)
        assert_close(res.node_feat, _grad_x_input(model, x, index, target, **kw), atol=1e-12, rtol=1e-9)
        assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
        assert abs(res.conservation["absorbed"]) < 1e-12


class One(nn.Module):
    """One layer called as ``conv(x, edge_index)`` (``pos``/``edge_attr``/``edge_weight`` passed
    where the layer takes them)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x, edge_index, pos=None, edge_attr=None, edge_weight=None):
        if isinstance(self.conv, gnn.PointTransformerConv):
            return self.conv(x, pos, edge_index)
        if isinstance(self.conv, gnn.PDNConv):
            return self.conv(x, edge_index, edge_attr)
        if isinstance(self.conv, gnn.GatedGraphConv):
            return self.conv(x, edge_index, edge_weight)
        return self.conv(x, edge_index)


# -- DirGNNConv --------------------------------------------------------------------------------
DIR_VARIANTS = {
    "gcn": dict(conv=lambda: gnn.GCNConv(F, C), alpha=0.3),
    "sage_no_root": dict(conv=lambda: gnn.SAGEConv(F, C), alpha=0.7, root_weight=False),
    "gat_heads_mean": dict(conv=lambda: gnn.GATConv(F, C, heads=2, concat=False, bias=False)),
}
INNER_REFERENCE = {gnn.GCNConv: ref_gcn, gnn.SAGEConv: ref_sage, gnn.GATConv: ref_gat}


def _dir(variant, seed=0):
    torch.manual_seed(seed)
    kw = dict(DIR_VARIANTS[variant])
    conv = kw.pop("conv")()
    return randomise(gnn.DirGNNConv(conv, **kw).double(), seed=seed + 1, scale=0.6).eval()


def dir_reference(m, x, ei, R, rule):
    """``α conv_out(x, reversed) + (1 - α) conv_in(x) + lin(x)``: the sum splits R in
    proportion to its summands, each inner layer by its own reference (on the reversed graph,
    whose edge positions are the model's)."""
    ref = INNER_REFERENCE[type(m.conv_in)]
    rev = ei.flip(0)
    with torch.no_grad():
        o_in, o_out = m.conv_in(x, ei), m.conv_out(x, rev)
    root = _lin(x, m.lin) if m.root_weight else torch.zeros_like(o_in)
    out = m.alpha * o_out + (1 - m.alpha) * o_in + root
    c = _ratio(R, out)
    inward = ref(m.conv_in, x, ei, (1 - m.alpha) * o_in * c, rule)
    outward = ref(m.conv_out, x, rev, m.alpha * o_out * c, rule)
    assert_close(inward.out, o_in)
    assert_close(outward.out, o_out)
    r_x = inward.x + outward.x
    if m.root_weight:
        r_x = r_x + dense_rule_lrp(x, m.lin.weight.detach(), root * c, rule, m.lin.bias.detach())[0]
    return out, r_x, inward.edge + outward.edge


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(DIR_VARIANTS))
def test_dir_gnn_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    _check_written_out(_dir(variant), inputs[0], dir_reference, rule_name)


class DirNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = gnn.DirGNNConv(gnn.GCNConv(F, H), alpha=0.4)
        self.conv2 = gnn.DirGNNConv(gnn.SAGEConv(H, H), alpha=0.8)
        self.head = nn.Linear(H, C)

    def forward(self, x, edge_index, dense=False):  # (nothing held fixed: the model is its own formula)
        return self.head(self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index))


def _dir_net(seed=2):
    torch.manual_seed(seed)
    return zero_biases(randomise(DirNet().double(), seed=seed, scale=0.6)).eval()


def test_dir_gnn_lrp0_is_gradient_x_input(inputs):
    _check_lrp0(_dir_net(), inputs[0])


class CachedDir(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.DirGNNConv(gnn.GCNConv(3, 4, cached=True), alpha=0.5, root_weight=False)
        self.head = nn.Linear(4, 1)

    def forward(self, x, edge_index):
        return self.head(self.conv(x, edge_index))


def test_dir_gnn_around_cached_gcn_after_its_caches_were_filled():
    """The model's forward fills conv_out's cache with the reversed graph's normalisation:
    its edges map back through the reversed graph's own positions (they were matched to the
    model's edges as they stand, which put edge 3 -> 0's relevance on 0 -> 3)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=DT)
    ei = torch.tensor([[0, 1, 2, 3, 2, 0], [1, 2, 0, 0, 3, 3]])  # (3 -> 0 and 0 -> 3 both; 2 -> 3 alone)
    model = randomise(CachedDir().double()).eval()
    empty = sparse_lrp.explain(model, x, ei, index=3, target=1, composite=Epsilon(0.0))
    model(x, ei)  # (fills conv_in's and conv_out's caches)
    assert model.conv.conv_out._cached_edge_index is not None
    filled = sparse_lrp.explain(model, x, ei, index=3, target=1, composite=Epsilon(0.0))
    assert_close(filled.edge, empty.edge, atol=1e-12, rtol=1e-9)
    assert float(empty.edge[3].abs()) > 0


def test_dir_gnn_through_explain_and_pyg_explainer_leaves_the_model_unchanged(inputs):
    x = inputs[0]
    model = _dir_net()
    model.train()
    model.conv1.lin.weight.requires_grad_(False)
    before = snapshot(model)
    expl = lrp_explainer(model)(x, EI, index=4)
    y = model.eval()(x, EI).detach()
    model.train()
    res = sparse_lrp.explain(model, x, EI, index=4, target=int(y[4].argmax()), composite="zplus")
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    # (a node's output reads its out-edges: relevance reaches its out-neighbours' features)
    assert res.node_feat[EI[1, EI[0] == 4]].abs().sum() > 0 and expl.edge_mask.abs().sum() > 0
    _conserved(res)
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())


def test_dir_gnn_batched_node_targets_are_refused(inputs):
    with pytest.raises(ValueError, match=r"'conv1' \(DirGNNConv\) reads its nodes' out-edges"):
        sparse_lrp.explain(_dir_net(), inputs[0], EI, index=[1, 4])


def test_dir_gnn_inner_layer_without_a_handler_is_named(inputs):
    conv = gnn.DirGNNConv(gnn.MFConv(F, C)).double().eval()
    with pytest.raises(TypeError, match=r"'conv_in'.*MFConv has parameters but no LRP handler"):
        sparse_lrp.explain(conv, inputs[0], EI, index=0)


# -- PointTransformerConv ------------------------------------------------------------------------
PT_VARIANTS = {
    "add_default_pos_nn": dict(),
    "mlp_attn_mean_no_loops": dict(pos_nn="mlp", attn_nn=True, aggr="mean", add_self_loops=False),
    "max": dict(pos_nn="mlp", aggr="max"),
}


def _pt(variant, f_in=F, out=C, seed=0, bias=True):
    torch.manual_seed(seed)
    kw = dict(PT_VARIANTS[variant])
    if kw.pop("pos_nn", None) == "mlp":
        kw["pos_nn"] = nn.Sequential(nn.Linear(P, H, bias=bias), nn.ReLU(), nn.Linear(H, out, bias=bias))
    elif not bias:
        kw["pos_nn"] = nn.Linear(P, out, bias=False)
    if kw.pop("attn_nn", False):
        kw["attn_nn"] = nn.Sequential(nn.Linear(out, out, bias=bias), nn.ReLU(), nn.Linear(out, out, bias=bias))
    return gnn.PointTransformerConv(f_in, out, **kw).double()


def _ends(t):
    """``(source, target)`` sides: a bipartite pair, or one tensor for both."""
    return t if isinstance(t, tuple) else (t, t)


def pt_attention(m, h, pos, src, dst, n):
    """``softmax_j(attn_nn(W_dst h_i - W_src h_j + pos_nn(pos_i - pos_j)))`` per channel, detached
    (``h``, ``pos``: tensors or bipartite pairs)."""
    (h_src, h_dst), (pos_src, pos_dst) = _ends(h), _ends(pos)
    with torch.no_grad():
        score = (h_dst @ m.lin_dst.weight.T)[dst] - (h_src @ m.lin_src.weight.T)[src]
        score = score + m.pos_nn(pos_dst[dst] - pos_src[src])
        if m.attn_nn is not None:
            score = m.attn_nn(score)
        return group_softmax(score, dst, n)


def pt_reference(m, x, pos, ei, R, rule):
    """PointTransformerConv with ``α`` fixed and constant positions (``δ``'s share: absorbed)."""
    n = x.shape[0]
    src, dst, ids = point_graph(ei, n, m.add_self_loops)
    W = m.lin.weight.detach()
    v = x @ W.T
    with torch.no_grad():
        delta = m.pos_nn(pos[dst] - pos[src])
    alpha = pt_attention(m, x, pos, src, dst, n)
    msg = alpha * (v[src] + delta)
    out, r_msg = aggregate_ref(msg, dst, n, R, rule, m.aggr)
    edge = to_model_edges(r_msg.sum(1), ids, ei.shape[1])
    # (α fixed: the message's relevance to its value v_j + δ, split in proportion)
    c = _ratio(r_msg, msg) * alpha
    r_v = torch.zeros_like(v).index_add(0, src, v[src] * c)
    return out, dense_rule_lrp(x, W, r_v, rule)[0], edge


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(PT_VARIANTS))
def test_point_transformer_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    x, _, pos = inputs
    m = randomise(_pt(variant), seed=2, scale=0.6).eval()
    rule = RULES[rule_name]()
    out = m(x, pos, EI).detach()
    R = _relevance(out)
    ref_out, ref_x, ref_edge = pt_reference(m, x, pos, EI, R, rule)
    assert_close(ref_out, out)
    res = _explain_rule(One(m), x, R, rule, pos=pos)
    _check(res, ref_x, ref_edge)
    if m.add_self_loops:  # (the layer replaces its input's loops by its own: none of the model's edges)
        assert torch.all(res.edge[EI[0] == EI[1]] == 0) and res.edge.abs().sum() > 0


def pt_dense(m, h, pos, ei):
    """PointTransformerConv's forward with ``α`` detached, differentiable in ``h`` and ``pos``."""
    (h_src, h_dst), (pos_src, pos_dst) = _ends(h), _ends(pos)
    n = h_dst.shape[0]
    src, dst, _ = point_graph(ei, n, m.add_self_loops)
    alpha = pt_attention(m, h, pos, src, dst, n)
    msg = alpha * ((h_src @ m.lin.weight.T)[src] + m.pos_nn(pos_dst[dst] - pos_src[src]))
    return _scatter(msg, dst, n, m.aggr)


class PTNet(nn.Module):
    """Two PointTransformerConvs whose positions are the leading columns of the input."""

    def __init__(self, variant):
        super().__init__()
        self.conv1 = _pt(variant, F, H, seed=4, bias=False)
        self.conv2 = _pt(variant, H, C, seed=5, bias=False)

    def forward(self, xp, edge_index, dense=False):
        pos, h = xp[:, :P], xp[:, P:]
        for conv in (self.conv1, self.conv2):
            h = pt_dense(conv, h, pos, edge_index) if dense else conv(h, pos, edge_index)
            h = torch.relu(h) if conv is self.conv1 else h
        return h


@pytest.mark.parametrize("variant", list(PT_VARIANTS))
def test_point_transformer_positions_from_x_get_relevance_lrp0_is_gradient_x_input(variant, inputs):
    """``pos`` the leading columns of ``x``: relevance reaches the positions through
    ``pos_nn(pos_i - pos_j)`` (explained by its own layers), as PointNetConv's."""
    x, _, pos = inputs
    xp = torch.cat([pos, x], 1)
    model = PTNet(variant).double().eval()
    _check_lrp0(model, xp)
    res = sparse_lrp.explain(model, xp, EI, index=5, target=1, composite=Epsilon(0.0))
    assert res.node_feat[:, :P].abs().sum() > 0


# -- FeaStConv -----------------------------------------------------------------------------------
FEAST_VARIANTS = {
    "mean_heads": dict(heads=3),
    "add_no_loops_no_bias": dict(heads=2, aggr="add", add_self_loops=False, bias=False),
    "max": dict(heads=2, aggr="max"),
}


def _feast(variant, f_in=F, out=C, seed=0, **extra):
    torch.manual_seed(seed)
    return gnn.FeaStConv(f_in, out, **{**FEAST_VARIANTS[variant], **extra}).double()


def feast_matrices(m, x, src, dst):
    """Each edge's matrix ``Σ_h q_h W_h`` ``[E, out, in]``, ``q = softmax_h(u(x_j - x_i) + c)`` detached."""
    with torch.no_grad():
        q = torch.softmax((x[src] - x[dst]) @ m.u.weight.T + m.c, dim=1)
    heads = m.heads
    return torch.einsum("eh,hoi->eoi", q, m.lin.weight.detach().view(heads, m.out_channels, -1))


def feast_reference(m, x, ei, R, rule):
    n = x.shape[0]
    src, dst, ids = point_graph(ei, n, m.add_self_loops)
    W = feast_matrices(m, x, src, dst)
    msg = torch.einsum("eoi,ei->eo", W, x[src])
    bias = None if m.bias is None else m.bias.detach()
    out, r_msg = aggregate_ref(msg, dst, n, R, rule, m.aggr, bias=bias)
    r_e = per_row_lrp(x[src], W, torch.zeros_like(msg), carry(r_msg, msg), rule)
    return out, torch.zeros_like(x).index_add(0, src, r_e), to_model_edges(r_msg.sum(1), ids, ei.shape[1])


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(FEAST_VARIANTS))
def test_feast_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    _check_written_out(randomise(_feast(variant), seed=2, scale=0.6).eval(), inputs[0], feast_reference, rule_name)


def feast_dense(m, h, ei):
    h_src, h_dst = _ends(h)
    n = h_dst.shape[0]
    src, dst, _ = point_graph(ei, n, m.add_self_loops)
    with torch.no_grad():
        q = torch.softmax((h_src[src] - h_dst[dst]) @ m.u.weight.T + m.c, dim=1)
    msg = ((h_src[src] @ m.lin.weight.T).view(-1, m.heads, m.out_channels) * q[:, :, None]).sum(1)
    return _scatter(msg, dst, n, m.aggr)


class TwoConvs(nn.Module):
    """``conv2(relu(conv1(x)))``, bias-free, or (``dense=True``) the same with each layer's
    ``dense(conv, h, edge_index)`` written out (its fixed parts detached)."""

    def __init__(self, make, dense, width=None):
        super().__init__()
        self.conv1 = make(F, H, seed=4, bias=False)
        self.conv2 = make(H if width is None else width(self.conv1), C, seed=5, bias=False)
        self.dense = dense

    def forward(self, x, edge_index, dense=False):
        h = x
        for conv in (self.conv1, self.conv2):
            h = self.dense(conv, h, edge_index) if dense else conv(h, edge_index)
            h = torch.relu(h) if conv is self.conv1 else h
        return h


@pytest.mark.parametrize("variant", list(FEAST_VARIANTS))
def test_feast_lrp0_is_gradient_x_input_with_the_assignments_detached(variant, inputs):
    make = functools.partial(_feast, variant)
    _check_lrp0(TwoConvs(make, feast_dense).double().eval(), inputs[0])


class Bipartite(nn.Module):
    """One layer on the pair ``(x, relu(pre(x)))``: messages (values) from ``x``, the target
    side (FeaSt's ``x_i``, PointTransformer's ``W_dst x_i``) from the other; PointTransformer's
    positions the leading columns of each side."""

    def __init__(self, conv):
        super().__init__()
        self.pre, self.conv = nn.Linear(F, F, bias=False), conv

    def forward(self, x, edge_index, dense=False):
        pair = (x, torch.relu(self.pre(x)))
        if isinstance(self.conv, gnn.PointTransformerConv):
            pos = (pair[0][:, :P], pair[1][:, :P])
            return pt_dense(self.conv, pair, pos, edge_index) if dense else self.conv(pair, pos, edge_index)
        return feast_dense(self.conv, pair, edge_index) if dense else self.conv(pair, edge_index)


@pytest.mark.parametrize("kind", ["point_transformer", "feast"])
def test_bipartite_pairs_lrp0_is_gradient_x_input(kind, inputs):
    torch.manual_seed(8)
    if kind == "feast":
        conv = gnn.FeaStConv(F, C, heads=2, bias=False)
    else:
        conv = gnn.PointTransformerConv((F, F), C, pos_nn=nn.Linear(P, C, bias=False))
    model = randomise(Bipartite(conv).double(), seed=8, scale=0.6).eval()
    _check_lrp0(model, inputs[0])


# -- EGConv --------------------------------------------------------------------------------------
EG_OUT = 6
EG_VARIANTS = {
    "symnorm": dict(num_heads=2, num_bases=4),
    "all_five": dict(aggregators=["sum", "mean", "symnorm", "max", "min"], num_heads=3, num_bases=2),
    "loops_by_index": dict(aggregators=["max", "mean"], num_heads=2, num_bases=3),
    "no_loops_no_bias": dict(aggregators=["sum", "min"], num_heads=1, num_bases=2, add_self_loops=False, bias=False),
}


def _eg(variant, f_in=F, seed=0, **extra):
    torch.manual_seed(seed)
    return gnn.EGConv(f_in, EG_OUT, **{**EG_VARIANTS[variant], **extra}).double()


def eg_graph(m, ei, n):
    """``(src, dst, symnorm weights, ids)`` of the graph the layer aggregates over: GCN's
    normalisation with symnorm; else, with self-loops, the graph's loops replaced by one per
    node up to its largest node index (PyG's ``add_remaining_self_loops`` without ``num_nodes``)."""
    if "symnorm" in m.aggregators:
        return gcn_connections(ei, n, None, False, m.add_self_loops)
    if m.add_self_loops:
        src, dst, _, ids = gcn_connections(ei, int(ei.max()) + 1, None, False, True)
        return src, dst, None, ids
    return ei[0], ei[1], None, torch.arange(ei.shape[1])


def eg_weights(kind, src, dst, n, w_sym):
    if kind == "symnorm":
        return w_sym
    w = torch.ones(src.numel(), dtype=DT)
    return w / torch.bincount(dst, minlength=n).clamp(min=1).to(DT)[dst] if kind == "mean" else w


def eg_parts(m, h, ei):
    """``(graph, bases, comb [N, H, A * B] detached, aggregated bases per aggregator)``."""
    n = h.shape[0]
    src, dst, w_sym, ids = eg_graph(m, ei, n)
    bases = h @ m.bases_lin.weight.T
    with torch.no_grad():
        comb = _lin(h, m.comb_lin).view(n, m.num_heads, -1)
    aggs = []
    for kind in m.aggregators:
        if kind in ("max", "min"):
            aggs.append(_scatter(bases[src], dst, n, kind))
        else:
            aggs.append(_scatter(eg_weights(kind, src, dst, n, w_sym)[:, None] * bases[src], dst, n, "add"))
    return (src, dst, w_sym, ids), bases, comb, aggs


def eg_combine(m, comb, aggs):
    """``out_i,h = Σ_k comb_i,h,k agg_i,k + b``, the aggregated bases as ``[N, A * B, C / H]``."""
    n, c = comb.shape[0], m.out_channels // m.num_heads
    out = torch.einsum("nhk,nkc->nhc", comb, torch.stack(aggs, 1).view(n, -1, c)).reshape(n, -1)
    return out if m.bias is None else out + m.bias


def eg_reference(m, x, ei, R, rule):
    n, heads = x.shape[0], m.num_heads
    c = m.out_channels // heads
    (src, dst, w_sym, ids), bases, comb, aggs = eg_parts(m, x, ei)
    bases, aggs = bases.detach(), [a.detach() for a in aggs]
    out = eg_combine(m, comb, aggs).detach()
    # The combination, one map per (node, channel) row: the aggregated bases [A * B] -> heads [H].
    stacked = torch.stack(aggs, 1).view(n, -1, c)
    rows = stacked.transpose(1, 2).reshape(n * c, -1)
    W = comb.unsqueeze(1).expand(n, c, heads, comb.shape[2]).reshape(n * c, heads, -1)
    b = torch.zeros(n * c, heads, dtype=DT) if m.bias is None else m.bias.detach().view(heads, c).T.repeat(n, 1)
    R_rows = _mask(R, out).view(n, heads, c).transpose(1, 2).reshape(n * c, heads)
    r_agg = per_row_lrp(rows, W, b, R_rows, rule).view(n, c, -1).transpose(1, 2).reshape(n, len(aggs), -1)
    r_bases, edge = torch.zeros_like(bases), torch.zeros(ei.shape[1], dtype=DT)
    for k, (kind, agg) in enumerate(zip(m.aggregators, aggs)):
        r = carry(r_agg[:, k], agg)
        if kind in ("max", "min"):
            r_msg = select(bases[src], dst, n, kind)[1] * r[dst]
        else:
            conn = Conn(torch.arange(src.numel()), dst, eg_weights(kind, src, dst, n, w_sym), bases[src])
            ((r_msg, _),) = edge_lrp([conn], r, rule, n)
        r_bases = r_bases.index_add(0, src, r_msg)
        edge = edge + to_model_edges(r_msg.sum(1), ids, ei.shape[1])
    return out, dense_rule_lrp(x, m.bases_lin.weight.detach(), carry(r_bases, bases), rule)[0], edge


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(EG_VARIANTS))
def test_eg_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    _check_written_out(randomise(_eg(variant), seed=2, scale=0.6).eval(), inputs[0], eg_reference, rule_name)


class EGNet(nn.Module):
    def __init__(self, variant):
        super().__init__()
        self.conv1 = _eg(variant, F, seed=4, bias=False)
        self.conv2 = _eg(variant, EG_OUT, seed=5, bias=False)
        self.head = nn.Linear(EG_OUT, C, bias=False)

    def forward(self, x, edge_index, dense=False):
        h = x
        for conv in (self.conv1, self.conv2):
            if dense:
                _, _, comb, aggs = eg_parts(conv, h, edge_index)
                h = torch.relu(eg_combine(conv, comb, aggs))
            else:
                h = torch.relu(conv(h, edge_index))
        return self.head(h)


@pytest.mark.parametrize("variant", list(EG_VARIANTS))
def test_eg_lrp0_is_gradient_x_input_with_the_combination_detached(variant, inputs):
    _check_lrp0(EGNet(variant).double().eval(), inputs[0])


def test_eg_cached_graph_is_explained_as_the_forward_uses_it(inputs):
    """A filled cache (``cached=True``) is the graph the forward aggregates over, whatever graph
    it is given: a single target keeps the whole graph for it, batched targets are refused;
    explaining an unfilled one does not fill it."""
    x = inputs[0]
    plain = randomise(_eg("all_five"), seed=2, scale=0.6).eval()
    cached = randomise(_eg("all_five", cached=True), seed=2, scale=0.6).eval()
    sparse_lrp.explain(cached, x, EI, index=3)
    assert cached._cached_edge_index is None
    cached(x, EI)  # (fills the cache)
    other = EI[:, :-4]  # (another graph: the cached one is used)
    assert_close(cached(x, other), plain(x, EI))
    want = sparse_lrp.explain(plain, x, EI, index=3, composite="zplus")
    got = sparse_lrp.explain(cached, x, other, index=3, composite="zplus")
    assert_close(got.node_feat, want.node_feat, **TIGHT)
    with pytest.raises(ValueError, match=r"EGConv\) aggregates over its cached graph"):
        sparse_lrp.explain(cached, x, EI, index=[1, 3])


# -- SuperGATConv --------------------------------------------------------------------------------
SGAT_VARIANTS = {
    "mx_concat": dict(heads=2),
    "sd_mean": dict(heads=2, attention_type="SD", concat=False),
    "mx_no_loops_no_bias": dict(heads=3, add_self_loops=False, bias=False, negative_slope=0.1),
}


def _sgat(variant, f_in=F, out=C, seed=0, **extra):
    torch.manual_seed(seed)
    return gnn.SuperGATConv(f_in, out, **{**SGAT_VARIANTS[variant], **extra}).double()


def sgat_attention(m, h, src, dst, n):
    """SuperGAT's attention ``[E, H]`` from its definition (MX: GAT's score gated by
    ``sigmoid(<h_i, h_j>)``; SD: ``<h_i, h_j> / sqrt(C)``), detached."""
    with torch.no_grad():
        dot = (h[dst] * h[src]).sum(-1)
        if m.attention_type == "MX":
            score = ((h[src] * m.att_l).sum(-1) + (h[dst] * m.att_r).sum(-1)) * torch.sigmoid(dot)
        else:
            score = dot / math.sqrt(m.out_channels)
        score = torch.where(score > 0, score, m.negative_slope * score)
        return group_softmax(score, dst, n)


def sgat_reference(m, x, ei, R, rule):
    n, heads, c = x.shape[0], m.heads, m.out_channels
    src, dst, ids = point_graph(ei, n, m.add_self_loops)
    W = m.lin.weight.detach()
    h = (x @ W.T).view(n, heads, c)
    alpha = sgat_attention(m, h, src, dst, n)
    bias = None if m.bias is None else m.bias.detach()
    bk = [None if bias is None else bias.view(heads, c)[k] if m.concat else bias for k in range(heads)]
    conns = [Conn(src, dst, alpha[:, k], h[:, k], ids) for k in range(heads)]
    zs = [edge_forward([conn], n, b) for conn, b in zip(conns, bk)]
    if m.concat:
        out = torch.cat(zs, 1)
        r_heads = list(_mask(R, out).view(n, heads, c).unbind(1))
    else:  # (the heads' mean splits relevance in proportion)
        out = torch.stack(zs, 1).mean(1)
        r_heads = [z / heads * _ratio(R, out) for z in zs]
    r_h, edge = [], torch.zeros(ei.shape[1], dtype=DT)
    for conn, b, r in zip(conns, bk, r_heads):
        ((rh, r_e),) = edge_lrp([conn], r, rule, n, b)
        r_h.append(rh)
        edge = edge + to_model_edges(r_e, ids, ei.shape[1])
    r_h = carry(torch.stack(r_h, 1), h).reshape(n, heads * c)
    return out, dense_rule_lrp(x, W, r_h, rule)[0], edge


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(SGAT_VARIANTS))
def test_super_gat_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    _check_written_out(randomise(_sgat(variant), seed=2, scale=0.6).eval(), inputs[0], sgat_reference, rule_name)


def sgat_dense(m, h, ei):
    n = h.shape[0]
    src, dst, _ = point_graph(ei, n, m.add_self_loops)
    hh = (h @ m.lin.weight.T).view(n, m.heads, m.out_channels)
    alpha = sgat_attention(m, hh, src, dst, n)
    out = torch.zeros_like(hh).index_add(0, dst, alpha[:, :, None] * hh[src])
    return out.reshape(n, -1) if m.concat else out.mean(1)


@pytest.mark.parametrize("variant", list(SGAT_VARIANTS))
def test_super_gat_lrp0_is_gradient_x_input_with_the_attention_detached(variant, inputs):
    make = functools.partial(_sgat, variant)
    width = lambda conv: H * conv.heads if conv.concat else H  # noqa: E731 - (concatenated heads)
    _check_lrp0(TwoConvs(make, sgat_dense, width).double().eval(), inputs[0])


# -- AntiSymmetricConv ---------------------------------------------------------------------------
ANTI_VARIANTS = {
    "default_tanh": dict(),  # (phi: GCNConv(F, F, bias=False))
    "gcn_bias_relu_two_iters": dict(phi="gcn", act="relu", num_iters=2, epsilon=0.3, gamma=0.2),
    "graph_conv_no_act_no_bias": dict(phi="graph", act=None, num_iters=3, bias=False),
}
PHI = {"gcn": lambda: gnn.GCNConv(F, F), "graph": lambda: gnn.GraphConv(F, F, aggr="mean")}
PHI_REFERENCE = {gnn.GCNConv: ref_gcn, gnn.GraphConv: ref_graph_conv}


def _anti(variant, seed=0, bias=True):
    torch.manual_seed(seed)
    kw = dict(ANTI_VARIANTS[variant])
    phi = kw.pop("phi", None)
    if phi is not None:
        kw["phi"] = PHI[phi]()
    m = gnn.AntiSymmetricConv(F, **kw)
    return (m if bias else zero_biases(m)).double()


def anti_steps(m, x, ei):
    """Each iteration's ``(x_t, phi(x_t), x_t Aᵀ, pre-activation, act, x_t+1)``, detached."""
    A = (m.W - m.W.T - m.gamma * torch.eye(F, dtype=DT)).detach()
    steps, h = [], x
    with torch.no_grad():
        for _ in range(m.num_iters):
            phi, root = m.phi(h, ei), h @ A.T
            pre = phi + root + (0 if m.bias is None else m.bias)
            act = pre if m.act is None else m.act(pre)
            steps.append((h, phi, root, pre, act, h + m.epsilon * act))
            h = steps[-1][-1]
    return A, steps


def anti_reference(m, x, ei, R, rule):
    A, steps = anti_steps(m, x, ei)
    bias = None if m.bias is None else m.bias.detach()
    n, ref = x.shape[0], PHI_REFERENCE[type(m.phi)]
    out = steps[-1][-1]
    r, edge = _mask(R, out), torch.zeros(ei.shape[1], dtype=DT)
    for h, phi, root, pre, act, new in reversed(steps):
        c = _ratio(r, new)
        r_pre = torch.where(pre == 0, 0.0, m.epsilon * act * c)  # (the residual sum, then act: Pass)
        (r_phi, _), (r_root, _) = edge_lrp([loops(n, 1.0, phi), loops(n, 1.0, root)], r_pre, rule, n, bias)
        inner = ref(m.phi, h, ei, carry(r_phi, phi), rule)
        assert_close(inner.out, phi)
        r_root = dense_rule_lrp(h, A, carry(r_root, root), rule)[0]
        edge = edge + inner.edge
        r = carry(h * c + r_root + inner.x, h)
    return out, r, edge


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(ANTI_VARIANTS))
def test_antisymmetric_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    _check_written_out(randomise(_anti(variant), seed=2, scale=0.6).eval(), inputs[0], anti_reference, rule_name)


class AntiNet(nn.Module):
    """Bias-free AntiSymmetricConv with a ReLU or no activation: nothing is held fixed, so
    the model is its own formula."""

    def __init__(self, variant):
        super().__init__()
        self.conv = _anti(variant, seed=4, bias=False)
        self.head = nn.Linear(F, C, bias=False)

    def forward(self, x, edge_index, dense=False):
        return self.head(self.conv(x, edge_index))


@pytest.mark.parametrize("variant", ["gcn_bias_relu_two_iters", "graph_conv_no_act_no_bias"])
def test_antisymmetric_lrp0_is_gradient_x_input(variant, inputs):
    _check_lrp0(AntiNet(variant).double().eval(), inputs[0])


def test_antisymmetric_tanh_passes_relevance_unchanged(inputs):
    """tanh under the Pass rule: a one-iteration layer's output relevance, less what the
    residual keeps, reaches the map under it whole (LRP-0 on a bias-free layer conserves it)."""
    x = inputs[0]
    m = zero_biases(randomise(_anti("default_tanh"), seed=2, scale=0.6)).eval()
    res = sparse_lrp.explain(m, x, EI, index=4, target=1, composite=Epsilon(0.0))
    assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
    xg = x.clone().requires_grad_(True)
    m(xg, EI)[4, 1].backward()
    assert not torch.allclose(res.node_feat, xg.grad * x)  # (not the gradient: tanh is no ReLU)


# -- PDNConv -------------------------------------------------------------------------------------
PDN_VARIANTS = {
    "normalize": dict(),
    "mean_raw_weights": dict(normalize=False, aggr="mean"),
    "no_loops_no_bias": dict(add_self_loops=False, bias=False),
    "normalize_without_edge_attr": dict(),
}


def _pdn(variant, f_in=F, out=C, seed=0, **extra):
    torch.manual_seed(seed)
    return gnn.PDNConv(f_in, out, D, 4, **{**PDN_VARIANTS[variant], **extra}).double()


def pdn_graph(m, ei, ea, n):
    """``(src, dst, w, ids)``: the edge weights ``sigmoid(mlp(e))`` (detached), GCN-normalised
    with ``normalize`` (mean: divided by the in-degree)."""
    w = None
    if ea is not None:
        with torch.no_grad():
            w = torch.sigmoid(_lin(torch.relu(_lin(ea, m.mlp[0])), m.mlp[2])).squeeze(-1)
    if m.normalize:
        return gcn_connections(ei, n, w, False, m.add_self_loops)
    if m.aggr == "mean":
        w = w / torch.bincount(ei[1], minlength=n).clamp(min=1).to(DT)[ei[1]]
    return ei[0], ei[1], w, torch.arange(ei.shape[1])


def pdn_reference(m, x, ei, ea, R, rule):
    n = x.shape[0]
    src, dst, w, ids = pdn_graph(m, ei, ea, n)
    W = m.lin.weight.detach()
    h = x @ W.T
    bias = None if m.bias is None else m.bias.detach()
    conn = Conn(src, dst, w, h, ids)
    out = edge_forward([conn], n, bias)
    ((r_h, r_e),) = edge_lrp([conn], _mask(R, out), rule, n, bias)
    return out, dense_rule_lrp(x, W, carry(r_h, h), rule)[0], to_model_edges(r_e, ids, ei.shape[1])


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(PDN_VARIANTS))
def test_pdn_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    x, ea, _ = inputs
    ea = None if variant == "normalize_without_edge_attr" else ea
    m = randomise(_pdn(variant), seed=2, scale=0.6).eval()
    rule = RULES[rule_name]()
    out = m(x, EI, ea).detach()
    R = _relevance(out)
    ref_out, ref_x, ref_edge = pdn_reference(m, x, EI, ea, R, rule)
    assert_close(ref_out, out)
    res = _explain_rule(One(m), x, R, rule, edge_attr=ea)
    _check(res, ref_x, ref_edge)
    assert res.edge_attr is None or not res.edge_attr.any()  # (the edge weights are held fixed)


class PDNNet(nn.Module):
    def __init__(self, variant):
        super().__init__()
        self.conv1 = _pdn(variant, F, H, seed=4, bias=False)
        self.conv2 = _pdn(variant, H, C, seed=5, bias=False)

    def forward(self, x, edge_index, edge_attr=None, dense=False):
        h = x
        for conv in (self.conv1, self.conv2):
            if dense:
                src, dst, w, _ = pdn_graph(conv, edge_index, edge_attr, h.shape[0])
                h = _scatter(w[:, None] * (h @ conv.lin.weight.T)[src], dst, h.shape[0], "add")
            else:
                h = conv(h, edge_index, edge_attr)
            h = torch.relu(h) if conv is self.conv1 else h
        return h


@pytest.mark.parametrize("variant", ["normalize", "mean_raw_weights"])
def test_pdn_lrp0_is_gradient_x_input_with_the_edge_weights_detached(variant, inputs):
    x, ea, _ = inputs
    _check_lrp0(PDNNet(variant).double().eval(), x, edge_attr=ea)


# -- GatedGraphConv ------------------------------------------------------------------------------
GGC_VARIANTS = {
    "add_padded": dict(out_channels=6, num_layers=2),
    "mean_weighted_no_bias": dict(out_channels=F, num_layers=2, aggr="mean", bias=False),
    "max_padded": dict(out_channels=5, num_layers=1, aggr="max"),
}


def _ggc(variant, seed=0):
    torch.manual_seed(seed)
    return gnn.GatedGraphConv(**GGC_VARIANTS[variant]).double()


def ggc_reference(m, x, ei, ew, R, rule):
    """GatedGraphConv as LRP treats a GRU: gates ``r``, ``z`` fixed, the candidate's map over
    ``[m, x]`` (``r`` folded into x's matrix) with tanh under the Pass rule, and
    ``(1 - z) n + z x`` split in proportion. The first step's maps read the input's own
    channels only (the layer's zero padding is no input: no connections to it)."""
    n, width = x.shape[0], m.out_channels
    src, dst = ei
    w = torch.ones(ei.shape[1], dtype=DT) if ew is None else ew
    kind = m.aggr
    rnn = m.rnn
    (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = rnn.weight_ih.detach().chunk(3), rnn.weight_hh.detach().chunk(3)
    zero = torch.zeros(3 * width, dtype=DT)
    b_ir, b_iz, b_in = (zero if rnn.bias_ih is None else rnn.bias_ih.detach()).chunk(3)
    b_hr, b_hz, b_hn = (zero if rnn.bias_hh is None else rnn.bias_hh.detach()).chunk(3)
    h = torch.cat([x, torch.zeros(n, width - x.shape[1], dtype=DT)], 1)
    steps = []
    for layer in range(m.num_layers):
        weight = m.weight[layer].detach()
        lin = h @ weight
        agg = aggregate_ref(lin[src], dst, n, None, None, kind, w)[0]
        r = torch.sigmoid(agg @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
        z = torch.sigmoid(agg @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
        pre = agg @ w_in.T + b_in + r * (h @ w_hn.T + b_hn)
        cand = torch.tanh(pre)
        f = x.shape[1] if layer == 0 else width  # (the channels the step's maps read)
        steps.append((f, h, weight, lin, agg, r, z, pre, cand, (1 - z) * cand + z * h))
        h = steps[-1][-1]
    out = h
    R, edge = _mask(R, out), torch.zeros(ei.shape[1], dtype=DT)
    for f, h, weight, lin, agg, r, z, pre, cand, new in reversed(steps):
        c = _ratio(R, new)
        r_pre = torch.where(pre == 0, 0.0, (1 - z) * cand * c)
        W = torch.cat([w_in.expand(n, width, width), r[:, :, None] * w_hn[:, :f]], 2)  # [N, out, width + f]
        r_in = per_row_lrp(torch.cat([agg, h[:, :f]], 1), W, b_in + r * b_hn, r_pre, rule)
        _, r_msg = aggregate_ref(lin[src], dst, n, carry(r_in[:, :width], agg), rule, kind, w)
        edge = edge + r_msg.sum(1)
        r_lin = torch.zeros_like(lin).index_add(0, src, r_msg)
        r_x = dense_rule_lrp(h[:, :f], weight[:f].T, carry(r_lin, lin), rule)[0]
        r_h = z * h * c
        r_h[:, :f] += r_in[:, width:] + r_x
        R = carry(r_h, h)
    return out, R[:, : x.shape[1]], edge


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(GGC_VARIANTS))
def test_gated_graph_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    x, _, _ = inputs
    ew = torch.rand(E, generator=torch.Generator().manual_seed(3), dtype=DT) + 0.5 if "weighted" in variant else None
    m = randomise(_ggc(variant), seed=2, scale=0.6).eval()
    rule = RULES[rule_name]()
    out = m(x, EI, ew).detach()
    R = _relevance(out)
    ref_out, ref_x, ref_edge = ggc_reference(m, x, EI, ew, R, rule)
    assert_close(ref_out, out)
    _check(_explain_rule(One(m), x, R, rule, edge_weight=ew), ref_x, ref_edge)


# -- whole models: explain, PyG's Explainer, subgraphs, batched targets ---------------------------
class MixedA(nn.Module):
    """FeaStConv, EGConv and SuperGATConv in one model's own forward (attention dropout)."""

    def __init__(self):
        super().__init__()
        self.feast = gnn.FeaStConv(F, H, heads=2)
        self.eg = gnn.EGConv(H, 6, aggregators=["symnorm", "max", "mean"], num_heads=2, num_bases=2)
        self.sgat = gnn.SuperGATConv(6, C, heads=2, concat=False, dropout=0.3)

    def forward(self, x, edge_index):
        h = torch.relu(self.feast(x, edge_index))
        return self.sgat(torch.relu(self.eg(h, edge_index)), edge_index)


class MixedB(nn.Module):
    """PointTransformerConv, AntiSymmetricConv, PDNConv and GatedGraphConv, with dropout."""

    def __init__(self):
        super().__init__()
        pos_nn = nn.Sequential(nn.Linear(P, H), nn.ReLU(), nn.Dropout(0.3), nn.Linear(H, H))
        self.pt = gnn.PointTransformerConv(F, H, pos_nn=pos_nn)
        self.anti = gnn.AntiSymmetricConv(H)
        self.pdn = gnn.PDNConv(H, H, D, 4)
        self.ggc = gnn.GatedGraphConv(H, 1)
        self.head = nn.Linear(H, C)

    def forward(self, x, edge_index, edge_attr, pos):
        h = self.anti(self.pt(x, pos, edge_index), edge_index)
        h = self.ggc(torch.relu(self.pdn(h, edge_index, edge_attr)), edge_index)
        return self.head(h)


MIXED = {"a": MixedA, "b": MixedB}
MIXED_LAYERS = {
    "a": {"feast", "eg", "sgat"},
    "b": {"pt", "anti", "anti.phi", "pdn", "ggc", "head"},  # (pos_nn runs over edge rows: no node records)
}


def _mixed(kind, inputs, seed=7):
    _, ea, pos = inputs
    torch.manual_seed(seed)
    model = randomise(MIXED[kind]().double(), seed=seed, scale=0.5).eval()
    return model, ({} if kind == "a" else dict(edge_attr=ea, pos=pos))


@pytest.mark.parametrize("kind", list(MIXED))
def test_whole_model_through_explain_and_pyg_explainer(kind, inputs):
    x = inputs[0]
    model, kw = _mixed(kind, inputs)
    model.train()
    next(model.parameters()).requires_grad_(False)
    before = snapshot(model)
    expl = lrp_explainer(model)(x, EI, index=3, **kw)
    y = model.eval()(x, EI, **kw).detach()
    model.train()
    res = sparse_lrp.explain(model, x, EI, index=3, target=int(y[3].argmax()), composite="zplus", **kw)
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert expl.node_mask.abs().sum() > 0 and expl.edge_mask.abs().sum() > 0
    assert res.output.item() == pytest.approx(y[3].max().item())  # (explained in eval mode: no dropout)
    assert MIXED_LAYERS[kind] <= set(res.layers)
    for preset in ("epsilon", "zplus", "gamma"):
        _conserved(sparse_lrp.explain(model, x, EI, index=[1, 6], composite=preset, **kw))
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("preset", ["epsilon", "zplus", "gamma"])
@pytest.mark.parametrize("kind", list(MIXED))
def test_node_targets_on_subgraphs_equal_the_whole_graph(kind, preset, inputs, monkeypatch):
    """Every layer declares what it reads beyond its targets' in-edges (GCN normalisation's
    in-degrees at most): a single target on its k-hop subgraph, and batched targets on their
    union, equal the pass over the whole graph."""
    x = inputs[0]
    model, kw = _mixed(kind, inputs)
    explain_module = importlib.import_module("sparse_lrp.explain")
    cut, unions = explain_module._khop_union, []
    monkeypatch.setattr(explain_module, "_khop_union", lambda *a, **k: unions.append(1) or cut(*a, **k))
    index = [0, 2, 5, 9]
    batched = sparse_lrp.explain(model, x, EI, index=index, composite=preset, **kw)
    for row, i in enumerate(index):
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)  # (always the subgraph)
        unions.clear()
        single = sparse_lrp.explain(model, x, EI, index=i, composite=preset, **kw)
        assert unions, "the single target ran on its subgraph"
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", 10**9)
        unions.clear()
        whole = sparse_lrp.explain(model, x, EI, index=i, composite=preset, **kw)
        assert not unions
        for got in (batched.node_feat[row], single.node_feat):
            assert_close(got, whole.node_feat, atol=1e-12, rtol=1e-9)
        for got in (batched.edge[row], single.edge):
            assert_close(got, whole.edge, atol=1e-12, rtol=1e-9)
        assert whole.node_feat.abs().sum() > 0
        _conserved(single)


class Two(nn.Module):
    """``head(conv2(relu(conv1(x))))`` on a large graph (PointTransformerConv's positions: x's
    first columns)."""

    def __init__(self, make):
        super().__init__()
        self.conv1, self.conv2, self.head = make(6, 6), make(6, 6), nn.Linear(6, 3)

    def forward(self, x, edge_index):
        h = x
        for conv in (self.conv1, self.conv2):
            h = conv(h, x[:, :P], edge_index) if isinstance(conv, gnn.PointTransformerConv) else conv(h, edge_index)
            h = torch.relu(h) if conv is self.conv1 else h
        return self.head(h)


CUT_LAYERS = {
    "point_transformer": lambda i, o: gnn.PointTransformerConv(i, o, pos_nn=nn.Linear(P, o)),
    "feast": lambda i, o: gnn.FeaStConv(i, o, heads=2),
    "eg": lambda i, o: gnn.EGConv(i, o, aggregators=["symnorm", "max", "sum"], num_heads=2, num_bases=2),
    "super_gat": lambda i, o: gnn.SuperGATConv(i, o, heads=2, concat=False),
    "antisymmetric": lambda i, o: gnn.AntiSymmetricConv(i, num_iters=2),
    "pdn": lambda i, o: gnn.PDNConv(i, o, D, 4),
    "gated_graph": lambda i, o: gnn.GatedGraphConv(o, 2),
}


@pytest.mark.parametrize("name", list(CUT_LAYERS))
def test_maps_cut_to_rows_that_reach_a_target(name, monkeypatch):
    """On a large graph the maps run on the rows within reach of the targets only (EGConv's
    aggregators side by side as one hop; GatedGraphConv's steps each a hop): results equal the
    whole-graph pass."""
    from test_restricted import _check_cut_equals_whole

    g = torch.Generator().manual_seed(1)
    graph = torch.randn(1000, 6, generator=g, dtype=DT), torch.randint(0, 1000, (2, 10000), generator=g)
    torch.manual_seed(4)
    model = Two(CUT_LAYERS[name]).double().eval()
    _check_cut_equals_whole(model, Epsilon(1e-3), [5, 17], graph, monkeypatch)


# -- DeepGCNLayer --------------------------------------------------------------------------------
BLOCKS = ["res+", "res", "dense", "plain"]


def _gen(width):
    return gnn.GENConv(width, H, aggr="softmax", t=1.0, learn_t=True, num_layers=2, norm="layer")


class DeepNet(nn.Module):
    """DeeperGCN's stack: two ``DeepGCNLayer(GENConv, LayerNorm, ReLU)`` between Linears."""

    def __init__(self, block):
        super().__init__()
        self.block, width, layers = block, H, []
        self.lin = nn.Linear(F, H)
        for _ in range(2):
            norm = nn.LayerNorm(width if block == "res+" else H)
            layers.append(gnn.DeepGCNLayer(_gen(width), norm, nn.ReLU(), block=block, dropout=0.2))
            width = width + H if block == "dense" else H
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, C)

    def forward(self, x, edge_index, dense=False):
        h = self.lin(x)
        for layer in self.layers:
            h = deep_dense(layer, h, edge_index) if dense else layer(h, edge_index)
        return self.head(h)


def layer_norm_dense(norm, h):
    """The LN-rule's view of LayerNorm: the spread detached, the centring not."""
    spread = (h.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt().detach()
    return (h - h.mean(-1, keepdim=True)) / spread * norm.weight + norm.bias


def gen_dense(conv, h, ei):
    """GENConv with its softmax aggregation's weights detached."""
    n = h.shape[0]
    src_feat = _lin_grad(h, conv.lin_src) if hasattr(conv, "lin_src") else h
    msg = torch.relu(src_feat[ei[0]]) + conv.eps
    w = group_softmax((conv.aggr_module.t * msg).detach(), ei[1], n)
    out = torch.zeros(n, msg.shape[1], dtype=DT).index_add(0, ei[1], w * msg)
    out = out + (_lin_grad(h, conv.lin_dst) if hasattr(conv, "lin_dst") else h)
    for mod in conv.mlp:
        if isinstance(mod, nn.LayerNorm):
            out = layer_norm_dense(mod, out)
        elif isinstance(mod, nn.ReLU):
            out = torch.relu(out)
        elif not isinstance(mod, nn.Dropout):
            out = _lin_grad(out, mod)
    return out


def _lin_grad(h, lin):
    return h @ lin.weight.T + (0 if lin.bias is None else lin.bias)


def deep_dense(layer, x, ei):
    """DeepGCNLayer's blocks (dropout off, as in eval mode)."""
    if layer.block == "res+":
        return x + gen_dense(layer.conv, torch.relu(layer_norm_dense(layer.norm, x)), ei)
    h = torch.relu(layer_norm_dense(layer.norm, gen_dense(layer.conv, x, ei)))
    return {"res": lambda: x + h, "dense": lambda: torch.cat([x, h], -1), "plain": lambda: h}[layer.block]()


def _deep(block, seed=3):
    torch.manual_seed(seed)
    return randomise(DeepNet(block).double(), seed=seed, scale=0.5).eval()


@pytest.mark.parametrize("block", BLOCKS)
def test_deep_gcn_layer_lrp0_is_gradient_x_input_with_the_fixed_parts_detached(block, inputs):
    """DeepGCNLayer needs no handler: its GENConv, LayerNorm and ReLU are explained by theirs,
    its residual sum or concatenation as any model code (softmax weights and spreads fixed)."""
    model = _deep(block)
    x = inputs[0]
    assert_close(model(x, EI, dense=True), model(x, EI))
    for index, target in [(2, 0), (9, 2)]:
        res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=Epsilon(0.0))
        assert_close(res.node_feat, _grad_x_input(model, x, index, target), atol=1e-12, rtol=1e-9)
        _conserved(res)


@pytest.mark.parametrize("block", ["res+", "res"])
def test_deep_gcn_layer_with_gradient_checkpointing(block, inputs):
    """``ckpt_grad=True`` reruns the conv inside the backward (reentrant checkpointing, which
    torch.autograd.grad refuses): it is off while explaining, the same values, and back on after."""
    x = inputs[0]
    plain = _deep(block)
    model = _deep(block)
    for layer in model.layers:
        layer.ckpt_grad = True
    want = sparse_lrp.explain(plain, x, EI, index=4, composite="gamma")
    got = sparse_lrp.explain(model, x, EI, index=4, composite="gamma")
    assert torch.equal(got.node_feat, want.node_feat) and torch.equal(got.edge, want.edge)
    assert all(layer.ckpt_grad is True for layer in model.layers)


@pytest.mark.parametrize("block", BLOCKS)
def test_deep_gcn_layer_through_pyg_explainer_and_on_subgraphs(block, inputs):
    x = inputs[0]
    model = _deep(block).train()
    before = snapshot(model)
    expl = lrp_explainer(model)(x, EI, index=3)
    res = sparse_lrp.explain(model, x, EI, index=3, target=int(model.eval()(x, EI)[3].argmax()), composite="zplus")
    model.train()
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert_unchanged(model, before)
    index = [0, 3, 9]
    batched = sparse_lrp.explain(model, x, EI, index=index, composite="gamma")
    for row, i in enumerate(index):
        single = sparse_lrp.explain(model, x, EI, index=i, composite="gamma")
        assert_close(batched.node_feat[row], single.node_feat, atol=1e-12, rtol=1e-9)
        assert_close(batched.edge[row], single.edge, atol=1e-12, rtol=1e-9)


# -- refusals ------------------------------------------------------------------------------------
class Refused(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.eg_std = gnn.EGConv(F, 6, aggregators=["sum", "std"], num_heads=2)
        self.eg_loops = gnn.EGConv(F, 6, aggregators=["max"], num_heads=2)
        self.pdn = gnn.PDNConv(F, C, D, 4, normalize=False)
        self.ggc = gnn.GatedGraphConv(F - 1, 1)

    def forward(self, x, edge_index):
        if self.how == "eg std":
            return self.eg_std(x, edge_index)
        if self.how == "eg loops by index, batched":
            return self.eg_loops(x, edge_index)
        if self.how == "pdn without edge_attr":
            return self.pdn(x, edge_index)
        if self.how == "gated graph too wide":
            return self.ggc(x, edge_index)
        raise AssertionError(self.how)


@pytest.mark.parametrize(
    "how,index,match",
    [
        ("eg std", 0, r"eg_std \(EGConv\).*aggregators \['std'\] are not supported"),
        ("eg loops by index, batched", [0, 2], r"'eg_loops' \(EGConv\) adds self-loops up to the graph's largest"),
        ("pdn without edge_attr", 0, r"pdn \(PDNConv\).*normalize=False needs edge_attr"),
        ("gated graph too wide", 0, r"ggc \(GatedGraphConv\).*4 input channels, more than its out_channels \(3\)"),
    ],
)
def test_what_cannot_be_explained_is_refused(how, index, match, inputs):
    with pytest.raises(ValueError, match=match):
        sparse_lrp.explain(Refused(how).double().eval(), inputs[0], EI, index=index)


@pytest.mark.parametrize("first", ["flat", "wsquare"])
def test_gated_graph_narrow_input_loses_nothing_to_its_padding(first):
    """The layer pads a narrow input with zero channels; a first-layer rule that shares by
    weights alone (Flat, w²) gave those channels relevance, reported lost (-0.655 of an
    output of 1.94 with 2 of 6 channels): the first step's maps read the input's channels."""
    torch.manual_seed(0)
    model = randomise(_ggc("max_padded"), seed=2, scale=0.6).eval()
    x = torch.randn(N, 2, dtype=DT)
    comp = sparse_lrp.Composite(Epsilon(1e-9), first=RULES[first]())
    res = sparse_lrp.explain(One(model), x, EI, index=2, target=1, composite=comp)
    assert res.conservation["lost"] == pytest.approx(0.0, abs=1e-12)
    _conserved(res)


class CachedEG(nn.Module):
    def __init__(self, aggregators):
        super().__init__()
        self.conv = gnn.EGConv(3, 4, aggregators=aggregators, num_heads=2, num_bases=2, cached=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x, edge_index):
        return self.head(self.conv(x, edge_index))


@pytest.mark.parametrize("aggregators", [["symnorm"], ["sum"]])
def test_eg_cache_of_the_graph_gives_a_repeated_loop_the_same_copy(aggregators):
    """Node 1 has its self-loop twice: with the cache filled from this graph the loop's
    relevance went to the other copy (the first, by matching edges) than with it empty
    (the last, as the forward's re-ordering keeps it)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=DT)
    ei = torch.tensor([[0, 1, 1, 1, 2], [1, 2, 1, 1, 1]])
    model = randomise(CachedEG(aggregators).double()).eval()
    empty = sparse_lrp.explain(model, x, ei, index=1, target=1, composite=Epsilon(0.0))
    model(x, ei)  # (fills the cache from this graph)
    assert model.conv._cached_edge_index is not None
    filled = sparse_lrp.explain(model, x, ei, index=1, target=1, composite=Epsilon(0.0))
    assert_close(filled.edge, empty.edge, atol=1e-12, rtol=1e-9)
    assert float(empty.edge[2:4].abs().sum()) > 0
