"""FiLMConv, GeneralConv and PointNetConv against the layers written out by hand.

Each reference below computes the layer's fixed parts from PyG's definition (FiLM's
``(β, γ) = film(x_i)``, GeneralConv's attention ``α``) and runs LRP through the layer's
linear maps stage by stage with the rule formulas written out densely
(``gnn_reference.dense_rule_lrp`` / ``edge_lrp``): the aggregation with the skip term as one
map, the Pass rule through element-wise activations, max aggregation as winner-take-all,
then each message's own map. Bias-free ReLU models under LRP-0 equal gradient x input of
the formulas with the fixed parts detached.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import (
    DT,
    Conn,
    _lin,
    assert_close,
    assert_conserved,
    carry,
    dense_rule_lrp,
    edge_lrp,
    lrp_explainer,
    make_graph,
    randomise,
    to_model_edges,
)
from gnn_reference import RULES as ALL_RULES
from test_model_safety import assert_unchanged, snapshot
from torch import nn

import sparse_lrp
from sparse_lrp import Epsilon

N, F, H, C, D, P = 12, 4, 5, 3, 2, 3
EI = make_graph(N, extra=14, seed=5)  # self-loops, an isolated node, multi-edges, directed edges
E = EI.shape[1]
RULES = {"lrp0": lambda: Epsilon(0.0), **ALL_RULES}
TIGHT = dict(atol=1e-10, rtol=1e-9)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(21)
    x = torch.randn(N, F, generator=g, dtype=DT)
    edge_type = torch.randint(0, 3, (E,), generator=g)  # (type 2: no relation of a 2-relation layer)
    return x, edge_type, torch.randn(E, D, generator=g, dtype=DT), torch.randn(N, P, generator=g, dtype=DT)


def _conserved(res) -> None:
    assert_conserved(res, rel=1e-8, abs=1e-9)


# -- shared stages, written out -----------------------------------------------------------
def per_row_lrp(x, W, b, R, rule):
    """LRP through ``z_r = W_r x_r + b_r``, one dense map per row (``W [rows, out, in]``)."""
    return torch.cat([dense_rule_lrp(x[r : r + 1], W[r], R[r : r + 1], rule, b[r : r + 1])[0] for r in range(len(x))])


def winners(msg, rows, n_rows):
    """``(best [n_rows, C], share [E, C])``: the max per row and channel, and each message's
    share of it (1, or 1/k among k ties; 0 for the others)."""
    idx = rows[:, None].expand_as(msg)
    best = msg.new_zeros(n_rows, msg.shape[1]).scatter_reduce(0, idx, msg, "amax", include_self=False)
    won = (msg == best[rows]).to(DT)
    return best, won / torch.zeros_like(best).index_add(0, rows, won)[rows]


def aggregate_lrp(msg, dst, group, groups, n, w, skip, R, rule, kind, bias=None, scale=1.0):
    """The aggregation ``out_i = scale Σ_g aggr_{e: dst=i, group=g} w_e msg_e + skip_i + bias``
    and LRP through it: ``(out, R_msg [E, C], R_skip [N, C])``. Sums are one map with the
    skip term; max selects per (node, group), then one map sums the groups and the skip."""
    e = torch.arange(msg.shape[0])
    loops = Conn(torch.arange(n), torch.arange(n), torch.ones(n, dtype=DT), skip)
    if kind in ("add", "mean"):
        if kind == "mean":
            key = dst * groups + group
            w = w / torch.bincount(key, minlength=n * groups).clamp(min=1).to(DT)[key]
        branches = [Conn(e, dst, scale * w, msg), loops]
        out = sum(
            torch.zeros(n, msg.shape[1], dtype=DT).index_add(0, b.dst, b.w[:, None] * b.x[b.src]) for b in branches
        )
        out = out + (0 if bias is None else bias)
        R = torch.where(out == 0, 0.0, R)
        (r_msg, _), (r_skip, _) = edge_lrp(branches, R, rule, n, bias)
        return out, r_msg, r_skip
    rows = dst * groups + group
    best, share = winners(w[:, None] * msg, rows, n * groups)
    best = best.view(n, groups, -1)
    ar = torch.arange(n)
    branches = [Conn(ar, ar, torch.full((n,), scale, dtype=DT), best[:, g]) for g in range(groups)] + [loops]
    out = scale * best.sum(1) + skip + (0 if bias is None else bias)
    R = torch.where(out == 0, 0.0, R)
    results = edge_lrp(branches, R, rule, n, bias)
    r_best = torch.stack([carry(r, best[:, g]) for g, (r, _) in enumerate(results[:-1])], 1)
    return out, share * r_best.reshape(n * groups, -1)[rows], results[-1][0]


# -- FiLMConv ------------------------------------------------------------------------------
def film_reference(m, x, ei, edge_type, R, rule):
    """FiLMConv with ``(β, γ)`` detached, and LRP through it: ``(out, R_x, R_edge)``."""
    n, c, num_rel = x.shape[0], m.out_channels, m.num_relations
    keep = torch.ones(ei.shape[1], dtype=torch.bool) if num_rel == 1 else edge_type < num_rel
    kept = keep.nonzero().view(-1)
    src, dst = ei[:, kept]
    rel = torch.zeros_like(src) if num_rel == 1 else edge_type[kept]
    with torch.no_grad():
        beta_s, gamma_s = m.film_skip(x).split(c, -1)
        films = [film(x).split(c, -1) for film in m.films]
        beta = torch.stack([f[0] for f in films])[rel, dst]
        gamma = torch.stack([f[1] for f in films])[rel, dst]
    lins = torch.stack([lin.weight.detach() for lin in m.lins])
    W_msg = gamma[:, :, None] * lins[rel]  # [E, out, in]: diag(γ_r,i) W_r
    W_skip = gamma_s[:, :, None] * m.lin_skip.weight.detach()
    z_msg = torch.einsum("eoi,ei->eo", W_msg, x[src]) + beta
    z_skip = torch.einsum("noi,ni->no", W_skip, x) + beta_s
    act = m.act if m.act is not None else (lambda t: t)
    msg, skip = act(z_msg), act(z_skip)
    ones = torch.ones(len(src), dtype=DT)
    out, r_msg, r_skip = aggregate_lrp(msg, dst, rel, num_rel, n, ones, skip, R, rule, m.aggr)
    # (the edges' relevance is the messages' at the aggregation; what a rule gives a message the
    # activation made 0 is lost there, and the Pass rule carries the rest to the pre-activations)
    edge = to_model_edges(r_msg.sum(1), kept, ei.shape[1])
    r_msg, r_skip = carry(r_msg, msg), carry(r_skip, skip)
    r_x = per_row_lrp(x, W_skip, beta_s, r_skip, rule)
    r_x = r_x.index_add(0, src, per_row_lrp(x[src], W_msg, beta, r_msg, rule))
    return out, r_x, edge


FILM_VARIANTS = {
    "one_relation_mean": dict(),
    "two_relations_mean": dict(num_relations=2),
    "two_relations_add": dict(num_relations=2, aggr="add"),
    "three_relations_max": dict(num_relations=3, aggr="max"),
    "no_act": dict(act=None),
    "tanh": dict(num_relations=2, act=nn.Tanh()),  # (the Pass rule: no gradient x input)
}


def _film(variant, seed=0):
    torch.manual_seed(seed)
    return randomise(gnn.FiLMConv(F, C, **FILM_VARIANTS[variant]).double(), seed=seed + 1, scale=0.6).eval()


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(FILM_VARIANTS))
def test_film_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    x, edge_type, _, _ = inputs
    m = _film(variant)
    rule = RULES[rule_name]()
    out = m(x, EI, edge_type).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(9), dtype=DT) + 0.1
    ref_out, ref_x, ref_edge = film_reference(m, x, EI, edge_type, R, rule)
    assert_close(ref_out, out)  # (the reference is the layer)
    res = sparse_lrp.explain(m, x, EI, target=R, composite=rule, edge_type=edge_type)
    assert_close(res.node_feat, ref_x, **TIGHT)
    assert_close(res.edge, ref_edge, **TIGHT)
    _conserved(res)
    if FILM_VARIANTS[variant].get("num_relations") == 2:  # (type-2 edges send nothing)
        assert torch.all(res.edge[edge_type >= 2] == 0) and res.edge[edge_type < 2].abs().sum() > 0


def _ends(h):
    """``(source, target)`` features: a bipartite pair, or one tensor for both."""
    return h if isinstance(h, tuple) else (h, h)


def film_dense(m, h, ei, edge_type):
    """FiLMConv's forward with ``(β, γ)`` detached (for gradient x input)."""
    h_src, h = _ends(h)
    c, n = m.out_channels, h.shape[0]
    act = m.act if m.act is not None else (lambda t: t)
    beta_s, gamma_s = (t.detach() for t in m.film_skip(h).split(c, -1))
    out = act(gamma_s * (h @ m.lin_skip.weight.T) + beta_s)
    for r, (lin, film) in enumerate(zip(m.lins, m.films)):
        e = ei if m.num_relations == 1 else ei[:, edge_type == r]
        beta, gamma = (t.detach() for t in film(h).split(c, -1))
        msg = act(gamma[e[1]] * (h_src @ lin.weight.T)[e[0]] + beta[e[1]])
        if m.aggr == "max":
            idx = e[1][:, None].expand_as(msg)
            agg = msg.new_zeros(n, c).scatter_reduce(0, idx, msg, "amax", include_self=False)
        else:
            agg = torch.zeros(n, c, dtype=DT).index_add(0, e[1], msg)
            if m.aggr == "mean":
                agg = agg / torch.bincount(e[1], minlength=n).clamp(min=1).to(DT)[:, None]
        out = out + agg
    return out


