"""Attention-like readouts: AttentionalAggregation and SoftmaxAggregation pooling graphs.

Reference, independent of the handlers: each readout written out from PyG's documented
formula, its softmax weights over each graph's nodes computed from the forward's values
and held as constants (as LRP holds attention). The models are bias-free ReLU networks,
so LRP-0 of each graph's logit equals gradient x input of that reference, conserved.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import assert_conserved
from torch import nn
from torch.testing import assert_close

import sparse_lrp
from sparse_lrp.rules import Epsilon

DT = torch.float64
F, H = 4, 6


def _batch():
    g = torch.Generator().manual_seed(0)
    sizes = [5, 7, 4]
    xs, eis, off = [], [], 0
    for n in sizes:
        ei = torch.randint(0, n, (2, 3 * n), generator=g)
        eis.append(ei[:, ei[0] != ei[1]] + off)
        xs.append(torch.randn(n, F, dtype=DT, generator=g))
        off += n
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return torch.cat(xs), torch.cat(eis, 1), batch


def group_softmax(scores, batch):
    """Softmax of ``scores [N, C]`` within each graph, as constants."""
    s = scores.detach()
    w = (s - s.max()).exp()
    return w / torch.zeros(int(batch.max()) + 1, s.shape[1], dtype=DT).index_add(0, batch, w)[batch]


class Net(nn.Module):
    def __init__(self, readout: str):
        super().__init__()
        self.conv = gnn.GCNConv(F, H, bias=False)
        if readout == "attention":
            self.pool = gnn.aggr.AttentionalAggregation(
                gate_nn=nn.Sequential(nn.Linear(H, 3), nn.Tanh(), nn.Linear(3, 1)), nn=nn.Linear(H, H, bias=False)
            )
        elif readout == "attention_no_nn":
            self.pool = gnn.aggr.AttentionalAggregation(gate_nn=nn.Linear(H, 1))
        else:
            self.pool = gnn.aggr.SoftmaxAggregation(t=0.5, learn=True, channels=H)
        self.head = nn.Linear(H, 2, bias=False)

    def forward(self, x, edge_index, batch, reference=False):
        h = torch.relu(self.conv(x, edge_index))
        if not reference:
            return self.head(self.pool(h, batch))
        p = self.pool
        if isinstance(p, gnn.aggr.AttentionalAggregation):
            gate = group_softmax(p.gate_nn(h), batch)
            v = p.nn(h) if p.nn is not None else h
        else:
            gate = group_softmax(h * p.t.view(1, -1), batch)
            v = h
        return self.head(torch.zeros(int(batch.max()) + 1, H, dtype=DT).index_add(0, batch, gate * v))


@pytest.mark.parametrize("readout", ["attention", "attention_no_nn", "softmax"])
def test_lrp0_is_gradient_x_input_with_the_readout_weights_fixed(readout):
    x, ei, batch = _batch()
    torch.manual_seed(1)
    model = Net(readout).double().eval()
    assert_close(model(x, ei, batch, reference=True), model(x, ei, batch))  # (the reference is the model)
    res = sparse_lrp.explain(model, x, ei, index=[0, 1, 2], target=1, batch=batch, composite=Epsilon(0.0))
    for g in range(3):
        xg = x.clone().requires_grad_(True)
        model(xg, ei, batch, reference=True)[g, 1].backward()
        assert_close(res.node_feat[g], (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        assert res.node_feat[g].sum().item() == pytest.approx(res.output[g].item(), abs=1e-12)
        assert res.node_feat[g][batch != g].abs().max() == 0  # (one graph's logit reads its own nodes only)


def test_presets_through_a_readout_account_for_everything():
    x, ei, batch = _batch()
    torch.manual_seed(2)
    model = Net("attention").double().eval()
    for preset in ("epsilon", "zplus", "gamma"):
        res = sparse_lrp.explain(model, x, ei, index=1, batch=batch, composite=preset)
        assert torch.isfinite(res.node_feat).all()
        assert_conserved(res, abs=1e-10)
