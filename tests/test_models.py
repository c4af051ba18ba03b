"""Whole models: conservation, LRP-0 == gradient × input, batched targets, target handling.

Models are PyG's (GCN, GIN, GraphSAGE, GAT, MLP, JK variants, batch norm) and small
hand-written ones (GINE with edge features, residual, graph-level pooling), in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import DT, assert_close, grad_x_input, make_batch, make_graph, randomise, zero_biases
from torch import nn
from torch_geometric.nn.models import GAT, GCN, GIN, MLP, GraphSAGE

import sparse_lrp
from sparse_lrp import Epsilon

N, F, H, C, D = 20, 5, 8, 3, 3
EI = make_graph(N, extra=24, seed=2)
E = EI.shape[1]
LRP0 = Epsilon(0.0)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, F, generator=g, dtype=DT)
    ea = torch.randn(E, D, generator=g, dtype=DT)
    return x, ea


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class GINEModel(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = gnn.GINEConv(
            nn.Sequential(nn.Linear(F, H, bias=bias), nn.ReLU(), nn.Linear(H, H, bias=bias)), edge_dim=D
        )
        self.conv2 = gnn.GINEConv(nn.Linear(H, C, bias=bias), edge_dim=D, train_eps=True)

    def forward(self, x, edge_index, edge_attr):
        h = torch.relu(self.conv1(x, edge_index, edge_attr))
        return self.conv2(h, edge_index, edge_attr)


class Residual(nn.Module):
    """``h = h + conv(h)`` twice, between a Linear stem and a Linear head."""

    def __init__(self, bias=True):
        super().__init__()
        self.stem = nn.Linear(F, H, bias=bias)
        self.conv1 = gnn.GCNConv(H, H, bias=bias)
        self.conv2 = gnn.GraphConv(H, H, bias=bias)
        self.head = nn.Linear(H, C, bias=bias)

    def forward(self, x, edge_index):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.conv1(h, edge_index))
        h = h + self.conv2(h, edge_index)
        return self.head(torch.relu(h))


class APPNPModel(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(F, H, bias=bias), nn.Linear(H, C, bias=bias)
        self.prop = gnn.APPNP(K=3, alpha=0.2)

    def forward(self, x, edge_index):
        return self.prop(self.lin2(torch.relu(self.lin1(x))), edge_index)


class ChebTag(nn.Module):
    """Multi-hop layers: ChebConv (Laplacian normalised by out-degree) then TAGConv (K=2)."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = gnn.ChebConv(F, H, K=3, bias=bias)
        self.conv2 = gnn.TAGConv(H, C, K=2, bias=bias)

    def forward(self, x, edge_index):
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


class Pooled(nn.Module):
    """Graph-level: two convs, a global pooling, a Linear head."""

    def __init__(self, pool, bias=True, out=C):
        super().__init__()
        self.conv1 = gnn.GCNConv(F, H, bias=bias)
        self.conv2 = gnn.GINConv(nn.Linear(H, H, bias=bias))
        self.pool = pool
        self.head = nn.Linear(H, out, bias=bias)

    def forward(self, x, edge_index, batch=None):
        h = torch.relu(self.conv1(x, edge_index))
        h = torch.relu(self.conv2(h, edge_index))
        return self.head(self.pool(h, batch))


def _bn_stats(model, seed=5):
    """Non-trivial running statistics for every batch norm (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=DT) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=DT) + 0.5)
    return model


def _bn_bias_free(model):
    """Batch norm with zero running mean and zero shift: a pure per-channel scale."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.zero_()
    return model


# name -> builder(bias) ; kwargs names ; node-level
NODE_MODELS = {
    "gcn": lambda bias: GCN(F, H, 2, C, bias=bias),
    "gin": lambda bias: GIN(F, H, 2, C) if bias else zero_biases(GIN(F, H, 2, C)),
    "sage": lambda bias: GraphSAGE(F, H, 2, C, bias=bias),
    "gat": lambda bias: GAT(F, H, 2, C, heads=2, bias=bias),
    "gine": lambda bias: GINEModel(bias) if bias else zero_biases(GINEModel(bias)),
    "residual": lambda bias: Residual(bias),
    "jk_cat": lambda bias: (
        GCN(F, H, 3, C, jk="cat", bias=bias) if bias else zero_biases(GCN(F, H, 3, C, jk="cat", bias=False))
    ),
    "jk_max": lambda bias: (
        GCN(F, H, 3, C, jk="max", bias=bias) if bias else zero_biases(GCN(F, H, 3, C, jk="max", bias=False))
    ),
    "batch_norm": lambda bias: (
        _bn_stats(GraphSAGE(F, H, 3, C, norm="batch_norm", bias=bias))
        if bias
        else _bn_bias_free(zero_biases(_bn_stats(GraphSAGE(F, H, 3, C, norm="batch_norm", bias=False))))
    ),
    "appnp": lambda bias: APPNPModel(bias),
    "cheb_tag": lambda bias: ChebTag(bias),
}
# models whose LRP-0 is plain gradient × input (no attention)
GRAD_MODELS = ["gcn", "gin", "sage", "gine", "residual", "jk_cat", "jk_max", "batch_norm", "appnp", "cheb_tag"]
POOLS = {"add": gnn.global_add_pool, "mean": gnn.global_mean_pool, "max": gnn.global_max_pool}


def _build(name, bias):
    model = NODE_MODELS[name](bias).double()
    if bias:
        randomise(model, seed=4, scale=0.5)
        _bn_stats(model)
    return model.eval()


def _kw(name, ea):
    return {"edge_attr": ea} if name == "gine" else {}


def _assert_bias_free(model):
    for pname, p in model.named_parameters():
        if pname.split(".")[-1] == "bias":
            assert not bool(p.any()), pname


# --------------------------------------------------------------------------------------
# Conservation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [4, None])
@pytest.mark.parametrize("name", list(NODE_MODELS))
def test_conservation_bias_free_lrp0(name, index, data, rows_mode):
    x, ea = data
    model = _build(name, bias=False)
    _assert_bias_free(model)
    kw = _kw(name, ea)
    y = model(x, EI, **kw).detach()
    res = sparse_lrp.explain(model, x, EI, index=index, target=1, composite=LRP0, **kw)
    logit = y[:, 1].sum() if index is None else y[index, 1]
    c = res.conservation
    assert_close(res.output.sum(), logit)
    assert c["out"] == pytest.approx(float(logit), rel=1e-9, abs=1e-12)
    assert c["in"] == pytest.approx(c["out"], rel=1e-7, abs=1e-9)
    assert abs(c["absorbed"]) < 1e-9 and abs(c["lost"]) < 1e-9
    total_in = res.node_feat.sum() + (res.edge_attr.sum() if res.edge_attr is not None else 0)
    assert_close(total_in, logit)
    assert_close(res.node, res.node_feat.sum(1))


@pytest.mark.parametrize("composite", [Epsilon(0.05), "zplus", "gamma"])
@pytest.mark.parametrize("name", list(NODE_MODELS))
def test_conservation_with_biases(name, composite, data, rows_mode):
    x, ea = data
    model = _build(name, bias=True)
    kw = _kw(name, ea)
    y = model(x, EI, **kw).detach()
    res = sparse_lrp.explain(model, x, EI, index=6, composite=composite, **kw)
    c = res.conservation
    cls = int(y[6].argmax())
    assert int(res.target) == cls
    assert_close(res.output, y[6, cls].reshape(1))
    assert c["out"] == pytest.approx(float(y[6, cls]), rel=1e-9)
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-7, abs=1e-9)
    total_in = float(res.node_feat.sum()) + (float(res.edge_attr.sum()) if res.edge_attr is not None else 0.0)
    assert c["in"] == pytest.approx(total_in, rel=1e-9, abs=1e-12)
    assert torch.isfinite(res.node_feat).all() and torch.isfinite(res.edge).all()


def test_biases_really_absorb(data):
    """Guard for the conservation test: the biased models do absorb relevance."""
    x, _ = data
    res = sparse_lrp.explain(_build("gcn", bias=True), x, EI, index=6, composite=LRP0)
    assert abs(res.conservation["absorbed"]) > 1e-3