class FiLMNet(nn.Module):
    """``head(conv2(conv1(pre(x))))`` with the FiLM shifts β zeroed (each layer's act inside it)."""

    def __init__(self, **kw):
        super().__init__()
        self.pre = nn.Linear(F, H, bias=False)
        self.conv1, self.conv2 = gnn.FiLMConv(H, H, **kw), gnn.FiLMConv(H, H, **kw)
        self.head = nn.Linear(H, C, bias=False)
        with torch.no_grad():  # (β = 0: no bias anywhere; γ still depends on x)
            for conv in (self.conv1, self.conv2):
                for film in [*conv.films, conv.film_skip]:
                    film.weight[:H] = 0.0
                    if film.bias is not None:
                        film.bias.zero_()

    def forward(self, x, edge_index, edge_type=None, dense=False):
        h = self.pre(x)
        for conv in (self.conv1, self.conv2):
            h = film_dense(conv, h, edge_index, edge_type) if dense else conv(h, edge_index, edge_type)
        return self.head(h)


@pytest.mark.parametrize("variant", [v for v in FILM_VARIANTS if v != "tanh"])
def test_film_lrp0_is_gradient_x_input_with_the_modulation_detached(variant, inputs):
    x, edge_type, _, _ = inputs
    torch.manual_seed(3)
    model = FiLMNet(**FILM_VARIANTS[variant]).double().eval()
    assert_close(model(x, EI, edge_type, dense=True), model(x, EI, edge_type))
    for index, target in [(2, 0), (9, 2)]:
        res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=Epsilon(0.0), edge_type=edge_type)
        xg = x.clone().requires_grad_(True)
        model(xg, EI, edge_type, dense=True)[index, target].backward()
        assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
        assert abs(res.conservation["absorbed"]) < 1e-12


