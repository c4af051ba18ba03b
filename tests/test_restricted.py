"""The kernel cut down to the output rows that carry relevance equals the whole map.

Node targets leave most rows of a layer without relevance; there the backward runs on
the sub-map into the active rows (``sparse_lrp.layers.base._Restricted``). On a graph
large enough for the default thresholds, results must equal the whole-map run exactly
(float64), for every rule family, with edge relevance and per-layer records.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import (
    GCN,
    GIN,
    ARMAConv,
    ClusterGCNConv,
    EdgeConv,
    GATConv,
    GCN2Conv,
    GENConv,
    GraphSAGE,
    LEConv,
    MixHopConv,
    PNAConv,
    ResGatedGraphConv,
    SAGEConv,
    SSGConv,
    TransformerConv,
)

import sparse_lrp
from sparse_lrp import AlphaBeta, Composite, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus
from sparse_lrp.layers import base

N, E, F = 3000, 12000, 6


@pytest.fixture(scope="module")
def graph():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, F, generator=g, dtype=torch.float64)
    ei = torch.randint(0, N, (2, E), generator=g)
    return x, ei


@pytest.fixture(scope="module")
def dense_graph():
    """Ten in-edges per node: a target's subgraph widens ten-fold per hop."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(1000, F, generator=g, dtype=torch.float64), torch.randint(0, 1000, (2, 10000), generator=g)


class GATNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = GATConv(F, 4, heads=2)
        self.conv2 = GATConv(8, 3, heads=1)

    def forward(self, x, edge_index):
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


MODELS = {
    "gcn": lambda: GCN(F, 8, 3, 3),
    "gin": lambda: GIN(F, 8, 2, 3),
    "sage": lambda: GraphSAGE(F, 8, 2, 3),
    "gat": GATNet,
}
COMPOSITES = {
    "epsilon": Epsilon(1e-3),
    "zplus": ZPlus(),
    "alphabeta": AlphaBeta(2.0, 1.0),
    "gamma+wsquare": Composite(Gamma(0.25), first=WSquare(), top=Epsilon(1e-6)),
    "flat-first": Composite(Epsilon(1e-6), first=Flat()),
    "zbox-first": Composite(Gamma(0.1), first=ZBox(-3.0, 3.0)),
}


def _run(model, x, ei, composite, index, restrict):
    """``(result, sizes of the row sets cut to)``; ``restrict=False`` never cuts."""
    # hops beyond the graph's depth: each target's subgraph is most of the graph, so most
    # rows of the deeper layers carry no relevance, as on a large graph.
    kw = dict(index=index, composite=composite, hops=12)
    calls = []
    real = base._Restricted.__init__

    def counting(self, *args):
        calls.append(args[0].numel())
        real(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base._Restricted, "__init__", counting)
        if not restrict:
            mp.setattr(base, "RESTRICT_MIN_ROWS", 2**62)
        res = sparse_lrp.explain(model, x, ei, **kw)
    return res, calls


