"""ResGatedGraphConv, LEConv, ClusterGCNConv, GCN2Conv, GENConv, EdgeConv against their formulas.

Each reference below is the layer's documented formula as dense tensors (gates held
fixed, read from the layer's own Linears on the forward's values). The models are
bias-free ReLU networks, so LRP-0 equals gradient x input of the references (node and
edge features), relevance is conserved, and batched node targets equal single calls.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from torch import nn
from torch.testing import assert_close

import sparse_lrp
from sparse_lrp.rules import Epsilon

DT = torch.float64
N, F, H, D = 10, 5, 6, 3


@pytest.fixture
def graph():
    g = torch.Generator().manual_seed(0)
    src, dst = torch.randint(0, N, (2, 36), generator=g)
    keep = src != dst  # (no self-loops: the references add their own)
    ei = torch.stack([src[keep], dst[keep]])
    e = ei.shape[1]
    return (
        torch.randn(N, F, dtype=DT, generator=g),
        ei,
        torch.rand(e, dtype=DT, generator=g) + 0.5,
        torch.randn(e, D, dtype=DT, generator=g),
    )


def adjacency(ei, w, n=N):
    """``A[j, i] = sum of w over the edges i -> j``."""
    return torch.zeros(n, n, dtype=DT).index_put((ei[1], ei[0]), w, accumulate=True)


# -- the layers written out -----------------------------------------------------------
def res_gated(m, x, ei, ea):
    src, dst = ei
    with torch.no_grad():  # (the gates: constants)
        if m.edge_dim is None:
            gate = torch.sigmoid(m.lin_key(x)[dst] + m.lin_query(x)[src])
        else:
            gate = torch.sigmoid(m.lin_key(torch.cat([x[dst], ea], 1)) + m.lin_query(torch.cat([x[src], ea], 1)))
    if m.edge_dim is None:
        v = x[src] @ m.lin_value.weight.T
    else:
        v = torch.cat([x[src], ea], 1) @ m.lin_value.weight.T
    out = torch.zeros(x.shape[0], v.shape[1], dtype=DT).index_add(0, dst, gate * v)
    return out + x @ m.lin_skip.weight.T


def le(m, x, ei, ew):
    a = adjacency(ei, ew)
    return a @ (x @ m.lin1.weight.T) - a.sum(1, keepdim=True) * (x @ m.lin2.weight.T) + x @ m.lin3.weight.T


def cluster(m, x, ei):
    counts = adjacency(ei, torch.ones(ei.shape[1], dtype=DT)) + torch.eye(N, dtype=DT)
    # Each row: its target's in-edges, a self-loop among them, by the inverse in-degree; the
    # layer computes these weights in float32 (torch's default dtype), and so does this.
    inv = 1.0 / counts.sum(1).float()
    a = counts * inv.double()[:, None]
    a = a + torch.diag((inv + m.diag_lambda * inv).double() - inv.double())
    return (a @ x) @ m.lin_out.weight.T + x @ m.lin_root.weight.T


def gcn2(m, x, x0, ei, ew):
    a = adjacency(ei, ew) + torch.eye(N, dtype=DT)
    d = a.sum(1).rsqrt()
    a = d[:, None] * a * d[None, :]
    h = (1 - m.alpha) * (a @ x)
    if m.weight2 is None:
        h = h + m.alpha * x0
        return (1 - m.beta) * h + m.beta * h @ m.weight1
    x0 = m.alpha * x0
    return (1 - m.beta) * h + m.beta * h @ m.weight1 + (1 - m.beta) * x0 + m.beta * x0 @ m.weight2


def gen(m, x, ei, ea):
    """GENConv: softmax-weighted messages ``ReLU(x_j + e_ji) + ε`` (weights as constants)."""
    src = x @ m.lin_src.weight.T if hasattr(m, "lin_src") else x
    msg = src[ei[0]]
    if ea is not None:
        msg = msg + (ea @ m.lin_edge.weight.T if hasattr(m, "lin_edge") else ea)
    msg = torch.relu(msg) + m.eps
    scores = (msg * m.aggr_module.t).detach()
    w = (scores - scores.max()).exp()
    alpha = w / torch.zeros(x.shape[0], w.shape[1], dtype=DT).index_add(0, ei[1], w)[ei[1]]
    out = torch.zeros(x.shape[0], msg.shape[1], dtype=DT).index_add(0, ei[1], alpha * msg)
    if hasattr(m, "msg_norm"):  # (its norms: constants too)
        out = out * (x.norm(dim=-1, keepdim=True) * m.msg_norm.scale / out.norm(dim=-1, keepdim=True)).detach()
    return m.mlp(out + (x @ m.lin_dst.weight.T if hasattr(m, "lin_dst") else x))


class Net(nn.Module):
    """``head(relu(conv2(relu(conv1(pre(x))))))``, each conv called as its kind needs."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.pre = nn.Linear(F, H, bias=False)
        if kind == "res_gated":
            self.conv1, self.conv2 = gnn.ResGatedGraphConv(H, H, bias=False), gnn.ResGatedGraphConv(H, H, bias=False)
        elif kind == "res_gated_edges":
            self.conv1 = gnn.ResGatedGraphConv(H, H, edge_dim=D, bias=False)
            self.conv2 = gnn.ResGatedGraphConv(H, H, edge_dim=D, bias=False)
        elif kind == "le":
            self.conv1, self.conv2 = gnn.LEConv(H, H, bias=False), gnn.LEConv(H, H, bias=False)
        elif kind == "cluster":
            self.conv1 = gnn.ClusterGCNConv(H, H, diag_lambda=0.3, bias=False)
            self.conv2 = gnn.ClusterGCNConv(H, H, bias=False)
        elif kind == "gcn2":
            self.conv1, self.conv2 = gnn.GCN2Conv(H, 0.2, 0.5, 1), gnn.GCN2Conv(H, 0.1, 0.5, 2)
        elif kind == "gcn2_separate":
            self.conv1 = gnn.GCN2Conv(H, 0.2, 0.5, 1, shared_weights=False)
            self.conv2 = gnn.GCN2Conv(H, 0.1, 0.5, 2, shared_weights=False)
        elif kind == "gen":
            self.conv1 = gnn.GENConv(H, 4)  # (softmax aggregation, t = 1; lin_src and lin_dst)
            self.conv2 = gnn.GENConv(4, H, learn_t=True, t=0.7, msg_norm=True, learn_msg_scale=True, num_layers=3)
        elif kind == "gen_edges":
            self.conv1 = gnn.GENConv(H, H, edge_dim=D, msg_norm=True)
            self.conv2 = gnn.GENConv(H, H, edge_dim=D, learn_t=True, t=2.0)
        elif kind == "edge":
            mlp = nn.Sequential(nn.Linear(2 * H, H, bias=False), nn.ReLU(), nn.Linear(H, H, bias=False))
            self.conv1 = gnn.EdgeConv(mlp)  # (max aggregation)
            self.conv2 = gnn.EdgeConv(nn.Linear(2 * H, H, bias=False), aggr="add")
        for conv in (self.conv1, self.conv2):
            for name, p in conv.named_parameters():
                if name.endswith("bias"):  # (the value Linears always have one)
                    p.data.zero_()
        self.head = nn.Linear(H, 3, bias=False)

    def layer(self, conv, h, h0, ei, ew, ea, dense: bool):
        if self.kind.startswith("res_gated"):
            attr = ea if conv.edge_dim is not None else None
            return res_gated(conv, h, ei, attr) if dense else conv(h, ei, attr)
        if self.kind.startswith("gen"):
            attr = ea if self.kind == "gen_edges" else None
            return gen(conv, h, ei, attr) if dense else conv(h, ei, attr)
        if self.kind == "edge":  # (max is a selection: autograd through the layer is the reference)
            return conv(h, ei)
        if self.kind == "le":
            return le(conv, h, ei, ew) if dense else conv(h, ei, ew)
        if self.kind == "cluster":
            return cluster(conv, h, ei) if dense else conv(h, ei)
        return gcn2(conv, h, h0, ei, ew) if dense else conv(h, h0, ei, ew)

    def forward(self, x, edge_index, edge_weight=None, edge_attr=None, dense=False):
        h0 = self.pre(x)
        h = torch.relu(self.layer(self.conv1, h0, h0, edge_index, edge_weight, edge_attr, dense))
        h = torch.relu(self.layer(self.conv2, h, h0, edge_index, edge_weight, edge_attr, dense))
        return self.head(h)


