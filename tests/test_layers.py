"""Every supported graph layer against independent references.

(a) LRP-0 on bias-free two-layer models (ReLU in between) equals gradient × input of
    the explained logit; for GAT/GATv2 the reference is the layer written densely with
    its attention coefficients held fixed.
(b) Every rule on a one-layer model with a controlled output relevance equals the
    two-stage LRP (node mixing, feature mixing) written out in ``gnn_reference``.

The graph has self-loops, an isolated node, multi-edges and directed edges.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import (
    DT,
    RULES,
    assert_close,
    check_graph,
    gat_attention,
    gat_dense,
    grad_x_input,
    make_graph,
    randomise,
    ref_appnp,
    ref_cheb,
    ref_gat,
    ref_gcn,
    ref_gin,
    ref_gine,
    ref_graph_conv,
    ref_sage,
    ref_sg,
    ref_tag,
    zero_biases,
)
from torch import nn

import sparse_lrp
from sparse_lrp import Epsilon, Flat, WSquare, ZBox, ZPlus

N, F, H, C, D = 12, 5, 6, 4, 3
EI = make_graph(N)
E = EI.shape[1]


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, F, generator=g, dtype=DT)
    ew = torch.rand(E, generator=g, dtype=DT) + 0.2
    ea = torch.randn(E, D, generator=g, dtype=DT)
    return x, ew, ea


def test_graph_has_every_awkward_case():
    check_graph(EI, N)


# --------------------------------------------------------------------------------------
# (a) LRP-0 == gradient × input on bias-free two-layer models
# --------------------------------------------------------------------------------------


class TwoLayers(nn.Module):
    """``conv2(relu(conv1(pre(x))))``; forward kwargs go to both convs."""

    def __init__(self, conv1, conv2, pre=None):
        super().__init__()
        self.pre = pre
        self.conv1, self.act, self.conv2 = conv1, nn.ReLU(), conv2

    def forward(self, x, edge_index, **kw):
        if self.pre is not None:
            x = self.pre(x)
        return self.conv2(self.act(self.conv1(x, edge_index, **kw)), edge_index, **kw)


def _gin(i, o, **kw):
    return gnn.GINConv(nn.Linear(i, o, bias=False), **kw)


def _gine(i, o, **kw):
    conv = gnn.GINEConv(nn.Linear(i, o, bias=False), edge_dim=D, **kw)
    return zero_biases(conv)  # the edge lin always has a bias: make it zero


def _train_eps(conv):
    with torch.no_grad():
        conv.eps.fill_(0.3)
    return conv


# name -> (builder, forward kwargs names)
TWO_LAYER = {
    "gcn": (lambda: TwoLayers(gnn.GCNConv(F, H, bias=False), gnn.GCNConv(H, C, bias=False)), ()),
    "gcn_no_normalize": (
        lambda: TwoLayers(
            gnn.GCNConv(F, H, bias=False, normalize=False), gnn.GCNConv(H, C, bias=False, normalize=False)
        ),
        (),
    ),
    "gcn_no_self_loops": (
        lambda: TwoLayers(
            gnn.GCNConv(F, H, bias=False, add_self_loops=False), gnn.GCNConv(H, C, bias=False, add_self_loops=False)
        ),
        (),
    ),
    "gcn_edge_weight": (lambda: TwoLayers(gnn.GCNConv(F, H, bias=False), gnn.GCNConv(H, C, bias=False)), ("ew",)),
    "gcn_no_normalize_edge_weight": (
        lambda: TwoLayers(
            gnn.GCNConv(F, H, bias=False, normalize=False), gnn.GCNConv(H, C, bias=False, normalize=False)
        ),
        ("ew",),
    ),
    "gcn_cached": (
        lambda: TwoLayers(gnn.GCNConv(F, H, bias=False, cached=True), gnn.GCNConv(H, C, bias=False, cached=True)),
        (),
    ),
    "gcn_improved": (
        lambda: TwoLayers(gnn.GCNConv(F, H, bias=False, improved=True), gnn.GCNConv(H, C, bias=False, improved=True)),
        (),
    ),
    "graph_add": (lambda: TwoLayers(gnn.GraphConv(F, H, bias=False), gnn.GraphConv(H, C, bias=False)), ()),
    # max/min aggregation: each output channel is its winning message's (autograd's
    # gradient goes to the winner too, so gradient x input is the reference as for sums)
    "graph_max_edge_weight": (
        lambda: TwoLayers(gnn.GraphConv(F, H, bias=False, aggr="max"), gnn.GraphConv(H, C, bias=False, aggr="max")),
        ("ew",),
    ),
    "sage_max": (
        lambda: TwoLayers(gnn.SAGEConv(F, H, bias=False, aggr="max"), gnn.SAGEConv(H, C, bias=False, aggr="max")),
        (),
    ),
    "gin_min": (lambda: TwoLayers(_gin(F, H, aggr="min"), _gin(H, C, aggr="max")), ()),
    "sage_multi": (
        lambda: TwoLayers(
            gnn.SAGEConv(F, H, bias=False, aggr=["mean", "max", "sum"]),
            gnn.SAGEConv(H, C, bias=False, aggr=["min", "add"]),
        ),
        (),
    ),
    "gine_max": (lambda: TwoLayers(_gine(F, H, aggr="max"), _gine(H, C, aggr="max")), ("ea",)),
    "gcn_max": (
        lambda: TwoLayers(gnn.GCNConv(F, H, bias=False, aggr="max"), gnn.GCNConv(H, C, bias=False, aggr="min")),
        (),
    ),
    "tag_max": (
        lambda: TwoLayers(gnn.TAGConv(F, H, K=2, bias=False, aggr="max"), gnn.TAGConv(H, C, K=2, bias=False)),
        (),
    ),
    "graph_mean": (
        lambda: TwoLayers(gnn.GraphConv(F, H, aggr="mean", bias=False), gnn.GraphConv(H, C, aggr="mean", bias=False)),
        (),
    ),
    "graph_add_edge_weight": (
        lambda: TwoLayers(gnn.GraphConv(F, H, bias=False), gnn.GraphConv(H, C, bias=False)),
        ("ew",),
    ),
    "graph_mean_edge_weight": (
        lambda: TwoLayers(gnn.GraphConv(F, H, aggr="mean", bias=False), gnn.GraphConv(H, C, aggr="mean", bias=False)),
        ("ew",),
    ),
    "sage_root": (lambda: TwoLayers(gnn.SAGEConv(F, H, bias=False), gnn.SAGEConv(H, C, bias=False)), ()),
    "sage_no_root": (
        lambda: TwoLayers(
            gnn.SAGEConv(F, H, bias=False, root_weight=False), gnn.SAGEConv(H, C, bias=False, root_weight=False)
        ),
        (),
    ),
    # The projection (a ReLU of a Linear) feeds the neighbours only; the root weight reads x.
    "sage_project": (
        lambda: zero_biases(
            TwoLayers(gnn.SAGEConv(F, H, bias=False, project=True), gnn.SAGEConv(H, C, bias=False, project=True))
        ),
        (),
    ),
    "gin_eps": (lambda: TwoLayers(_gin(F, H, eps=0.25), _gin(H, C, eps=-0.4)), ()),
    "gin_train_eps": (
        lambda: TwoLayers(_train_eps(_gin(F, H, train_eps=True)), _train_eps(_gin(H, C, train_eps=True))),
        (),
    ),
    "gine": (lambda: TwoLayers(_gine(F, H, eps=0.2), _gine(H, C)), ("ea",)),
    # aggr="mean" is a sum weighted by 1 / in-degree, in every layer that takes aggr
    "gcn_mean": (
        lambda: TwoLayers(gnn.GCNConv(F, H, bias=False, aggr="mean"), gnn.GCNConv(H, C, bias=False, aggr="mean")),
        ("ew",),
    ),
    "gin_mean": (lambda: TwoLayers(_gin(F, H, eps=0.25, aggr="mean"), _gin(H, C, aggr="mean")), ()),
    "gine_mean": (lambda: TwoLayers(_gine(F, H, aggr="mean"), _gine(H, C, aggr="mean")), ("ea",)),
    "sg_mean": (
        lambda: TwoLayers(gnn.SGConv(F, H, K=2, bias=False, aggr="mean"), gnn.SGConv(H, C, bias=False, aggr="mean")),
        (),
    ),
    "tag_mean": (
        lambda: TwoLayers(gnn.TAGConv(F, H, K=2, bias=False, aggr="mean"), gnn.TAGConv(H, C, bias=False, aggr="mean")),
        (),
    ),
    "appnp_mean": (
        lambda: TwoLayers(
            gnn.APPNP(K=2, alpha=0.2, aggr="mean"), gnn.APPNP(K=2, alpha=0.1), nn.Linear(F, C, bias=False)
        ),
        (),
    ),
    "cheb_mean": (
        lambda: TwoLayers(gnn.ChebConv(F, H, K=3, bias=False, aggr="mean"), gnn.ChebConv(H, C, bias=False, K=2)),
        (),
    ),
    "sg": (lambda: TwoLayers(gnn.SGConv(F, H, K=2, bias=False), gnn.SGConv(H, C, K=2, bias=False)), ()),
    "tag": (lambda: TwoLayers(gnn.TAGConv(F, H, K=2, bias=False), gnn.TAGConv(H, C, K=2, bias=False)), ()),
    "appnp": (
        lambda: TwoLayers(gnn.APPNP(K=3, alpha=0.15), gnn.APPNP(K=3, alpha=0.3), nn.Linear(F, C, bias=False)),
        (),
    ),
    "cheb": (lambda: TwoLayers(gnn.ChebConv(F, H, K=3, bias=False), gnn.ChebConv(H, C, K=3, bias=False)), ()),
}

GAT_LAYERS = {
    "gat_concat": (
        lambda: TwoLayers(gnn.GATConv(F, 3, heads=2, bias=False), gnn.GATConv(6, C, heads=2, bias=False)),
        (),
    ),
    "gat_mean": (
        lambda: TwoLayers(
            gnn.GATConv(F, H, heads=2, concat=False, bias=False), gnn.GATConv(H, C, heads=2, concat=False, bias=False)
        ),
        (),
    ),
    "gat_edge_dim": (
        lambda: TwoLayers(
            gnn.GATConv(F, 3, heads=2, edge_dim=D, bias=False), gnn.GATConv(6, C, heads=2, edge_dim=D, bias=False)
        ),
        ("ea",),
    ),
    "gat_aggr_mean": (
        lambda: TwoLayers(gnn.GATConv(F, 3, heads=2, bias=False, aggr="mean"), gnn.GATConv(6, C, bias=False)),
        (),
    ),
    "gatv2_concat": (
        lambda: TwoLayers(gnn.GATv2Conv(F, 3, heads=2, bias=False), gnn.GATv2Conv(6, C, heads=2, bias=False)),
        (),
    ),
    "gatv2_mean": (
        lambda: TwoLayers(
            gnn.GATv2Conv(F, H, heads=2, concat=False, bias=False),
            gnn.GATv2Conv(H, C, heads=2, concat=False, bias=False),
        ),
        (),
    ),
    "gatv2_edge_dim": (
        lambda: TwoLayers(
            gnn.GATv2Conv(F, 3, heads=2, edge_dim=D, bias=False), gnn.GATv2Conv(6, C, heads=2, edge_dim=D, bias=False)
        ),
        ("ea",),
    ),
}


def _kwargs(names, ew, ea):
    kw = {}
    if "ew" in names:
        kw["edge_weight"] = ew
    if "ea" in names:
        kw["edge_attr"] = ea
    return kw


def _no_bias(model):
    for name, p in model.named_parameters():
        assert name.split(".")[-1] != "bias" or not bool(p.any()), f"{name} is a non-zero bias"


def _check_lrp0(model, x, kw, index, target, reference):
    """explain() with LRP-0 against ``reference(x, ea) -> (grad×input of x, of ea, output)``."""
    res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=Epsilon(0.0), **kw)
    ref_x, ref_ea, ref_out = reference
    assert_close(res.node_feat, ref_x)
    assert_close(res.node, ref_x.sum(1))
    assert_close(res.output.sum(), ref_out)
    if "edge_attr" in kw:
        assert res.edge_attr is not None and res.edge_attr.shape == kw["edge_attr"].shape
        assert_close(res.edge_attr, ref_ea)
    total = res.node_feat.sum() + (res.edge_attr.sum() if res.edge_attr is not None else 0)
    assert_close(total, ref_out)  # conservation: bias-free ReLU network, LRP-0
    assert res.conservation["in"] == pytest.approx(res.conservation["out"], abs=1e-8)
    assert abs(res.conservation["absorbed"]) < 1e-8 and abs(res.conservation["lost"]) < 1e-8
    assert res.edge is not None and res.edge.shape == (E,)
    assert torch.isfinite(res.edge).all()


@pytest.mark.parametrize("index,target", [(5, None), (None, 2)])
@pytest.mark.parametrize("name", list(TWO_LAYER))
def test_lrp0_equals_gradient_times_input(name, index, target, inputs):
    x, ew, ea = inputs
    build, names = TWO_LAYER[name]
    model = build().double().eval()
    _no_bias(model)
    kw = _kwargs(names, ew, ea)
    if name == "gcn_cached":
        model(x, EI)  # fills the caches with this graph's normalisation
    y = model(x, EI, **kw)
    cls = int(y[index].argmax()) if target is None else target

    def logit(x_, *rest):
        kw_ = dict(kw)
        if rest:
            kw_["edge_attr"] = rest[0]
        out = model(x_, EI, **kw_)
        return out[:, cls].sum() if index is None else out[index, cls]

    if "edge_attr" in kw:
        gx, gea = grad_x_input(logit, x, ea)
    else:
        (gx,), gea = grad_x_input(logit, x), None
    ref_out = y[:, cls].sum() if index is None else y[index, cls]
    _check_lrp0(model, x, kw, index, target, (gx, gea, ref_out.detach()))


@pytest.mark.parametrize("index,target", [(5, None), (None, 2)])
@pytest.mark.parametrize("name", list(GAT_LAYERS))
def test_lrp0_gat_equals_gradient_times_input_with_fixed_attention(name, index, target, inputs):
    x, ew, ea = inputs
    build, names = GAT_LAYERS[name]
    model = build().double().eval()
    _no_bias(model)
    kw = _kwargs(names, ew, ea)
    edge_attr = kw.get("edge_attr")
    # The attention of each layer on the inputs it really sees, then held fixed.
    ei1, a1 = gat_attention(model.conv1, x, EI, edge_attr)[:2]
    h1 = torch.relu(gat_dense(model.conv1, x, ei1, a1)).detach()
    ei2, a2 = gat_attention(model.conv2, h1, EI, edge_attr)[:2]

    def dense(x_):
        return gat_dense(model.conv2, torch.relu(gat_dense(model.conv1, x_, ei1, a1)), ei2, a2)

    y = model(x, EI, **kw)
    assert_close(dense(x).detach(), y.detach())  # the dense reference is the layer's forward
    cls = int(y[index].argmax()) if target is None else target
    (gx,) = grad_x_input(lambda x_: dense(x_)[:, cls].sum() if index is None else dense(x_)[index, cls], x)
    ref_out = (y[:, cls].sum() if index is None else y[index, cls]).detach()
    ref_ea = torch.zeros_like(ea)  # attention is held fixed: edge features get nothing
    _check_lrp0(model, x, kw, index, target, (gx, ref_ea, ref_out))


def test_gat_attention_is_really_input_dependent(inputs):
    """Guard for the GAT reference: treating attention as fixed must make a difference."""
    x, _, _ = inputs
    build, _ = GAT_LAYERS["gat_concat"]
    model = build().double().eval()
    (g_full,) = grad_x_input(lambda x_: model(x_, EI)[5, 0], x)
    res = sparse_lrp.explain(model, x, EI, index=5, target=0, composite=Epsilon(0.0))
    assert not torch.allclose(res.node_feat, g_full, atol=1e-6)


def test_gcn_cached_explains_the_current_graph_and_keeps_the_cache(inputs):
    x, _, _ = inputs
    model = TWO_LAYER["gcn_cached"][0]().double().eval()
    model(x, EI)
    cache = [c.clone() if isinstance(c, torch.Tensor) else c for c in model.conv1._cached_edge_index]
    res = sparse_lrp.explain(model, x, EI, index=3, target=0, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[3, 0], x)
    assert_close(res.node_feat, gx)
    after = model.conv1._cached_edge_index
    assert all(torch.equal(a, b) for a, b in zip(cache, after) if isinstance(a, torch.Tensor))


class SharedConv(nn.Module):
    """One conv reachable under two names (``conv`` and ``layers.0``), called once."""

    def __init__(self, conv, head):
        super().__init__()
        self.conv = conv
        self.layers = nn.ModuleList([conv])
        self.act, self.head = nn.ReLU(), head

    def forward(self, x, edge_index):
        return self.head(self.act(self.layers[0](x, edge_index)))


def test_a_layer_under_two_names_is_explained_once(inputs):
    """Each name routes the module through its handler; GAT's attention must still come
    from the layer itself, not from the other name's handler. LRP-0 (bias-free) equals
    gradient × input (for GAT: of the layer with its attention held fixed), single and
    batched targets alike."""
    x, _, _ = inputs
    targets, classes = [5, 2, 9], torch.tensor([1, 0, 2])
    gcn = SharedConv(gnn.GCNConv(F, H, bias=False), nn.Linear(H, C, bias=False)).double().eval()
    gat = SharedConv(gnn.GATConv(F, 3, heads=2, bias=False), nn.Linear(6, C, bias=False)).double().eval()
    ei_a, alpha = gat_attention(gat.conv, x, EI)[:2]

    def gat_fixed(x_):
        return gat.head(torch.relu(gat_dense(gat.conv, x_, ei_a, alpha)))

    assert_close(gat_fixed(x).detach(), gat(x, EI).detach())  # the reference is the model's forward
    for model, fn in ((gcn, lambda x_: gcn(x_, EI)), (gat, gat_fixed)):
        many = sparse_lrp.explain(model, x, EI, index=targets, target=classes, composite=Epsilon(0.0))
        assert torch.isfinite(many.node_feat).all() and torch.isfinite(many.edge).all()
        for t, (i, c) in enumerate(zip(targets, classes.tolist())):
            (gx,) = grad_x_input(lambda x_, fn=fn, i=i, c=c: fn(x_)[i, c], x)
            one = sparse_lrp.explain(model, x, EI, index=i, target=c, composite=Epsilon(0.0))
            assert_close(one.node_feat, gx)
            assert_close(many.node_feat[t], gx)
            assert_close(many.edge[t], one.edge)
            assert_close(one.output.sum(), fn(x)[i, c].detach())


class BatchStatsNorm(nn.Module):
    """``lin(relu(bn(conv(x))))`` with a BatchNorm that normalises by its current batch."""

    def __init__(self):
        super().__init__()
        self.conv = gnn.GraphConv(F, H)
        self.bn = nn.BatchNorm1d(H, track_running_stats=False)
        self.lin = nn.Linear(H, C)

    def forward(self, x, edge_index):
        return self.lin(torch.relu(self.bn(self.conv(x, edge_index))))

    def frozen(self, x, edge_index):
        """The same forward with the full graph's batch statistics held constant."""
        h = self.conv(x, edge_index)
        mean, var = h.detach().mean(0), h.detach().var(0, unbiased=False)
        h = (h - mean) * torch.rsqrt(var + self.bn.eps) * self.bn.weight + self.bn.bias
        return self.lin(torch.relu(h))