# -- GeneralConv -----------------------------------------------------------------------------
def general_attention(m, x, ei, ea):
    """GeneralConv's attention from its definition: ``softmax_i(leaky_relu(score, 0.2))`` with the
    additive score ``<m_ji, a>`` or the dot product ``<m_ij, m_ji> / sqrt(C)`` (m_ij: the message
    with source and target swapped)."""
    heads, c = m.heads, m.out_channels

    def message(xj, xi):
        out = _lin(xj, m.lin_msg)
        if not m.directed_msg:
            out = out + _lin(xi, m.lin_msg_i)
        if ea is not None:
            out = out + _lin(ea, m.lin_edge)
        return out.view(-1, heads, c)

    x_src, x = _ends(x)
    with torch.no_grad():
        m_ji = message(x_src[ei[0]], x[ei[1]])
        if m.attention_type == "dot_product":
            # (sqrt(C) as the layer's buffer holds it: computed in float32, then cast)
            score = (message(x[ei[1]], x_src[ei[0]]) * m_ji).sum(-1) / m.scaler
        else:
            score = (m_ji * m.att_msg).sum(-1)
        score = torch.where(score > 0, score, 0.2 * score)
        w = (score - score.max()).exp()
        return w / torch.zeros(x.shape[0], heads, dtype=DT).index_add(0, ei[1], w)[ei[1]]


def general_reference(m, x, ei, ea, R, rule):
    """GeneralConv with ``α`` detached, and LRP through it: ``(out, R_x, R_edge, R_edge_attr)``."""
    n, heads, c = x.shape[0], m.heads, m.out_channels
    src, dst = ei
    num_edges = ei.shape[1]
    a = x @ m.lin_msg.weight.T + m.lin_msg.bias
    parts = [a[src]]
    if not m.directed_msg:
        a_i = x @ m.lin_msg_i.weight.T + m.lin_msg_i.bias
        parts.append(a_i[dst])
    if ea is not None:
        parts.append(ea @ m.lin_edge.weight.T + m.lin_edge.bias)
    msg = sum(parts)
    alpha = general_attention(m, x, ei, ea) if m.attention else torch.ones(num_edges, heads, dtype=DT)
    identity = isinstance(m.lin_self, nn.Identity)
    root = x if identity else x @ m.lin_self.weight.T
    bias = None if identity or m.lin_self.bias is None else m.lin_self.bias.detach()
    group = torch.arange(heads).repeat(num_edges)
    kind = m.aggr
    out, r_msg, r_root = aggregate_lrp(
        msg.reshape(-1, c), dst.repeat_interleave(heads), group, heads, n, alpha.reshape(-1), root, R, rule, kind,
        bias, scale=1.0 / heads,
    )  # fmt: skip
    r_msg = r_msg.reshape(num_edges, heads * c)
    edge = r_msg.sum(1)
    # The message's summands split its relevance in proportion (a sum in the layer's code).
    ratio = torch.where(msg == 0, 0.0, r_msg / torch.where(msg == 0, 1.0, msg))
    r_a = torch.zeros_like(a).index_add(0, src, parts[0] * ratio)
    r_x, _ = dense_rule_lrp(x, m.lin_msg.weight.detach(), carry(r_a, a), rule, m.lin_msg.bias.detach())
    if not m.directed_msg:
        r_ai = torch.zeros_like(a_i).index_add(0, dst, parts[1] * ratio)
        r_x = r_x + dense_rule_lrp(x, m.lin_msg_i.weight.detach(), carry(r_ai, a_i), rule, m.lin_msg_i.bias.detach())[0]
    r_ea = None
    if ea is not None:
        e_part = parts[-1]
        r_ea, _ = dense_rule_lrp(ea, m.lin_edge.weight.detach(), e_part * ratio, rule, m.lin_edge.bias.detach())
    r_root = carry(r_root, root)
    r_x = r_x + (r_root if identity else dense_rule_lrp(x, m.lin_self.weight.detach(), r_root, rule)[0])
    if m.normalize_l2:
        out = out / out.norm(dim=-1, keepdim=True)
    return out, r_x, edge, r_ea