@pytest.mark.parametrize("bias", [False, True])
def test_pyg_mlp_without_graph(bias):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, F, generator=g, dtype=DT)
    model = MLP([F, H, H, C], norm="batch_norm", bias=bias, dropout=0.3).double()
    _bn_stats(model)
    if bias:
        randomise(model, seed=9, scale=0.5)
    else:
        _bn_bias_free(model)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.bias.data.zero_()
    model.eval()
    y = model(x).detach()
    res = sparse_lrp.explain(model, x, index=2, target=0, composite=LRP0)
    c = res.conservation
    assert c["out"] == pytest.approx(float(y[2, 0]), rel=1e-9)
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-7, abs=1e-9)
    assert res.edge is None
    if not bias:
        (gx,) = grad_x_input(lambda x_: model(x_)[2, 0], x)
        assert_close(res.node_feat, gx)
        assert_close(res.node_feat.sum(), y[2, 0])


# --------------------------------------------------------------------------------------
# LRP-0 == gradient × input on whole bias-free models
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("index,target", [(4, 0), (N - 2, 2), (None, 1)])
@pytest.mark.parametrize("name", GRAD_MODELS)
def test_lrp0_is_gradient_times_input(name, index, target, data, rows_mode):
    x, ea = data
    model = _build(name, bias=False)
    kw = _kw(name, ea)

    def logit(x_, *rest):
        out = model(x_, EI, **({"edge_attr": rest[0]} if rest else {}))
        return out[:, target].sum() if index is None else out[index, target]

    res = sparse_lrp.explain(model, x, EI, index=index, target=target, composite=LRP0, **kw)
    if kw:
        gx, gea = grad_x_input(logit, x, ea)
        assert_close(res.edge_attr, gea)
    else:
        (gx,) = grad_x_input(logit, x)
    assert_close(res.node_feat, gx)


@pytest.fixture
def graph_batch():
    ei, batch = make_batch((6, 7, 5, 8), seed=3)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(batch.numel(), F, generator=g, dtype=DT)
    return x, ei, batch


@pytest.mark.parametrize("pool", list(POOLS))
def test_graph_level_lrp0_is_gradient_times_input_and_conserves(pool, graph_batch):
    x, ei, batch = graph_batch
    model = Pooled(POOLS[pool], bias=False).double().eval()
    y = model(x, ei, batch).detach()
    for g in range(4):
        res = sparse_lrp.explain(model, x, ei, index=g, target=1, composite=LRP0, batch=batch)
        (gx,) = grad_x_input(lambda x_, g=g: model(x_, ei, batch)[g, 1], x)
        assert_close(res.node_feat, gx)
        assert_close(res.node_feat.sum(), y[g, 1])
        assert res.conservation["in"] == pytest.approx(float(y[g, 1]), rel=1e-7, abs=1e-9)
        assert torch.all(res.node_feat[batch != g] == 0)  # other graphs get nothing
        assert torch.all(res.edge[batch[ei[1]] != g] == 0)


@pytest.mark.parametrize("pool", list(POOLS))
def test_graph_level_with_biases_conserves(pool, graph_batch):
    x, ei, batch = graph_batch
    model = randomise(Pooled(POOLS[pool]).double(), seed=2, scale=0.5).eval()
    res = sparse_lrp.explain(model, x, ei, index=2, composite="gamma", batch=batch)
    c = res.conservation
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-7, abs=1e-9)


def test_graph_level_all_graphs_without_index(graph_batch):
    """Explaining a graph model without ``index`` explains all its graphs jointly."""
    x, ei, batch = graph_batch
    model = Pooled(gnn.global_add_pool, bias=False).double().eval()
    y = model(x, ei, batch).detach()
    res = sparse_lrp.explain(model, x, ei, target=0, composite=LRP0, batch=batch)
    (gx,) = grad_x_input(lambda x_: model(x_, ei, batch)[:, 0].sum(), x)
    assert_close(res.node_feat, gx)
    assert_close(res.output.sum(), y[:, 0].sum())


def test_graph_level_task_level_graph_all_graphs(graph_batch):
    x, ei, batch = graph_batch
    model = Pooled(gnn.global_mean_pool, bias=False).double().eval()
    y = model(x, ei, batch).detach()
    res = sparse_lrp.explain(model, x, ei, target=0, composite=LRP0, task_level="graph", batch=batch)
    (gx,) = grad_x_input(lambda x_: model(x_, ei, batch)[:, 0].sum(), x)
    assert_close(res.node_feat, gx)
    assert_close(res.output.sum(), y[:, 0].sum())


# --------------------------------------------------------------------------------------
# Batched per-target results == single-target calls
# --------------------------------------------------------------------------------------

# cheb_tag: k-hop subgraphs must keep out-degrees exact (ChebConv) and span K hops per layer.
BATCH_MODELS = ["gcn", "gat", "gin", "sage", "gine", "appnp", "jk_cat", "cheb_tag"]
INDICES = [3, 7, 11, N - 1]


def _assert_same(batched, t, single, E_=E):
    assert_close(batched.node_feat[t], single.node_feat)
    assert_close(batched.node[t], single.node)
    assert_close(batched.edge[t], single.edge)
    assert_close(batched.output[t], single.output.reshape(()))
    if single.target is not None:
        assert int(batched.target[t]) == int(single.target.reshape(()))
    if single.edge_attr is not None:
        assert_close(batched.edge_attr[t], single.edge_attr)
    for layer, rec in single.layers.items():
        for key in ("edge", "node"):
            if key in rec:
                assert_close(batched.layers[layer][key][t], rec[key])


@pytest.mark.parametrize("composite", ["zplus", "gamma"])
@pytest.mark.parametrize("name", BATCH_MODELS)
def test_batched_targets_equal_single_calls(name, composite, data, rows_mode):
    x, ea = data
    model = _build(name, bias=True)
    kw = _kw(name, ea)
    many = sparse_lrp.explain(model, x, EI, index=INDICES, composite=composite, **kw)
    T = len(INDICES)
    assert many.node_feat.shape == (T, N, F)
    assert many.node.shape == (T, N) and many.edge.shape == (T, E) and many.output.shape == (T,)
    if name == "gine":
        assert many.edge_attr.shape == (T, E, D)
    assert torch.equal(many.index, torch.tensor(INDICES))
    for t, i in enumerate(INDICES):
        one = sparse_lrp.explain(model, x, EI, index=i, composite=composite, **kw)
        _assert_same(many, t, one)


def test_batched_targets_with_given_classes(data):
    x, _ = data
    model = _build("gcn", bias=True)
    classes = [0, 2, 1, 2]
    many = sparse_lrp.explain(model, x, EI, index=INDICES, target=torch.tensor(classes), composite="zplus")
    assert many.target.tolist() == classes
    for t, (i, k) in enumerate(zip(INDICES, classes)):
        one = sparse_lrp.explain(model, x, EI, index=i, target=k, composite="zplus")
        _assert_same(many, t, one)


def test_batched_tensor_index_and_duplicates(data):
    x, _ = data
    model = _build("sage", bias=True)
    idx = torch.tensor([5, 5, 0])
    many = sparse_lrp.explain(model, x, EI, index=idx)
    for t, i in enumerate(idx.tolist()):
        _assert_same(many, t, sparse_lrp.explain(model, x, EI, index=i))


@pytest.mark.parametrize("pool", list(POOLS))
def test_batched_graph_targets_equal_single_calls(pool, graph_batch):
    x, ei, batch = graph_batch
    model = randomise(Pooled(POOLS[pool]).double(), seed=6, scale=0.5).eval()
    many = sparse_lrp.explain(model, x, ei, index=[0, 2], composite="zplus", batch=batch)
    assert many.node_feat.shape == (2, x.shape[0], F)
    for t, g in enumerate([0, 2]):
        one = sparse_lrp.explain(model, x, ei, index=g, composite="zplus", batch=batch)
        _assert_same(many, t, one, ei.shape[1])
        # and the same as explaining that graph on its own
        nodes = (batch == g).nonzero().view(-1)
        keep = batch[ei[0]] == g
        sub_ei = ei[:, keep] - nodes[0]
        alone = sparse_lrp.explain(
            model, x[nodes], sub_ei, index=0, composite="zplus", batch=torch.zeros(nodes.numel(), dtype=torch.long)
        )
        assert_close(many.node_feat[t][nodes], alone.node_feat)
        assert_close(many.edge[t][keep], alone.edge)
        assert_close(many.output[t], alone.output.reshape(()))


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