def test_batch_norm_with_batch_statistics_reads_the_whole_graph(inputs):
    """BatchNorm without running statistics normalises by the statistics of every node:
    a node target's k-hop subgraph would change them. A single target keeps the whole
    graph: with LRP-0 the ratio flows back as the gradient does (biases absorb, they do
    not change it), so the relevance equals gradient × input of the model with its batch
    statistics held constant, and the explained output is the model's logit. Batched
    targets cannot be exact on their subgraphs: a clear error, naming the layer."""
    x, _, _ = inputs
    model = randomise(BatchStatsNorm().double()).eval()
    y = model(x, EI).detach()
    assert_close(model.frozen(x, EI).detach(), y)  # the reference is the model's forward
    for i, c in ((5, 1), (9, 3)):
        res = sparse_lrp.explain(model, x, EI, index=i, target=c, composite=Epsilon(0.0))
        (gx,) = grad_x_input(lambda x_, i=i, c=c: model.frozen(x_, EI)[i, c], x)
        assert_close(res.output.sum(), y[i, c])
        assert_close(res.node_feat, gx)
        k = res.conservation
        assert k["in"] + k["absorbed"] + k["lost"] == pytest.approx(k["out"], rel=1e-7, abs=1e-8)
        assert k["out"] == pytest.approx(float(y[i, c]), rel=1e-9)
    with pytest.raises(ValueError, match=r"'bn'.*BatchNorm1d.*batch statistics"):
        sparse_lrp.explain(model, x, EI, index=[5, 9], target=torch.tensor([1, 3]), composite=Epsilon(0.0))
    # With running statistics (the full graph's) the same model runs batched on
    # subgraphs, exactly; also where track_running_stats was switched off afterwards:
    # in eval mode torch still normalises by the running buffers then.
    for track in (True, False):
        running = BatchStatsNorm().double()
        running.bn = nn.BatchNorm1d(H).double()
        running.load_state_dict(model.state_dict(), strict=False)
        with torch.no_grad():
            h = running.conv(x, EI)
            running.bn.running_mean.copy_(h.mean(0))
            running.bn.running_var.copy_(h.var(0, unbiased=False))
        running.bn.track_running_stats = track
        running.eval()
        assert_close(running(x, EI).detach(), y)
        many = sparse_lrp.explain(running, x, EI, index=[5, 9], target=torch.tensor([1, 3]), composite=Epsilon(0.0))
        for t, (i, c) in enumerate(((5, 1), (9, 3))):
            (gx,) = grad_x_input(lambda x_, i=i, c=c: model.frozen(x_, EI)[i, c], x)
            assert_close(many.node_feat[t], gx)