KINDS = ["res_gated", "res_gated_edges", "le", "cluster", "gcn2", "gcn2_separate", "gen", "gen_edges", "edge"]


def _inputs(kind, ew, ea):
    return {
        "edge_weight": ew if kind in ("le", "gcn2", "gcn2_separate") else None,
        "edge_attr": ea if kind in ("res_gated_edges", "gen_edges") else None,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_lrp0_is_gradient_x_input_of_the_formula(kind, graph):
    x, ei, ew, ea = graph
    torch.manual_seed(0)
    model = Net(kind).double().eval()
    kw = _inputs(kind, ew, ea)
    assert_close(model(x, ei, **kw, dense=True), model(x, ei, **kw))  # (the reference is the layer)
    given = {k: v for k, v in kw.items() if v is not None}
    for index, target in [(2, 0), (7, 2)]:
        res = sparse_lrp.explain(model, x, ei, index=index, target=target, composite=Epsilon(0.0), **given)
        xg = x.clone().requires_grad_(True)
        eg = ea.clone().requires_grad_(True)
        attr = eg if kw["edge_attr"] is not None else None
        model(xg, ei, kw["edge_weight"], attr, dense=True)[index, target].backward()
        assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        total = res.node_feat.sum()
        if kw["edge_attr"] is not None:
            assert_close(res.edge_attr, (eg.grad * ea).detach(), atol=1e-12, rtol=1e-9)
            total = total + res.edge_attr.sum()
        # (GENConv's ε, a constant in every message, absorbs its share: the report says how much)
        assert total.item() == pytest.approx(res.output.item() - res.conservation["absorbed"], abs=1e-12)
        if not kind.startswith("gen"):
            assert abs(res.conservation["absorbed"]) < 1e-12


def test_le_conv_edge_relevance_by_hand(graph):
    """One LEConv (no root term), LRP-0, output channel k: edge ``j -> i`` carries its whole
    message ``w_ji (Θ1 x_j - Θ2 x_i)_k`` into the explained node (ratio 1 at the logit)."""
    x, ei, ew, _ = graph
    torch.manual_seed(1)
    conv = gnn.LEConv(F, 3, bias=False).double().eval()
    conv.lin3.weight.data.zero_()
    res = sparse_lrp.explain(conv, x, ei, index=4, target=1, composite=Epsilon(0.0), edge_weight=ew)
    msg = ew * ((x @ conv.lin1.weight.T)[ei[0], 1] - (x @ conv.lin2.weight.T)[ei[1], 1])
    assert_close(res.edge, torch.where(ei[1] == 4, msg, 0.0).detach(), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_targets_equal_single_calls(kind, graph):
    x, ei, ew, ea = graph
    torch.manual_seed(2)
    model = Net(kind).double().eval()
    given = {k: v for k, v in _inputs(kind, ew, ea).items() if v is not None}
    for preset in ("epsilon", "zplus", "gamma"):
        batched = sparse_lrp.explain(model, x, ei, index=[0, 5, 9], composite=preset, **given)
        for row, i in enumerate([0, 5, 9]):
            single = sparse_lrp.explain(model, x, ei, index=i, composite=preset, **given)
            assert_close(batched.node_feat[row], single.node_feat, atol=1e-12, rtol=1e-9)
            assert_close(batched.edge[row], single.edge, atol=1e-12, rtol=1e-9)
            c = single.conservation
            assert c["out"] == pytest.approx(c["in"] + c["absorbed"] + c["lost"], abs=1e-10)


def test_edge_cnn_whose_mlp_shares_the_models_activation(graph):
    """PyG's EdgeCNN: its EdgeConv MLPs run over edge rows and share the model's ReLU with
    its node rows (the per-layer records once summed edge rows into node rows and failed).
    Max aggregation, biases zeroed: LRP-0 is gradient x input of the model itself."""
    x, ei, _, _ = graph
    torch.manual_seed(4)
    model = gnn.EdgeCNN(F, 8, 2, 3).double().eval()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
    res = sparse_lrp.explain(model, x, ei, index=[3, 6], target=1, composite=Epsilon(0.0))
    for row, i in enumerate([3, 6]):
        xg = x.clone().requires_grad_(True)
        model(xg, ei)[i, 1].backward()
        assert_close(res.node_feat[row], (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        assert res.layers["act"]["node"].shape == (2, N)  # (node rows only: the MLP's calls are over edges)


def test_softmax_aggregation_of_weighted_messages(graph):
    """GraphConv(aggr="softmax") with edge weights: the layer weighs each message, then takes
    softmax_j(t · w_ji x_j) per channel as its aggregation weights (held fixed here). LRP-0 is
    gradient x input of that written out, with the weights as constants."""
    x, ei, ew, _ = graph
    torch.manual_seed(6)
    conv = gnn.GraphConv(F, 3, aggr=gnn.aggr.SoftmaxAggregation(t=0.7), bias=False).double().eval()

    def ref(x_):
        msg = ew[:, None] * x_[ei[0]]
        w = (0.7 * msg).detach().exp()
        alpha = w / torch.zeros(N, F, dtype=DT).index_add(0, ei[1], w)[ei[1]]
        agg = torch.zeros(N, F, dtype=DT).index_add(0, ei[1], alpha * msg)
        return agg @ conv.lin_rel.weight.T + x_ @ conv.lin_root.weight.T

    assert_close(ref(x), conv(x, ei, ew))
    res = sparse_lrp.explain(conv, x, ei, index=5, target=2, composite=Epsilon(0.0), edge_weight=ew)
    xg = x.clone().requires_grad_(True)
    ref(xg)[5, 2].backward()
    assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)


def gcn_adjacency(ei, ew=None):
    """``D^-1/2 (A + I) D^-1/2`` (in-degrees, self-loops of weight 1), dense."""
    a = adjacency(ei, torch.ones(ei.shape[1], dtype=DT) if ew is None else ew) + torch.eye(N, dtype=DT)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def test_ssg_and_mixhop_conv(graph):
    """SSGConv ``Θ (α x + (1 - α)/K sum_k Â^k x)`` and MixHopConv ``concat_p Θ_p Â^p x``,
    bias-free: LRP-0 is gradient x input of the formulas written out (the layers' own
    outputs checked against them)."""
    x, ei, ew, _ = graph
    torch.manual_seed(7)
    ssg = gnn.SSGConv(F, 3, alpha=0.3, K=3, bias=False).double().eval()
    mix = gnn.MixHopConv(F, 2, powers=[0, 1, 3]).double().eval()
    a = gcn_adjacency(ei, ew)

    def ssg_ref(x_):
        hops = [x_]
        for _ in range(3):
            hops.append(a @ hops[-1])
        return (0.3 * x_ + 0.7 / 3 * sum(hops[1:])) @ ssg.lin.weight.T

    def mix_ref(x_):
        hops = [x_, a @ x_, a @ (a @ x_), a @ (a @ (a @ x_))]
        return torch.cat([hops[p] @ mix.lins[p].weight.T for p in (0, 1, 3)], -1) + mix.bias

    for layer, ref, col in ((ssg, ssg_ref, 2), (mix, mix_ref, 4)):
        assert_close(ref(x), layer(x, ei, ew))
        res = sparse_lrp.explain(layer, x, ei, index=5, target=col, composite=Epsilon(0.0), edge_weight=ew)
        xg = x.clone().requires_grad_(True)
        ref(xg)[5, col].backward()
        assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)


def test_agnn_conv_with_its_attention_fixed(graph):
    """AGNNConv: ``α = softmax_j(β cos(x_i, x_j))`` over in-edges and a self-loop, held
    fixed; two layers with a ReLU between: LRP-0 is gradient x input with α constant."""
    x, ei, _, _ = graph
    torch.manual_seed(8)
    c1, c2 = gnn.AGNNConv(requires_grad=True).double().eval(), gnn.AGNNConv(requires_grad=True).double().eval()
    with torch.no_grad():
        c1.beta.fill_(1.5)
        c2.beta.fill_(-0.7)
    loops = torch.cat([ei, torch.arange(N).expand(2, N)], 1)

    def agnn(m, h):
        xn = h.detach() / h.detach().norm(dim=-1, keepdim=True)
        s = m.beta.detach() * (xn[loops[1]] * xn[loops[0]]).sum(-1)
        w = (s - s.max()).exp()
        alpha = w / torch.zeros(N, dtype=DT).index_add(0, loops[1], w)[loops[1]]
        return adjacency(loops, alpha) @ h

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = c1, c2

        def forward(self, x_, edge_index, ref=False):
            if ref:
                return agnn(c2, torch.relu(agnn(c1, x_)))
            return self.c2(torch.relu(self.c1(x_, edge_index)), edge_index)

    model = Two().eval()
    assert_close(model(x, ei, ref=True), model(x, ei))
    res = sparse_lrp.explain(model, x, ei, index=6, target=3, composite=Epsilon(0.0))
    xg = x.clone().requires_grad_(True)
    model(xg, ei, ref=True)[6, 3].backward()
    assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)


def test_fa_conv_with_its_signed_attention_fixed(graph):
    """FAConv ``out_i = sum_j tanh(a_l x_j + a_r x_i) w_ij x_j + ε x_0,i`` (GCN weights with
    self-loops), the attention held fixed: LRP-0 is gradient x input of that written out."""
    x, ei, _, _ = graph
    torch.manual_seed(10)
    pre = nn.Linear(F, H, bias=False).double()
    conv = gnn.FAConv(H, eps=0.3).double().eval()
    loops = torch.cat([ei, torch.arange(N).expand(2, N)], 1)
    dis = torch.bincount(loops[1], minlength=N).to(DT).rsqrt()
    w = dis[loops[0]] * dis[loops[1]]

    def model(x_, edge_index=ei, ref=False):
        h0 = pre(x_)
        h = torch.relu(h0)
        if not ref:
            return conv(h, h0, edge_index)
        alpha = torch.tanh(conv.att_l(h)[loops[0]] + conv.att_r(h)[loops[1]]).squeeze(-1).detach()
        return adjacency(loops, alpha * w) @ h + 0.3 * h0

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.conv = pre, conv

        def forward(self, x_, edge_index):
            return model(x_, edge_index)

    assert_close(model(x, ref=True), model(x))
    res = sparse_lrp.explain(Wrap().eval(), x, ei, index=3, target=4, composite=Epsilon(0.0))
    xg = x.clone().requires_grad_(True)
    model(xg, ref=True)[3, 4].backward()
    assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)