def test_default_target_is_predicted_class(data):
    x, _ = data
    model = _build("gcn", bias=True)
    y = model(x, EI).detach()
    for i in (0, 9, N - 1):
        res = sparse_lrp.explain(model, x, EI, index=i)
        assert int(res.target) == int(y[i].argmax())
        assert_close(res.output, y[i].max().reshape(1))
        given = sparse_lrp.explain(model, x, EI, index=i, target=int(y[i].argmax()))
        assert_close(res.node_feat, given.node_feat)


def test_given_class_is_explained(data):
    x, _ = data
    model = _build("gcn", bias=False)
    y = model(x, EI).detach()
    for k in range(C):
        res = sparse_lrp.explain(model, x, EI, index=5, target=k, composite=LRP0)
        assert int(res.target) == k
        assert_close(res.output, y[5, k].reshape(1))
        assert_close(res.node_feat.sum(), y[5, k])


def test_float_relevance_target(data):
    """LRP-0 is linear in the seed ``R / y``: a float target mixes the class explanations."""
    x, _ = data
    model = _build("sage", bias=False)
    y = model(x, EI).detach()
    R = torch.zeros(N, C, dtype=DT)
    R[8] = torch.tensor([0.3, -1.2, 2.0], dtype=DT)
    R[2, 1] = 0.7
    res = sparse_lrp.explain(model, x, EI, target=R, composite=LRP0)
    expect = torch.zeros(N, F, dtype=DT)
    for i, k in [(8, 0), (8, 1), (8, 2), (2, 1)]:
        one = sparse_lrp.explain(model, x, EI, index=i, target=k, composite=LRP0)
        expect += R[i, k] / y[i, k] * one.node_feat
    assert_close(res.node_feat, expect)
    assert_close(res.node_feat.sum(), R.sum())
    assert res.target is None
    # a float relevance for one explained row only
    one_row = sparse_lrp.explain(model, x, EI, index=8, target=R[8:9], composite=LRP0)
    full_row = torch.zeros(N, C, dtype=DT)
    full_row[8] = R[8]
    assert_close(one_row.node_feat, sparse_lrp.explain(model, x, EI, target=full_row, composite=LRP0).node_feat)
    assert_close(one_row.output.sum(), R[8].sum())


def test_regression_model_with_one_output(data):
    x, _ = data
    model = GCN(F, H, 2, 1, bias=False).double().eval()
    y = model(x, EI).detach()
    res = sparse_lrp.explain(model, x, EI, index=3, composite=LRP0)
    assert_close(res.output, y[3])
    assert_close(res.node_feat.sum(), y[3, 0])
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[3, 0], x)
    assert_close(res.node_feat, gx)
    # a float relevance target on a regression output
    R = torch.zeros(N, 1, dtype=DT)
    R[3] = 2.5
    res2 = sparse_lrp.explain(model, x, EI, target=R, composite=LRP0)
    assert_close(res2.node_feat, gx * 2.5 / y[3, 0])


def test_binary_one_logit_classes(data):
    x, _ = data
    model = GCN(F, H, 2, 1, bias=False).double().eval()
    y = model(x, EI).detach()
    pos = sparse_lrp.explain(model, x, EI, index=3, target=1, composite=LRP0)
    neg = sparse_lrp.explain(model, x, EI, index=3, target=0, composite=LRP0)
    assert_close(pos.output, y[3])
    assert_close(neg.output, -y[3])
    assert_close(neg.node_feat, -pos.node_feat)
    with pytest.raises(ValueError, match="classes 0 or 1"):
        sparse_lrp.explain(model, x, EI, index=3, target=2)


class Activations(nn.Module):
    """Bias-free GCN layers joined by LeakyReLU, PReLU and an in-place ReLU, then Tanh."""

    def __init__(self, last):
        super().__init__()
        self.c1 = gnn.GCNConv(F, H, bias=False)
        self.a1 = nn.LeakyReLU(0.2)
        self.c2 = gnn.GCNConv(H, H, bias=False)
        self.a2 = nn.PReLU(H, init=0.3)
        self.lin = nn.Linear(H, H, bias=False)
        self.a3 = nn.ReLU(inplace=True)
        self.head = nn.Linear(H, C, bias=False)
        self.last = last

    def forward(self, x, edge_index):
        h = self.a2(self.c2(self.a1(self.c1(x, edge_index)), edge_index))
        return self.head(self.last(self.a3(self.lin(h))))


def test_homogeneous_activations_keep_lrp0_equal_to_gradient_times_input(data):
    # LeakyReLU, PReLU and ReLU (even in place) are positively homogeneous: LRP-0 on a
    # bias-free network of them is gradient x input, and sums to the logit.
    x, _ = data
    model = randomise(Activations(nn.Identity()).double(), seed=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = sparse_lrp.explain(model, x, EI, index=6, target=2, composite=LRP0)
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[6, 2], x)
    assert_close(res.node_feat, gx)
    assert_close(res.node_feat.sum(), model(x, EI)[6, 2].detach())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_non_homogeneous_activation_passes_relevance_unchanged(data):
    # Tanh is not homogeneous: the Pass rule hands R_y to x as is, so relevance is still
    # conserved end to end (bias-free LRP-0), though it is no longer gradient x input.
    x, _ = data
    model = randomise(Activations(nn.Tanh()).double(), seed=8).eval()
    res = sparse_lrp.explain(model, x, EI, index=6, target=2, composite=LRP0)
    c = res.conservation
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-9, abs=1e-12)
    assert c["out"] == pytest.approx(float(model(x, EI)[6, 2].detach()), rel=1e-12)


# --------------------------------------------------------------------------------------
# Subgraph borders: GCN normalisation reads in-degrees as weight sums, so the edges into
# a border node travel as one merged edge (with its self-loops kept apart)
# --------------------------------------------------------------------------------------


class WeightedGCN(nn.Module):
    def __init__(self, scale_inside: bool):
        super().__init__()
        self.scale_inside = scale_inside
        self.conv1 = gnn.GCNConv(F, H, bias=False)
        self.conv2 = gnn.GCNConv(H, C, bias=False)

    def forward(self, x, edge_index, edge_weight=None):
        # Weights computed inside the model are not the ones the subgraph summed.
        w = edge_weight * 1.5 if self.scale_inside and edge_weight is not None else edge_weight
        return self.conv2(torch.relu(self.conv1(x, edge_index, w)), edge_index, w)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scale_inside", [False, True])