# --------------------------------------------------------------------------------------
# (b) every rule against the dense two-stage reference, one layer at a time
# --------------------------------------------------------------------------------------


# name -> (builder, reference(m, x, R, rule, ew, ea), forward kwargs names)
ONE_LAYER = {
    "gcn": (lambda: gnn.GCNConv(F, C), lambda m, x, R, r, ew, ea: ref_gcn(m, x, EI, R, r), ()),
    "gcn_edge_weight": (
        lambda: gnn.GCNConv(F, C),
        lambda m, x, R, r, ew, ea: ref_gcn(m, x, EI, R, r, edge_weight=ew),
        ("ew",),
    ),
    "gcn_improved": (lambda: gnn.GCNConv(F, C, improved=True), lambda m, x, R, r, ew, ea: ref_gcn(m, x, EI, R, r), ()),
    "gcn_no_self_loops": (
        lambda: gnn.GCNConv(F, C, add_self_loops=False),
        lambda m, x, R, r, ew, ea: ref_gcn(m, x, EI, R, r),
        (),
    ),
    "gcn_no_normalize": (
        lambda: gnn.GCNConv(F, C, normalize=False),
        lambda m, x, R, r, ew, ea: ref_gcn(m, x, EI, R, r, edge_weight=ew),
        ("ew",),
    ),
    "graph_add": (
        lambda: gnn.GraphConv(F, C),
        lambda m, x, R, r, ew, ea: ref_graph_conv(m, x, EI, R, r, edge_weight=ew),
        ("ew",),
    ),
    "graph_mean": (
        lambda: gnn.GraphConv(F, C, aggr="mean"),
        lambda m, x, R, r, ew, ea: ref_graph_conv(m, x, EI, R, r),
        (),
    ),
    "sage": (lambda: gnn.SAGEConv(F, C), lambda m, x, R, r, ew, ea: ref_sage(m, x, EI, R, r), ()),
    "sage_no_root": (
        lambda: gnn.SAGEConv(F, C, root_weight=False),
        lambda m, x, R, r, ew, ea: ref_sage(m, x, EI, R, r),
        (),
    ),
    "gin": (lambda: gnn.GINConv(nn.Linear(F, C), eps=0.3), lambda m, x, R, r, ew, ea: ref_gin(m, x, EI, R, r), ()),
    "gine": (
        lambda: gnn.GINEConv(nn.Linear(F, C), eps=0.1, edge_dim=D),
        lambda m, x, R, r, ew, ea: ref_gine(m, x, EI, ea, R, r),
        ("ea",),
    ),
    "appnp": (lambda: gnn.APPNP(K=3, alpha=0.2), lambda m, x, R, r, ew, ea: ref_appnp(m, x, EI, R, r), ()),
    "cheb": (lambda: gnn.ChebConv(F, C, K=3), lambda m, x, R, r, ew, ea: ref_cheb(m, x, EI, R, r), ()),
    "sg": (lambda: gnn.SGConv(F, C, K=2), lambda m, x, R, r, ew, ea: ref_sg(m, x, EI, R, r), ()),
    "tag": (lambda: gnn.TAGConv(F, C, K=2), lambda m, x, R, r, ew, ea: ref_tag(m, x, EI, R, r), ()),
    "gat_concat": (lambda: gnn.GATConv(F, 2, heads=2), lambda m, x, R, r, ew, ea: ref_gat(m, x, EI, R, r), ()),
    "gat_mean": (
        lambda: gnn.GATConv(F, C, heads=2, concat=False, bias=False),
        lambda m, x, R, r, ew, ea: ref_gat(m, x, EI, R, r),
        (),
    ),
    "gat_edge_dim": (
        lambda: gnn.GATConv(F, 2, heads=2, edge_dim=D),
        lambda m, x, R, r, ew, ea: ref_gat(m, x, EI, R, r, edge_attr=ea),
        ("ea",),
    ),
    "gatv2_concat": (lambda: gnn.GATv2Conv(F, 2, heads=2), lambda m, x, R, r, ew, ea: ref_gat(m, x, EI, R, r), ()),
    "gatv2_mean": (
        lambda: gnn.GATv2Conv(F, C, heads=2, concat=False, bias=False),
        lambda m, x, R, r, ew, ea: ref_gat(m, x, EI, R, r),
        (),
    ),
    "gatv2_edge_dim": (
        lambda: gnn.GATv2Conv(F, 2, heads=2, edge_dim=D),
        lambda m, x, R, r, ew, ea: ref_gat(m, x, EI, R, r, edge_attr=ea),
        ("ea",),
    ),
}


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("layer", list(ONE_LAYER))
def test_rule_matches_dense_two_stage_reference(layer, rule_name, inputs):
    x, ew, ea = inputs
    build, reference, names = ONE_LAYER[layer]
    m = randomise(build().double()).eval()
    kw = _kwargs(names, ew, ea)
    rule = RULES[rule_name]()
    out = m(x, EI, **kw).detach()
    g = torch.Generator().manual_seed(7)
    R = torch.rand(out.shape, generator=g, dtype=DT) + 0.1
    ref = reference(m, x, R, rule, ew, ea)
    assert_close(ref.out, out)  # the reference computes what the layer computes
    res = sparse_lrp.explain(m, x, EI, target=R, composite=rule, **kw)
    assert_close(res.node_feat, ref.x)
    assert_close(res.edge, ref.edge)
    if ref.edge_attr is not None:
        assert_close(res.edge_attr, ref.edge_attr)
    c = res.conservation
    assert c["out"] == pytest.approx(float(torch.where(out == 0, 0.0, R).sum()), rel=1e-9)
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-7, abs=1e-8)


