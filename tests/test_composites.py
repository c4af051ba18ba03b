"""Which layer a composite's ``first`` and ``top`` rules reach, checked against the same
assignment spelt out with ``by_name`` (and, for GraphConv, against the kernel by hand)."""

from __future__ import annotations

import torch
import torch_geometric.nn as gnn
from gnn_reference import DT, assert_close, make_batch, make_graph
from torch import nn

import sparse_lrp
from sparse_lrp import Composite, Epsilon, WSquare, ZPlus

E0, Z, W = Epsilon(1e-9), ZPlus(), WSquare()


def _feat(model, x, ei, composite, **kw):
    return sparse_lrp.explain(model, x, ei, target=0, composite=composite, **kw).node_feat


class Residual(nn.Module):
    """``a(h) + b(h)``, the summands called in either order."""

    def __init__(self, a_first):
        super().__init__()
        self.l0, self.a, self.b, self.a_first = nn.Linear(5, 16), nn.Linear(16, 3), nn.Linear(16, 3), a_first

    def forward(self, x):
        h = torch.relu(self.l0(x))
        if self.a_first:
            first, second = self.a(h), self.b(h)
        else:
            second, first = self.b(h), self.a(h)
        return first + second


def test_top_takes_every_summand_of_a_residual_output():
    torch.manual_seed(0)
    m1 = Residual(True).double().eval()
    m2 = Residual(False).double().eval()
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(4, 5, dtype=DT)
    both = _feat(m1, x, None, Composite(E0, by_name={"a": Z, "b": Z}), index=1)
    assert_close(_feat(m1, x, None, Composite(E0, top=Z), index=1), both)
    assert_close(_feat(m2, x, None, Composite(E0, top=Z), index=1), both)


def test_top_reaches_a_conv_under_global_pooling_and_the_map_inside_a_gin():
    ei, batch = make_batch((6, 7), seed=1)
    x = torch.randn(13, 3, dtype=DT, generator=torch.Generator().manual_seed(2))

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = gnn.GCNConv(3, 8), gnn.GCNConv(8, 2)

        def forward(self, x, edge_index, batch):
            return gnn.global_add_pool(self.c2(torch.relu(self.c1(x, edge_index)), edge_index), batch)

    torch.manual_seed(1)
    pooled = Pooled().double().eval()
    kw = {"index": 0, "batch": batch}
    top = _feat(pooled, x, ei, Composite(E0, top=Z), **kw)
    assert_close(top, _feat(pooled, x, ei, Composite(E0, by_name={"c2": Z}), **kw))
    assert not torch.allclose(top, _feat(pooled, x, ei, Composite(E0), **kw))

    class GinTop(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = gnn.GINConv(nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6)))
            self.c2 = gnn.GINConv(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)))

        def forward(self, x, edge_index):
            return self.c2(torch.relu(self.c1(x, edge_index)), edge_index)

    torch.manual_seed(2)
    gin = GinTop().double().eval()
    top = _feat(gin, x, ei, Composite(E0, top=Z), index=4)
    assert_close(top, _feat(gin, x, ei, Composite(E0, by_name={"c2.nn.2": Z}), index=4))
    assert not torch.allclose(top, _feat(gin, x, ei, Composite(E0, by_name={"c2": Z}), index=4))