def test_merged_border_edges_keep_gcn_exact(scale_inside, weighted, data, monkeypatch):
    import importlib

    explain_module = importlib.import_module("sparse_lrp.explain")
    x, _ = data
    g = torch.Generator().manual_seed(21)
    # Weights far from 1 on every edge, self-loops included: a wrong degree shows.
    ew = torch.rand(E, generator=g, dtype=DT) * 3 + 0.2 if weighted else None
    model = randomise(WeightedGCN(scale_inside).double(), seed=5, scale=0.5).eval()
    kw = {"edge_weight": ew} if weighted else {}
    merges = []
    real = explain_module._khop_union

    def spy(*args, **kwargs):
        merges.append(kwargs.get("merge", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_module, "_khop_union", spy)
    y = model(x, EI, **kw).detach()
    many = sparse_lrp.explain(model, x, EI, index=INDICES, composite=LRP0, **kw)
    for t, i in enumerate(INDICES):
        cls = int(y[i].argmax())
        (gx,) = grad_x_input(lambda x_, i=i, cls=cls: model(x_, EI, **kw)[i, cls], x)
        assert_close(many.node_feat[t], gx)
        one = sparse_lrp.explain(model, x, EI, index=i, composite=LRP0, **kw)
        assert_close(one.node_feat, gx)
        _assert_same(many, t, one)
    # Merged first; weights the model computes itself send it back to every edge.
    assert merges[0] is True
    assert (False in merges) == (scale_inside and weighted)


def test_merged_union_keeps_border_self_loops_and_counts():
    from sparse_lrp.explain import _khop_union

    # 0 -> 1 -> 2 (target 2, one hop): node 1 is the border; its in-edges are 0 -> 1,
    # 3 -> 1, 3 -> 1 (a multi-edge) and a self-loop 1 -> 1.
    ei = torch.tensor([[0, 1, 3, 1, 3, 2], [1, 2, 1, 1, 1, 2]])
    _, node_v, ghost, _, edge_e, union_ei, _, hop = _khop_union(
        ei, 4, torch.tensor([2]), 1, boundary_degrees=True, merge=True
    )
    # Hops from the target: the target 0, the border 1, the ghost beyond (2).
    hops = {(int(v), bool(g)): int(h) for v, g, h in zip(node_v, ghost, hop)}
    assert hops == {(2, False): 0, (1, False): 1, (2, True): 2}
    E_ = ei.shape[1]
    kept = sorted(int(e) for e in edge_e if e < E_)
    # 1 -> 2 and the self-loop 2 -> 2 (target's in-edges), the border's self-loop 1 -> 1.
    assert kept == [1, 3, 5]
    assert int((edge_e == E_).sum()) == 1  # one merged edge stands for 0 -> 1 and 3 -> 1 (x2)
    m = int((edge_e == E_).nonzero())
    src, dst = union_ei[:, m]
    assert bool(ghost[src]) and int(node_v[dst]) == 1


def test_weight_transforms_follow_in_place_and_replaced_weights():
    """A layer's transformed weights (w + γw⁺, w⁺, w⁻) are kept between calls: changing
    the weight in place, or replacing its data, must give the fresh model's result."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(F, H), nn.ReLU(), nn.Linear(H, C)).double().eval()
    x = torch.randn(6, F, dtype=DT)
    for rule in (sparse_lrp.Gamma(0.5), sparse_lrp.ZPlus(), sparse_lrp.AlphaBeta()):
        sparse_lrp.explain(model, x, None, composite=rule)  # fills the cache
        with torch.no_grad():
            model[0].weight.mul_(-1.5)  # in place: a new version of the same tensor
        after = sparse_lrp.explain(model, x, None, composite=rule, target=0).node_feat
        fresh = sparse_lrp.explain(copy.deepcopy(model), x, None, composite=rule, target=0).node_feat
        assert_close(after, fresh)
        model[2].weight.data = torch.randn(C, H, dtype=DT)  # new storage, same version count
        after = sparse_lrp.explain(model, x, None, composite=rule, target=0).node_feat
        fresh = sparse_lrp.explain(copy.deepcopy(model), x, None, composite=rule, target=0).node_feat
        assert_close(after, fresh)


class SharedLayerLoop(nn.Module):
    """One conv applied ``times`` times (shared weights): more hops than layers."""

    def __init__(self, conv: nn.Module, times: int = 3):
        super().__init__()
        self.inp = nn.Linear(F, H, bias=False)
        self.conv = conv
        self.out = nn.Linear(H, C, bias=False)
        self.times = times

    def forward(self, x, edge_index):
        h = self.inp(x)
        for _ in range(self.times):
            h = torch.relu(self.conv(h, edge_index))
        return self.out(h)


@pytest.mark.parametrize(
    "conv,hops",
    [
        (lambda: gnn.GraphConv(H, H, bias=False), 3),
        (lambda: gnn.GCNConv(H, H, bias=False), 3),
        (lambda: gnn.SGConv(H, H, K=2, bias=False), 6),
    ],
    ids=["GraphConv", "GCNConv", "SGConv-K2"],
)
def test_layer_called_repeatedly_reaches_its_whole_receptive_field(conv, hops, data):
    """Node targets run on k-hop subgraphs: a layer called three times reaches three
    times its hops. LRP-0 of single and batched targets equals gradient × input of the
    full graph (a chain graph, where a too-small subgraph drops far nodes)."""
    x, _ = data
    chain = torch.arange(N - 1)
    ei = torch.cat([torch.stack([chain, chain + 1]), torch.stack([chain + 1, chain])], 1)
    model = zero_biases(randomise(SharedLayerLoop(conv()).double())).eval()
    targets = [2, 9, 15]
    many = sparse_lrp.explain(model, x, ei, index=targets, target=1, composite=LRP0)
    for t, node in enumerate(targets):
        (ref,) = grad_x_input(lambda v, node=node: model(v, ei)[node, 1], x)
        reached = ref.abs().sum(1).nonzero().flatten()
        assert (reached - node).abs().max() == hops  # the reference reaches the full field
        single = sparse_lrp.explain(model, x, ei, index=node, target=1, composite=LRP0)
        assert_close(single.node_feat, ref)
        assert_close(many.node_feat[t], ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["gcn", "gin"])
def test_half_precision_models_match_float32(name, dtype, data):
    """A half-precision model is explained in its dtype (graph layers fall back from CSR
    products, which torch lacks there on CPU) and agrees with its float32 explanation
    to half-precision accuracy."""
    x, _ = data
    model = _build(name, bias=True).float()
    half = _build(name, bias=True).to(dtype)
    half.load_state_dict(model.state_dict())
    targets, classes = [1, 6, 9], torch.tensor([0, 1, 2])
    ref = sparse_lrp.explain(model, x.float(), EI, index=targets, target=classes, composite="zplus")
    res = sparse_lrp.explain(half, x.to(dtype), EI, index=targets, target=classes, composite="zplus")
    assert res.node_feat.dtype == dtype and torch.isfinite(res.node_feat).all()
    scale = float(ref.node_feat.abs().max())
    torch.testing.assert_close(res.node_feat.float(), ref.node_feat, rtol=0, atol=3e-2 * scale)
    torch.testing.assert_close(res.edge.float(), ref.edge, rtol=0, atol=3e-2 * float(ref.edge.abs().max()))


class TopResidual(nn.Module):
    """The output is a sum of two layers (no single layer returns the logits)."""

    def __init__(self, head="raw"):
        super().__init__()
        self.conv = gnn.GCNConv(F, C, bias=False)
        self.skip = nn.Linear(F, C, bias=False)
        self.head = head

    def forward(self, x, edge_index):
        y = self.conv(x, edge_index) + self.skip(x)
        return torch.log_softmax(y, -1) if self.head == "log_softmax" else y / 0.5


def test_an_output_summed_from_layers_is_explained_whole(data):
    """``conv(x) + skip(x)`` (and a scaling after it) is the logit: LRP-0 equals gradient
    × input of the model's own output, single and batched (only the last summand was
    explained before)."""
    x, _ = data
    model = randomise(TopResidual().double()).eval()
    many = sparse_lrp.explain(model, x, EI, index=[2, 7], target=1, composite=LRP0)
    for t, node in enumerate([2, 7]):
        (ref,) = grad_x_input(lambda v, node=node: model(v, EI)[node, 1], x)
        single = sparse_lrp.explain(model, x, EI, index=node, target=1, composite=LRP0)
        assert_close(single.output.reshape(()), model(x, EI)[node, 1].detach())
        assert_close(single.node_feat, ref)
        assert_close(many.node_feat[t], ref)
    # Under a log_softmax the logits are the sum itself, which no layer returned: found as
    # the normaliser's input (the forward reruns watching its calls), not refused as before.
    model.head = "log_softmax"
    (ref,) = grad_x_input(lambda v: (model.conv(v, EI) + model.skip(v))[2, 1], x)
    res = sparse_lrp.explain(model, x, EI, index=2, target=1, composite=LRP0)
    assert_close(res.output.reshape(()), (model.conv(x, EI) + model.skip(x))[2, 1].detach())
    assert_close(res.node_feat, ref)


def test_samples_of_a_plain_model_get_a_target_dimension_and_repeats_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(F, H, bias=False), nn.ReLU(), nn.Linear(H, C, bias=False)).double().eval()
    x = torch.randn(10, F, dtype=DT)
    res = sparse_lrp.explain(model, x, index=[2, 5], target=torch.tensor([0, 2]), composite=LRP0)
    assert res.node_feat.shape == (2, 10, F)
    for t, (row, cls) in enumerate([(2, 0), (5, 2)]):
        (ref,) = grad_x_input(lambda v, row=row, cls=cls: model(v)[row, cls], x)
        assert_close(res.node_feat[t], ref)  # all other samples 0
    with pytest.raises(ValueError, match="index repeats"):
        sparse_lrp.explain(model, x, index=[2, 2], target=torch.tensor([0, 1]), composite=LRP0)


class NodeModelWithBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.GraphConv(F, C, bias=False)

    def forward(self, x, edge_index, batch=None):
        return self.conv(x, edge_index)


def test_a_node_model_taking_batch_is_explained_per_node(data):
    """With ``batch`` and no task_level, targets are first taken as graphs; a model that
    returns a row per node (or an index beyond the graphs) makes them nodes."""
    x, _ = data
    model = randomise(NodeModelWithBatch().double()).eval()
    batch = (torch.arange(N) >= N // 2).long()
    for index in ([0, 1], N - 2):
        res = sparse_lrp.explain(model, x, EI, index=index, target=1, composite=LRP0, batch=batch)
        nodes = [index] if isinstance(index, int) else index
        feats = res.node_feat[None] if isinstance(index, int) else res.node_feat
        for t, node in enumerate(nodes):
            (ref,) = grad_x_input(lambda v, node=node: model(v, EI)[node, 1], x)
            assert_close(feats[t], ref)


class NodeScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = gnn.GraphConv(F, H, bias=False)
        self.conv2 = gnn.GraphConv(H, C, bias=False)

    def forward(self, x, edge_index, node_scale):
        return self.conv2(torch.relu(self.conv1(x * node_scale[:, None], edge_index)), edge_index)


def test_a_per_node_input_on_a_graph_with_as_many_edges_as_nodes(data):
    """A ring has E == N: a per-node forward input must follow the nodes into the
    targets' subgraphs (it was cut as if per edge)."""
    x, _ = data
    ring = torch.stack([torch.arange(N), (torch.arange(N) + 1) % N])
    scale = torch.rand(N, dtype=DT, generator=torch.Generator().manual_seed(3)) + 0.5
    model = randomise(NodeScaled().double()).eval()
    many = sparse_lrp.explain(model, x, ring, index=[3, 8], target=1, composite=LRP0, node_scale=scale)
    for t, node in enumerate([3, 8]):
        (ref,) = grad_x_input(lambda v, node=node: model(v, ring, scale)[node, 1], x)
        single = sparse_lrp.explain(model, x, ring, index=node, target=1, composite=LRP0, node_scale=scale)
        assert_close(single.node_feat, ref)
        assert_close(many.node_feat[t], ref)