def test_rule_reference_single_target_node(inputs):
    """Relevance seeded on one node only stays in its computation subgraph."""
    x, _, _ = inputs
    m = randomise(gnn.GCNConv(F, C).double()).eval()
    R = torch.zeros(N, C, dtype=DT)
    R[7] = torch.tensor([0.5, 1.0, 0.2, 0.7], dtype=DT)
    ref = ref_gcn(m, x, EI, R, ZPlus())
    res = sparse_lrp.explain(m, x, EI, target=R, composite=ZPlus())
    assert_close(res.node_feat, ref.x)
    assert_close(res.edge, ref.edge)
    # only node 7 and its in-neighbours (one hop) can carry relevance
    sources = set(EI[0, EI[1] == 7].tolist()) | {7}
    for v in range(N):
        if v not in sources:
            assert torch.all(res.node_feat[v] == 0)
    assert torch.all(res.edge[EI[1] != 7] == 0)


def test_chebconv_laplacian_is_signed():
    """Guard: the Cheb reference really exercises negative edge weights."""
    from gnn_reference import cheb_connections

    _, _, w, _ = cheb_connections(EI, N)
    assert (w < 0).any()
    m = gnn.ChebConv(F, C, K=3).double()
    ei_pyg, w_pyg = m.__norm__(EI, N, None, "sym", None, DT, None)
    src, dst, w_ref, _ = cheb_connections(EI, N)
    assert_close(w_pyg, w_ref)
    assert torch.equal(ei_pyg, torch.stack([src, dst]))