def test_arma_conv(graph):
    """ARMAConv with 2 stacks of 2 steps, ``h_t = ReLU(Â h_{t-1} W_t + x V_t)`` (``Â`` GCN
    weights without self-loops), the stacks' mean: LRP-0 is gradient x input of that
    written out, and the layer's own output is it."""
    x, ei, ew, _ = graph
    torch.manual_seed(11)
    conv = gnn.ARMAConv(F, 3, num_stacks=2, num_layers=2).double().eval()
    with torch.no_grad():
        conv.bias.zero_()
    deg = adjacency(ei, ew).sum(1)
    dis = torch.where(deg > 0, deg.rsqrt(), 0.0)
    a = dis[:, None] * adjacency(ei, ew) * dis[None, :]

    def ref(x_):
        stacks = []
        for k in range(2):
            h = torch.relu(a @ (x_ @ conv.init_weight[k]) + x_ @ conv.root_weight[0, k])
            h = torch.relu(a @ (h @ conv.weight[0, k]) + x_ @ conv.root_weight[1, k])
            stacks.append(h)
        return (stacks[0] + stacks[1]) / 2

    assert_close(ref(x), conv(x, ei, ew))
    res = sparse_lrp.explain(conv, x, ei, index=8, target=2, composite=Epsilon(0.0), edge_weight=ew)
    xg = x.clone().requires_grad_(True)
    ref(xg)[8, 2].backward()
    assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)


