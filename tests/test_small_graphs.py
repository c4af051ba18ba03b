"""A single node target on a small graph runs on the whole graph (``WHOLE_GRAPH_ROWS``).

Cutting a target's k-hop subgraph out of a graph of a few thousand rows costs more than
the rows it saves (or its subgraph is most of the graph), so by default such a target
is explained on the whole graph, with its output row seeded. These tests run with that
default (the rest of the suite pins the subgraph path): the choice is taken where it
should be, and its results equal both the subgraph path's and independent references.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from gnn_reference import drop_graph
from test_restricted import MODELS, F  # (the same four model families, F input features)
from torch import nn
from torch.testing import assert_close
from torch_geometric.explain import Explainer
from torch_geometric.nn import GCN, GCNConv, GraphConv, GraphSAGE, TAGConv

import sparse_lrp
from sparse_lrp import Composite, Epsilon, Gamma, LRPExplainer, WSquare, ZPlus

pytestmark = pytest.mark.default_paths
explain_module = importlib.import_module("sparse_lrp.explain")  # (the module, not the function)

N, E = 60, 240


@pytest.fixture(scope="module")
def graph():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, F, generator=g, dtype=torch.float64), torch.randint(0, N, (2, E), generator=g)


COMPOSITES = {
    "epsilon": Epsilon(1e-6),
    "zplus": ZPlus(),
    "gamma+wsquare": Composite(Gamma(0.25), first=WSquare(), top=Epsilon(1e-6)),
}


@pytest.fixture
def unions(monkeypatch):
    """How often a k-hop subgraph union was built (the subgraph path)."""
    calls = []
    real = explain_module._khop_union

    def spy(*args, **kwargs):
        calls.append(args[2].numel())
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_module, "_khop_union", spy)
    return calls


def _model(name):
    torch.manual_seed(11)
    return MODELS[name]().double().eval()


@pytest.mark.parametrize("rule", list(COMPOSITES))
@pytest.mark.parametrize("name", list(MODELS))
def test_a_single_target_on_a_small_graph_equals_its_subgraph_run(name, rule, graph, unions, monkeypatch):
    x, ei = graph
    model = _model(name)
    index = 7
    whole = sparse_lrp.explain(model, x, ei, index=index, composite=COMPOSITES[rule])
    assert unions == []  # (no subgraph was cut)
    monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)
    sub = sparse_lrp.explain(model, x, ei, index=index, composite=COMPOSITES[rule])
    assert unions == [1]
    assert whole.node_feat.shape == (N, F) and whole.edge.shape == (E,)
    assert_close(whole.node_feat, sub.node_feat)
    assert_close(whole.edge, sub.edge)
    assert_close(whole.output, sub.output)
    assert int(whole.target) == int(sub.target)
    for key in ("out", "in", "absorbed", "lost"):
        assert whole.conservation[key] == pytest.approx(sub.conservation[key], rel=1e-9, abs=1e-9)
    assert whole.layers.keys() == sub.layers.keys()
    for layer, rec in whole.layers.items():
        for kind in ("edge", "node"):
            if kind in rec:
                assert_close(rec[kind], sub.layers[layer][kind])


def test_the_whole_graph_run_of_a_target_is_gradient_times_input(graph, unions):
    # A bias-free ReLU GCN with LRP-0: relevance is gradient x input of the target's logit.
    x, ei = graph
    model = _model("gcn")
    for p in model.parameters():
        if p.dim() == 1:
            p.data.zero_()
    index = 12
    res = sparse_lrp.explain(model, x, ei, index=index, composite=Epsilon(0.0))
    x_ = x.clone().requires_grad_(True)
    y = model(x_, ei)
    cls = int(y[index].argmax())
    (g,) = torch.autograd.grad(y[index, cls], x_)
    assert unions == []
    assert int(res.target) == cls
    assert_close(res.node_feat, g * x)
    assert float(res.node_feat.sum()) == pytest.approx(float(y[index, cls].detach()), rel=1e-9)


def test_targets_past_the_size_or_with_sparse_results_take_subgraphs(graph, unions, monkeypatch):
    x, ei = graph
    model = _model("gcn")
    dense = sparse_lrp.explain(model, x, ei, index=3, composite="epsilon")
    assert unions == []
    # Several targets share one pass over their subgraphs' union at any size.
    sparse_lrp.explain(model, x, ei, index=[3, 4], composite="epsilon")
    assert unions == [2]
    # Sparse results hold only the target's subgraph: they come from it.
    sparse = sparse_lrp.explain(model, x, ei, index=3, composite="epsilon", sparse_output=True)
    assert unions == [2, 1]
    assert sparse.node_feat.is_sparse
    assert_close(sparse.node_feat.to_dense(), dense.node_feat)
    # Where the whole graph would cost more than cutting: the subgraph.
    seen = []

    def pays(n, num_edges, hops):
        seen.append((n, num_edges, hops))
        return False

    monkeypatch.setattr(explain_module, "_whole_graph_pays", pays)
    past = sparse_lrp.explain(model, x, ei, index=3, composite="epsilon")
    assert unions == [2, 1, 1] and seen == [(N, E, 3)]  # (a 3-layer GCN: 3 hops)
    assert_close(past.node_feat, dense.node_feat)


def test_the_whole_graph_is_taken_where_it_costs_less_than_cutting_the_subgraph(monkeypatch):
    pays = explain_module._whole_graph_pays
    monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", 1000)
    assert pays(300, 700, 3)  # (1000 rows: no more than the cut's cost)
    # A binary tree (mean degree 2), 3 hops: 1 + 2 + 4 + 8 = 15 nodes, 3 rows each.
    assert pays(1000, 1000 - 1 + 45, 3) is False  # 2044 rows > 1000 + 45
    d = 2.0
    assert pays(1000, 2000, 3) is (3000 <= 1000 + (1 + d + d**2 + d**3) * (1 + d))
    # Mean degree 10, 3 hops: 1111 nodes x 11 rows = 12221 rows.
    assert pays(2000, 20000, 3) is False  # 22000 > 13221
    assert pays(1100, 11000, 3)  # 12100 <= 13221
    # Enough hops for the subgraph to be the graph: the whole graph at any size.
    assert pays(100_000, 1_000_000, 6)
    assert pays(100_000, 1_000_000, 3) is False
    monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)  # (always the subgraph)
    assert pays(10, 20, 3) is False


def test_the_explainer_on_a_small_graph_matches_the_subgraph_masks(graph, unions, monkeypatch):
    x, ei = graph
    model = _model("gin")
    explainer = Explainer(
        model,
        LRPExplainer(composite="epsilon"),
        explanation_type="model",
        node_mask_type="attributes",
        edge_mask_type="object",
        model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"),
    )
    whole = explainer(x, ei, index=9)
    assert unions == []
    monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)
    sub = explainer(x, ei, index=9)
    assert unions == [1]
    assert_close(whole.node_mask, sub.node_mask)
    assert_close(whole.edge_mask, sub.edge_mask)


def _grad_x_input(model, x, ei, index):
    x_ = x.clone().requires_grad_(True)
    y = model(x_, ei)
    cls = int(y[index].argmax())
    (g,) = torch.autograd.grad(y[index, cls], x_)
    return g * x


def test_a_graph_normalised_once_follows_edits_and_is_freed_with_the_graph():
    """An unweighted GCN's normalised graph (and its sorted structures) are kept with
    the graph across calls; edits to the graph, in place, through ``.data`` or a NumPy
    view, must reach the next call, and dropping the graph frees them."""

    from sparse_lrp.operators import GRAPH_STRUCTURES

    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, F, generator=g, dtype=torch.float64)
    ei = torch.randint(0, N, (2, E), generator=g)
    model = _model("gcn")
    for p in model.parameters():  # (bias-free: LRP-0 is gradient x input)
        if p.dim() == 1:
            p.data.zero_()
    lrp0 = Epsilon(0.0)
    for index in (4, 9):  # (the second call is served from the cache)
        assert_close(sparse_lrp.explain(model, x, ei, index=index, composite=lrp0).node_feat,
                     _grad_x_input(model, x, ei, index))  # fmt: skip
    for edit in ("in place", "through .data", "through a NumPy view"):
        if edit == "in place":
            ei[1, :6].copy_(ei[1, :6].flip(0))
        elif edit == "through .data":
            ei.data[0, 10:20].fill_(3)
        else:
            ei.numpy()[1, 30] = (int(ei[1, 30]) + 1) % N
        for index in (3, 4):
            res = sparse_lrp.explain(model, x, ei, index=index, composite=lrp0)
            assert_close(res.node_feat, _grad_x_input(model, x, ei, index))
            assert_close(res.edge, sparse_lrp.explain(model, x, ei.clone(), index=index, composite=lrp0).edge)
    graph = [ei]
    del ei
    freed, before, after = drop_graph(graph, GRAPH_STRUCTURES._entries)
    # (the graph's normalisation and the normalised graph's structures go with it)
    assert freed and before >= 2 and after <= before - 2


class _LogFirst(nn.Module):
    """GraphConv over ``log(x)``: NaN at a node with a negative feature."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = GraphConv(3, 6), GraphConv(6, 2)

    def forward(self, x, edge_index):
        return self.c2(torch.relu(self.c1(torch.log(x), edge_index)), edge_index)


