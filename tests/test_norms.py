"""Normalisation layers under the LN-rule (statistics held constant).

References, independent of the handlers: each normalisation written out here from its
documented formula, with its statistics detached. On a bias-free ReLU network that
makes the model piecewise linear, so LRP-0 equals gradient x input of the model with
those forwards; relevance is conserved; and an affine bias absorbs, under Epsilon(0),
exactly its own term of the output, ``sum_j b_j W2[k, j]`` over the active units j.
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


# -- the formulas, statistics detached -------------------------------------------------
def _ln(h, eps, w=None, b=None):
    u = h - h.mean(-1, keepdim=True)
    out = u / (u.detach().pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return out * (1 if w is None else w) + (0 if b is None else b)


def _groups(x, batch):
    batch = torch.zeros(x.shape[0], dtype=torch.long) if batch is None else batch
    return [batch == g for g in range(int(batch.max()) + 1)]


def _per_graph(x, batch, fn):
    out = torch.zeros_like(x)
    for rows in _groups(x, batch):
        idx = rows.nonzero()[:, 0]
        out = out.index_put((idx,), fn(x[idx]))
    return out


def reference(m):
    """``m``'s forward with its statistics detached, written from its documented formula."""
    if isinstance(m, nn.LayerNorm):
        return lambda x: _ln(x, m.eps, m.weight, m.bias)
    if isinstance(m, nn.RMSNorm):
        eps = torch.finfo(DT).eps if m.eps is None else m.eps  # (torch's documented default)
        return lambda x: x / (x.detach().pow(2).mean(-1, keepdim=True) + eps).sqrt() * m.weight
    if isinstance(m, nn.GroupNorm):

        def group(x):
            g = x.reshape(x.shape[0], m.num_groups, -1)
            u = g - g.mean(-1, keepdim=True)
            h = (u / (u.detach().pow(2).mean(-1, keepdim=True) + m.eps).sqrt()).reshape(x.shape)
            per_channel = (1, -1) + (1,) * (x.dim() - 2)
            return h * m.weight.view(per_channel) + m.bias.view(per_channel)

        return group
    if isinstance(m, gnn.LayerNorm) and m.mode == "node":
        return lambda x, *a: _ln(x, m.eps, m.weight, m.bias)
    if isinstance(m, gnn.LayerNorm):

        def graph_ln(x, batch=None, size=None):
            def one(h):
                u = h - h.mean()
                sq = u.detach().pow(2).mean()
                spread = sq.sqrt() + m.eps if batch is None else (sq + m.eps).sqrt()  # (as PyG's two branches)
                return u / spread * m.weight + m.bias

            return _per_graph(x, batch, one)

        return graph_ln
    if isinstance(m, gnn.GraphNorm):

        def graph_norm(x, batch=None, size=None):
            def one(h):
                u = h - m.mean_scale * h.mean(0)
                return m.weight * u / (u.detach().pow(2).mean(0) + m.eps).sqrt() + m.bias

            return _per_graph(x, batch, one)

        return graph_norm
    if isinstance(m, gnn.InstanceNorm):

        def instance(x, batch=None, size=None):
            def one(h):
                u = h - h.mean(0)
                h = u / (u.detach().pow(2).mean(0) + m.eps).sqrt()
                return h if m.weight is None else h * m.weight + m.bias

            return _per_graph(x, batch, one)

        return instance
    if isinstance(m, gnn.PairNorm):

        def pair(x, batch=None, size=None):
            def one(h):
                u = h - h.mean(0)
                sq = u.detach().pow(2).sum(-1, keepdim=True)
                d = m.eps + sq.sqrt() if m.scale_individually else (m.eps + sq.mean()).sqrt()
                return m.scale * u / d

            return _per_graph(x, batch, one)

        return pair
    raise AssertionError(type(m))


NORMS = {
    "LayerNorm": lambda: nn.LayerNorm(8),
    "RMSNorm": lambda: nn.RMSNorm(8),
    "RMSNorm(eps)": lambda: nn.RMSNorm(8, eps=1e-2),
    "GroupNorm": lambda: nn.GroupNorm(2, 8),
    "pyg.LayerNorm(node)": lambda: gnn.LayerNorm(8, mode="node"),
    "pyg.LayerNorm(graph)": lambda: gnn.LayerNorm(8),
    "GraphNorm": lambda: gnn.GraphNorm(8),
    "InstanceNorm": lambda: gnn.InstanceNorm(8, affine=True),
    "PairNorm": lambda: gnn.PairNorm(scale=1.5),
    "PairNorm(individually)": lambda: gnn.PairNorm(scale_individually=True),
}