def test_epsilon_stabiliser_keeps_float64_precision():
    """Epsilon(0.1) on a float64 model: ``R_i = x_i w_i / (z + 0.1) * z`` to float64 accuracy."""
    lin = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0]], dtype=DT))
    x = torch.tensor([[1.0, -0.999]], dtype=DT)
    z = x.sum()
    res = sparse_lrp.explain(lin, x, composite=Epsilon(0.1))
    torch.testing.assert_close(res.node_feat, x * z / (z + 0.1), rtol=1e-12, atol=0)


def test_chebconv_multi_edge_copies_each_carry_their_own_relevance(inputs):
    """Each copy of a multi-edge is its own connection of the Laplacian (as in GCN)."""
    x, _, _ = inputs
    m = randomise(gnn.ChebConv(F, C, K=2).double()).eval()
    res = sparse_lrp.explain(m, x, EI, index=2, target=0, composite=Epsilon(0.0))
    copies = ((EI[0] == 1) & (EI[1] == 2)).nonzero().view(-1)
    assert copies.numel() == 3
    assert res.edge[copies].abs().min() > 0
    assert_close(res.edge[copies], res.edge[copies[:1]].expand(3))


def test_chebconv_input_self_loops_carry_no_relevance(inputs):
    """ChebConv drops the input's self-loops; its diagonal is not the self-loop edge."""
    x, _, _ = inputs
    m = randomise(gnn.ChebConv(F, C, K=3).double()).eval()
    R = torch.rand(N, C, dtype=DT) + 0.1
    res = sparse_lrp.explain(m, x, EI, target=R, composite=Flat())
    loop = EI[0] == EI[1]
    assert torch.all(res.edge[loop] == 0)