def test_nan_beyond_a_targets_subgraph_leaves_its_explanation_as_on_the_subgraph(unions):
    """The whole graph's pass meets the NaN at a node 15 hops from the target; the
    target's output is finite and never reads it, as on its subgraph."""
    torch.manual_seed(0)
    n = 20
    s = torch.arange(n - 1)
    ei = torch.cat([torch.stack([s, s + 1]), torch.stack([s + 1, s])], 1)  # a path
    x = torch.rand(n, 3, dtype=torch.float64) + 0.5
    model = _LogFirst().double().eval()
    # Reference: the same graph with the far node's feature finite (node 0 cannot read it).
    ref = sparse_lrp.explain(model, x, ei, index=0, composite="epsilon")
    assert unions == []
    x[15, 0] = -1.0
    assert torch.isfinite(model(x, ei)[0]).all() and not torch.isfinite(model(x, ei)).all()
    got = sparse_lrp.explain(model, x, ei, index=0, composite="epsilon")
    assert unions == [1]  # (the whole graph's pass failed; its subgraph explained it)
    assert_close(got.node_feat, ref.node_feat)
    assert_close(got.edge, ref.edge)
    # Errors that do not come from values beyond the subgraph are raised as they are.
    x[0, 0] = -1.0
    with pytest.raises(ValueError, match="NaN"):
        sparse_lrp.explain(model, x, ei, index=0, composite="epsilon")