GENERAL_VARIANTS = {
    "plain": dict(),  # (add, one head, identity skip: as many input as output channels)
    "attention_heads_mean": dict(heads=2, attention=True, aggr="mean", skip_linear=True, directed_msg=False),
    "edges_dot_product": dict(heads=3, attention=True, attention_type="dot_product", in_edge_channels=D),
    "max_l2": dict(heads=2, attention=True, aggr="max", skip_linear=True, l2_normalize=True, in_edge_channels=D),
}


def _general(variant, seed=0, out=F):
    torch.manual_seed(seed)
    m = gnn.GeneralConv(F, out, **GENERAL_VARIANTS[variant]).double()
    return randomise(m, seed=seed + 1, scale=0.6).eval()


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(GENERAL_VARIANTS))
def test_general_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    x, _, ea, _ = inputs
    m = _general(variant)
    ea = ea if m.in_edge_channels is not None else None
    rule = RULES[rule_name]()
    out = m(x, EI, ea).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(9), dtype=DT) + 0.1
    ref_out, ref_x, ref_edge, ref_ea = general_reference(m, x, EI, ea, R, rule)
    assert_close(ref_out, out)
    res = sparse_lrp.explain(m, x, EI, target=R, composite=rule, **({} if ea is None else {"edge_attr": ea}))
    assert_close(res.node_feat, ref_x, **TIGHT)
    assert_close(res.edge, ref_edge, **TIGHT)
    if ea is not None:
        assert_close(res.edge_attr, ref_ea, **TIGHT)
    _conserved(res)


def general_dense(m, h, ei, ea):
    """GeneralConv's forward with the attention detached and bias-free Linears."""
    h_src, h = _ends(h)
    n, heads, c = h.shape[0], m.heads, m.out_channels
    msg = (h_src @ m.lin_msg.weight.T)[ei[0]]
    if not m.directed_msg:
        msg = msg + (h @ m.lin_msg_i.weight.T)[ei[1]]
    if ea is not None:
        msg = msg + ea @ m.lin_edge.weight.T
    msg = msg.view(-1, heads, c)
    if m.attention:
        fixed = general_attention(m, (h_src.detach(), h.detach()), ei, None if ea is None else ea.detach())
        msg = msg * fixed[:, :, None]
    if m.aggr == "max":
        idx = ei[1][:, None, None].expand_as(msg)
        agg = msg.new_zeros(n, heads, c).scatter_reduce(0, idx, msg, "amax", include_self=False)
    else:
        agg = torch.zeros(n, heads, c, dtype=DT).index_add(0, ei[1], msg)
        if m.aggr == "mean":
            agg = agg / torch.bincount(ei[1], minlength=n).clamp(min=1).to(DT)[:, None, None]
    out = agg.mean(1) + m.lin_self(h)
    return out / out.detach().norm(dim=-1, keepdim=True) if m.normalize_l2 else out


class GeneralNet(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.conv1 = gnn.GeneralConv(F, H, bias=False, **kw)
        self.conv2 = gnn.GeneralConv(H, H, bias=False, **kw)
        self.head = nn.Linear(H, C, bias=False)

    def forward(self, x, edge_index, edge_attr=None, dense=False):
        h = x
        for conv in (self.conv1, self.conv2):
            h = torch.relu(general_dense(conv, h, edge_index, edge_attr) if dense else conv(h, edge_index, edge_attr))
        return self.head(h)


@pytest.mark.parametrize("variant", list(GENERAL_VARIANTS))
def test_general_lrp0_is_gradient_x_input_with_the_attention_detached(variant, inputs):
    x, _, ea, _ = inputs
    torch.manual_seed(4)
    model = GeneralNet(**GENERAL_VARIANTS[variant]).double().eval()
    ea = ea if model.conv1.in_edge_channels is not None else None
    assert_close(model(x, EI, ea, dense=True), model(x, EI, ea))
    given = {} if ea is None else {"edge_attr": ea}
    for index, target in [(2, 0), (9, 2)]:
        res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=Epsilon(0.0), **given)
        xg = x.clone().requires_grad_(True)
        eg = None if ea is None else ea.clone().requires_grad_(True)
        model(xg, EI, eg, dense=True)[index, target].backward()
        assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        total = res.node_feat.sum()
        if ea is not None:
            assert_close(res.edge_attr, (eg.grad * ea).detach(), atol=1e-12, rtol=1e-9)
            total = total + res.edge_attr.sum()
        assert total.item() == pytest.approx(res.output.item(), abs=1e-12)