@pytest.mark.parametrize("rule_name", list(RULES))
def test_batch_norm_is_a_per_channel_map(rule_name):
    """Eval-mode BatchNorm1d is the affine map ``a x + b`` per channel: every rule equals
    the kernel on the stored-diagonal sparse weight (Flat counts one connection per
    output: the relevance stays in its channel)."""
    g = torch.Generator().manual_seed(5)
    n, c = 7, 6
    bn = nn.BatchNorm1d(c).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=DT))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=DT) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=DT))
        bn.weight[2] = 0.0  # a channel the norm switches off
        bn.bias.copy_(torch.randn(c, generator=g, dtype=DT))
    x = torch.randn(n, c, generator=g, dtype=DT)
    R = torch.rand(n, c, generator=g, dtype=DT) + 0.1
    rule = RULES[rule_name]()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    diag = torch.sparse_coo_tensor(
        torch.arange(c).repeat(2, 1), scale, (c, c), check_invariants=True
    )  # zeros stay stored
    expected = sparse_lrp.linear_lrp(x, diag, R, rule, shift, strategy="scatter")
    res = sparse_lrp.explain(nn.Sequential(bn), x, None, target=R, composite=rule)
    assert_close(res.node_feat, expected)
    if rule_name == "flat":  # by hand: each channel's relevance, less its stabiliser share
        assert_close(res.node_feat, R / (1 + rule.stabilizer))


def test_cheb_without_normalization_or_lambda_max_reads_the_whole_graph():
    """ChebConv(normalization=None) without lambda_max scales by 2 / (2 max degree) of the
    WHOLE graph; node targets on k-hop subgraphs scaled by the subgraph's and differed from
    the model (node 12: 0.17 from gradient x input). Single targets now keep the whole
    graph; batched ones need lambda_max (then exact on subgraphs) or get an error."""
    torch.manual_seed(0)
    n = 40
    ei = torch.randint(0, n, (2, 150))
    hub = torch.stack([torch.full((10,), 30), torch.arange(10)])  # node 30: the largest degree
    ei = torch.cat([ei, hub], 1)
    x = torch.randn(n, 4, dtype=torch.float64)
    m = gnn.ChebConv(4, 2, K=2, normalization=None, bias=False).double().eval()
    lrp0 = Epsilon(0.0)
    for node in (0, 5, 12):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xx, ei)[node, 0], xx)
        res = sparse_lrp.explain(m, x, ei, index=node, target=0, composite=lrp0)
        torch.testing.assert_close(res.node_feat, g * x)
    with pytest.raises(ValueError, match="pass lambda_max"):
        sparse_lrp.explain(m, x, ei, index=[0, 5, 12], target=0, composite=lrp0)
    lam = torch.tensor(7.0, dtype=torch.float64)
    many = sparse_lrp.explain(m, x, ei, index=[0, 5, 12], target=0, composite=lrp0, lambda_max=lam)
    for t, node in enumerate((0, 5, 12)):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xx, ei, lambda_max=lam)[node, 0], xx)
        torch.testing.assert_close(many.node_feat[t], g * x)


def test_gcn_with_a_filled_cache_explains_what_the_layer_computes():
    """GCNConv(cached=True) with a filled cache uses it whatever graph it is given; the
    handler recomputed the normalisation of the given graph, so a model whose cache came
    from another graph was explained at another output (-0.545 vs the model's -0.560).
    The cache is used now (single targets keep the whole graph for it) and left as it was;
    an empty cache is not filled."""
    torch.manual_seed(0)
    n = 12
    x = torch.randn(n, 5, dtype=torch.float64)
    graph_a, graph_b = torch.randint(0, n, (2, 30)), torch.randint(0, n, (2, 30))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = gnn.GCNConv(5, 8, cached=True, bias=False)
            self.c2 = gnn.GCNConv(8, 3, cached=True, bias=False)

        def forward(self, x, edge_index):
            return self.c2(self.c1(x, edge_index).relu(), edge_index)

    model = Net().double().eval()
    sparse_lrp.explain(model, x, graph_b, index=[1, 2])
    assert model.c1._cached_edge_index is None  # not filled by explaining
    model(x, graph_a)  # filled from graph A
    cached = [t.clone() for t in model.c1._cached_edge_index]
    for index in (2, None):
        xx = x.clone().requires_grad_(True)
        out = model(xx, graph_b)  # (uses graph A's cache)
        (g,) = torch.autograd.grad(out[2, 0], xx)
        if index is None:
            target = torch.zeros_like(out)
            target[2, 0] = out[2, 0].detach()
            res = sparse_lrp.explain(model, x, graph_b, target=target, composite=Epsilon(0.0))
        else:
            res = sparse_lrp.explain(model, x, graph_b, index=2, target=0, composite=Epsilon(0.0))
            assert res.output.item() == pytest.approx(out[2, 0].item())
        torch.testing.assert_close(res.node_feat, g * x)
    for before, after in zip(cached, model.c1._cached_edge_index):
        assert torch.equal(before, after)
    # Several targets run on k-hop subgraphs of B, which cannot reproduce A's cache: refused
    # (they explained another function silently before). A cache of B itself is exact there.
    with pytest.raises(ValueError, match=r"c1 \(GCNConv\): its cache .* another graph"):
        sparse_lrp.explain(model, x, graph_b, index=[2, 5])
    model.c1._cached_edge_index = model.c2._cached_edge_index = None
    model(x, graph_b)  # filled from graph B
    many = sparse_lrp.explain(model, x, graph_b, index=[2, 5], composite=Epsilon(0.0))
    for i, index in enumerate([2, 5]):
        one = sparse_lrp.explain(model, x, graph_b, index=index, target=int(many.target[i]), composite=Epsilon(0.0))
        torch.testing.assert_close(many.node_feat[i], one.node_feat)
        assert many.output[i].item() == pytest.approx(one.output.item())


