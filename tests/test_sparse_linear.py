"""SparseLinear: a layer with a sparse weight, explained through the edge kernel.

References: the same model with the zero-filled dense weights (every rule whose
contributions vanish with the weight), linear_lrp on the sparse weight (Flat counts the
stored connections), gradient x input for LRP-0, and per-connection messages by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparse_lrp
from sparse_lrp import AlphaBeta, Composite, Epsilon, Flat, Gamma, SparseLinear, WSquare, ZBox, ZPlus

DT = torch.float64


def pruned_pair(bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias)).double().eval()
    with torch.no_grad():
        for layer in (dense[0], dense[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=DT))
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=g) < 0.5)
            if bias:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=DT) * 0.3)
    sparse = nn.Sequential(SparseLinear.from_dense(dense[0]), nn.ReLU(), SparseLinear.from_dense(dense[2])).eval()
    x = torch.randn(5, 6, generator=g, dtype=DT)
    return dense, sparse, x


def test_forward_equals_the_masked_dense_layer():
    dense, sparse, x = pruned_pair()
    torch.testing.assert_close(sparse(x), dense(x))
    torch.testing.assert_close(sparse(x.reshape(5, 1, 6)).reshape(5, 3), dense(x))  # leading dimensions
    assert sparse[0].weight._nnz() == int((dense[0].weight != 0).sum())


@pytest.mark.parametrize("rule", [Epsilon(), ZPlus(), Gamma(), AlphaBeta(), WSquare()], ids=lambda r: type(r).__name__)
def test_every_rule_equals_the_zero_filled_dense_model(rule):
    dense, sparse, x = pruned_pair()
    a = sparse_lrp.explain(sparse, x, None, composite=rule)
    b = sparse_lrp.explain(dense, x, None, composite=rule)
    torch.testing.assert_close(a.node_feat, b.node_feat, rtol=1e-9, atol=1e-12)
    for key in ("in", "out", "absorbed"):
        assert a.conservation[key] == pytest.approx(b.conservation[key], rel=1e-9, abs=1e-12)


def test_flat_counts_the_stored_connections_and_lrp0_is_gradient_times_input():
    _, sparse, x = pruned_pair(bias=False)
    R = torch.rand(5, 8, dtype=DT) + 0.1
    layer = sparse[0]
    res = sparse_lrp.explain(nn.Sequential(layer), x, None, target=R, composite=Flat())
    torch.testing.assert_close(res.node_feat, sparse_lrp.linear_lrp(x, layer.weight.detach(), R, Flat()))
    xg = x.clone().requires_grad_()
    out = sparse(xg)
    cls = out.argmax(1)
    (grad,) = torch.autograd.grad(out.gather(1, cls[:, None]).sum(), xg)
    res = sparse_lrp.explain(sparse, x, None, composite=Epsilon(0.0))
    torch.testing.assert_close(res.node_feat, xg.detach() * grad)


def test_connection_relevance_by_hand():
    """``edge_local``: relevance through each stored connection (summed over samples),
    in ``weight.indices()`` order; here the top layer with the explained logits."""
    _, sparse, x = pruned_pair(bias=False)
    eps = 1e-6
    res = sparse_lrp.explain(sparse, x, None, composite=Epsilon(eps))
    h = torch.relu(sparse[0](x)).detach()
    z = sparse[2](h).detach()
    cls = z.argmax(1)
    R = torch.zeros_like(z)
    R[torch.arange(5), cls] = z[torch.arange(5), cls]
    s = R / (z + eps * torch.where(z >= 0, 1.0, -1.0))
    rows, cols = sparse[2].weight.detach().indices()
    w = sparse[2].weight.detach().values()
    expected = (h[:, cols] * w * s[:, rows]).sum(0)
    torch.testing.assert_close(res.layers["2"]["edge_local"], expected)


def test_sample_targets_get_their_own_rows():
    _, sparse, x = pruned_pair()
    many = sparse_lrp.explain(sparse, x, None, index=[1, 3], target=torch.tensor([0, 2]), composite=ZPlus())
    assert many.node_feat.shape == (2, 5, 6)
    for t, (row, cls) in enumerate([(1, 0), (3, 2)]):
        R = torch.zeros(5, 3, dtype=DT)
        R[row, cls] = sparse(x)[row, cls].detach()
        one = sparse_lrp.explain(sparse, x, None, target=R, composite=ZPlus())
        torch.testing.assert_close(many.node_feat[t], one.node_feat)


def test_bad_construction_is_named():
    with pytest.raises(ValueError, match=r"weight must be \[out, in\]"):
        SparseLinear(torch.randn(2, 3, 4).to_sparse())
    with pytest.raises(ValueError, match="bias must have shape"):
        SparseLinear(torch.randn(2, 3).to_sparse(), torch.zeros(3))


def test_a_sparse_feature_layer_in_a_gnn_with_node_targets():
    """SparseLinear mixes features, not nodes: node targets on their subgraphs, single
    and batched, equal gradient x input (LRP-0, bias-free)."""
    import torch_geometric.nn as gnn
    from gnn_reference import grad_x_input, make_graph

    n = 20
    ei = make_graph(n, extra=24, seed=2)
    g = torch.Generator().manual_seed(4)
    lin = nn.Linear(6, 8, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(8, 6, generator=g, dtype=DT) * (torch.rand(8, 6, generator=g) < 0.5))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = SparseLinear.from_dense(lin)
            self.conv = gnn.GCNConv(8, 3, bias=False).double()

        def forward(self, x, edge_index):
            return self.conv(torch.relu(self.features(x)), edge_index)

    model = Net().eval()
    x = torch.randn(n, 6, generator=g, dtype=DT)
    many = sparse_lrp.explain(model, x, ei, index=[2, 9], target=1, composite=Epsilon(0.0))
    for t, node in enumerate([2, 9]):
        (ref,) = grad_x_input(lambda v, node=node: model(v, ei)[node, 1], x)
        single = sparse_lrp.explain(model, x, ei, index=node, target=1, composite=Epsilon(0.0))
        torch.testing.assert_close(single.node_feat, ref)
        torch.testing.assert_close(many.node_feat[t], ref)


@pytest.mark.parametrize("change", ["data", "to"])
def test_a_moved_or_repointed_sparse_weight_is_not_served_from_the_cache(change):
    """``module.to(...)`` and ``weight.data = ...`` keep a sparse parameter's identity and
    version; the cached edge structure of the old weight must not be used (on CUDA the
    stale CPU operator met CUDA inputs)."""
    dense, sparse, x = pruned_pair()
    sparse_lrp.explain(sparse, x, None, index=[0, 2], composite=ZPlus())  # caches the operators
    if change == "data":
        other, _, _ = pruned_pair(seed=1)
        for i in (0, 2):
            sparse[i].weight.data = SparseLinear.from_dense(other[i]).weight.data
            sparse[i].bias.data = other[i].bias.data.clone()
        dense = other
    else:
        sparse.float()
        dense.float()
        x = x.float()
    res = sparse_lrp.explain(sparse, x, None, index=[0, 2], composite=ZPlus())
    ref = sparse_lrp.explain(dense, x, None, index=[0, 2], composite=ZPlus())
    assert res.node_feat.dtype == x.dtype
    torch.testing.assert_close(res.node_feat, ref.node_feat)


@pytest.mark.parametrize("rule", [WSquare(), ZBox(torch.tensor([-1.0, -1, -2, -1, -3, -1]), 2.5), Flat()])
@pytest.mark.parametrize("how", ["first", "by_name"])
def test_input_layer_rules_equal_the_dense_layer_with_zero_features(rule, how):
    """A SparseLinear reading the model input passed the transposed input, which was not
    recognised as the model's: input-independent rules lost the relevance of features equal
    to 0 (WSquare: 2.71 of it), and first= rules did not apply. It now equals nn.Linear."""
    dense, sparse, x = pruned_pair()
    if isinstance(rule, Flat):  # Flat counts stored connections: the dense twin stores them all
        sparse[0] = SparseLinear.from_dense(dense[0], torch.ones_like(dense[0].weight, dtype=torch.bool))
    x[:, 1] = 0.0  # a feature that is 0 everywhere
    x[2, 4] = 0.0
    composite = Composite(default=Epsilon(), first=rule) if how == "first" else Composite(by_name={"0": rule})
    got = sparse_lrp.explain(sparse, x, None, index=[0, 2], composite=composite)
    ref = sparse_lrp.explain(dense, x, None, index=[0, 2], composite=composite)
    torch.testing.assert_close(got.node_feat, ref.node_feat)
    assert got.node_feat[:, :, 1].abs().sum() > 0
    assert got.conservation["lost"] == pytest.approx(ref.conservation["lost"], abs=1e-12)


@pytest.mark.parametrize("layer", ["linear", "sparse"])
@pytest.mark.parametrize("rule", [WSquare(), Flat(), ZBox(-2.0, 3.0)])
def test_batch_first_inputs_keep_the_relevance_of_zero_features(layer, rule):
    """A first layer reading a [B, S, F] input flattens it to [B * S, F] (and transposes it,
    for SparseLinear): that view was not recognised as the model's input, so input-independent
    rules lost the relevance of features equal to 0 (WSquare, by hand below: 0.8 of 1)."""
    w = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    net = nn.Linear(2, 2, bias=False) if layer == "linear" else SparseLinear(w.to_sparse())
    if layer == "linear":
        net.weight.data.copy_(w)
    x = torch.tensor([[[1.0, 0.0], [2.0, 3.0]]])
    target = torch.zeros(1, 2, 2)
    target[0, 0, 0] = 1.0
    got = sparse_lrp.explain(net.eval(), x, None, target=target, composite=rule)
    flat = sparse_lrp.explain(net, x.reshape(2, 2), None, target=target.reshape(2, 2), composite=rule)
    torch.testing.assert_close(got.node_feat.reshape(2, 2), flat.node_feat)
    assert got.conservation["lost"] == 0.0
    if isinstance(rule, WSquare):  # output 0 = 1 x1 + 2 x2: shares w² = 1 and 4 of 5
        torch.testing.assert_close(got.node_feat[0, 0], torch.tensor([0.2, 0.8]))


@pytest.mark.parametrize("layer", ["linear", "sparse"])
@pytest.mark.parametrize("rows", [2, 3])  # (B * S = F = 4: a wrong axis would broadcast silently)
def test_batch_first_inputs_take_zbox_bounds_per_feature_and_per_element(layer, rows):
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64)
    net = nn.Linear(4, 3, bias=False).double() if layer == "linear" else SparseLinear(w.to_sparse())
    if layer == "linear":
        net.weight.data.copy_(w)
    x = torch.randn(2, rows, 4, dtype=torch.float64)
    target = torch.randn(2, rows, 3, dtype=torch.float64)
    lo, hi = -torch.arange(1.0, 5.0, dtype=torch.float64), torch.arange(2.0, 6.0, dtype=torch.float64)
    spread = torch.rand(2, rows, 4, dtype=torch.float64)
    each = (lo - spread, hi + spread)  # bounds per element of the [B, S, F] input
    for low, high in ((lo, hi), each):
        got = sparse_lrp.explain(net.eval(), x, None, target=target, composite=ZBox(low, high))
        flat = [b.reshape(-1, 4) if b.dim() == 3 else b for b in (low, high)]
        ref = sparse_lrp.linear_lrp(x.reshape(-1, 4), w, target.reshape(-1, 3), ZBox(*flat))
        torch.testing.assert_close(got.node_feat.reshape(-1, 4), ref)


@pytest.mark.parametrize("layer", ["linear", "sparse"])
def test_a_strided_batch_first_input_is_still_the_models_input(layer):
    """A [B, S, F] input that is a transposed view: the layer's reshape copied it, so it was
    not recognised as the input (WSquare lost 0.8 of 1; SparseLinear refused [F] ZBox bounds)."""
    w = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    net = nn.Linear(2, 2, bias=False) if layer == "linear" else SparseLinear(w.to_sparse())
    if layer == "linear":
        net.weight.data.copy_(w)
    x = torch.tensor([[[1.0, 0.0], [0.5, 0.0]], [[2.0, 3.0], [1.0, 4.0]]]).transpose(0, 1)  # [B, S, F]
    assert not x.is_contiguous()
    target = torch.zeros(2, 2, 2)
    target[0, 0, 0] = 1.0
    for rule in (WSquare(), ZBox(torch.tensor([-1.0, -2.0]), 3.0)):
        got = sparse_lrp.explain(net.eval(), x, None, target=target, composite=rule)
        want = sparse_lrp.explain(net, x.contiguous(), None, target=target, composite=rule)
        torch.testing.assert_close(got.node_feat, want.node_feat)
        assert got.conservation["lost"] == 0.0
    got = sparse_lrp.explain(net, x, None, target=target, composite=WSquare())
    torch.testing.assert_close(got.node_feat[0, 0], torch.tensor([0.2, 0.8]))


def test_a_sparse_weight_whose_indices_change_behind_the_version_counter_is_rebuilt():
    """The cache of a sparse weight's operator keyed on its values only: indices edited
    through NumPy (a connection moved) were served the old structure."""
    w = torch.sparse_coo_tensor(
        torch.tensor([[0, 0, 0], [0, 1, 2]]), torch.tensor([1.0, 2.0, 3.0]), (1, 3), check_invariants=True
    )
    x, r = torch.ones(1, 3), torch.ones(1, 1)
    sparse_lrp.linear_lrp(x, w, r, Epsilon(0.0))  # (fills the cache)
    w._indices().numpy()[1, 0] = 2  # connection (0, 0) -> (0, 2): values 1, 2, 3 at 2, 1, 2
    fresh = torch.sparse_coo_tensor(
        torch.tensor([[0, 0, 0], [2, 1, 2]]), torch.tensor([1.0, 2.0, 3.0]), (1, 3), check_invariants=True
    )
    got = sparse_lrp.linear_lrp(x, w, r, Epsilon(0.0))
    torch.testing.assert_close(got, sparse_lrp.linear_lrp(x, fresh, r, Epsilon(0.0)))
    torch.testing.assert_close(got, torch.tensor([[0.0, 2.0 / 6, 4.0 / 6]]))


def test_from_dense_keeps_masked_zero_weights():
    """from_dense multiplied by the mask and dropped zeros: kept connections with weight 0
    vanished (Flat then spread relevance over 2 instead of 3 inputs)."""
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
    mask = torch.tensor([[True, True, True], [False, True, True]])
    layer = SparseLinear.from_dense(lin, mask)
    assert layer.weight._nnz() == 5
    assert SparseLinear.from_dense(lin).weight._nnz() == 3  # default: the non-zero weights
    x, R = torch.ones(1, 3, dtype=DT), torch.tensor([[1.0, 1.0]], dtype=DT)
    got = sparse_lrp.linear_lrp(x, layer.weight.detach(), R, Flat(stabilizer=0.0))
    torch.testing.assert_close(got, torch.tensor([[1 / 3, 1 / 3 + 1 / 2, 1 / 3 + 1 / 2]], dtype=DT))
    with pytest.raises(ValueError, match="mask must have the weight's shape"):
        SparseLinear.from_dense(lin, torch.ones(3, 2, dtype=torch.bool))


def _connection_records(res, name="0"):
    return res.layers[name]["edge_local"]


@pytest.mark.parametrize("rule", [Epsilon(0.0), ZPlus(), Gamma(0.25)], ids=["lrp0", "zplus", "gamma"])
def test_connection_relevance_per_target_for_several_samples(rule):
    """Several samples share one pass; each gets its own connection relevance, the same
    as its single call's (and they add up to the joint explanation's)."""
    _, sparse, x = pruned_pair(seed=5)
    index = [3, 0, 4]
    many = sparse_lrp.explain(sparse, x, None, index=index, composite=rule)
    rec = _connection_records(many)
    assert rec.shape == (3, sparse[0].weight._nnz())
    for t, i in enumerate(index):
        torch.testing.assert_close(
            rec[t], _connection_records(sparse_lrp.explain(sparse, x, None, index=i, composite=rule))
        )


def test_connection_relevance_per_target_for_graphs_and_node_targets():
    import torch_geometric.nn as gnn
    from gnn_reference import make_batch

    ei, batch = make_batch((5, 6, 4), seed=7)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(batch.numel(), 6, generator=g, dtype=DT)
    mask = torch.rand(8, 6, generator=g) < 0.5
    layer = SparseLinear.from_dense(nn.Linear(6, 8).double(), mask)

    class Net(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.features, self.conv, self.pool = layer, gnn.GraphConv(8, 3).double(), pool

        def forward(self, x, edge_index, batch=None):
            h = self.conv(torch.relu(self.features(x)), edge_index)
            return gnn.global_add_pool(h, batch) if self.pool else h

    graphs = Net(pool=True).eval()
    many = sparse_lrp.explain(graphs, x, ei, index=[2, 0], composite="zplus", batch=batch)
    for t, i in enumerate([2, 0]):
        one = sparse_lrp.explain(graphs, x, ei, index=i, composite="zplus", batch=batch)
        torch.testing.assert_close(_connection_records(many, "features")[t], _connection_records(one, "features"))
    nodes = Net(pool=False).eval()
    y = nodes(x, ei).detach()
    many = sparse_lrp.explain(nodes, x, ei, index=[4, 11], composite="zplus", max_union=40)  # two chunks
    for t, i in enumerate([4, 11]):
        one = sparse_lrp.explain(nodes, x, ei, index=i, composite="zplus")  # on its subgraph
        seed = torch.zeros_like(y)
        seed[i, y[i].argmax()] = y[i].max()
        whole = sparse_lrp.explain(nodes, x, ei, target=seed, composite="zplus")  # the whole graph
        torch.testing.assert_close(_connection_records(one, "features"), _connection_records(whole, "features"))
        torch.testing.assert_close(_connection_records(many, "features")[t], _connection_records(one, "features"))


def test_connection_relevance_per_target_for_batch_first_inputs_and_reordered_rows():
    """``[B, S, F]`` inputs give each sample S channels. A forward that reorders the rows
    cannot share one pass split by row (a row-reading op, as ``h + h.flip(0)`` would mix
    them; the check cannot tell an undone reordering apart): refused, and each sample
    alone stays exact."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, generator=g, dtype=DT) * (torch.rand(6, 4, generator=g) < 0.5)

    class Seq(nn.Module):
        def __init__(self, flip=False):
            super().__init__()
            self.a, self.b, self.flip = SparseLinear(w), nn.Linear(6, 3, bias=False).double(), flip

        def forward(self, x):
            if self.flip:
                return self.b(torch.relu(self.a(x.flip(0)))).flip(0)
            return self.b(torch.relu(self.a(x))).sum(1)  # x [B, S, F]

    kw = {"target": 0, "composite": Epsilon(0.0)}
    seq, x3 = Seq().eval(), torch.randn(4, 3, 4, generator=g, dtype=DT)
    many = sparse_lrp.explain(seq, x3, None, index=[1, 2], **kw)
    for t, i in enumerate([1, 2]):
        one = sparse_lrp.explain(seq, x3, None, index=i, **kw)
        torch.testing.assert_close(many.layers["a"]["edge_local"][t], one.layers["a"]["edge_local"])
    flipped, x2 = Seq(flip=True).eval(), torch.randn(4, 4, generator=g, dtype=DT)
    with pytest.raises(ValueError, match=r"mixes its input rows \(flip\)"):
        sparse_lrp.explain(flipped, x2, None, index=[0, 1], **kw)
    for i in (0, 1):
        one = sparse_lrp.explain(flipped, x2, None, index=i, **kw)
        xg = x2.clone().requires_grad_(True)
        flipped(xg)[i, 0].backward()
        torch.testing.assert_close(one.node_feat, (xg.grad * x2).detach())