class Bipartite(nn.Module):
    """One layer on the pair ``(x, relu(pre(x)))``: messages from ``x``, the target side
    (FiLM's modulation and skip term, GeneralConv's ``x_i`` terms and skip) from the other."""

    def __init__(self, conv):
        super().__init__()
        self.pre, self.conv, self.head = nn.Linear(F, F, bias=False), conv, nn.Linear(H, C, bias=False)

    def forward(self, x, edge_index, edge_type=None, dense=False):
        pair = (x, torch.relu(self.pre(x)))
        if isinstance(self.conv, gnn.FiLMConv):
            h = film_dense(self.conv, pair, edge_index, edge_type) if dense else self.conv(pair, edge_index, edge_type)
        else:
            h = general_dense(self.conv, pair, edge_index, None) if dense else self.conv(pair, edge_index)
        return self.head(h)


@pytest.mark.parametrize("kind", ["film", "general"])
def test_bipartite_pairs_lrp0_is_gradient_x_input(kind, inputs):
    x, edge_type, _, _ = inputs
    torch.manual_seed(8)
    if kind == "film":
        conv = gnn.FiLMConv(F, H, num_relations=2)
        with torch.no_grad():  # (β = 0, as in FiLMNet)
            for film in [*conv.films, conv.film_skip]:
                film.weight[:H] = 0.0
                if film.bias is not None:
                    film.bias.zero_()
    else:
        conv = gnn.GeneralConv(F, H, bias=False, heads=2, attention=True, directed_msg=False, aggr="mean")
    model = Bipartite(conv).double().eval()
    assert_close(model(x, EI, edge_type, dense=True), model(x, EI, edge_type))
    res = sparse_lrp.explain(model, x, EI, index=6, target=1, composite=Epsilon(0.0), edge_type=edge_type)
    xg = x.clone().requires_grad_(True)
    model(xg, EI, edge_type, dense=True)[6, 1].backward()
    assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
    assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)


# -- PointNetConv ------------------------------------------------------------------------------
class Point(nn.Module):
    """A PointNetConv called with ``pos``, a model input of its own (or, ``from_x``, the
    leading columns of ``x``, whose remaining columns are the features)."""

    def __init__(self, conv, from_x=False):
        super().__init__()
        self.conv, self.from_x = conv, from_x

    def forward(self, x, edge_index, pos=None):
        if self.from_x:
            return self.conv(x[:, P:], x[:, :P], edge_index)
        return self.conv(x, pos, edge_index)


def point_graph(ei, n, add_self_loops):
    """``(src, dst, ids)``: the graph the layer propagates over (its self-loops replaced by one
    per node, which are none of the model's edges: id -1)."""
    if not add_self_loops:
        return ei[0], ei[1], torch.arange(ei.shape[1])
    keep = (ei[0] != ei[1]).nonzero().view(-1)
    ar = torch.arange(n)
    return torch.cat([ei[0, keep], ar]), torch.cat([ei[1, keep], ar]), torch.cat([keep, torch.full((n,), -1)])


def point_reference(m, x, pos, ei, R, rule):
    """PointNetConv with ``local_nn = Linear, ReLU, Linear`` (and ``global_nn`` a Linear), LRP
    through it: ``(out, R_x, R_edge, absorbed)`` (absorbed: the biases' shares, and the
    share of the relative positions, constants)."""
    n = x.shape[0]
    src, dst, ids = point_graph(ei, n, m.add_self_loops)
    lin1, lin2 = m.local_nn[0], m.local_nn[2]
    h = torch.cat([x[src], pos[src] - pos[dst]], 1)
    a1 = torch.relu(h @ lin1.weight.T + lin1.bias)
    msg = a1 @ lin2.weight.T + lin2.bias
    absorbed = 0.0
    if m.aggr == "max":
        best, share = winners(msg, dst, n)
        out = best
    else:
        out = torch.zeros(n, msg.shape[1], dtype=DT).index_add(0, dst, msg)
    final = out
    if m.global_nn is not None:
        final = out @ m.global_nn.weight.T + m.global_nn.bias
        R = torch.where(final == 0, 0.0, R)
        R, ab = dense_rule_lrp(out, m.global_nn.weight.detach(), R, rule, m.global_nn.bias.detach())
        absorbed += float(ab.sum())
    R = carry(R, out)
    if m.aggr == "max":
        r_msg = share * R[dst]
    else:
        branches = [Conn(torch.arange(len(src)), dst, torch.ones(len(src), dtype=DT), msg)]
        ((r_msg, _),) = edge_lrp(branches, R, rule, n)
        absorbed += float(R.sum() - r_msg.sum())  # (the sum's own stabiliser, z+ rows without positive input)
    r_a1, ab = dense_rule_lrp(a1, lin2.weight.detach(), carry(r_msg, msg), rule, lin2.bias.detach())
    absorbed += float(ab.sum())
    r_h, ab = dense_rule_lrp(h, lin1.weight.detach(), carry(r_a1, a1), rule, lin1.bias.detach())
    absorbed += float(ab.sum()) + float(r_h[:, F:].sum())  # (the relative positions: constants)
    r_x = torch.zeros_like(x).index_add(0, src, r_h[:, :F])
    keep = ids >= 0
    edge = torch.zeros(ei.shape[1], dtype=DT).index_add(0, ids[keep], r_msg.sum(1)[keep])
    return final, r_x, edge, absorbed