NONLINEAR_AGGR = {
    "gcn": lambda a: gnn.GCNConv(F, C, aggr=a),
    "graph": lambda a: gnn.GraphConv(F, C, aggr=a),
    "sage": lambda a: gnn.SAGEConv(F, C, aggr=a),
    "gin": lambda a: _gin(F, C, aggr=a),
    "gine": lambda a: _gine(F, C, aggr=a),
    "gat": lambda a: gnn.GATConv(F, C, aggr=a),
    "sg": lambda a: gnn.SGConv(F, C, aggr=a),
    "tag": lambda a: gnn.TAGConv(F, C, aggr=a),
    "cheb": lambda a: gnn.ChebConv(F, C, K=2, aggr=a),
}


@pytest.mark.parametrize("aggr", ["std", ["mean", "std"]], ids=["std", "multi_std"])
@pytest.mark.parametrize("layer", list(NONLINEAR_AGGR))
def test_nonlinear_aggregation_is_refused_not_explained_as_a_sum(layer, aggr, inputs):
    # std (alone or among several) is no linear map nor a selection: explaining it as a sum
    # would describe another model than the one that ran. (Max, min, softmax and several
    # of those concatenated are explained: test_lrp0_equals_gradient_times_input.)
    x, _, ea = inputs
    conv = NONLINEAR_AGGR[layer](aggr).double().eval()
    kw = {"edge_attr": ea} if layer == "gine" else {}
    with pytest.raises(ValueError, match=r"aggr=.*std.* is not supported|several aggregations are supported"):
        sparse_lrp.explain(conv, x, EI, index=3, **kw)


@pytest.mark.parametrize("layer", ["cheb", "appnp"])
def test_max_inside_a_propagation_is_refused(layer, inputs):
    # Max is a selection where the aggregation is the layer's own step, not inside
    # ChebConv's recursion or APPNP's propagation, which sum it with other terms.
    x, _, _ = inputs
    conv = gnn.APPNP(K=2, alpha=0.1, aggr="max") if layer == "appnp" else gnn.ChebConv(F, C, K=2, aggr="max")
    with pytest.raises(ValueError, match=r"aggr='max' is not supported"):
        sparse_lrp.explain(conv.double().eval(), x, EI, index=3)


def test_sage_normalize_holds_the_row_norm_constant(inputs):
    """SAGEConv(normalize=True) divides each output row by its L2 norm: held constant (the
    LN-rule), LRP-0 is gradient x input of the layers with that norm detached."""
    x, _, _ = inputs
    torch.manual_seed(0)
    model = TwoLayers(gnn.SAGEConv(F, H, bias=False, normalize=True), gnn.SAGEConv(H, C, bias=False, normalize=True))
    model = model.double().eval()
    plain = [gnn.SAGEConv(F, H, bias=False).double(), gnn.SAGEConv(H, C, bias=False).double()]
    for p, conv in zip(plain, (model.conv1, model.conv2)):
        p.load_state_dict(conv.state_dict())

    def ref(x_):
        h = plain[0](x_, EI)
        h = torch.relu(h / h.detach().norm(dim=-1, keepdim=True))
        out = plain[1](h, EI)
        return out / out.detach().norm(dim=-1, keepdim=True)

    assert_close(ref(x), model(x, EI))
    res = sparse_lrp.explain(model, x, EI, index=6, target=1, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: ref(x_)[6, 1], x)
    assert_close(res.node_feat, gx)
    assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)


@pytest.mark.parametrize(
    "rule", [Epsilon(0.0), WSquare(stabilizer=0.0), ZBox(-2.0, 2.0, stabilizer=0.0)], ids=["lrp0", "wsquare", "zbox"]
)
def test_max_aggregation_by_hand_ties_share(rule):
    """GraphConv(aggr="max") with the identity as its neighbour weight: node 2's channel 0
    is 1.0, reached by nodes 0 and 1 alike (a tie: each gets half, as autograd's gradient
    splits it), channel 1 is 3.0 from node 3 alone. Edge relevance follows the winners,
    also under rules that weigh a connection whatever its input (a losing message was once
    a connection with input 0 that took a share, reported as lost)."""
    conv = gnn.GraphConv(2, 2, aggr="max", bias=False).double().eval()
    with torch.no_grad():
        conv.lin_rel.weight.copy_(torch.eye(2))
        conv.lin_root.weight.zero_()
    x = torch.tensor([[1.0, 2.0], [1.0, -1.0], [0.0, 0.0], [0.5, 3.0]], dtype=DT)
    ei = torch.tensor([[0, 1, 3], [2, 2, 2]])
    for target, value, feat, edge in [
        (0, 1.0, [[0.5, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]], [0.5, 0.5, 0.0]),
        (1, 3.0, [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 3.0]], [0.0, 0.0, 3.0]),
    ]:
        res = sparse_lrp.explain(conv, x, ei, index=2, target=target, composite=rule)
        assert res.output.item() == value
        assert_close(res.node_feat, torch.tensor(feat, dtype=DT))
        assert_close(res.edge, torch.tensor(edge, dtype=DT))
        assert res.conservation["lost"] == 0