def _randomised(m, zero_bias: bool):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if name != "bias" else torch.randn_like(p))
            if name == "bias" and zero_bias:
                p.zero_()
    return m.double()


def _norms(basic_gnn):
    return [m for m in basic_gnn.norms if not isinstance(m, nn.Identity)]


def _grad_x_input(fn, x):
    x = x.clone().requires_grad_(True)
    fn(x).backward()
    return (x.grad * x).detach()


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_lrp0_is_gradient_x_input_with_statistics_detached(kind):
    torch.manual_seed(0)
    norm = _randomised(NORMS[kind](), zero_bias=True)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), norm, nn.ReLU(), nn.Linear(8, 3, bias=False)).double().eval()
    x = torch.randn(5, 6, dtype=DT)
    ref = reference(norm)
    for target in range(3):
        res = sparse_lrp.explain(model, x, index=2, target=target, composite=Epsilon(0.0))

        def logit(inp, target=target):
            h = ref(model[0](inp))
            return model[3](torch.relu(h))[2, target]

        expected = _grad_x_input(logit, x)
        assert_close(res.node_feat, expected, atol=1e-12, rtol=1e-9)
        assert res.output.item() == pytest.approx(model(x)[2, target].item(), abs=1e-12)
        assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)  # conserved


@pytest.mark.parametrize("kind", ["LayerNorm", "GroupNorm"])
def test_norms_over_several_trailing_dimensions(kind):
    """Rows of shape 2 x 4: LayerNorm((2, 4)) standardises each row's block as one group;
    GroupNorm(2, 2) each of its 2 channels over 4 positions, scaled per channel."""
    torch.manual_seed(0)
    norm = _randomised(nn.LayerNorm((2, 4)) if kind == "LayerNorm" else nn.GroupNorm(2, 2), zero_bias=True)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.norm, self.out = nn.Linear(6, 8, bias=False), norm, nn.Linear(8, 2, bias=False)

        def forward(self, x, norm_fn=None):
            h = self.lin(x).reshape(-1, 2, 4)
            h = (norm_fn or self.norm)(h)
            return self.out(torch.relu(h).reshape(-1, 8))

    model = Model().double().eval()
    x = torch.randn(4, 6, dtype=DT)
    res = sparse_lrp.explain(model, x, index=0, target=1, composite=Epsilon(0.0))

    def ln2(h):
        flat = h.reshape(h.shape[0], -1)
        return _ln(flat, norm.eps, norm.weight.reshape(-1), norm.bias.reshape(-1)).reshape(h.shape)

    norm_fn = ln2 if kind == "LayerNorm" else reference(norm)
    expected = _grad_x_input(lambda inp: model(inp, norm_fn=norm_fn)[0, 1], x)
    assert_close(res.node_feat, expected, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("kind", ["LayerNorm", "GraphNorm", "pyg.LayerNorm(graph)", "InstanceNorm"])
def test_affine_bias_absorbs_its_own_term(kind):
    """Under Epsilon(0) the affine map's bias keeps ``b_j / z_j R_j`` with ``R_j = z_j W2[k, j]``
    (LRP-0 above, ReLU passing): ``sum_j b_j W2[k, j]`` over the units the ReLU lets through."""
    torch.manual_seed(0)
    norm = _randomised(NORMS[kind](), zero_bias=False)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), norm, nn.ReLU(), nn.Linear(8, 3, bias=False)).double().eval()
    x = torch.randn(5, 6, dtype=DT)
    res = sparse_lrp.explain(model, x, index=3, target=1, composite=Epsilon(0.0))
    z = model[:2](x)[3]
    absorbed = (norm.bias * model[3].weight[1] * (z > 0)).sum().item()
    c = res.conservation
    assert c["absorbed"] == pytest.approx(absorbed, abs=1e-10)
    assert c["in"] == pytest.approx(res.output.item() - absorbed, abs=1e-10)
    assert c["lost"] == 0.0


def _graph(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (40,), generator=g)
    dst = torch.randint(0, n, (40,), generator=g)
    keep = src != dst
    ei = torch.stack([src[keep], dst[keep]])
    return torch.randn(n, 5, dtype=DT, generator=g), torch.cat([ei, ei.flip(0)], 1)


@pytest.mark.parametrize("norm", ["layer_norm", "graph_norm", "instance_norm", "pair_norm"])
def test_basic_gnn_with_norm_node_target(norm):
    """PyG's GCN(norm=...) on one graph: LRP-0 of a node's logit is gradient x input with the
    norms' statistics detached (the graph-wise ones read every node: the whole graph is kept)."""
    torch.manual_seed(0)
    model = gnn.GCN(5, 8, 3, 3, norm=norm, bias=False).double().eval()
    for m in _norms(model):
        _randomised(m, zero_bias=True)
    x, ei = _graph()
    res = sparse_lrp.explain(model, x, ei, index=4, target=2, composite=Epsilon(0.0))
    for m in _norms(model):
        m.forward = reference(m)
    try:
        expected = _grad_x_input(lambda inp: model(inp, ei)[4, 2], x)
    finally:
        for m in _norms(model):
            del m.forward
    assert_close(res.node_feat, expected, atol=1e-11, rtol=1e-9)
    assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-11)


