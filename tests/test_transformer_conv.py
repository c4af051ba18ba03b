"""TransformerConv: attention (and the ``beta`` gate) held fixed, as LRP treats gating.

Reference, independent of the handler: the layer written out here from PyG's documented
formula, ``out_j = sum_i α_ji (W_v x_i + W_e e_ji) + W_s x_j`` per head (``beta``:
``β skip + (1 - β) attention``), with ``α`` read from the layer's own forward and ``β``
computed from the forward's values, both as constants. The model is then linear in ``x``
and ``e`` up to ReLU, so LRP-0 equals gradient x input, for node features and edge
features alike, and relevance is conserved.
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
N, F, D = 9, 5, 3


@pytest.fixture
def graph():
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, N, (2, 30), generator=g)
    return torch.randn(N, F, dtype=DT, generator=g), ei, torch.randn(30, D, dtype=DT, generator=g)


def dense(m, x, ei, ea, alpha):
    """``m``'s output with attention ``alpha [E, H]`` fixed (beta from the values seen)."""
    heads, c = m.heads, m.out_channels
    v = (x @ m.lin_value.weight.T).view(-1, heads, c)[ei[0]]
    if m.lin_edge is not None:
        v = v + (ea @ m.lin_edge.weight.T).view(-1, heads, c)
    agg = torch.zeros(x.shape[0], heads, c, dtype=x.dtype).index_add(0, ei[1], alpha[:, :, None] * v)
    if m.aggr == "mean":
        agg = agg / torch.bincount(ei[1], minlength=x.shape[0]).clamp(min=1).to(x)[:, None, None]
    out = agg.reshape(x.shape[0], -1) if m.concat else agg.mean(1)
    if not m.root_weight:
        return out
    skip = x @ m.lin_skip.weight.T
    if m.lin_beta is None:
        return out + skip
    a, s = out.detach(), skip.detach()
    beta = torch.sigmoid(torch.cat([a, s, a - s], -1) @ m.lin_beta.weight.T)
    return beta * skip + (1 - beta) * out


class Two(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        heads = kw.get("heads", 1)
        width = 4 * heads if kw.get("concat", True) else 4
        self.conv1 = gnn.TransformerConv(F, 4, bias=False, **kw)
        self.conv2 = gnn.TransformerConv(width, 2, bias=False, **kw)

    def forward(self, x, edge_index, edge_attr=None):
        return self.conv2(torch.relu(self.conv1(x, edge_index, edge_attr)), edge_index, edge_attr)


VARIANTS = {
    "concat": dict(heads=2),
    "mean": dict(heads=2, concat=False),
    "edge_dim": dict(heads=2, edge_dim=D),
    "beta": dict(heads=3, beta=True, edge_dim=D),
    "no_root": dict(heads=1, root_weight=False),
    "aggr_mean": dict(heads=2, aggr="mean", edge_dim=D),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lrp0_is_gradient_x_input_with_attention_fixed(variant, graph):
    x, ei, ea = graph
    torch.manual_seed(1)
    model = Two(**VARIANTS[variant]).double().eval()
    ea = ea if model.conv1.lin_edge is not None else None
    kw = {} if ea is None else {"edge_attr": ea}
    _, (_, a1) = model.conv1(x, ei, ea, return_attention_weights=True)
    h1 = torch.relu(model.conv1(x, ei, ea))
    _, (_, a2) = model.conv2(h1, ei, ea, return_attention_weights=True)
    a1, a2 = a1.detach(), a2.detach()

    def ref(x_, ea_):
        return dense(model.conv2, torch.relu(dense(model.conv1, x_, ei, ea_, a1)), ei, ea_, a2)

    assert_close(ref(x, ea), model(x, ei, ea))  # (the reference is the layer's forward)
    for index, target in [(4, 1), (7, 0)]:
        res = sparse_lrp.explain(model, x, ei, index=index, target=target, composite=Epsilon(0.0), **kw)
        xg = x.clone().requires_grad_(True)
        eg = None if ea is None else ea.clone().requires_grad_(True)
        ref(xg, eg)[index, target].backward()
        assert_close(res.node_feat, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
        total = res.node_feat.sum()
        if eg is not None:
            assert_close(res.edge_attr, (eg.grad * ea).detach(), atol=1e-12, rtol=1e-9)
            total = total + res.edge_attr.sum()
        assert total.item() == pytest.approx(res.output.item(), abs=1e-12)  # conserved
        assert res.output.item() == pytest.approx(model(x, ei, ea)[index, target].item(), abs=1e-12)


def test_edge_relevance_is_the_messages_relevance(graph):
    """One layer without root weight, one head, LRP-0: each edge carries the relevance of its
    message ``α_ji v_i · c_j`` (``c`` the output's relevance ratio), summed over channels."""
    x, ei, _ = graph
    torch.manual_seed(2)
    conv = gnn.TransformerConv(F, 3, bias=False, root_weight=False).double().eval()
    _, (_, alpha) = conv(x, ei, return_attention_weights=True)
    res = sparse_lrp.explain(conv, x, ei, index=2, target=1, composite=Epsilon(0.0))
    v = x @ conv.lin_value.weight.T
    expected = torch.where(ei[1] == 2, alpha[:, 0] * v[ei[0], 1], 0.0)  # (ratio 1 at the explained logit)
    assert_close(res.edge, expected.detach(), atol=1e-12, rtol=1e-9)


def test_batched_targets_equal_single_calls_and_presets_account_for_everything(graph):
    x, ei, ea = graph
    torch.manual_seed(3)
    model = Two(heads=2, edge_dim=D, beta=True).double().eval()
    for preset in ("epsilon", "zplus", "gamma"):
        batched = sparse_lrp.explain(model, x, ei, index=[1, 5, 8], composite=preset, edge_attr=ea)
        for row, i in enumerate([1, 5, 8]):
            single = sparse_lrp.explain(model, x, ei, index=i, composite=preset, edge_attr=ea)
            assert_close(batched.node_feat[row], single.node_feat, atol=1e-12, rtol=1e-9)
            assert_close(batched.edge[row], single.edge, atol=1e-12, rtol=1e-9)
            assert torch.isfinite(single.node_feat).all()
            c = single.conservation
            assert c["out"] == pytest.approx(c["in"] + c["absorbed"] + c["lost"], abs=1e-10)


def test_edge_attr_without_edge_dim_is_refused(graph):
    x, ei, ea = graph
    conv = gnn.TransformerConv(F, 2).double().eval()
    with pytest.raises(ValueError, match="TransformerConv got edge_attr but has no edge_dim"):
        sparse_lrp.explain(conv, x, ei, index=0, edge_attr=ea)