def _assert_same_results(a, b):
    for field in ("node_feat", "node", "edge", "output"):
        x, y = getattr(a, field), getattr(b, field)
        x, y = (x.to_dense() if x.is_sparse else x), (y.to_dense() if y.is_sparse else y)
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert set(a.layers) == set(b.layers)
    for name, rec in b.layers.items():
        for key, want in rec.items():
            got = a.layers[name][key]
            got, want = (got.to_dense() if got.is_sparse else got), (want.to_dense() if want.is_sparse else want)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert a.conservation == pytest.approx(b.conservation, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("index", [5, [5, 17]])
@pytest.mark.parametrize("composite", list(COMPOSITES))
@pytest.mark.parametrize("name", list(MODELS))
def test_active_rows_equal_whole_map(name, composite, index, graph):
    x, ei = graph
    torch.manual_seed(1)
    model = MODELS[name]().double().eval()
    cut, cut_rows = _run(model, x, ei, COMPOSITES[composite], index, restrict=True)
    whole, whole_rows = _run(model, x, ei, COMPOSITES[composite], index, restrict=False)
    assert cut_rows, "no layer was cut down to its active rows"
    assert all(0 < k < N * (2 if isinstance(index, list) else 1) for k in cut_rows)
    assert whole_rows == []
    _assert_same_results(cut, whole)


@pytest.mark.parametrize("index", [5, [5, 17]])
def test_per_node_zbox_bounds(index, graph):
    """Bounds given per node follow their nodes into subgraphs; no cut misaligns them."""
    x, ei = graph
    torch.manual_seed(2)
    model = GCN(F, 8, 2, 3).double().eval()
    low, high = x - 1.0, x + 1.0
    res = sparse_lrp.explain(model, x, ei, index=index, composite=Composite(Epsilon(1e-6), first=ZBox(low, high)))
    # Reference: the full-graph pass (all rows explained at once), where bounds and
    # input align by construction, restricted to the target's row by its seed.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "RESTRICT_MIN_ROWS", 2**62)
        targets = [index] if isinstance(index, int) else index
        for t, i in enumerate(targets):
            out = model(x, ei).detach()
            seed = torch.zeros_like(out)
            seed[i, out[i].argmax()] = out[i].max()
            want = sparse_lrp.explain(
                model, x, ei, target=seed, composite=Composite(Epsilon(1e-6), first=ZBox(low, high))
            )
            got = res.node_feat if isinstance(index, int) else res.node_feat[t]
            torch.testing.assert_close(got, want.node_feat)


@pytest.mark.parametrize("index", [5, [5, 17]])
@pytest.mark.parametrize("composite", ["epsilon", "zplus", "gamma+wsquare", "zbox-first"])
@pytest.mark.parametrize("name", list(MODELS))
def test_layers_run_only_on_rows_that_reach_a_target(name, composite, index, dense_graph, monkeypatch):
    """Node targets' subgraphs run with their nodes ordered by hops from the target, so
    each layer computes (forward) and explains (backward) only the leading rows still
    within reach of a target. Results equal the whole-graph pass, which cuts nothing."""
    torch.manual_seed(3)
    _check_cut_equals_whole(MODELS[name]().double().eval(), COMPOSITES[composite], index, dense_graph, monkeypatch)


class Two(nn.Module):
    """``conv2(relu(conv1(x)))`` for a layer ``make(in, out)``; GCN2Conv also reads ``x_0``."""

    def __init__(self, make):
        super().__init__()
        self.conv1, self.conv2 = make(F, 8), make(8, 3)

    def forward(self, x, edge_index):
        if isinstance(self.conv1, GCN2Conv):
            h0 = torch.cat([x, x.new_zeros(x.shape[0], 2)], 1)
            h = torch.relu(self.conv1(h0, h0, edge_index))
            return self.conv2(h, h0, edge_index)[:, :3]
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


# Layers whose propagation runs over per-edge messages (gates, attention, selections, MLPs
# over edge rows) or reads degrees: their maps are cut like the rest.
MESSAGE_LAYERS = {
    "transformer": lambda i, o: TransformerConv(i, o, heads=2, concat=False),
    "res_gated": lambda i, o: ResGatedGraphConv(i, o),
    "le": lambda i, o: LEConv(i, o),
    "cluster": lambda i, o: ClusterGCNConv(i, o, diag_lambda=0.2),
    "gcn2": lambda i, o: GCN2Conv(8, alpha=0.2, theta=0.5, layer=1),
    "gen": lambda i, o: GENConv(i, o, msg_norm=True),
    "edge_max": lambda i, o: EdgeConv(nn.Sequential(nn.Linear(2 * i, o), nn.ReLU(), nn.Linear(o, o))),
    "sage_multi": lambda i, o: SAGEConv(i, o, aggr=["max", "mean", "softmax"]),
    "ssg": lambda i, o: SSGConv(i, o, alpha=0.2, K=2),
    "arma": lambda i, o: ARMAConv(i, o, num_stacks=2, num_layers=2),
    "mixhop": lambda i, o: MixHopConv(i, o // 2, powers=[0, 2]) if o == 8 else MixHopConv(i, 1, powers=[0, 1, 2]),
    "pna": lambda i, o: PNAConv(
        i, o, ["mean", "min", "max"], ["identity", "amplification"], deg=torch.tensor([0, 3, 5, 2])
    ),
}


@pytest.mark.parametrize("index", [5, [5, 17]])
@pytest.mark.parametrize("composite", ["epsilon", "zplus"])
@pytest.mark.parametrize("name", list(MESSAGE_LAYERS))
def test_message_layers_run_only_on_rows_that_reach_a_target(name, composite, index, dense_graph, monkeypatch):
    torch.manual_seed(4)
    model = Two(MESSAGE_LAYERS[name]).double().eval()
    # (EdgeConv with max: its MLP runs over edge rows, never cut, and its node mixing is a
    # selection, no map: nothing to cut, and still exact)
    _check_cut_equals_whole(model, COMPOSITES[composite], index, dense_graph, monkeypatch, cut=name != "edge_max")


def _check_cut_equals_whole(model, rule, index, dense_graph, monkeypatch, cut=True):
    x, ei = dense_graph
    monkeypatch.setattr(base, "RESTRICT_MIN_ROWS", 16)  # (small subgraphs: cut them too)
    cuts, prefixes = [], []
    live_rows, init = base.Context.live_rows, base._Restricted.__init__

    def spy_live(self, rows, further=0):
        keep = live_rows(self, rows, further)
        cuts.append(keep)
        return keep

    def spy_init(self, rows, *args, prefix=False):
        prefixes.append(prefix)
        init(self, rows, *args, prefix=prefix)

    monkeypatch.setattr(base.Context, "live_rows", spy_live)
    monkeypatch.setattr(base._Restricted, "__init__", spy_init)
    res = sparse_lrp.explain(model, x, ei, index=index, composite=rule)
    assert not cut or (any(k is not None for k in cuts) and any(prefixes)), "nothing was cut"
    out = model(x, ei).detach()
    targets = [index] if isinstance(index, int) else index
    for t, i in enumerate(targets):
        seed = torch.zeros_like(out)
        cls = int(res.target.view(-1)[t])
        seed[i, cls] = out[i, cls]
        whole = sparse_lrp.explain(model, x, ei, target=seed, composite=rule)

        def row(v, t=t):
            v = v.to_dense() if v.is_sparse else v
            return v if isinstance(index, int) else v[t]

        for field in ("node_feat", "edge"):
            torch.testing.assert_close(row(getattr(res, field)), getattr(whole, field), rtol=1e-10, atol=1e-12)
        for layer, rec in whole.layers.items():
            for key, want in rec.items():
                torch.testing.assert_close(row(res.layers[layer][key]), want, rtol=1e-10, atol=1e-12)


def _against_whole_graph(model, x, ei, index, **kw):
    """``(got, want)`` pairs: each target's row of a batched call (explained output,
    node_feat, edge) and the whole-graph pass seeded at that target."""
    res = sparse_lrp.explain(model, x, ei, index=index, target=0, **kw)
    out = model(x, ei).detach()
    pairs = []
    for t, i in enumerate(index):
        seed = torch.zeros_like(out)
        seed[i, 0] = out[i, 0]
        whole = sparse_lrp.explain(model, x, ei, target=seed, **kw)
        pairs.append((res.output[t], out[i, 0]))
        for field in ("node_feat", "edge"):
            got = getattr(res, field)
            pairs.append(((got.to_dense() if got.is_sparse else got)[t], getattr(whole, field)))
    return pairs


def test_maps_inside_a_message_passing_layer_without_handler_keep_its_hop():
    """A parameter-free MessagePassing runs as autograd computes it and counts its hop;
    counted on entry, a Linear its forward applies before propagating was cut one hop
    too early (outputs 0 instead of 0.11 and 0.84)."""
    from torch_geometric.nn import MessagePassing

    class Prop(MessagePassing):
        def forward(self, x, edge_index, fn):
            return self.propagate(edge_index, x=fn(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.p = nn.Linear(5, 8), nn.Linear(8, 3), Prop()

        def forward(self, x, ei):
            return self.p(torch.relu(self.p(x, ei, self.l1)), ei, self.l2)

    torch.manual_seed(0)
    x, ei = torch.randn(80, 5, dtype=torch.float64), torch.randint(0, 80, (2, 240))
    for got, want in _against_whole_graph(Net().double().eval(), x, ei, [0, 3], hops=2):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_a_custom_map_over_edges_as_many_as_the_subgraph_nodes_is_not_cut(clean_handlers):
    """A handler's map over per-edge messages whose count equals the union's nodes (5:
    4 nodes and a ghost) was taken for a node map and cut (a message zeroed)."""
    from torch_geometric.nn import MessagePassing

    class EdgeLin(MessagePassing):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, edge_index):
            ei = edge_index[:, edge_index[0] != edge_index[1]]
            msg = self.lin(x.index_select(0, ei[0]))
            return torch.zeros(x.shape[0], 2, dtype=x.dtype).index_add_(0, ei[1], msg)

    def handler(call, x, edge_index):
        ei = edge_index[:, edge_index[0] != edge_index[1]]
        msg = call.linear(x.index_select(0, ei[0]), call.module.lin.weight, call.module.lin.bias)
        return call.messages(msg, torch.stack([torch.arange(ei.shape[1]), ei[1]]), x.shape[0], None)

    sparse_lrp.register_handler(EdgeLin, handler, subgraph=())
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64)
    ei = torch.tensor([[1, 2, 2, 3, 3, 0, 4], [0, 0, 0, 0, 0, 0, 5]])  # node 0: 5 in-edges and a loop
    for got, want in _against_whole_graph(EdgeLin().double().eval(), x, ei, [0], composite="epsilon"):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("norm", ["l2", "std", "sqrt"])
@pytest.mark.parametrize("rule", [Epsilon(1e-6), Composite(Epsilon(1e-6), first=WSquare())])
def test_model_code_that_makes_nan_of_rows_no_target_reaches(norm, rule, head, monkeypatch):
    """Rows cut off are zeros; a row normalisation in the model's own code (its statistics
    detached: a per-row scale, as LRP's LN-rule takes it) makes them NaN (0/0). The
    backward read them and raised an overflow error; it reads only the rows that can
    reach a target, and a map that is not cut (a Linear head) and meets such rows makes
    the pass rerun without cutting."""
    from torch_geometric.nn import GraphConv

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.head = GraphConv(5, 6), GraphConv(6, 6 if head else 3), nn.Linear(6, 3)

        def forward(self, x, ei):
            h = self.c1(x, ei)
            if head:
                h = self.c2(torch.relu(h), ei)
            if norm == "l2":
                h = h / h.norm(dim=1, keepdim=True).detach()
            elif norm == "std":
                h = (h - h.mean(1, keepdim=True)) / h.std(1, keepdim=True).detach()
            else:
                h = h.abs().sqrt()
            return self.head(h) if head else self.c2(torch.relu(h), ei)

    torch.manual_seed(0)
    x, ei = torch.randn(50, 5, dtype=torch.float64), torch.randint(0, 50, (2, 150))
    model = Net().double().eval()
    for min_rows in (2048, 16):  # (the whole map, and the map cut down to its live rows)
        monkeypatch.setattr(base, "RESTRICT_MIN_ROWS", min_rows)
        for got, want in _against_whole_graph(model, x, ei, [0, 3], composite=rule):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_per_edge_messages_read_only_live_rows():
    """GINE's per-edge messages relu(x_j + e) read rows the cut left as zeros, which a row
    norm in the model's code made NaN: edge relevance came out NaN (11 of 700 edges)."""
    from torch_geometric.nn import GINEConv, GraphConv

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = GraphConv(5, 6), GINEConv(nn.Linear(6, 3), edge_dim=2)

        def forward(self, x, ei, edge_attr):
            h = self.c1(x, ei)
            return self.c2(h / h.norm(dim=1, keepdim=True).detach(), ei, edge_attr)

    torch.manual_seed(0)
    x, ei = torch.randn(200, 5, dtype=torch.float64), torch.randint(0, 200, (2, 700))
    ea = torch.randn(700, 2, dtype=torch.float64)
    model = Net().double().eval()
    res = sparse_lrp.explain(model, x, ei, index=[0, 3, 7], target=0, edge_attr=ea)
    out = model(x, ei, ea).detach()
    for t, i in enumerate((0, 3, 7)):
        seed = torch.zeros_like(out)
        seed[i, 0] = out[i, 0]
        whole = sparse_lrp.explain(model, x, ei, target=seed, edge_attr=ea)
        for field in ("node_feat", "edge", "edge_attr"):
            got = getattr(res, field)
            got = got.to_dense() if got.is_sparse else got
            torch.testing.assert_close(got[t], getattr(whole, field), rtol=1e-9, atol=1e-12)


def test_a_layer_called_twice_widens_before_its_output_is_judged():
    """num_hops counts a module called twice once: the first pass runs on 1-hop subgraphs,
    where the second call leaves the target a zero row that the model's own norm makes
    NaN. That raised 'the explained output is not finite' before the pass could widen."""
    from torch_geometric.nn import SAGEConv

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = SAGEConv(5, 5, root_weight=False, bias=False)

        def forward(self, x, ei):
            h = self.c(self.c(x, ei), ei)
            return h / h.norm(dim=1, keepdim=True).detach()

    torch.manual_seed(0)
    n = 50
    x = torch.randn(n, 5, dtype=torch.float64)
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    ei = torch.cat([torch.randint(0, n, (2, 150)), ring], 1)
    for index in ([0], [0, 3]):
        for got, want in _against_whole_graph(Net().double().eval(), x, ei, index):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("min_rows", [2048, 16])
@pytest.mark.parametrize("first, second", [("gcn", "gat"), ("gat2", "gin"), ("tag", "gine")])
def test_a_row_norm_of_cut_rows_before_attention_or_edge_features(first, second, min_rows, monkeypatch):
    """Rows the cut leaves as zeros, made NaN by the model's own row norm, must reach no
    result: GAT's attention over them (weights of edges into rows no target reaches, and a
    per-head map that is not cut) raised overflow errors; GINE's messages gave NaN edge
    relevance."""
    from torch_geometric.nn import GATConv, GCNConv, GINConv, GINEConv, TAGConv

    monkeypatch.setattr(base, "RESTRICT_MIN_ROWS", min_rows)
    first_layer = {
        "gcn": lambda: GCNConv(4, 6),
        "gat2": lambda: GATConv(4, 3, heads=2),
        "tag": lambda: TAGConv(4, 6, K=2),
    }
    second_layer = {
        "gat": lambda: GATConv(6, 4, heads=1),
        "gin": lambda: GINConv(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4))),
        "gine": lambda: GINEConv(nn.Linear(6, 4), edge_dim=3),
    }

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.head = first_layer[first](), second_layer[second](), nn.Linear(4, 3)

        def forward(self, x, ei, edge_attr=None):
            h = self.c1(x, ei)
            h = h / h.norm(dim=1, keepdim=True).detach()
            h = self.c2(h, ei, edge_attr) if second == "gine" else self.c2(h, ei)
            return self.head(torch.relu(h))

    g = torch.Generator().manual_seed(0)
    x, ei = torch.randn(100, 4, generator=g, dtype=torch.float64), torch.randint(0, 100, (2, 300), generator=g)
    kw = {"edge_attr": torch.randn(300, 3, generator=g, dtype=torch.float64)} if second == "gine" else {}
    torch.manual_seed(0)
    model = Net().double().eval()
    assert torch.isfinite(model(x, ei, **kw)).all()
    res = sparse_lrp.explain(model, x, ei, index=[5, 7, 11], target=0, composite="zplus", **kw)
    out = model(x, ei, **kw).detach()
    for t, i in enumerate((5, 7, 11)):
        seed = torch.zeros_like(out)
        seed[i, 0] = out[i, 0]
        whole = sparse_lrp.explain(model, x, ei, target=seed, composite="zplus", **kw)
        for field in ("node_feat", "edge"):
            got = getattr(res, field)
            got = got.to_dense() if got.is_sparse else got
            torch.testing.assert_close(got[t], getattr(whole, field), rtol=1e-9, atol=1e-12)