def test_first_takes_feature_maps_not_the_propagation():
    """GIN: the MLP's first Linear (after the neighbour sum); GraphConv: its pair of
    weight maps, while the propagation over the input keeps the default rule."""
    ei = make_graph(12, extra=12, seed=3)
    x = torch.randn(12, 3, dtype=DT, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(3)
    gin = gnn.GIN(3, 4, 2, out_channels=2).double().eval()
    first = _feat(gin, x, ei, Composite(E0, first=W), index=0)
    assert_close(first, _feat(gin, x, ei, Composite(E0, by_name={"convs.0.nn.lins.0": W}), index=0))

    conv = gnn.GraphConv(3, 2).double().eval()
    ei2 = torch.tensor([[1, 2, 3, 4, 5, 0], [0, 0, 0, 1, 1, 2]])
    x2 = torch.randn(6, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    got = sparse_lrp.explain(conv, x2, ei2, index=0, target=0, composite=Composite(E0, first=W)).node_feat
    agg = torch.zeros(6, 3, dtype=DT).index_add_(0, ei2[1], x2[ei2[0]])
    pair = torch.cat([agg, x2], 1)
    w = torch.cat([conv.lin_rel.weight, conv.lin_root.weight], 1).detach()
    b = conv.lin_rel.bias.detach()
    R = torch.zeros(6, 2, dtype=DT)
    R[0, 0] = (pair @ w.T + b)[0, 0]
    r_pair = sparse_lrp.linear_lrp(pair, w, R, W, b)  # WSquare on the joint weight map
    want = r_pair[:, 3:] + sparse_lrp.edge_lrp(x2, ei2, None, r_pair[:, :3], E0)  # Epsilon propagation
    assert_close(got, want)


def test_first_reaches_the_first_layer_when_the_input_is_touched_before_it():
    torch.manual_seed(4)
    mlp = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()

    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.l0, self.l1 = mlp[0], mlp[2]

        def forward(self, x):
            return self.l1(torch.relu(self.l0(x[:, :3] * 1.0)))

    model = Sliced().eval()
    x = torch.randn(4, 5, dtype=DT)
    got = _feat(model, x, None, Composite(E0, first=W), index=2)
    assert_close(got, _feat(model, x, None, Composite(E0, by_name={"l0": W}), index=2))
    assert not torch.allclose(got, _feat(model, x, None, Composite(E0), index=2))


class _Copied(nn.Module):
    """A layer fed ``x`` itself or a copy of it made in the model's code (the same function)."""

    def __init__(self, conv, copy):
        super().__init__()
        self.conv, self.copy = conv, copy

    def forward(self, x, edge_index, edge_attr=None):
        h = torch.cat([x[:, :2], x[:, 2:]], 1) if self.copy else x
        kw = {} if edge_attr is None else {"edge_attr": edge_attr}
        return self.conv(h, edge_index, **kw)


def test_first_never_takes_mixing_that_a_root_term_joins():
    """NNConv, LEConv, ResGatedGraphConv sum a root term ``x Θ`` into their node mixing: its
    weights take `first` as a feature map of the input, the mixing over edges never does, so
    the same function explains the same whether the layer reads ``x`` or a copy of it (one
    map holding both once took WSquare for the mixing, or for neither)."""
    ei = make_graph(12, extra=12, seed=3)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 4, dtype=DT, generator=g)
    ea = torch.randn(ei.shape[1], 2, dtype=DT, generator=g)
    torch.manual_seed(7)
    convs = {
        "nn": (gnn.NNConv(4, 3, nn.Linear(2, 12), aggr="mean"), ea),
        "le": (gnn.LEConv(4, 3), None),
        "gated": (gnn.ResGatedGraphConv(4, 3), None),
    }
    for name, (conv, e) in convs.items():
        conv = conv.double().eval()
        kw = {} if e is None else {"edge_attr": e}
        for composite in ("gamma", Composite(E0, first=W)):
            direct = sparse_lrp.explain(_Copied(conv, False), x, ei, index=2, target=0, composite=composite, **kw)
            copied = sparse_lrp.explain(_Copied(conv, True), x, ei, index=2, target=0, composite=composite, **kw)
            assert_close(direct.node_feat, copied.node_feat)
            assert_close(direct.edge, copied.edge)
        plain = sparse_lrp.explain(_Copied(conv, False), x, ei, index=2, target=0, composite=E0, **kw)
        assert not torch.allclose(direct.node_feat, plain.node_feat), name  # (first=W changes something)