POINT_VARIANTS = {
    "max": dict(),
    "add_global_no_loops": dict(aggr="add", add_self_loops=False, global_nn=True),
}


def _point_conv(variant, seed=0, f_in=F, bias=True):
    torch.manual_seed(seed)
    kw = dict(POINT_VARIANTS[variant])
    local = nn.Sequential(nn.Linear(f_in + P, H, bias=bias), nn.ReLU(), nn.Linear(H, C, bias=bias))
    glob = nn.Linear(C, C, bias=bias) if kw.pop("global_nn", False) else None
    return gnn.PointNetConv(local, glob, **kw).double()


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(POINT_VARIANTS))
def test_pointnet_every_rule_matches_the_layer_written_out(variant, rule_name, inputs):
    x, _, _, pos = inputs
    m = randomise(_point_conv(variant), seed=2, scale=0.6).eval()
    rule = RULES[rule_name]()
    out = m(x, pos, EI).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(9), dtype=DT) + 0.1
    ref_out, ref_x, ref_edge, ref_absorbed = point_reference(m, x, pos, EI, R, rule)
    assert_close(ref_out, out)
    res = sparse_lrp.explain(Point(m), x, EI, target=R, composite=rule, pos=pos)
    assert_close(res.node_feat, ref_x, **TIGHT)
    assert_close(res.edge, ref_edge, **TIGHT)
    _conserved(res)
    if res.conservation["lost"] == 0:  # (the constant positions' share is reported absorbed)
        assert res.conservation["absorbed"] == pytest.approx(ref_absorbed, abs=1e-9)
    if m.add_self_loops:  # (the layer replaces its input's loops by its own: none of the model's edges)
        assert torch.all(res.edge[EI[0] == EI[1]] == 0) and res.edge.abs().sum() > 0


@pytest.mark.parametrize("variant", list(POINT_VARIANTS))
def test_pointnet_positions_from_x_get_relevance_lrp0_is_gradient_x_input(variant, inputs):
    """``pos`` the leading columns of ``x``: relevance reaches the positions through
    ``pos_j - pos_i`` (linear). Nothing is held fixed (max is a selection), so on a bias-free
    model LRP-0 is the gradient x input of the model itself, summing to the logit."""
    x, _, _, pos = inputs
    model = Point(_point_conv(variant, seed=5, bias=False), from_x=True).eval()
    xp = torch.cat([pos, x], 1)
    on_positions = 0.0
    for index, target in [(2, 0), (5, 1), (8, 2)]:
        res = sparse_lrp.explain(model, xp, EI, index=index, target=target, composite=Epsilon(0.0))
        xg = xp.clone().requires_grad_(True)
        model(xg, EI)[index, target].backward()
        assert_close(res.node_feat, (xg.grad * xp).detach(), atol=1e-12, rtol=1e-9)
        on_positions += float(res.node_feat[:, :P].abs().sum())
        assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
        assert abs(res.conservation["absorbed"]) < 1e-12
    assert on_positions > 0  # (a self-loop's message reads pos_i - pos_i: no position relevance)


def test_pointnet_on_positions_alone():
    """``x=None``: the messages are ``local_nn(pos_j - pos_i)`` alone, ``pos`` the model's input."""

    class OnPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _point_conv("max", seed=6, f_in=0, bias=False)

        def forward(self, pos, edge_index):
            return self.conv(None, pos, edge_index)

    pos = torch.randn(N, P, generator=torch.Generator().manual_seed(2), dtype=DT)
    model = OnPositions().eval()
    res = sparse_lrp.explain(model, pos, EI, index=4, target=2, composite=Epsilon(0.0))
    pg = pos.clone().requires_grad_(True)
    model(pg, EI)[4, 2].backward()
    assert_close(res.node_feat, (pg.grad * pos).detach(), atol=1e-12, rtol=1e-9)