def test_cg_conv_by_hand(graph):
    """CGConv ``out_i = x_i + sum_{j->i} σ(W_f z + b_f) ⊙ softplus(W_s z)``, ``z = [x_i, x_j, e]``,
    explained at output (i, k) under LRP-0 with the gate fixed and softplus passing
    relevance (Pass rule), derived by hand: the messages' share ``m_e,k`` of ``out_i,k``
    (ratio 1 at the explained logit), passed to ``u = W_s z`` unchanged, then
    ``R_z = z ⊙ W_sᵀ (R_u / u)``; the root term keeps ``x_i,k``."""
    x, ei, _, ea = graph
    torch.manual_seed(9)
    conv = gnn.CGConv(F, dim=D).double().eval()
    with torch.no_grad():
        conv.lin_s.bias.zero_()
    i, k = 4, 2
    res = sparse_lrp.explain(conv, x, ei, index=i, target=k, composite=Epsilon(0.0), edge_attr=ea)
    src, dst = ei
    z = torch.cat([x[dst], x[src], ea], 1)
    gate = torch.sigmoid(conv.lin_f(z)).detach()
    u = z @ conv.lin_s.weight.T
    m = gate * torch.nn.functional.softplus(u)
    into = (dst == i).to(DT)
    r_u = torch.zeros_like(u)
    r_u[:, k] = m[:, k] * into  # (ratio 1 at the explained entry; other channels carry none)
    r_z = z * ((r_u / u) @ conv.lin_s.weight)
    r_x = torch.zeros_like(x).index_add(0, dst, r_z[:, :F]).index_add(0, src, r_z[:, F : 2 * F])
    r_x[i, k] += x[i, k]
    assert res.output.item() == pytest.approx(conv(x, ei, ea)[i, k].item(), abs=1e-12)
    assert_close(res.node_feat, r_x.detach(), atol=1e-12, rtol=1e-9)
    assert_close(res.edge_attr, r_z[:, 2 * F :].detach(), atol=1e-12, rtol=1e-9)
    assert_close(res.edge, (m[:, k] * into).detach(), atol=1e-12, rtol=1e-9)


