"""nn.MultiheadAttention and PyG's GPSConv: attention held fixed (LRP's AH-rule).

Reference, independent of the handler: multi-head attention written out here
(``softmax(Q Kᵀ / sqrt(d))`` with its key padding mask, per head, then ``A V`` and the
output projection), the attention probabilities computed from the forward's values and
detached. The models are bias-free ReLU networks, so LRP-0 equals gradient x input of
that reference, and relevance is conserved.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import zero_biases
from torch import nn
from torch.testing import assert_close

import sparse_lrp
from sparse_lrp.rules import Epsilon

DT = torch.float64


def attention(m: nn.MultiheadAttention, q, k, v, key_padding_mask=None):
    """``m`` on batch-first ``[B, L, E]`` inputs, its attention probabilities as constants."""
    e, heads = m.embed_dim, m.num_heads
    d = e // heads
    if m._qkv_same_embed_dim:
        wq, wk, wv = m.in_proj_weight.split(e)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight

    def split(t):  # [B, S, E] -> [B, H, S, d]
        return t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

    qh, kh, vh = split(q @ wq.T), split(k @ wk.T), split(v @ wv.T)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, -1).detach()
    out = (probs @ vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], e)
    return out @ m.out_proj.weight.T


class Seq(nn.Module):
    """``head(relu(attn(lin(x))))`` over sequences: ``x [B, L, F]`` (batch-first) or ``[L, F]``."""

    def __init__(self, batch_first=True, kdim=None):
        super().__init__()
        self.lin = nn.Linear(5, 8, bias=False)
        self.other = nn.Linear(5, kdim or 8, bias=False)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, bias=False, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x, mask=None, reference=False):
        q, kv = self.lin(x), self.other(x)
        if reference:
            one = x.dim() == 2
            q3, kv3 = (q[None], kv[None]) if one else (q, kv)
            h = attention(self.attn, q3, kv3, kv3, mask)
            h = h[0] if one else h
        elif self.attn.batch_first or x.dim() == 2:
            h, _ = self.attn(q, kv, kv, key_padding_mask=mask, need_weights=False)
        else:
            h, _ = self.attn(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), key_padding_mask=mask)
            h = h.transpose(0, 1)
        return self.head(torch.relu(h))


class Flat(nn.Module):
    """Flattens ``[B, L, 3]`` to rows, so explain sees one output row per position."""

    def __init__(self, inner, shape):
        super().__init__()
        self.inner, self.shape = inner, shape

    def forward(self, x, **kw):
        return self.inner(x.view(self.shape), **kw).reshape(-1, 3)


CASES = {
    "batch_first": dict(batch_first=True),
    "sequence_first": dict(batch_first=False),
    "kdim_vdim": dict(kdim=6),
    "unbatched": dict(),
    "padding_mask": dict(),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lrp0_is_gradient_x_input_with_attention_fixed(case):
    torch.manual_seed(0)
    model = Seq(**CASES[case]).double().eval()
    shape = (7, 5) if case == "unbatched" else (2, 7, 5)
    x = torch.randn(*shape, dtype=DT)
    mask = None
    if case == "padding_mask":
        mask = torch.zeros(2, 7, dtype=torch.bool)
        mask[1, 5:] = True  # (the second sequence has 5 positions)
    flat = Flat(model, shape).eval()
    kw = {} if mask is None else {"mask": mask}
    assert_close(flat(x.reshape(-1, 5), **kw), flat(x.reshape(-1, 5), reference=True, **kw))
    rows = x.reshape(-1, 5)
    for i in (2, 5) if case == "unbatched" else (2, 9):
        res = sparse_lrp.explain(flat, rows, index=i, target=1, composite=Epsilon(0.0), **kw)
        xg = rows.clone().requires_grad_(True)
        flat(xg, reference=True, **kw)[i, 1].backward()
        assert_close(res.node_feat, (xg.grad * rows).detach(), atol=1e-12, rtol=1e-9)
        assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
        assert "edge_local" in res.layers["inner.attn"]  # (relevance per (query, key) pair)
    # Rows attend to each other: they cannot share one pass split by row (it split wrongly).
    with pytest.raises(ValueError, match=r"mixes its input rows \(a layer's map over rows"):
        sparse_lrp.explain(flat, rows, index=[2, 5], target=1, **kw)


def test_need_weights_are_the_modules_own():
    torch.manual_seed(1)
    m = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m
            self.seen = None

        def forward(self, x):
            out, w = self.m(x[None], x[None], x[None])
            self.seen = w
            return out[0]

    x = torch.randn(6, 8, dtype=DT)
    wrap = Wrap().eval()
    sparse_lrp.explain(wrap, x, index=0)
    assert_close(wrap.seen, m(x[None], x[None], x[None])[1])


def _graphs():
    g = torch.Generator().manual_seed(0)
    sizes = [6, 9]
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    ei = torch.randint(0, 15, (2, 50), generator=g)
    ei = ei[:, (batch[ei[0]] == batch[ei[1]]) & (ei[0] != ei[1])]
    return torch.randn(15, 8, dtype=DT, generator=g), ei, batch


class GPS(nn.Module):
    def __init__(self, level: str):
        super().__init__()
        mlp = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False))
        self.gps = zero_biases(gnn.GPSConv(8, gnn.GINConv(mlp), heads=2, norm=None))
        self.head = nn.Linear(8, 2, bias=False)
        self.level = level

    def forward(self, x, edge_index, batch):
        h = self.gps(x, edge_index, batch)
        return self.head(gnn.global_add_pool(h, batch) if self.level == "graph" else h)


def _fixed_attention(m):
    """Replace ``m``'s forward by the reference (for the gradient x input pass only)."""

    def forward(q, k, v, key_padding_mask=None, need_weights=True, **_):
        return attention(m, q, k, v, key_padding_mask), None

    m.forward = forward


@pytest.mark.parametrize("level", ["graph", "node"])
def test_gps_conv(level):
    """GPSConv (local GIN + global attention, MLP): LRP-0 is gradient x input with the
    attention fixed, for each graph of a batch, or for a node (a single node target keeps
    the whole graph: attention reads every node of its graph)."""
    x, ei, batch = _graphs()
    torch.manual_seed(2)
    model = GPS(level).double().eval()
    index = [0, 1] if level == "graph" else 4
    res = sparse_lrp.explain(model, x, ei, index=index, target=1, batch=batch, composite=Epsilon(0.0))
    _fixed_attention(model.gps.attn)
    try:
        for t, i in enumerate([index] if level == "node" else index):
            xg = x.clone().requires_grad_(True)
            model(xg, ei, batch)[i, 1].backward()
            got = res.node_feat if level == "node" else res.node_feat[t]
            assert_close(got, (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
            assert got.sum().item() == pytest.approx(
                (res.output if level == "node" else res.output[t]).item(), abs=1e-12
            )
    finally:
        del model.gps.attn.forward
    if level == "node":  # (batched node targets: the attention mixes nodes beyond any k-hop subgraph)
        with pytest.raises(ValueError, match="one at a time"):
            sparse_lrp.explain(model, x, ei, index=[1, 4], batch=batch)


def test_add_bias_kv_is_refused():
    m = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True).double().eval()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x[None], x[None], x[None])[0][0]

    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn is not supported"):
        sparse_lrp.explain(Wrap().eval(), torch.randn(5, 8, dtype=DT), index=0)