# -- whole models: explain, PyG's Explainer, subgraphs, batched targets ---------------------------
class Mixed(nn.Module):
    """FiLMConv, GeneralConv and PointNetConv in one model's own forward, with dropout."""

    def __init__(self):
        super().__init__()
        self.film = gnn.FiLMConv(F, H, num_relations=2)
        self.general = gnn.GeneralConv(H, H, in_edge_channels=D, heads=2, attention=True, aggr="mean")
        local = nn.Sequential(nn.Linear(H + P, H), nn.ReLU(), nn.Dropout(0.3), nn.Linear(H, H))
        self.point = gnn.PointNetConv(local, nn.Linear(H, C))

    def forward(self, x, edge_index, edge_type, edge_attr, pos):
        h = self.film(x, edge_index, edge_type)
        h = torch.relu(self.general(h, edge_index, edge_attr))
        return self.point(h, pos, edge_index)


def _mixed(seed=7):
    torch.manual_seed(seed)
    return randomise(Mixed().double(), seed=seed, scale=0.5).eval()


def test_whole_model_through_explain_and_pyg_explainer(inputs):
    x, edge_type, ea, pos = inputs
    model = _mixed()
    kw = dict(edge_type=edge_type, edge_attr=ea, pos=pos)
    model.train()
    model.general.lin_msg.weight.requires_grad_(False)
    before = snapshot(model)
    explainer = lrp_explainer(model)
    expl = explainer(x, EI, index=3, **kw)
    y = model.eval()(x, EI, **kw).detach()
    model.train()
    res = sparse_lrp.explain(model, x, EI, index=3, target=int(y[3].argmax()), composite="zplus", **kw)
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert expl.node_mask.abs().sum() > 0 and expl.edge_mask.abs().sum() > 0
    assert res.output.item() == pytest.approx(y[3].max().item())  # (explained in eval mode: no dropout)
    assert set(res.layers) == {"film", "general", "point", "point.global_nn"}  # (local_nn: over edge rows)
    for preset in ("epsilon", "zplus", "gamma"):
        _conserved(sparse_lrp.explain(model, x, EI, index=[1, 6], composite=preset, **kw))
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("preset", ["epsilon", "zplus", "gamma"])
def test_node_targets_on_subgraphs_equal_the_whole_graph(preset, inputs, monkeypatch):
    """Every layer declares it reads its targets' in-edges only (``subgraph=()``): a single
    node target on its k-hop subgraph, and batched targets on their union, equal the pass
    over the whole graph."""
    x, edge_type, ea, pos = inputs
    model = _mixed()
    kw = dict(edge_type=edge_type, edge_attr=ea, pos=pos, composite=preset)
    explain_module = importlib.import_module("sparse_lrp.explain")
    cut, unions = explain_module._khop_union, []
    monkeypatch.setattr(explain_module, "_khop_union", lambda *a, **k: unions.append(1) or cut(*a, **k))
    index = [0, 2, 5, 9]
    batched = sparse_lrp.explain(model, x, EI, index=index, **kw)
    for row, i in enumerate(index):
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)  # (always the subgraph)
        unions.clear()
        single = sparse_lrp.explain(model, x, EI, index=i, **kw)
        assert unions, "the single target ran on its subgraph"
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", 10**9)
        unions.clear()
        whole = sparse_lrp.explain(model, x, EI, index=i, **kw)
        assert not unions
        for got in (batched.node_feat[row], single.node_feat):
            assert_close(got, whole.node_feat, atol=1e-12, rtol=1e-9)
        for got in (batched.edge[row], single.edge):
            assert_close(got, whole.edge, atol=1e-12, rtol=1e-9)
        assert_close(single.edge_attr, whole.edge_attr, atol=1e-12, rtol=1e-9)
        assert whole.node_feat.abs().sum() > 0
        _conserved(single)


class OneGeneral(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.GeneralConv(4, 3, heads=2)

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


@pytest.mark.parametrize("rule", ["epsilon", "wsquare"])
def test_message_rows_as_many_as_the_subgraphs_nodes_are_not_cut(rule, monkeypatch):
    """Target 0's subgraph holds nodes 0, 1, 2 and (with its ghost node) 4 rows, and its two
    edges carry 2 x 2 heads = 4 message rows: the message map's rows were taken for the
    subgraph's nodes and cut, so edge 2 -> 0 got -0.404 where the whole graph gives -0.178
    (and under a non-proportional rule the node relevance moved too)."""
    explain_module = importlib.import_module("sparse_lrp.explain")
    composite = sparse_lrp.Composite(Epsilon(0.0), by_type={gnn.GeneralConv: sparse_lrp.WSquare()})
    composite = "epsilon" if rule == "epsilon" else composite
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=DT)
    ei = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 5]])
    torch.manual_seed(0)
    model = randomise(OneGeneral().double()).eval()
    results = []
    for rows in (10**9, None):  # the whole graph, then the subgraph
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", rows)
        results.append(sparse_lrp.explain(model, x, ei, index=0, target=0, composite=composite))
    whole, sub = results
    assert_close(sub.edge, whole.edge, atol=1e-12, rtol=1e-9)
    assert_close(sub.node, whole.node, atol=1e-12, rtol=1e-9)
    assert whole.edge[:2].abs().min() > 0