def test_targets_are_read_per_index_also_when_there_are_as_many_as_nodes(data):
    x, _ = data
    model = _build("gcn", bias=True)
    order = torch.arange(N).flip(0)
    classes = torch.arange(N) % C
    res = sparse_lrp.explain(model, x, EI, index=order, target=classes, composite=LRP0)
    assert torch.equal(res.target, classes)
    y = model(x, EI).detach()
    assert_close(res.output, y[order, classes])


def test_a_float_target_per_graph_follows_an_index_that_lists_every_graph(graph_batch):
    """One relevance row per index, also when the index names every graph in another order
    (PyG hands regression targets this way): row t explains graph index[t]."""
    x, ei, batch = graph_batch
    model = Pooled(gnn.global_add_pool, bias=False, out=2).double().eval()
    y = model(x, ei, batch).detach()
    order = [1, 3, 0, 2]
    many = sparse_lrp.explain(model, x, ei, index=order, target=y[order], composite=LRP0, batch=batch)
    assert_close(many.output, y[order].sum(1))
    for t, g in enumerate(order):
        (ref,) = grad_x_input(lambda v, g=g: model(v, ei, batch)[g].sum(), x)
        assert_close(many.node_feat[t], ref)


def test_relevance_given_to_an_output_that_is_zero_is_reported_lost():
    """The backward pass carries R / y: at an output with y = 0 no ratio carries R. It must
    show in the conservation report, not vanish (in + absorbed + lost = out)."""
    lin = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    x = torch.ones(1, 2, dtype=DT)  # y = [2, 0]
    res = sparse_lrp.explain(lin, x, None, target=torch.tensor([[1.0, 1.0]], dtype=DT), composite=LRP0)
    c = res.conservation
    assert c["out"] == pytest.approx(2.0)
    assert c["lost"] == pytest.approx(1.0)  # the relevance of the zero output
    assert_close(res.node_feat, torch.tensor([[0.5, 0.5]], dtype=DT))  # the other output's, as y1 = x0 + x1
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"])


def test_a_float_target_of_the_outputs_shape_with_node_targets(data):
    """Relevance given at the whole output [N, C] explains the indexed rows' relevance."""
    x, _ = data
    model = _build("gcn", bias=True)
    rel = torch.rand(N, C, dtype=DT, generator=torch.Generator().manual_seed(4))
    whole = sparse_lrp.explain(model, x, EI, target=torch.where(torch.arange(N)[:, None] == 5, rel, 0.0))
    for index in (5, [5]):
        res = sparse_lrp.explain(model, x, EI, index=index, target=rel)
        feat = res.node_feat if isinstance(index, int) else res.node_feat[0]
        assert_close(feat, whole.node_feat)


def test_a_layer_output_changed_in_place_gets_a_clear_error(data):
    x, _ = data

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = gnn.GCNConv(F, H)
            self.conv2 = gnn.GCNConv(H, C)

        def forward(self, x, edge_index):
            return self.conv2(torch.relu_(self.conv1(x, edge_index)), edge_index)

    model = InPlace().double().eval()
    with pytest.raises(ValueError, match="in place"):
        sparse_lrp.explain(model, x, EI, index=2)