PNA = {
    "all_scalers": dict(
        aggregators=["mean", "min", "max", "sum"],
        scalers=["identity", "amplification", "attenuation", "linear", "inverse_linear"],
        towers=2,
    ),
    "edges_undivided": dict(aggregators=["max"], scalers=["identity"], edge_dim=D, divide_input=False),
    "deep_towers": dict(aggregators=["mean", "max"], scalers=["amplification"], towers=3, pre_layers=2, post_layers=2),
}


@pytest.mark.parametrize("variant", sorted(PNA))
def test_pna_conv_lrp0_is_gradient_x_input(variant, graph):
    """PNAConv: MLP messages over edge rows, mean/sum/min/max (selections: autograd's own
    gradient is the reference) scaled by degree functions (constants), towers, post-MLPs.
    Biases zeroed: LRP-0 is gradient x input of the layer itself, node and edge features."""
    _, ei, _, ea = graph
    torch.manual_seed(5)
    deg = torch.bincount(torch.bincount(ei[1], minlength=N))
    conv = gnn.PNAConv(H, H, deg=deg, **PNA[variant]).double().eval()
    for name, p in conv.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
    h = torch.randn(N, H, dtype=DT)
    kw = {"edge_attr": ea} if "edge_dim" in PNA[variant] else {}
    res = sparse_lrp.explain(conv, h, ei, index=[2, 8], target=1, composite=Epsilon(0.0), **kw)
    for row, i in enumerate([2, 8]):
        hg, eg = h.clone().requires_grad_(True), ea.clone().requires_grad_(True)
        conv(hg, ei, **({"edge_attr": eg} if kw else {}))[i, 1].backward()
        assert_close(res.node_feat[row], (hg.grad * h).detach(), atol=1e-12, rtol=1e-9)
        total = res.node_feat[row].sum()
        if kw:
            assert_close(res.edge_attr[row], (eg.grad * ea).detach(), atol=1e-12, rtol=1e-9)
            total = total + res.edge_attr[row].sum()
        assert total.item() == pytest.approx(res.output[row].item(), abs=1e-12)


def test_pna_std_aggregator_is_refused(graph):
    x, ei, _, _ = graph
    deg = torch.bincount(torch.bincount(ei[1], minlength=N))
    conv = gnn.PNAConv(F, 4, aggregators=["mean", "std"], scalers=["identity"], deg=deg).double().eval()
    with pytest.raises(ValueError, match=r"aggr='std' is not supported"):
        sparse_lrp.explain(conv, x, ei, index=0)


def test_gen_conv_power_mean_is_refused(graph):
    x, ei, _, _ = graph
    with pytest.raises(ValueError, match=r"aggr='powermean' is not supported"):
        sparse_lrp.explain(gnn.GENConv(F, 2, aggr="powermean").double().eval(), x, ei, index=0)


def test_res_gated_edge_attr_mismatch_is_refused(graph):
    x, ei, _, ea = graph
    with pytest.raises(ValueError, match="needs edge_attr exactly when it has edge_dim"):
        sparse_lrp.explain(gnn.ResGatedGraphConv(F, 2).double().eval(), x, ei, index=0, edge_attr=ea)