def test_an_overflow_beyond_a_targets_subgraph_leaves_its_explanation_as_on_the_subgraph(monkeypatch):
    torch.manual_seed(0)
    n = 20
    s = torch.arange(n - 1)
    ei = torch.cat([torch.stack([s, s + 1]), torch.stack([s + 1, s])], 1)
    x = torch.randn(n, 3)
    x[15] = 3e38  # (float32: the forward overflows to Inf around node 15, not at node 0)
    model = GCN(3, 8, 2, 2).eval()
    assert torch.isfinite(model(x, ei)[0]).all() and not torch.isfinite(model(x, ei)).all()
    for rule in ("epsilon", "zplus", "gamma"):
        got = sparse_lrp.explain(model, x, ei, index=0, composite=rule)
        monkeypatch.setattr(explain_module, "WHOLE_GRAPH_ROWS", None)
        sub = sparse_lrp.explain(model, x, ei, index=0, composite=rule)
        monkeypatch.undo()
        assert torch.isfinite(got.node_feat).all()
        assert_close(got.node_feat, sub.node_feat)


def test_clear_caches_forgets_every_derived_value_and_the_next_call_rebuilds_them(graph):
    from sparse_lrp.operators import _CACHES, GRAPH_STRUCTURES

    x, ei = graph
    model = _model("gcn")
    first = sparse_lrp.explain(model, x, ei, index=5, composite="zplus")
    assert len(GRAPH_STRUCTURES._entries) > 0
    sparse_lrp.clear_caches()
    assert all(len(cache._entries) == 0 for cache in list(_CACHES))
    again = sparse_lrp.explain(model, x, ei, index=5, composite="zplus")
    assert len(GRAPH_STRUCTURES._entries) > 0
    assert_close(again.node_feat, first.node_feat)
    assert_close(again.edge, first.edge)


@pytest.mark.parametrize("name", ["gcn", "sage"])
def test_a_graph_edit_that_keeps_the_index_sum_is_seen(name):
    """Edges 0 -> 1 and 1 -> 2 edited through ``.data`` into 1 -> 1 and 0 -> 2: the same
    index sum and version, another graph (the normalisation and sorted structures kept
    with the first were served: node relevance 0.81 off)."""
    torch.manual_seed(0)
    model = GCN(4, 8, 2, 3) if name == "gcn" else GraphSAGE(4, 8, 2, 3)
    model = model.double().eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    sparse_lrp.explain(model, x, ei, index=2, composite=Epsilon(0.0))
    ei.data[0, 0], ei.data[0, 1] = 1, 0
    got = sparse_lrp.explain(model, x, ei, index=2, composite=Epsilon(0.0))
    assert_close(got.node_feat, _grad_x_input(model, x, ei, 2))
    assert_close(got.edge, sparse_lrp.explain(model, x, ei.clone(), index=2, composite=Epsilon(0.0)).edge)
    # An index moved out of range the same way is refused, as on a new graph.
    ei.numpy()[0, 2] += 4  # (node 6 of 6)
    ei.numpy()[0, 5] -= 4
    with pytest.raises(ValueError, match="out of range"):
        sparse_lrp.explain(model, x, ei, index=2, composite=Epsilon(0.0))