class OwnGraph(nn.Module):
    """Builds the graph its layers use: ``to_undirected`` adds reversed edges."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(F, H, bias=False)
        self.conv = gnn.LGConv() if kind == "lgconv" else gnn.GraphConv(H, H, bias=False)
        self.out = nn.Linear(H, C, bias=False)

    def forward(self, x, edge_index):
        from torch_geometric.utils import add_self_loops, to_undirected

        if self.kind == "undirected":
            edge_index = to_undirected(edge_index, num_nodes=x.shape[0])
        elif self.kind == "self_loops":
            edge_index = add_self_loops(edge_index, num_nodes=x.shape[0])[0]
        elif self.kind == "slice":  # the first edges by position: a subgraph's own are others
            edge_index = edge_index[:, : E // 2]
        return self.out(torch.relu(self.conv(torch.relu(self.inp(x)), edge_index)))


@pytest.mark.parametrize("kind", ["undirected", "self_loops", "slice", "lgconv"])
def test_layers_reading_beyond_the_given_in_edges(kind, data):
    """A graph built in forward may reach beyond a node target's k-hop subgraph (the
    reversed out-edges of to_undirected; nothing seen on the subgraph tells, e.g. a
    target without in-edges), and message passing without a handler (LGConv reads
    degrees) declares nothing: a single target, also given as a one-element list (as
    PyG's Explainer passes it), runs on the whole graph; several are refused for a built
    graph, and keep every degree for LGConv."""
    x, _ = data
    model = randomise(OwnGraph(kind).double()).eval()
    sources = set(EI[0].tolist()) - set(EI[1].tolist())
    targets = [2, 9, min(sources)]  # the last has out-edges only
    for node in targets:
        (ref,) = grad_x_input(lambda v, node=node: model(v, EI)[node, 1], x)
        assert_close(sparse_lrp.explain(model, x, EI, index=node, target=1, composite=LRP0).node_feat, ref)
        listed = sparse_lrp.explain(model, x, EI, index=[node], target=1, composite=LRP0)
        assert listed.node_feat.shape == (1, N, F)
        assert_close(listed.node_feat[0], ref)
    if kind != "lgconv":
        with pytest.raises(ValueError, match="graph the model builds in forward"):
            sparse_lrp.explain(model, x, EI, index=targets, target=1, composite=LRP0)
        return
    many = sparse_lrp.explain(model, x, EI, index=targets, target=1, composite=LRP0)
    for t, node in enumerate(targets):
        (ref,) = grad_x_input(lambda v, node=node: model(v, EI)[node, 1], x)
        assert_close(many.node_feat[t], ref)


class GivenGraph(nn.Module):
    """``OwnGraph("self_loops")`` with the looped graph given instead of built."""

    def __init__(self, own):
        super().__init__()
        self.inp, self.conv, self.out = own.inp, own.conv, own.out

    def forward(self, x, edge_index):
        return self.out(torch.relu(self.conv(torch.relu(self.inp(x)), edge_index)))


@pytest.mark.parametrize("index", [None, 6, [6]])
def test_edge_relevance_of_a_graph_built_in_forward_lands_on_the_given_edges(index, data):
    """Layers on a graph derived in forward (self-loops added; the graph already has
    some, so loops repeat) report edge relevance on the given edges: equal to the model
    that is given the derived graph, on the given edges' positions (it was all zero; a
    graph built in forward runs node targets on the whole graph)."""
    from torch_geometric.utils import add_self_loops

    x, _ = data
    own = randomise(OwnGraph("self_loops").double()).eval()
    looped = add_self_loops(EI, num_nodes=N)[0]  # the given edges first, then one loop per node
    derived = sparse_lrp.explain(own, x, EI, index=index, target=1, composite=LRP0)
    given = sparse_lrp.explain(GivenGraph(own), x, looped, index=index, target=1, composite=LRP0)
    assert_close(derived.node_feat, given.node_feat)
    assert_close(derived.edge, given.edge[..., :E])
    assert bool((derived.edge != 0).any())


def test_message_passing_without_a_handler_called_in_a_loop(data):
    """LGConv has no handler (it runs as is); called twice, its calls still count two
    hops for batched node targets (one per module was counted before)."""
    x, _ = data
    chain = torch.arange(N - 1)
    ei = torch.cat([torch.stack([chain, chain + 1]), torch.stack([chain + 1, chain])], 1)
    model = randomise(SharedLayerLoop(gnn.LGConv(), times=2).double()).eval()
    many = sparse_lrp.explain(model, x, ei, index=[4, 11], target=1, composite=LRP0)
    for t, node in enumerate([4, 11]):
        (ref,) = grad_x_input(lambda v, node=node: model(v, ei)[node, 1], x)
        assert (ref.abs().sum(1).nonzero().flatten() - node).abs().max() == 2
        assert_close(many.node_feat[t], ref)


def test_a_graph_index_beyond_the_graphs_is_named_as_such(data):
    """With `batch` and no task_level an index beyond the graphs is tried as a node; a
    graph-level model then gets the graph range error, not one about output rows."""
    x, _ = data

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = gnn.GraphConv(F, C)

        def forward(self, x, edge_index, batch):
            return gnn.global_add_pool(self.conv(x, edge_index), batch)

    batch = (torch.arange(N) >= N // 2).long()
    model = Pooled().double().eval()
    for index in (7, [0, 7]):
        with pytest.raises(ValueError, match="out of range for 2 graphs"):
            sparse_lrp.explain(model, x, EI, index=index, batch=batch)


# --------------------------------------------------------------------------------------
# Element-wise functions called in the model's own code
# --------------------------------------------------------------------------------------

GLUE = {
    "torch.tanh": torch.tanh,
    "torch.tanh(input=)": lambda t: torch.tanh(input=t),
    "torch.atan": torch.atan,
    "Tensor.tanh": lambda t: t.tanh(),
    "torch.sigmoid": torch.sigmoid,
    "F.elu": torch.nn.functional.elu,
    "F.gelu": torch.nn.functional.gelu,
    "F.silu": torch.nn.functional.silu,
    "F.softplus": torch.nn.functional.softplus,
    "F.relu6": torch.nn.functional.relu6,
}


class _GlueMLP(nn.Module):
    """``l2(act(l1(x)))`` with ``act`` a plain function call, optionally a sigmoid on top."""

    def __init__(self, act, sigmoid=False):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5, bias=False), nn.Linear(5, 2, bias=False)
        self.act, self.sigmoid = act, sigmoid

    def forward(self, x):
        y = self.l2(self.act(self.l1(x)))
        return torch.sigmoid(y) if self.sigmoid else y


@pytest.mark.parametrize("name", list(GLUE))
def test_functional_activations_pass_relevance_as_their_modules_do(name):
    """A non-homogeneous function called as such (F.elu, torch.tanh...) follows the Pass
    rule like its module: with LRP-0 the relevance is the layer-by-layer formula, and
    conserved. (Its gradient would carry x f'(x) c instead of f(x) c.)"""
    model = randomise(_GlueMLP(GLUE[name]).double(), seed=3).eval()
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(8))
    for _ in range(2):  # the first call finds the functions, later ones route them from the start
        res = sparse_lrp.explain(model, x, None, index=1, target=0, composite=LRP0)
        W1, W2 = model.l1.weight.detach(), model.l2.weight.detach()
        z = x[1] @ W1.T
        h = GLUE[name](z)
        r_h = h * W2[0]  # LRP-0 of the top layer for the logit y0 = sum_j h_j W2[0, j]
        r_x = (x[1][None, :] * W1 / z[:, None] * r_h[:, None]).sum(0)  # Pass, then LRP-0
        assert_close(res.node_feat[1], r_x)
        assert_close(res.node_feat.sum(), (h * W2[0]).sum())
        assert abs(res.conservation["lost"]) < 1e-12


@pytest.mark.parametrize("module", [False, True], ids=["torch.sigmoid", "nn.Sigmoid"])
def test_a_final_sigmoid_explains_the_logit_as_a_function_or_a_module(module):
    act = nn.Tanh() if module else torch.tanh
    model = _GlueMLP(act, sigmoid=not module).double().eval()
    if module:
        model = nn.Sequential(model, nn.Sigmoid())
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(9))
    inner = model[0] if module else model
    logit = inner.l2(torch.tanh(inner.l1(x))).detach()
    res = sparse_lrp.explain(model, x, None, index=2, target=1, composite=LRP0)
    assert_close(res.output, logit[2, 1].reshape(1))
    assert_close(res.node_feat.sum(), logit[2, 1])


def test_an_element_wise_function_that_cannot_be_routed_is_refused():
    model = _GlueMLP(torch.ops.aten.tanh.default).double().eval()
    x = torch.randn(3, 4, dtype=DT)
    with pytest.raises(ValueError, match=r"TanhBackward0.*module form"):
        sparse_lrp.explain(model, x, None, index=0, target=0)