class SizedGeneral(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.conv = gnn.GeneralConv(4, 3)
        self.size = size

    def forward(self, x, edge_index):
        return self.conv(x, edge_index, size=self.size or (x.shape[0], x.shape[0]))


@pytest.mark.parametrize("size", [None, (10, 10)])
def test_general_conv_with_its_size_given_runs_on_subgraphs_too(size):
    """``size=(N, N)`` given as the graph's node count (a constant) was refused on node
    targets' subgraphs, checked against the subgraph's: batched targets equal the
    whole-graph calls (with the size read from x as well)."""
    g = torch.Generator().manual_seed(2)
    x, ei = torch.randn(10, 4, generator=g, dtype=DT), torch.randint(0, 10, (2, 30), generator=g)
    model = randomise(SizedGeneral(size).double()).eval()
    many = sparse_lrp.explain(model, x, ei, index=[2, 5], target=0, composite="zplus")
    for row, i in enumerate([2, 5]):
        one = sparse_lrp.explain(model, x, ei, index=i, target=0, composite="zplus")
        assert_close(many.node_feat[row], one.node_feat, atol=1e-12, rtol=1e-9)


class Two(nn.Module):
    """``conv2(relu(conv1(x)))`` on a large graph (PointNetConv's positions: x's first columns)."""

    def __init__(self, make):
        super().__init__()
        self.conv1, self.conv2 = make(6, 8), make(8, 3)

    def forward(self, x, edge_index):
        h = x
        for conv in (self.conv1, self.conv2):
            if isinstance(conv, gnn.PointNetConv):
                h = conv(h, x[:, :P], edge_index)
            else:
                h = conv(h, edge_index)
            h = torch.relu(h) if conv is self.conv1 else h
        return h


CUT_LAYERS = {
    "film": lambda i, o: gnn.FiLMConv(i, o),
    "general": lambda i, o: gnn.GeneralConv(i, o, heads=2, attention=True, aggr="mean"),
    "pointnet": lambda i, o: gnn.PointNetConv(nn.Sequential(nn.Linear(i + P, o), nn.ReLU(), nn.Linear(o, o))),
}


@pytest.mark.parametrize("name", list(CUT_LAYERS))
def test_maps_cut_to_rows_that_reach_a_target(name, monkeypatch):
    """On a large graph the maps (FiLM's per-node modulated skip map too) run on the rows within
    reach of the targets only: results equal the whole-graph pass."""
    from test_restricted import _check_cut_equals_whole

    g = torch.Generator().manual_seed(1)
    graph = torch.randn(1000, 6, generator=g, dtype=DT), torch.randint(0, 1000, (2, 10000), generator=g)
    torch.manual_seed(4)
    model = Two(CUT_LAYERS[name]).double().eval()
    _check_cut_equals_whole(model, Epsilon(1e-3), [5, 17], graph, monkeypatch, cut=name != "pointnet")


# -- refusals -------------------------------------------------------------------------------
class Refused(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.film = gnn.FiLMConv(F, C, num_relations=2)
        self.general = gnn.GeneralConv(F, C)
        self.point = _point_conv("max")

    def forward(self, x, edge_index, edge_attr=None, pos=None):
        if self.how == "film without edge_type":
            return self.film(x, edge_index)
        if self.how == "general edge_attr without in_edge_channels":
            return self.general(x, edge_index, edge_attr)
        if self.how == "general size":
            return self.general(x, edge_index, size=(x.shape[0], x.shape[0] - 1))
        if self.how == "general sparse":
            from torch_geometric.utils import to_torch_coo_tensor

            return self.general(x, to_torch_coo_tensor(edge_index, size=x.shape[0]))
        if self.how == "point without x or input positions":
            return self.point(None, pos, edge_index)  # (pos: a constant, not the model's x)
        raise AssertionError(self.how)


@pytest.mark.parametrize(
    "how,match",
    [
        ("film without edge_type", r"film \(FiLMConv\).*num_relations=2 needs edge_type"),
        ("general edge_attr without in_edge_channels", r"general \(GeneralConv\).*edge_attr.*in_edge_channels"),
        ("general size", r"general \(GeneralConv\).*size=\(12, 11\)"),
        ("general sparse", r"general \(GeneralConv\).*SparseTensor"),
        ("point without x or input positions", r"point \(PointNetConv\).*x=None and a constant pos"),
    ],
)
def test_what_cannot_be_explained_is_refused(how, match, inputs):
    x, _, ea, pos = inputs
    with pytest.raises(ValueError, match=match):
        sparse_lrp.explain(Refused(how).double().eval(), x, EI, index=0, edge_attr=ea, pos=pos)


def test_unsupported_aggregation_is_refused(inputs):
    x, edge_type, _, _ = inputs
    conv = gnn.FiLMConv(F, C, num_relations=2, aggr="std").double().eval()
    with pytest.raises(ValueError, match=r"FiLMConv.*aggr='std' is not supported"):
        sparse_lrp.explain(conv, x, EI, index=0, edge_type=edge_type)