@pytest.mark.parametrize("norm", ["layer_norm", "graph_norm", "instance_norm", "pair_norm"])
def test_graph_level_norm_per_graph_of_a_batch(norm):
    """A batch of graphs: the norms take each graph's own statistics; one pass explains every
    graph, each equal to gradient x input of its own pooled logit."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gnn = gnn.GCN(5, 8, 2, 8, norm=norm, bias=False)
            self.head = nn.Linear(8, 2, bias=False)

        def forward(self, x, edge_index, batch):
            return self.head(gnn.global_add_pool(self.gnn(x, edge_index, batch=batch), batch))

    model = Net().double().eval()
    for m in _norms(model.gnn):
        _randomised(m, zero_bias=True)
    (xa, ea), (xb, eb) = _graph(7, 1), _graph(9, 2)
    ea, eb = ea[:, (ea < 7).all(0)], eb[:, (eb < 9).all(0)]
    x, ei = torch.cat([xa, xb]), torch.cat([ea, eb + 7], 1)
    batch = torch.tensor([0] * 7 + [1] * 9)
    res = sparse_lrp.explain(model, x, ei, index=[0, 1], target=1, batch=batch, composite=Epsilon(0.0))
    for m in _norms(model.gnn):
        m.forward = reference(m)
    try:
        for t in range(2):
            expected = _grad_x_input(lambda inp, t=t: model(inp, ei, batch)[t, 1], x)
            assert_close(res.node_feat[t], expected, atol=1e-11, rtol=1e-9)
    finally:
        for m in _norms(model.gnn):
            del m.forward


@pytest.mark.parametrize("norm", ["layer_norm", "graph_norm", "instance_norm", "pair_norm"])
def test_a_norm_called_without_batch_refuses_several_graphs_in_one_pass(norm):
    """PyG's GIN calls its MLP's norm without ``batch``: statistics over the whole batch, so
    graph 0's logit reads graph 1's nodes. One pass split by graph gave graph 0 none of that
    relevance (its total +1.07 where the single call's is +1.60), silently: refused, naming
    the layer; one graph at a time is explained as the model computes it."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gnn = gnn.GIN(5, 8, 2, norm=norm)
            self.head = nn.Linear(8, 2)

        def forward(self, x, edge_index, batch):
            return self.head(gnn.global_add_pool(self.gnn(x, edge_index), batch))

    model = Net().double().eval()
    (xa, ea), (xb, eb) = _graph(7, 1), _graph(9, 2)
    ea, eb = ea[:, (ea < 7).all(0)], eb[:, (eb < 9).all(0)]
    x, ei = torch.cat([xa, xb]), torch.cat([ea, eb + 7], 1)
    batch = torch.tensor([0] * 7 + [1] * 9)
    with pytest.raises(ValueError, match=r"without `batch`.*several graphs cannot be explained in one pass"):
        sparse_lrp.explain(model, x, ei, index=[0, 1], batch=batch)
    one = sparse_lrp.explain(model, x, ei, index=0, target=1, batch=batch, composite="zplus")
    assert float(one.node_feat[7:].abs().sum()) > 0  # (graph 0's output reads graph 1's nodes)


@pytest.mark.parametrize("preset", ["epsilon", "zplus", "gamma"])
@pytest.mark.parametrize("norm", ["layer_norm", "graph_norm", "instance_norm", "pair_norm"])
def test_presets_with_norms_are_finite_and_account_for_everything(preset, norm):
    """Every preset through every norm (biases on): finite relevance, and the report's
    input + absorbed + lost relevance is the explained output."""
    torch.manual_seed(0)
    model = gnn.GCN(5, 8, 3, 3, norm=norm).double().eval()
    for m in _norms(model):
        _randomised(m, zero_bias=False)
    x, ei = _graph()
    res = sparse_lrp.explain(model, x, ei, index=4, composite=preset)
    assert torch.isfinite(res.node_feat).all() and torch.isfinite(res.edge).all()
    c = res.conservation
    assert c["out"] == pytest.approx(c["in"] + c["absorbed"] + c["lost"], abs=1e-10)
    assert c["out"] == pytest.approx(res.output.item(), abs=1e-12)


def test_batched_node_targets():
    """A per-node LayerNorm keeps k-hop subgraphs exact (batched = single calls); the
    graph-wise norms read every node of the graph, so batched node targets are refused."""
    torch.manual_seed(0)
    x, ei = _graph(30, 3)
    model = gnn.GCN(5, 8, 2, 3, norm="layer_norm", norm_kwargs={"mode": "node"}).double().eval()
    batched = sparse_lrp.explain(model, x, ei, index=[1, 7, 20])
    for row, i in enumerate([1, 7, 20]):
        single = sparse_lrp.explain(model, x, ei, index=i)
        assert_close(batched.node_feat[row], single.node_feat, atol=1e-12, rtol=1e-9)
    for norm in ("layer_norm", "graph_norm", "instance_norm", "pair_norm"):
        model = gnn.GCN(5, 8, 2, 3, norm=norm).double().eval()
        with pytest.raises(ValueError, match=r"normalises by statistics over each graph's nodes.*one target at a time"):
            sparse_lrp.explain(model, x, ei, index=[1, 7])


def test_instance_norm_with_running_statistics_is_an_affine_map():
    """Eval-mode InstanceNorm with running statistics is ``a x + b`` per channel (it reads
    no other node: batched targets are exact); LRP-0 is then gradient x input of the model."""
    torch.manual_seed(0)
    model = gnn.GCN(5, 8, 2, 3, norm="instance_norm", norm_kwargs={"track_running_stats": True, "affine": True})
    model = model.double()
    x, ei = _graph(30, 4)
    model.train()
    for _ in range(3):
        model(x, ei)  # (running statistics)
    model.eval()
    norm = model.norms[0]
    with torch.no_grad():
        norm.bias.zero_()
    for conv in model.convs:
        conv.bias = None
    res = sparse_lrp.explain(model, x, ei, index=[3, 11], target=0, composite=Epsilon(0.0))
    for row, i in enumerate([3, 11]):
        expected = _grad_x_input(lambda inp, i=i: model(inp, ei)[i, 0], x)
        assert_close(res.node_feat[row], expected, atol=1e-12, rtol=1e-9)
    assert norm.running_mean.abs().sum() > 0  # (the statistics were used, and they are not trivial)


def test_diff_group_norm_with_its_assignment_fixed():
    """DiffGroupNorm ``x + λ sum_g BN(s_g x)``, ``s = softmax(x W)`` held fixed, its batch norm
    in eval mode (running statistics; made bias-free: a per-channel scale ``a``). LRP-0 is
    gradient x input of ``x + λ sum_g a_g s_g x`` with ``s`` a constant, and conserves."""
    torch.manual_seed(0)
    norm = gnn.DiffGroupNorm(8, groups=3, lamda=0.3).double()
    model = nn.Sequential(nn.Linear(6, 8, bias=False), norm, nn.ReLU(), nn.Linear(8, 3, bias=False)).double()
    x = torch.randn(20, 6, dtype=DT)
    model.train()
    model(x)  # (running statistics)
    model.eval()
    with torch.no_grad():
        norm.norm.running_mean.zero_()
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.zero_()
    a = (norm.norm.weight / (norm.norm.running_var + norm.norm.eps).sqrt()).view(3, 8)

    def logit(inp):
        h = model[0](inp)
        s = torch.softmax(h @ norm.lin.weight.T, -1).detach()
        h = h + 0.3 * (s[:, :, None] * h[:, None, :] * a).sum(1)
        return model[3](torch.relu(h))[4, 2]

    res = sparse_lrp.explain(model, x, index=4, target=2, composite=Epsilon(0.0))
    assert res.output.item() == pytest.approx(model(x)[4, 2].item(), abs=1e-12)
    assert_close(res.node_feat, _grad_x_input(logit, x), atol=1e-12, rtol=1e-9)
    assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)


def test_model_is_unchanged_and_errors_are_clear():
    torch.manual_seed(0)
    norm = gnn.GraphNorm(8)
    model = nn.Sequential(nn.Linear(6, 8), norm, nn.ReLU(), nn.Linear(8, 3)).double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 6, dtype=DT)
    sparse_lrp.explain(model, x, index=1)
    assert model.training and norm.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert "forward" not in norm.__dict__
    bad = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(4), nn.Linear(4, 3)).double().eval()
    with pytest.raises(ValueError, match=r"LayerNorm\(4,\) got an input of shape \(5, 8\)"):
        sparse_lrp.explain(bad, x, index=1)
    odd = nn.Sequential(nn.Linear(6, 8), gnn.LayerNorm(8, mode="other"), nn.Linear(8, 3)).double().eval()
    with pytest.raises(ValueError, match=r"mode 'other' is not supported"):
        sparse_lrp.explain(odd, x, index=1)