def test_explaining_emits_no_warnings():
    """A GIN with a trainable eps warned about converting a tensor that requires grad to a
    scalar on every call, and the library's internal CSR structures surfaced torch's
    CSR-is-beta notice. Run in a fresh process: that notice is given once per process."""
    import subprocess
    import sys

    code = (
        "import warnings, torch, sparse_lrp\n"
        "from torch_geometric.nn import GIN, GCN\n"
        "torch.manual_seed(0)\n"
        "x, ei = torch.randn(12, 5), torch.randint(0, 12, (2, 40))\n"
        "models = (GIN(5, 8, 2, 3, train_eps=True).eval(), GCN(5, 8, 2, 3).eval())\n"
        "warnings.simplefilter('error')  # (after the imports: PyG's own import warnings are not ours)\n"
        "for model in models:\n"
        "    sparse_lrp.explain(model, x, ei, index=[3, 4], composite='zplus')\n"
        "    sparse_lrp.explain(model, x, ei, index=3, composite='epsilon')  # (the whole graph)\n"
        "lin = torch.nn.Linear(5, 3)\n"
        "lin.weight.data[0, :2] = 0.0\n"
        "mlp = torch.nn.Sequential(sparse_lrp.SparseLinear.from_dense(lin))  # (a pruned weight)\n"
        "sparse_lrp.explain(mlp, x, None, target=0, composite='zplus')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


class _GlobalMix(nn.Module):
    """GCN -> the model's own op over the node dimension -> GCN -> Linear (bias-free)."""

    def __init__(self, glue):
        super().__init__()
        self.c1, self.c2 = gnn.GCNConv(F, H, bias=False), gnn.GCNConv(H, H, bias=False)
        self.head = nn.Linear(H, C, bias=False)
        self.glue = glue

    def forward(self, x, edge_index):
        h = torch.relu(self.c1(x, edge_index))
        return self.head(torch.relu(self.c2(self.glue(h, edge_index), edge_index)))


def _dense_adjacency_mix(h, edge_index):
    a = torch.zeros(h.shape[0], h.shape[0], dtype=h.dtype).index_put_(
        (edge_index[1], edge_index[0]), torch.ones(edge_index.shape[1], dtype=h.dtype), accumulate=True
    )
    return h + a @ h


GLOBAL_MIXES = {
    "mean over nodes": lambda h, ei: h + h.mean(0, keepdim=True),  # (a virtual-node-style context)
    "max over nodes": lambda h, ei: h + h.amax(0),
    "flip": lambda h, ei: h.flip(0),
    "roll": lambda h, ei: torch.roll(h, 1, 0),
    "dense adjacency": _dense_adjacency_mix,
    "sparse adjacency": lambda h, ei: (
        h
        + torch.sparse.mm(
            torch.sparse_coo_tensor(
                ei.flip(0), torch.ones(ei.shape[1], dtype=h.dtype), (h.shape[0],) * 2, check_invariants=True
            ),
            h,
        )
    ),
    "einsum adjacency": lambda h, ei: (
        h + torch.einsum("nm,mf->nf", torch.ones(h.shape[0], h.shape[0], dtype=h.dtype), h)
    ),
    "pooled context": lambda h, ei: (
        h
        + gnn.global_mean_pool(h, torch.zeros(h.shape[0], dtype=torch.long))[torch.zeros(h.shape[0], dtype=torch.long)]
    ),
    "one node's row": lambda h, ei: h + h[0],
    "transposed mean": lambda h, ei: h + h.T.mean(1),
}


@pytest.mark.parametrize("glue", list(GLOBAL_MIXES))
def test_node_mixing_outside_message_passing_leaves_no_subgraph_result(glue):
    """A node's output that reads every node (h.mean(0)) or other rows (h.flip(0)) cannot
    come from its k-hop subgraph: that path gave another output and relevance silently
    (h + h.amax(0): 0.89 for a logit of 1.28). A single target now runs on the whole
    graph; several targets in one subgraph pass are refused."""
    torch.manual_seed(4)
    model = randomise(_GlobalMix(GLOBAL_MIXES[glue]).double(), seed=9, scale=0.6).eval()
    x = torch.randn(N, F, dtype=DT)
    y = model(x, EI).detach()
    lrp0 = Epsilon(0.0)
    for index in (5, 11):
        cls = int(y[index].argmax())
        res = sparse_lrp.explain(model, x, EI, index=index, composite=lrp0)
        assert float(res.output) == pytest.approx(float(y[index, cls]), rel=1e-12)
        (gx,) = grad_x_input(lambda x_, i=index, c=cls: model(x_, EI)[i, c], x)
        assert_close(res.node_feat, gx)
    with pytest.raises(ValueError, match="mixes nodes outside message passing"):
        sparse_lrp.explain(model, x, EI, index=[5, 11], composite=lrp0)


def test_ops_over_features_or_layers_are_no_node_mixing():
    """Reductions over features (a row norm), JK's max over layers, a feature-side product:
    each node's row alone, so targets still share subgraph passes."""

    class PerNode(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = gnn.GCNConv(F, H), gnn.GCNConv(H, H)
            self.head = nn.Linear(H, C)
            self.w = nn.Linear(H, H, bias=False)

        def forward(self, x, edge_index):
            h1 = torch.relu(self.c1(x, edge_index))
            h1 = h1 / (h1.detach().sum(-1, keepdim=True) + 1)  # (a detached row scale)
            h2 = torch.relu(self.c2(h1, edge_index))
            h = torch.stack([h1, h2], -1).amax(-1) + self.w(h2)
            return self.head(h)

    torch.manual_seed(5)
    model = randomise(PerNode().double(), seed=3, scale=0.6).eval()
    x = torch.randn(N, F, dtype=DT)
    many = sparse_lrp.explain(model, x, EI, index=[2, 9, 14])
    for t, i in enumerate([2, 9, 14]):
        one = sparse_lrp.explain(model, x, EI, index=i)
        assert_close(many.node_feat[t], one.node_feat)
        assert_close(many.edge[t], one.edge)


UNCONSERVING = {
    "softmax inside": lambda h, ei: torch.softmax(h, -1),
    "F.glu": lambda h, ei: torch.nn.functional.glu(torch.cat([h, h], -1)),
    "batch statistics": lambda h, ei: torch.nn.functional.batch_norm(h, None, None, training=True),
    "h * h": lambda h, ei: h * h,
    "h * sigmoid(h)": lambda h, ei: h * torch.sigmoid(h),
    "h.pow(2)": lambda h, ei: h.pow(2),
    "h / h.norm()": lambda h, ei: h / (h.norm(dim=-1, keepdim=True) + 1),
    "F.normalize": lambda h, ei: torch.nn.functional.normalize(h, dim=-1),
    "F.layer_norm": lambda h, ei: torch.nn.functional.layer_norm(h, (H,)),
    "feature covariance": lambda h, ei: h @ (h.T @ h) / 100,
}


@pytest.mark.parametrize("glue", list(UNCONSERVING))
def test_activations_combined_without_a_conservative_rule_are_refused(glue):
    """Products of two activations, powers and normalisations in the model's own code let
    relevance through unconserved (h * h doubled it: in 0.50 for out 0.25; F.normalize
    lost all of it), with no word: they are refused, and the model is left as it was."""
    torch.manual_seed(4)
    model = randomise(_GlobalMix(UNCONSERVING[glue]).double(), seed=9, scale=0.6).eval()
    x = torch.randn(N, F, dtype=DT)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(TypeError, match="no conservative rule"):
        sparse_lrp.explain(model, x, EI, index=5)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_a_constant_the_models_code_adds_takes_its_share_as_a_bias():
    """h + 1.0 in forward code: a bias of the model's code. Its relevance reached no input
    and was missing from the report (in 0.26 for out 1.05, nothing absorbed)."""
    torch.manual_seed(4)
    shift = torch.linspace(-1.0, 1.0, H, dtype=DT)
    scaled = _GlobalMix(lambda h, ei: 0.5 * h).double()
    shifted = _GlobalMix(lambda h, ei: 0.5 * h + shift)
    shifted.load_state_dict(randomise(scaled, seed=9, scale=0.6).state_dict())
    shifted = shifted.double().eval()
    x = torch.randn(N, F, dtype=DT)
    res = sparse_lrp.explain(shifted, x, EI, index=5, composite=Epsilon(0.0))
    c = res.conservation
    assert c["out"] == pytest.approx(float(shifted(x, EI)[5].max().detach()), rel=1e-12)
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-9)
    # The same model with the shift as a Linear layer's bias (weight 0.5 I): LRP-0 gives
    # the bias its share, and the inputs the rest.
    lin = nn.Linear(H, H).double()
    with torch.no_grad():
        lin.weight.copy_(0.5 * torch.eye(H, dtype=DT))
        lin.bias.copy_(shift)
    as_bias = _GlobalMix(lambda h, ei: lin(h)).double()
    as_bias.lin = lin  # (registered: its handler explains it)
    as_bias.load_state_dict({**shifted.state_dict(), "lin.weight": lin.weight, "lin.bias": lin.bias})
    want = sparse_lrp.explain(as_bias.eval(), x, EI, index=5, composite=Epsilon(0.0))
    assert_close(res.node_feat, want.node_feat)
    assert c["absorbed"] == pytest.approx(want.conservation["absorbed"], rel=1e-9)
    assert abs(c["absorbed"]) > 1e-3  # (the constant took a share)
    ref = _GlobalMix(lambda h, ei: 0.5 * h).double().eval()
    ref.load_state_dict(shifted.state_dict())
    # Without the constant nothing is absorbed (the model is bias-free).
    plain = sparse_lrp.explain(ref, x, EI, index=5, composite=Epsilon(0.0)).conservation
    assert plain["absorbed"] == pytest.approx(0.0, abs=1e-12)
    assert plain["in"] == pytest.approx(plain["out"], rel=1e-9)


def test_a_weight_applied_in_the_models_own_code_is_no_product_of_activations():
    """h @ W.T, F.linear(h, W) and einsum with a Linear's weight are linear in h: not refused
    as products (the weight requires grad too), and exact against gradient x input."""

    class OwnCode(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = gnn.GCNConv(F, H, bias=False)
            self.lin = nn.Linear(H, H, bias=False)
            self.head = nn.Linear(H, C, bias=False)

        def forward(self, x, edge_index):
            h = torch.relu(self.c1(x, edge_index))
            h = h @ self.lin.weight.T + torch.nn.functional.linear(h, self.lin.weight)
            h = torch.einsum("nf,of->no", torch.relu(h), self.lin.weight)
            return self.head(h)

    torch.manual_seed(6)
    model = randomise(OwnCode().double(), seed=2, scale=0.6).eval()
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(N, F, dtype=DT)
    y = model(x, EI).detach()
    for index in (3, [3, 8]):
        res = sparse_lrp.explain(model, x, EI, index=index, composite=Epsilon(0.0))
        for t, i in enumerate([index] if isinstance(index, int) else index):
            (gx,) = grad_x_input(lambda x_, i=i: model(x_, EI)[i, int(y[i].argmax())], x)
            assert_close(res.node_feat if isinstance(index, int) else res.node_feat[t], gx)


def test_a_dimension_as_long_as_the_node_rows_is_told_from_a_node_dimension():
    """Four layers stacked and summed over dim 0 in a pass whose union has four node rows
    (two isolated targets and their stand-ins): the same length, no node dimension. One
    more row tells them apart; the batch is explained, equal to single calls."""

    class Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([gnn.GCNConv(F, H, bias=False) for _ in range(4)])
            self.head = nn.Linear(H, C, bias=False)

        def forward(self, x, edge_index):
            hs = [torch.relu(conv(x, edge_index)) for conv in self.convs]
            return self.head(torch.stack(hs, 0).sum(0))

    torch.manual_seed(2)
    n = 10
    ring = torch.arange(6)
    ei = torch.stack([ring, (ring + 1) % 6])  # (nodes 6..9 isolated)
    x = torch.randn(n, F, dtype=DT)
    model = randomise(Stacked().double(), seed=4, scale=0.6).eval()
    many = sparse_lrp.explain(model, x, ei, index=[6, 7], composite=Epsilon(0.0))
    for t, i in enumerate([6, 7]):
        one = sparse_lrp.explain(model, x, ei, index=i, composite=Epsilon(0.0))
        assert_close(many.node_feat[t], one.node_feat)
        (gx,) = grad_x_input(lambda x_, i=i: model(x_, ei)[i, int(model(x, ei)[i].argmax())], x)
        assert_close(one.node_feat, gx)


@pytest.mark.parametrize("fn", [torch.sqrt, torch.log1p, torch.log, torch.rsqrt])
def test_more_elementwise_functions_in_the_models_code_pass_relevance(fn):
    """sqrt, log1p, log, rsqrt in forward code passed relevance by their gradient (sqrt:
    in 0.10 for out 0.20, nothing reported): routed through the Pass rule, conserved."""
    torch.manual_seed(4)
    model = randomise(_GlobalMix(lambda h, ei: fn(h + 1.0)).double(), seed=9, scale=0.6).eval()
    x = torch.randn(N, F, dtype=DT)
    c = sparse_lrp.explain(model, x, EI, index=5, composite=Epsilon(0.0)).conservation
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-9)
    # The same with the function as a Pass module: equal relevance.
    moduled = _GlobalMix(lambda h, ei: _Elementwise(fn)(h + 1.0)).double()
    moduled.load_state_dict(model.state_dict())
    want = sparse_lrp.explain(moduled.eval(), x, EI, index=5, composite=Epsilon(0.0)).conservation
    assert c["in"] == pytest.approx(want["in"], rel=1e-9)


class _Elementwise(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


@pytest.mark.parametrize("form", ["1.0 - h", "weight row"])
def test_constants_in_other_forms_take_their_share_as_a_bias(form):
    """1.0 - h (a reversed subtraction of a number) and a Linear's weight row added as a
    bias were not seen as constants: their share was missing from the report."""
    torch.manual_seed(4)
    shift_of = {"1.0 - h": lambda m: 1.0, "weight row": lambda m: m.head.weight[0, :1]}
    glue = {
        "1.0 - h": lambda h, ei: 1.0 - 0.5 * h,
        "weight row": lambda h, ei: 0.5 * h + shift_of["weight row"](model),
    }[form]
    model = randomise(_GlobalMix(glue).double(), seed=9, scale=0.6).eval()
    x = torch.randn(N, F, dtype=DT)
    c = sparse_lrp.explain(model, x, EI, index=5, composite=Epsilon(0.0)).conservation
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-9)
    assert abs(c["absorbed"]) > 1e-4


def test_batched_graph_records_split_by_graph_when_graphs_are_as_many_as_edges():
    """A graph-level head's record has one row per graph: with as many graphs as edges it
    is still split by graph (taken once for the edges' split, which put both rows on the
    graph holding both edges)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = gnn.GraphConv(3, 4, bias=False), nn.Linear(4, 2, bias=False)

        def forward(self, x, edge_index, batch):
            return self.head(gnn.global_add_pool(torch.relu(self.conv(x, edge_index)), batch))

    model = randomise(Net().double(), seed=2).eval()
    x = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(3))
    ei, batch = torch.tensor([[0, 1], [1, 2]]), torch.tensor([0, 0, 0, 1, 1])
    joint = sparse_lrp.explain(model, x, ei, batch=batch, index=[0, 1], task_level="graph", composite=Epsilon(0))
    for g in range(2):
        one = sparse_lrp.explain(model, x, ei, batch=batch, index=g, task_level="graph", composite=Epsilon(0))
        assert_close(joint.layers["head"]["node"][g], one.layers["head"]["node"])
        assert float(one.layers["head"]["node"].abs().sum()) > 0


@pytest.mark.parametrize("composite", [sparse_lrp.WSquare(), sparse_lrp.Flat(), sparse_lrp.ZBox(-3.0, 3.0), "gamma"])
def test_first_layer_record_is_the_input_relevance_under_every_rule(composite):
    """The first layer's "node" record is the relevance reaching its input, the model's own:
    the input relevance itself, also where a rule hands it over directly (WSquare, Flat,
    ZBox: not as the ratio flowing back through the input, which the record once read alone)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = gnn.GraphConv(3, 4), gnn.GraphConv(4, 2)

        def forward(self, x, edge_index):
            return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)

    model = randomise(Net().double(), seed=4, scale=0.6).eval()
    ei = make_graph(12, extra=10, seed=2)
    x = torch.randn(12, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    for index in (2, [2, 5]):
        res = sparse_lrp.explain(model, x, ei, index=index, composite=composite)
        record = res.layers["conv1"]["node"]
        record = record.to_dense() if record.is_sparse else record
        assert_close(record, res.node)
        assert float(res.node.abs().sum()) > 0


class PooledLogits(nn.Module):
    """Graph logits straight from a pooling function, under a normaliser or raw."""

    def __init__(self, head):
        super().__init__()
        self.c1, self.c2 = gnn.GCNConv(F, H), gnn.GCNConv(H, C)
        self.head = head

    def forward(self, x, edge_index, batch):
        y = gnn.global_mean_pool(self.c2(self.c1(x, edge_index).relu(), edge_index), batch)
        if self.head == "log_softmax":
            return torch.log_softmax(y, -1)
        return y.softmax(dim=-1) if self.head == "softmax" else torch.sigmoid(y) if self.head == "sigmoid" else y


@pytest.mark.parametrize("head", ["log_softmax", "softmax", "sigmoid"])
def test_a_normaliser_over_pooled_logits_explains_the_pooled_logits(head, data):
    """``log_softmax(global_mean_pool(...))``: the logits are the pooling's output, which no
    layer returns; the same explanation as the model returning them raw (refused before)."""
    x, _ = data
    batch = (torch.arange(x.shape[0]) >= x.shape[0] // 2).long()
    ei = EI[:, batch[EI[0]] == batch[EI[1]]]
    raw = randomise(PooledLogits("raw").double()).eval()
    normalised = PooledLogits(head).double().eval()
    normalised.load_state_dict(raw.state_dict())
    want = sparse_lrp.explain(raw, x, ei, index=1, target=2, composite="zplus", batch=batch)
    got = sparse_lrp.explain(normalised, x, ei, index=1, target=2, composite="zplus", batch=batch)
    assert_close(got.node_feat, want.node_feat)
    assert_close(got.output, want.output)