@pytest.mark.parametrize("make", [lambda: GCNConv(4, 3, add_self_loops=False), lambda: TAGConv(4, 3, K=2)])
def test_a_graph_normalised_without_added_loops_is_freed_when_dropped(make):
    """Without added self-loops gcn_norm returns the graph itself: the kept normalisation
    must not hold the graph it is keyed on."""

    from sparse_lrp.operators import GRAPH_STRUCTURES

    torch.manual_seed(0)
    conv = make().double().eval()
    x = torch.randn(30, 4, dtype=torch.float64)
    ei = torch.randint(0, 30, (2, 80))
    conv.bias.data.zero_()  # (bias-free: LRP-0 is gradient x input)
    res = sparse_lrp.explain(conv, x, ei, index=2, composite=Epsilon(0.0))
    x_ = x.clone().requires_grad_(True)
    y = conv(x_, ei)
    (g,) = torch.autograd.grad(y[2, int(y[2].argmax())], x_)
    assert_close(res.node_feat, g * x)
    graph = [ei]
    del ei
    freed, before, after = drop_graph(graph, GRAPH_STRUCTURES._entries)
    assert freed and before > 0 and after < before


def test_nan_beyond_the_target_under_a_graph_the_model_builds_is_an_error_not_a_loop():
    """The subgraph cannot serve a model that builds its own graph in forward: the NaN
    at a distant node is then reported once (the retry on the subgraph falls back to the
    whole graph, which must not retry again)."""

    class Undirected(_LogFirst):
        def forward(self, x, edge_index):
            both = torch.cat([edge_index, edge_index.flip(0)], 1)  # (a graph of its own)
            return super().forward(x, both)

    torch.manual_seed(0)
    n = 20
    s = torch.arange(n - 1)
    ei = torch.stack([s, s + 1])
    x = torch.rand(n, 3, dtype=torch.float64) + 0.5
    model = Undirected().double().eval()
    ok = sparse_lrp.explain(model, x, ei, index=0, composite="epsilon")
    assert torch.isfinite(ok.node_feat).all()
    x[15, 0] = -1.0
    with pytest.raises(ValueError, match="NaN"):
        sparse_lrp.explain(model, x, ei, index=0, composite="epsilon")


@pytest.mark.parametrize("chunk", [None, 7])
def test_content_keys_see_values_that_trade_places(chunk, monkeypatch):
    """The caches' content key (for edits that bypass the version counter, through .data)
    changes under edits that keep the sum and any linear position weighting: an undirected
    edge_index's rows swapped, an edge swapped with its reverse, +1/-2/+1 at equal spacing,
    two float weights trading places; the same content gives the same key, in chunks too."""
    from sparse_lrp import operators

    if chunk is not None:
        monkeypatch.setattr(operators, "_CONTENT_CHUNK", chunk)  # (the last chunk short)
    g = torch.Generator().manual_seed(1)
    ei = torch.randint(0, 50, (2, 60), generator=g)
    und = torch.cat([ei, ei.flip(0)], 1)
    key = operators._content(und)
    assert operators._content(und.clone()) == key
    assert operators._content(und.flip(0)) != key and operators._content(und.flip(0))[0] == key[0]
    swapped = und.clone()
    swapped[:, [3, 63]] = und[:, [63, 3]]  # (an edge and its reverse trade places)
    assert operators._content(swapped) != key
    spaced = und.clone().reshape(-1)
    spaced[[10, 20, 30]] += torch.tensor([1, -2, 1])
    assert operators._content(spaced.reshape(und.shape)) != key
    w = torch.randn(100, generator=g, dtype=torch.float64)
    v = w.clone()
    v[3], v[7] = w[7], w[3]
    assert operators._content(v) != operators._content(w) and operators._content(w.clone()) == operators._content(w)
    assert operators._content(und.new_zeros(0)) == (0, 0)