@pytest.mark.parametrize("preset", ["epsilon", "zplus", "gamma"])
def test_max_aggregation_batched_targets_equal_single_calls(preset, inputs):
    """A node's max reads only its own in-edges: k-hop subgraphs stay exact."""
    x, _, _ = inputs
    model = TwoLayers(gnn.SAGEConv(F, H, aggr="max"), gnn.GraphConv(H, C, aggr="min")).double().eval()
    batched = sparse_lrp.explain(model, x, EI, index=[1, 4, 9], composite=preset)
    for row, i in enumerate([1, 4, 9]):
        single = sparse_lrp.explain(model, x, EI, index=i, composite=preset)
        assert_close(batched.node_feat[row], single.node_feat, atol=1e-12, rtol=1e-9)
        assert_close(batched.edge[row], single.edge, atol=1e-12, rtol=1e-9)


class _LinAPPNP(nn.Module):
    """A bias-free ``Linear`` then ``APPNP(cached=True)``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(F, C, bias=False)
        self.prop = gnn.APPNP(K=3, alpha=0.2, cached=True)

    def forward(self, x, edge_index):
        return self.prop(self.lin(x), edge_index)


def test_appnp_with_a_filled_cache_explains_what_the_layer_computes(inputs):
    """APPNP(cached=True) with a filled cache propagates over its cached normalised graph,
    whatever graph it is given; the handler used to normalise the given graph, so a cache
    from another graph was explained at another output. Single targets keep the whole
    graph for it, and explaining leaves the cache as it was."""
    x, _, _ = inputs
    model = _LinAPPNP().double().eval()
    _no_bias(model)
    other = torch.randint(0, N, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model(x, other)  # cache filled from another graph (as during training on it)
    cached = [t.clone() for t in model.prop._cached_edge_index]
    node = 5
    out = model(x, EI).detach()  # (uses the other graph's cache)
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[node, 0], x)
    for index in (node, None):
        if index is None:
            target = torch.zeros_like(out)
            target[node, 0] = out[node, 0]
            res = sparse_lrp.explain(model, x, EI, target=target, composite=Epsilon(0.0))
        else:
            res = sparse_lrp.explain(model, x, EI, index=node, target=0, composite=Epsilon(0.0))
        assert res.output.sum().item() == pytest.approx(out[node, 0].item(), abs=1e-10)
        assert_close(res.node_feat, gx)
    for before, after in zip(cached, model.prop._cached_edge_index):
        assert torch.equal(before, after)


@pytest.mark.parametrize("kind", ["gcn", "appnp"])
def test_a_filled_cache_gives_a_repeated_self_loop_relevance_on_the_copy_the_layer_uses(kind):
    """gcn_norm keeps the weight of the LAST copy of a repeated self-loop (changing the
    first does not change the output). With a filled cache, a single target matched the
    cached loop to the first copy: its edge relevance sat on the wrong one, unlike the
    uncached layer and batched calls."""
    ei = torch.tensor([[0, 1, 1, 2, 1], [1, 2, 1, 0, 1]])  # (1, 1) at positions 2 and 4
    x = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    edges = {}
    for cached in (False, True):
        torch.manual_seed(0)
        if kind == "gcn":
            model = gnn.GCNConv(2, 2, cached=cached, bias=False).double().eval()
        else:
            model = gnn.APPNP(K=2, alpha=0.1, cached=cached).eval()
        model(x, ei)  # (fills the cache)
        single = sparse_lrp.explain(model, x, ei, index=1, target=0, composite=Epsilon(0.0))
        batched = sparse_lrp.explain(model, x, ei, index=[1, 0], target=0, composite=Epsilon(0.0))
        assert_close(single.edge, batched.edge[0])
        edges[cached] = single.edge
    assert_close(edges[True], edges[False])
    assert edges[True][2] == 0 and edges[True][4] != 0


def test_sgconv_with_a_filled_cache_is_refused_and_an_empty_one_left_empty(inputs):
    """SGConv(cached=True) with a filled cache returns lin(_cached_x): a constant of x,
    which the handler explained as if it depended on x. It is refused now, naming the fix;
    an empty cache is explained as usual and not filled (nor a filled one cleared)."""
    import copy

    x, _, _ = inputs
    model = gnn.SGConv(F, C, K=2, cached=True, bias=False).double().eval()
    reference = copy.deepcopy(model)  # its forward (in grad_x_input) fills its own cache
    res = sparse_lrp.explain(model, x, EI, index=3, target=0, composite=Epsilon(0.0))
    assert model._cached_x is None  # not filled by explaining
    (gx,) = grad_x_input(lambda x_: reference(x_, EI)[3, 0], x)
    assert_close(res.node_feat, gx)

    with torch.no_grad():
        model(x, EI)  # filled by the layer's own forward
    filled = model._cached_x.clone()
    for index in (3, None, [1, 3]):
        with pytest.raises(ValueError, match=r"SGConv.*cache.*no longer depend on the input.*cached=False.*_cached_x"):
            sparse_lrp.explain(model, x, EI, index=index, composite=Epsilon(0.0))
    assert torch.equal(model._cached_x, filled)  # not cleared by explaining


@pytest.mark.parametrize("layer", ["gcn", "gin", "sage"])
def test_aggregation_objects_are_read_as_their_names(layer, inputs):
    from torch_geometric.nn.aggr import MeanAggregation, SumAggregation

    x, _, _ = inputs
    for obj, name in ((MeanAggregation(), "mean"), (SumAggregation(), "add")):
        torch.manual_seed(0)
        a = NONLINEAR_AGGR[layer](obj).double().eval()
        torch.manual_seed(0)
        b = NONLINEAR_AGGR[layer](name).double().eval()
        ra = sparse_lrp.explain(a, x, EI, index=3, target=1, composite=Epsilon(0.0))
        rb = sparse_lrp.explain(b, x, EI, index=3, target=1, composite=Epsilon(0.0))
        assert_close(ra.node_feat, rb.node_feat)
