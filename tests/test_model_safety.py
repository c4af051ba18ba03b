"""Explaining never changes the model, bad input gets clear errors, results stay finite,
and custom layers plug in through ``register_handler``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import DT, assert_close, drop_graph, grad_x_input, make_batch, make_graph, randomise, zero_biases
from torch import nn

import sparse_lrp
from sparse_lrp import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus
from sparse_lrp.layers import _HANDLERS

N, F, H, C = 14, 4, 6, 3
EI = make_graph(N, extra=12, seed=6)


@pytest.fixture
def x():
    return torch.randn(N, F, generator=torch.Generator().manual_seed(5), dtype=DT)


class Boom(nn.Module):
    """Parameter-free module that raises when armed (an error midway through forward)."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, h):
        if self.armed:
            raise RuntimeError("boom inside forward")
        return h


class Net(nn.Module):
    def __init__(self, dropout=0.5):
        super().__init__()
        self.conv1 = gnn.GCNConv(F, H)
        self.drop = nn.Dropout(dropout)
        self.boom = Boom()
        self.block = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Dropout(dropout))
        self.conv2 = gnn.SAGEConv(H, C)

    def forward(self, x, edge_index):
        h = self.drop(torch.relu(self.conv1(x, edge_index)))
        h = self.block(self.boom(h))
        return self.conv2(torch.nn.functional.dropout(h, 0.5, self.training), edge_index)


def make_net():
    return randomise(Net().double(), seed=2, scale=0.6)


def snapshot(model):
    """Everything about the model that explaining must leave as it was."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {
            k: (m._forward_hooks, dict(m._forward_hooks), m._forward_pre_hooks, dict(m._forward_pre_hooks))
            for k, m in model.named_modules()
        },
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "instance_forward": {k: m.__dict__.get("forward") for k, m in model.named_modules()},
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert before["params"].keys() == after["params"].keys()
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    for k, (d, items, pd, pitems) in before["hooks"].items():
        d2, items2, pd2, pitems2 = after["hooks"][k]
        assert d2 is d and pd2 is pd, f"hook dicts of {k!r} were replaced"
        assert items2 == items and pitems2 == pitems, f"hooks of {k!r} changed"
    for k, g in before["grads"].items():
        g2 = after["grads"][k]
        assert (g is None and g2 is None) or torch.equal(g, g2), f"gradient of {k} changed"
    assert after["instance_forward"] == before["instance_forward"]
    for name, m in model.named_modules():
        if before["instance_forward"][name] is None:
            assert "forward" not in m.__dict__, f"an instance attribute 'forward' remains on {name!r}"


@pytest.fixture
def hooked():
    """A model in train mode with hooks, a frozen parameter and a module in eval mode."""
    model = make_net()
    model.train()
    model.block.eval()  # individual flags must come back as they were
    model.conv1.lin.weight.requires_grad_(False)
    calls = {"fwd": 0, "pre": 0, "model": 0}

    def fwd_hook(mod, inp, out):
        calls["fwd"] += 1

    def pre_hook(mod, inp):
        calls["pre"] += 1

    def model_hook(mod, inp, out):
        calls["model"] += 1

    model.conv1.register_forward_hook(fwd_hook)
    model.conv2.register_forward_pre_hook(pre_hook)
    model.register_forward_hook(model_hook)
    return model, calls


def _hooks_still_fire(model, calls, x):
    before = dict(calls)
    model(x, EI)
    assert calls["fwd"] == before["fwd"] + 1
    assert calls["pre"] == before["pre"] + 1
    assert calls["model"] == before["model"] + 1


@pytest.mark.parametrize("index", [3, [2, 5], None])
def test_model_untouched_after_explaining(hooked, x, index):
    model, calls = hooked
    before = snapshot(model)
    sparse_lrp.explain(model, x, EI, index=index, composite="gamma")
    assert_unchanged(model, before)
    _hooks_still_fire(model, calls, x)
    assert model.training and not model.block.training and model.conv1.training


class ManyKinds(nn.Module):
    """Layers with attention, gates, norms and caches, in train mode with dropout and batch norm."""

    def __init__(self):
        super().__init__()
        self.t = gnn.TransformerConv(F, H, heads=2, concat=False, beta=True, dropout=0.3)
        self.norm = gnn.GraphNorm(H)
        self.gen = gnn.GENConv(H, H, msg_norm=True, learn_t=True, norm="batch", num_layers=2)
        self.fa = gnn.FAConv(H, eps=0.1, cached=True, dropout=0.2)
        self.pna = gnn.PNAConv(H, C, ["mean", "max"], ["identity", "linear"], deg=torch.tensor([1, 4, 6, 2]))

    def forward(self, x, edge_index):
        h = torch.relu(self.norm(self.t(x, edge_index)))
        h = torch.relu(self.gen(h, edge_index))
        return self.pna(torch.relu(self.fa(h, h, edge_index)), edge_index)


@pytest.mark.parametrize("index", [3, None])
def test_new_layers_leave_the_model_untouched(x, index):
    """Explaining in eval mode and restoring train mode; FAConv's cache stays empty (its
    attention is computed from its weights, not by running it), running statistics stay."""
    model = ManyKinds().double().train()
    sparse_lrp.explain(model, x, EI, index=index)
    assert model.fa._cached_edge_index is None  # (explaining fills no cache)
    model(x, EI)  # (running statistics of the batch norms, not the initial ones; the cache filled)
    before, cache = snapshot(model), model.fa._cached_edge_index
    sparse_lrp.explain(model, x, EI, index=index, composite="gamma")
    assert_unchanged(model, before)
    assert model.fa._cached_edge_index is cache and model.training and model.gen.mlp.training


def test_joint_sample_probe_leaves_the_model_untouched():
    """The probe that tells a hidden size from row mixing runs the model's own forward: in
    eval mode, so a train-mode batch norm keeps its running statistics."""

    class Probed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Linear(F, 6), nn.BatchNorm1d(6), nn.Linear(6, C)

        def forward(self, x):
            h = self.bn(self.a(x))
            return self.b(torch.relu(h + h.mean(-1, keepdim=True)))

    model = Probed().double().train()
    model(torch.randn(8, F, dtype=DT))
    before = snapshot(model)
    res = sparse_lrp.explain(model, torch.randn(6, F, dtype=DT), index=[0, 3])
    assert res.node_feat.shape == (2, 6, F)
    assert_unchanged(model, before)


def test_train_mode_model_is_explained_in_eval_mode(hooked, x):
    model, _ = hooked
    a = sparse_lrp.explain(model, x, EI, index=4)
    b = sparse_lrp.explain(model, x, EI, index=4)
    assert_close(a.node_feat, b.node_feat, atol=0, rtol=0)
    assert_close(a.edge, b.edge, atol=0, rtol=0)
    model.eval()
    c = sparse_lrp.explain(model, x, EI, index=4)
    assert_close(a.node_feat, c.node_feat, atol=0, rtol=0)
    y = model(x, EI).detach()
    assert_close(a.output, y[4].max().reshape(1))  # the eval-mode prediction is explained


def test_instance_forward_is_restored(x):
    model = make_net().eval()
    original = model.conv2.forward

    def custom_forward(*args, **kwargs):
        return original(*args, **kwargs)

    model.conv2.forward = custom_forward
    sparse_lrp.explain(model, x, EI, index=1)
    assert model.conv2.__dict__["forward"] is custom_forward
    assert "forward" not in model.conv1.__dict__


def _raise_out_of_range_target(model, x):
    sparse_lrp.explain(model, x, EI, index=2, target=C + 5)


def _raise_out_of_range_target_many(model, x):
    sparse_lrp.explain(model, x, EI, index=[2, 3], target=C + 5)


def _raise_inside_forward(model, x):
    model.boom.armed = True
    try:
        sparse_lrp.explain(model, x, EI, index=2)
    finally:
        model.boom.armed = False


@pytest.mark.parametrize(
    "fail,exc,match",
    [
        (_raise_out_of_range_target, ValueError, "out of range"),
        (_raise_out_of_range_target_many, ValueError, "out of range"),
        (_raise_inside_forward, RuntimeError, "boom inside forward"),
    ],
)
def test_model_untouched_when_an_error_is_raised_midway(hooked, x, fail, exc, match):
    model, calls = hooked
    before = snapshot(model)
    with pytest.raises(exc, match=match):
        fail(model, x)
    assert_unchanged(model, before)
    _hooks_still_fire(model, calls, x)
    # and the model still explains fine afterwards
    res = sparse_lrp.explain(model, x, EI, index=2)
    assert torch.isfinite(res.node_feat).all()


def test_parameter_gradients_are_not_accumulated(x):
    model = make_net().eval()
    sparse_lrp.explain(model, x, EI, index=2)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------
# Clear errors for bad input
# --------------------------------------------------------------------------------------


class WithConv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.GCNConv(F, H)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 3, padding=1))

    def forward(self, x, edge_index):
        h = self.conv(x, edge_index)
        return self.block[1](self.block[0](h)[:, None, :])[:, 0, :]


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.GCNConv(F, H)
        self.rnn = nn.LSTM(H, C)

    def forward(self, x, edge_index):
        return self.rnn(self.conv(x, edge_index))[0]


def test_unsupported_layer_with_parameters_is_named(x):
    with pytest.raises(TypeError, match=r"'block\.1'.*torch\.nn\.modules\.conv\.Conv1d"):
        sparse_lrp.explain(WithConv1d().double(), x, EI, index=0)
    with pytest.raises(TypeError, match=r"'rnn'.*LSTM.*register_handler"):
        sparse_lrp.explain(WithLSTM().double(), x, EI, index=0)


class WithAttentionConv(nn.Module):
    """A message-passing layer whose parameters all sit in child Linears (DNAConv's queries,
    keys and values, in its ``multi_head``)."""

    def __init__(self):
        super().__init__()
        self.conv = gnn.DNAConv(F, heads=2)

    def forward(self, x, edge_index):
        return self.conv(torch.stack([x, torch.relu(x)], 1), edge_index)


def test_unsupported_message_passing_with_learned_children_is_named(x):
    """Its child Linears have handlers, but its attention (computed from queries and keys
    over the layer history) would pass relevance as a gradient: refused (it ran silently
    before). Parameter-free LGConv still runs (test_models:
    test_layers_reading_beyond_the_given_in_edges)."""
    with pytest.raises(TypeError, match=r"'conv'.*DNAConv has parameters but no LRP handler"):
        sparse_lrp.explain(WithAttentionConv().double(), x, EI, index=0)


def test_samples_joint_pass_refuses_models_that_mix_rows():
    """Several samples of a plain model are explained in one pass split by row: exact only
    when rows are independent. Code mixing rows (h - h.mean(0)) made the split wrong
    silently (a target's row got another's relevance); it is refused, naming the op, and
    single targets (one pass each, whole input) stay exact."""

    class Centred(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(F, H, bias=False), nn.Linear(H, C, bias=False)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.relu(h - h.mean(0)))

    torch.manual_seed(0)
    model = Centred().double().eval()
    xs = torch.randn(5, F, dtype=DT)
    with pytest.raises(ValueError, match=r"mixes its input rows \(mean\)"):
        sparse_lrp.explain(model, xs, index=[0, 1], target=0)
    res = sparse_lrp.explain(model, xs, index=1, target=0, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: model(x_)[1, 0], xs)
    assert_close(res.node_feat, gx)
    # A hidden size as long as the rows (6 samples, 6 units) reduced by the model's code is no
    # row mixing: a pass with one more row tells them apart, and the samples share one pass.

    class HiddenMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(F, 6, bias=False), nn.Linear(6, C, bias=False)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.relu(h + h.mean(-1, keepdim=True)))

    hidden, x6 = HiddenMean().double().eval(), torch.randn(6, F, dtype=DT)
    joint = sparse_lrp.explain(hidden, x6, index=[0, 4], target=1, composite=Epsilon(0.0))
    for t, i in enumerate([0, 4]):
        (gx,) = grad_x_input(lambda x_, i=i: hidden(x_)[i, 1], x6)
        assert_close(joint.node_feat[t], gx)
    # Independent rows still share one pass.
    plain = nn.Sequential(nn.Linear(F, H, bias=False), nn.ReLU(), nn.Linear(H, C, bias=False)).double().eval()
    both = sparse_lrp.explain(plain, xs, index=[0, 1], target=0, composite=Epsilon(0.0))
    for t in range(2):
        (gx,) = grad_x_input(lambda x_, t=t: plain(x_)[t, 0], xs)
        assert_close(both.node_feat[t], gx)


def test_unsupported_layer_leaves_model_untouched(x):
    model = WithConv1d().double().train()
    before = snapshot(model)
    with pytest.raises(TypeError):
        sparse_lrp.explain(model, x, EI, index=0)
    assert_unchanged(model, before)


def test_index_out_of_range(x):
    model = make_net().eval()
    with pytest.raises(ValueError, match="out of range"):
        sparse_lrp.explain(model, x, EI, index=N)
    with pytest.raises(ValueError, match="out of range"):
        sparse_lrp.explain(model, x, EI, index=[0, N + 3])
    with pytest.raises(ValueError, match="out of range"):
        sparse_lrp.explain(model, x, EI, index=-N - 1)


def test_negative_index_counts_from_the_end(x):
    model = make_net().eval()
    a = sparse_lrp.explain(model, x, EI, index=-1)
    b = sparse_lrp.explain(model, x, EI, index=N - 1)
    assert_close(a.node_feat, b.node_feat)


def test_bad_edge_index(x):
    model = make_net().eval()
    bad = EI.clone()
    bad[1, 0] = N
    with pytest.raises(ValueError, match=r"edge_index\[1\].*out of range"):
        sparse_lrp.explain(model, x, bad, index=0)
    bad = EI.clone()
    bad[0, 3] = N + 2
    with pytest.raises(ValueError, match=r"edge_index\[0\].*out of range"):
        sparse_lrp.explain(model, x, bad, index=0)
    bad = EI.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        sparse_lrp.explain(model, x, bad, index=0)
    with pytest.raises(TypeError, match="dtype"):
        sparse_lrp.explain(model, x, EI.to(DT), index=0)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        sparse_lrp.explain(model, x, EI[:, :, None], index=0)


def test_non_finite_input(x):
    model = make_net().eval()
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sparse_lrp.explain(model, bad, EI, index=0)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="Inf"):
        sparse_lrp.explain(model, bad, EI, index=0)
    ew = torch.ones(EI.shape[1], dtype=DT)
    ew[0] = float("nan")
    with pytest.raises(ValueError, match=r"edge_weight.*NaN"):
        sparse_lrp.explain(gnn.GCNConv(F, C).double(), x, EI, index=0, edge_weight=ew)


def test_missing_batch_for_several_graph_targets():
    ei, batch = make_batch((5, 6), seed=1)
    xg = torch.randn(batch.numel(), F, dtype=DT)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = gnn.GCNConv(F, C)

        def forward(self, x, edge_index, batch=None):
            return gnn.global_add_pool(self.conv(x, edge_index), batch)

    with pytest.raises(ValueError, match="batch"):
        sparse_lrp.explain(Pooled().double(), xg, ei, index=[0, 1], task_level="graph")


def test_a_graph_model_on_one_graph_without_batch_takes_index_zero():
    """PyG's Explainer hands index=0 as tensor([0]): one graph, no batch vector, is graph 0."""
    ei, batch = make_batch((5,), seed=2)
    xg = torch.randn(batch.numel(), F, dtype=DT)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = gnn.GCNConv(F, C, bias=False)

        def forward(self, x, edge_index, batch=None):
            return gnn.global_add_pool(self.conv(x, edge_index).relu(), batch)

    model = Pooled().double().eval()
    (ref,) = grad_x_input(lambda v: model(v, ei)[0, 1], xg)
    for index in ([0], torch.tensor([0])):
        res = sparse_lrp.explain(model, xg, ei, index=index, target=1, task_level="graph", composite=Epsilon(0.0))
        assert res.node_feat.shape == (1, *xg.shape)
        assert_close(res.node_feat[0], ref)
    with pytest.raises(ValueError, match="batch"):
        sparse_lrp.explain(model, xg, ei, index=[1], target=1, task_level="graph")
    for index in (-1, 5):  # a scalar too: -1 is that one graph, 5 names none
        if index == 5:
            with pytest.raises(ValueError, match=r"out of range for 1 graphs.*batch"):
                sparse_lrp.explain(model, xg, ei, index=index, target=1, task_level="graph")
        else:
            res = sparse_lrp.explain(model, xg, ei, index=index, target=1, task_level="graph", composite=Epsilon(0.0))
            assert_close(res.node_feat, ref)
    # without task_level: a model returning one row for the whole graph is that graph's model
    res = sparse_lrp.explain(model, xg, ei, index=0, target=1, composite=Epsilon(0.0))
    assert_close(res.node_feat, ref)


def test_dtype_mismatch_between_input_and_model_is_clear(x):
    model = make_net().float().eval()
    with pytest.raises((TypeError, ValueError), match=r"float64.*float32|float32.*float64"):
        sparse_lrp.explain(model, x, EI, index=0)


def test_other_bad_arguments(x):
    model = make_net().eval()
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        sparse_lrp.explain(lambda x, ei: x, x, EI)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        sparse_lrp.explain(model, x.numpy(), EI)
    with pytest.raises(ValueError, match="unknown composite preset"):
        sparse_lrp.explain(model, x, EI, index=0, composite="nope")
    with pytest.raises(ValueError, match="task_level"):
        sparse_lrp.explain(model, x, EI, index=0, task_level="edge")
    with pytest.raises(TypeError, match="Pass"):
        sparse_lrp.explain(model, x, EI, index=0, composite=sparse_lrp.Pass())
    with pytest.raises(ValueError, match="target has"):
        sparse_lrp.explain(model, x, EI, index=[0, 1, 2], target=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target relevance must have"):
        sparse_lrp.explain(model, x, EI, target=torch.rand(N, C + 1, dtype=DT))


# --------------------------------------------------------------------------------------
# Finite results on awkward but finite input
# --------------------------------------------------------------------------------------

RULES = [
    "epsilon",
    "zplus",
    "gamma",
    Epsilon(0.0),
    ZPlus(),
    AlphaBeta(2, 1),
    Gamma(0.5),
    WSquare(),
    Flat(),
    ZBox(-1.0, 1.0),
]


def assert_all_finite(res):
    assert torch.isfinite(res.node_feat).all()
    assert torch.isfinite(res.node).all()
    assert res.edge is None or torch.isfinite(res.edge).all()
    for rec in res.layers.values():
        for v in rec.values():
            assert torch.isfinite(v).all()
    for k, v in res.conservation.items():
        assert v == v and abs(v) != float("inf"), k


@pytest.mark.parametrize("composite", RULES, ids=repr)
def test_no_nan_for_zero_input(composite):
    model = make_net().eval()
    x0 = torch.zeros(N, F, dtype=DT)
    res = sparse_lrp.explain(model, x0, EI, index=[0, N - 1], composite=composite)
    assert_all_finite(res)
    res = sparse_lrp.explain(model, x0, EI, composite=composite, target=1)
    assert_all_finite(res)


@pytest.mark.parametrize("composite", RULES, ids=repr)
def test_no_nan_with_dead_relus_and_isolated_nodes(composite, x):
    model = make_net().eval()
    with torch.no_grad():  # every unit of conv1 dead: its ReLU outputs zeros
        model.conv1.lin.weight.zero_()
        model.conv1.bias.fill_(-1.0)
    isolated = N - 1
    assert not ((EI[0] == isolated) | (EI[1] == isolated)).any()
    res = sparse_lrp.explain(model, x, EI, index=[isolated, 3], composite=composite)
    assert_all_finite(res)
    # nothing can reach the input through dead units
    assert torch.all(res.node_feat == 0)


@pytest.mark.parametrize("composite", RULES, ids=repr)
def test_no_nan_on_isolated_nodes_and_zero_rows(composite, x):
    model = make_net().eval()
    xz = x.clone()
    xz[[0, 3]] = 0
    res = sparse_lrp.explain(model, xz, EI, index=[N - 1, 0, 3], composite=composite)
    assert_all_finite(res)
    c = res.conservation
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-7, abs=1e-9)


class LinAPPNP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.prop = nn.Linear(F, C, bias=False), gnn.APPNP(K=2, alpha=0.1)

    def forward(self, x, edge_index):
        return self.prop(self.lin(x), edge_index)


class LinGCN2(nn.Module):
    """GCN2Conv (or FAConv) reads an initial embedding beside the graph: ``conv(lin(x), lin(x))``."""

    def __init__(self, fa=False):
        super().__init__()
        # (FAConv without self-loops: on a graph without edges no attention is left to hold fixed)
        conv = gnn.FAConv(C, eps=0.2, add_self_loops=False) if fa else gnn.GCN2Conv(C, alpha=0.2, theta=0.5, layer=1)
        self.lin, self.conv = nn.Linear(F, C, bias=False), conv

    def forward(self, x, edge_index):
        h = self.lin(x)
        return self.conv(h, h, edge_index)


EDGELESS = {
    "gcn": lambda: gnn.GCNConv(F, C, bias=False),
    "gat": lambda: gnn.GATConv(F, C, heads=2, bias=False),
    "sage": lambda: gnn.SAGEConv(F, C, bias=False),
    "graph": lambda: gnn.GraphConv(F, C, bias=False),
    "gin": lambda: gnn.GINConv(nn.Linear(F, C, bias=False)),
    "cheb": lambda: gnn.ChebConv(F, C, K=2, bias=False),
    "sg": lambda: gnn.SGConv(F, C, K=2, bias=False),
    "tag": lambda: gnn.TAGConv(F, C, K=2, bias=False),
    "appnp": lambda: LinAPPNP(),
    # (layers added later: attention, gates, max/softmax/several aggregations over no edges)
    "transformer": lambda: gnn.TransformerConv(F, C, heads=2, bias=False),
    "res_gated": lambda: zero_biases(gnn.ResGatedGraphConv(F, C, bias=False)),
    "le": lambda: gnn.LEConv(F, C, bias=False),
    "cluster": lambda: gnn.ClusterGCNConv(F, C, bias=False),
    "gcn2": lambda: LinGCN2(),
    "gen": lambda: gnn.GENConv(F, C),
    "edge_max": lambda: gnn.EdgeConv(nn.Linear(2 * F, C, bias=False)),
    "sage_multi": lambda: gnn.SAGEConv(F, C, aggr=["max", "mean", "softmax"], bias=False),
    "ssg": lambda: gnn.SSGConv(F, C, alpha=0.2, K=2, bias=False),
    "mixhop": lambda: gnn.MixHopConv(F, 1, powers=[0, 1, 2]),
    "agnn": lambda: gnn.AGNNConv(),
    "cg": lambda: gnn.CGConv(F),
    "fa": lambda: LinGCN2(fa=True),
    "arma": lambda: gnn.ARMAConv(F, C, num_stacks=2, num_layers=2, bias=False),
    "pna": lambda: zero_biases(
        gnn.PNAConv(F, C, ["mean", "max"], ["identity", "amplification"], deg=torch.tensor([1, 2, 3]))
    ),
}


@pytest.mark.parametrize("layer", list(EDGELESS))
def test_graph_without_edges(layer, x):
    """A graph of isolated nodes only (``E = 0``) is a valid input."""
    conv = EDGELESS[layer]().double().eval()
    ei = torch.empty(2, 0, dtype=torch.long)
    res = sparse_lrp.explain(conv, x, ei, index=2, target=1, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: conv(x_, ei)[2, 1], x)
    assert_close(res.node_feat, gx)
    assert res.edge.shape == (0,)
    many = sparse_lrp.explain(conv, x, ei, index=[0, 1], composite="zplus")
    assert_all_finite(many)
    assert many.edge.shape == (2, 0)


# --------------------------------------------------------------------------------------
# Custom handlers
# --------------------------------------------------------------------------------------


class MyLinear(nn.Module):
    """``x Wᵀ`` with a parameter the library does not know."""

    def __init__(self, i, o):
        super().__init__()
        self.W = nn.Parameter(torch.randn(o, i, dtype=DT) * 0.5)

    def forward(self, x):
        return x @ self.W.T


class WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = gnn.GCNConv(F, H, bias=False)
        self.mine = MyLinear(H, H)
        self.conv2 = gnn.GraphConv(H, C, bias=False)

    def forward(self, x, edge_index):
        h = torch.relu(self.conv(x, edge_index))
        h = torch.relu(self.mine(h))
        return self.conv2(h, edge_index)


def my_linear_handler(call, x):
    return call.linear(x, call.module.W)


def test_custom_handler_lrp0_is_gradient_times_input(clean_handlers, x):
    model = WithCustom().double().eval()
    with pytest.raises(TypeError, match="MyLinear"):
        sparse_lrp.explain(model, x, EI, index=3)
    sparse_lrp.register_handler(MyLinear, my_linear_handler)
    res = sparse_lrp.explain(model, x, EI, index=3, target=1, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[3, 1], x)
    assert_close(res.node_feat, gx)
    assert_close(res.node_feat.sum(), model(x, EI)[3, 1].detach())
    assert "mine" in res.layers and res.layers["mine"]["node"].shape == (N,)


def test_custom_handler_subclass_and_replacement(clean_handlers, x):
    class MyLinear2(MyLinear):
        pass

    model = WithCustom().double().eval()
    model.mine = MyLinear2(H, H).double()
    sparse_lrp.register_handler(MyLinear, my_linear_handler)  # found through the MRO
    base = sparse_lrp.explain(model, x, EI, index=3, target=1, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[3, 1], x)
    assert_close(base.node_feat, gx)

    calls = []

    def counting(call, x):
        calls.append(call.name)
        return call.linear(x, call.module.W)

    sparse_lrp.register_handler(MyLinear2, counting)  # the more specific type wins
    again = sparse_lrp.explain(model, x, EI, index=3, target=1, composite=Epsilon(0.0))
    assert calls == ["mine"]
    assert_close(again.node_feat, base.node_feat)


def test_custom_handler_with_children(clean_handlers, x):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(H, H, bias=False)
            self.scale = nn.Parameter(torch.tensor(2.0, dtype=DT))

        def forward(self, h):
            return self.inner(h) * self.scale

    def wrapper_handler(call, h):
        return call.module.inner(h) * call.module.scale.detach()

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = gnn.GCNConv(F, H, bias=False)
            self.wrap = Wrapper()
            self.out = nn.Linear(H, C, bias=False)

        def forward(self, x, edge_index):
            return self.out(torch.relu(self.wrap(torch.relu(self.conv(x, edge_index)))))

    model = M().double().eval()
    sparse_lrp.register_handler(Wrapper, wrapper_handler, children=("inner",))
    res = sparse_lrp.explain(model, x, EI, index=5, target=0, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: model(x_, EI)[5, 0], x)
    assert_close(res.node_feat, gx)
    assert "wrap.inner" in res.layers


def test_register_handler_rejects_non_modules():
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        sparse_lrp.register_handler(int, my_linear_handler)


def test_handlers_are_clean_between_tests():
    assert MyLinear not in _HANDLERS


class OutDegreeConv(nn.Module):
    """A user's layer that reads beyond in-edges: ``out_j = sum_{i->j} (x_i W) / outdeg(i)``."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.lin = nn.Linear(c_in, c_out, bias=False)

    def forward(self, x, edge_index):
        src, dst = edge_index
        out_deg = torch.bincount(src, minlength=x.shape[0]).clamp(min=1).to(x.dtype)
        msg = self.lin(x)[src] / out_deg[src, None]
        return torch.zeros(x.shape[0], msg.shape[1], dtype=x.dtype).index_add_(0, dst, msg)


def out_degree_handler(call, x, edge_index):
    src = edge_index[0]
    out_deg = torch.bincount(src, minlength=x.shape[0]).clamp(min=1).to(x.dtype)
    return call.edges(call.module.lin(x), edge_index, 1.0 / out_deg[src])


def test_single_target_under_a_custom_graph_handler_reads_the_whole_graph(clean_handlers, x):
    # Node targets of built-in layers run on k-hop subgraphs; that would cut the
    # out-degrees this user layer reads, so a single target keeps the full graph.
    sparse_lrp.register_handler(OutDegreeConv, out_degree_handler, children=("lin",))
    model = nn.ModuleDict({"a": OutDegreeConv(F, H), "b": OutDegreeConv(H, 3)}).double().eval()

    def forward(x_, ei):
        return model["b"](torch.relu(model["a"](x_, ei)), ei)

    model.forward = forward
    res = sparse_lrp.explain(model, x, EI, index=3, target=1, composite=Epsilon(0.0))
    (gx,) = grad_x_input(lambda x_: forward(x_, EI)[3, 1], x)
    assert_close(res.node_feat, gx)


def test_custom_graph_handler_that_declares_its_reads_runs_on_exact_subgraphs(clean_handlers, x):
    # Declared, the out-degrees are kept in the k-hop subgraphs: single and batched
    # targets stay exact on the subgraph path.
    with pytest.raises(ValueError, match="subgraph needs"):
        sparse_lrp.register_handler(OutDegreeConv, out_degree_handler, subgraph=("two_hops",))
    sparse_lrp.register_handler(OutDegreeConv, out_degree_handler, children=("lin",), subgraph=("out_degrees",))
    model = nn.ModuleDict({"a": OutDegreeConv(F, H), "b": OutDegreeConv(H, 3)}).double().eval()

    def forward(x_, ei):
        return model["b"](torch.relu(model["a"](x_, ei)), ei)

    model.forward = forward
    many = sparse_lrp.explain(model, x, EI, index=[3, 7], target=torch.tensor([1, 0]), composite=Epsilon(0.0))
    for t, (i, c) in enumerate([(3, 1), (7, 0)]):
        (gx,) = grad_x_input(lambda x_, i=i, c=c: forward(x_, EI)[i, c], x)
        assert_close(many.node_feat[t], gx)
        one = sparse_lrp.explain(model, x, EI, index=i, target=c, composite=Epsilon(0.0))
        assert_close(one.node_feat, gx)


def test_relevance_a_ratio_cannot_carry_is_reported_lost():
    """An activation input so small that R / x overflows float32 cannot carry R on as
    x * ratio: that relevance must show up as lost (not vanish), and nothing is NaN."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Sigmoid(), nn.Linear(1, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0)
    x = torch.tensor([[1e-39]])  # a float32 subnormal: 0.5 / 1e-39 = 5e38 overflows
    assert x.item() != 0
    res = sparse_lrp.explain(model, x, composite=sparse_lrp.Epsilon(0.0))
    c = res.conservation
    assert c["out"] == pytest.approx(0.5)
    assert torch.isfinite(res.node_feat).all()
    assert c["lost"] == pytest.approx(0.5)  # the sigmoid's relevance, not carried past x
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-6)


def test_train_overrides_are_not_run_and_inference_mode_is_left(x):
    """The eval switch sets the training flags only: a module whose own ``train()`` has side
    effects (here a phase attribute) was left in its eval state by ``model.eval()``. Under
    ``torch.inference_mode()`` (and with inference tensors) explaining failed with torch's
    'cannot be saved for backward'; it now runs outside it and equals the normal call."""

    class Phased(nn.Module):
        def __init__(self):
            super().__init__()
            self.gin = gnn.GIN(F, 8, 2, 3, dropout=0.5)
            self.phase = None

        def train(self, mode=True):
            self.phase = "train" if mode else "eval"
            return super().train(mode)

        def forward(self, x, edge_index):
            return self.gin(x, edge_index)

    model = Phased().double().train()
    ref = sparse_lrp.explain(model, x, EI, index=[1, 4])
    assert model.phase == "train" and all(m.training for m in model.modules())
    model.eval()
    assert_close(sparse_lrp.explain(model, x, EI, index=[1, 4]).node_feat, ref.node_feat, atol=0, rtol=0)
    with torch.inference_mode():
        xi, ei = x.clone(), EI.clone()
        res = sparse_lrp.explain(model, xi, ei, index=[1, 4])
    assert_close(res.node_feat, ref.node_feat, atol=0, rtol=0)
    res = sparse_lrp.explain(model, xi, ei, index=[1, 4])  # inference tensors, outside the mode
    assert_close(res.node_feat, ref.node_feat, atol=0, rtol=0)


def test_edge_weight_and_node_level_errors_are_named(x):
    """An edge_weight of the wrong shape or dtype failed deep in the kernel; a node-level
    explanation of a graph-level model reported the subgraph's node count as the graph's."""
    model = gnn.GCN(F, 8, 2, 3).double().eval()
    for ew, err, match in [
        (torch.ones(EI.shape[1] - 1, dtype=DT), ValueError, rf"edge_weight must have shape \[E\] = \[{EI.shape[1]}\]"),
        (torch.ones(EI.shape[1], 1, dtype=DT), ValueError, r"got \(\d+, 1\)"),
        (torch.ones(EI.shape[1]), TypeError, "edge_weight has dtype torch.float32 but x has dtype torch.float64"),
    ]:
        for index in (None, [1, 2]):
            with pytest.raises(err, match=match):
                sparse_lrp.explain(model, x, EI, index=index, edge_weight=ew)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lin = gnn.GCNConv(F, 8), nn.Linear(8, 2)

        def forward(self, x, edge_index, batch=None):
            return self.lin(gnn.global_mean_pool(self.conv(x, edge_index).relu(), batch))

    batch = torch.zeros(x.shape[0], dtype=torch.long)
    batch[x.shape[0] // 2 :] = 1
    with pytest.raises(ValueError, match=r"model returned \d+ rows for a target's \d+-node subgraph: it has no row"):
        sparse_lrp.explain(Pooled().double().eval(), x, EI, batch=batch, index=3, task_level="node")


@pytest.mark.parametrize("mid", [nn.Hardswish(), nn.Threshold(0.1, 20.0), nn.Hardsigmoid(), nn.Softsign()])
def test_more_elementwise_activations_pass_relevance(mid):
    """These ran as plain autograd before: relevance was invented or lost with lost = 0
    reported (Threshold: out 11.6, in -0.09). Under the Pass rule the layer below receives
    exactly the relevance above, so in + absorbed + lost == out."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=DT)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), mid, nn.Linear(8, 3, bias=False)).double().eval()
    res = sparse_lrp.explain(model, x, index=1, target=0, composite=Epsilon(0.0))
    c = res.conservation
    assert c["out"] == pytest.approx(c["in"] + c["absorbed"] + c["lost"], abs=1e-9)
    # The activation's input gets the top layer's relevance, row for row.
    top = model[2].weight[0] * mid(model[0](x[1]))
    assert_close(res.layers["1"]["node"][1], top.sum())


def test_nonlinear_parameter_free_modules_are_refused():
    """torch's InstanceNorm1d, a softmax inside the model: autograd through them is no LRP
    rule, and they gave unconserved relevance silently. A softmax as the model's last step
    stays supported (its logits are explained). (LayerNorm, PairNorm and the other graph
    normalisations have handlers under the LN-rule: tests/test_norms.py.)"""
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=DT)

    def mlp(mid, last=None):
        layers = [nn.Linear(6, 8, bias=False), mid, nn.Linear(8, 3, bias=False)] + ([last] if last else [])
        return nn.Sequential(*layers).double().eval()

    with pytest.raises(TypeError, match=r"module '1' of type .*InstanceNorm1d is a nonlinear map"):
        sparse_lrp.explain(mlp(nn.InstanceNorm1d(8)), x, index=1)
    with pytest.raises(TypeError, match=r"module '1' \(Softmax\) normalises inside the model"):
        sparse_lrp.explain(mlp(nn.Softmax(-1)), x, index=1)
    model = mlp(nn.ReLU(), nn.LogSoftmax(-1))
    res = sparse_lrp.explain(model, x, index=1, target=2, composite=Epsilon(0.0))
    assert res.output.item() == pytest.approx(model[:3](x)[1, 2].item())


@pytest.mark.filterwarnings("error::UserWarning")  # (the conservation report read a sum that tracked gradients)
def test_softmax_inside_a_handled_layer_or_over_constants_is_not_refused(clean_handlers):
    """The softmax check looks only at modules explained as they run: a handled layer's own
    softmax child (a gate its handler holds fixed) and a softmax of constants (mixing
    weights) were refused by mistake. The gated layer's LRP-0 is gradient x input with
    the gate detached; the mix conserves its relevance (bias-free)."""

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 4, dtype=DT))
            self.gate = nn.Parameter(torch.randn(3, dtype=DT))
            self.sm = nn.Softmax(0)

        def forward(self, x, edge_index, edge_attr, detach=False):
            g = self.sm(edge_attr @ self.gate)
            g = g.detach() if detach else g
            h = x @ self.weight.T
            return torch.zeros(x.shape[0], 2, dtype=DT).index_add_(0, edge_index[1], g[:, None] * h[edge_index[0]])

    def gated(call, x, edge_index, edge_attr):
        m = call.module
        return call.edges(call.linear(x, m.weight), edge_index, m.sm(edge_attr @ m.gate).detach())

    sparse_lrp.register_handler(Gated, gated, subgraph=())
    torch.manual_seed(0)
    x, ea = torch.randn(N, 4, dtype=DT), torch.randn(EI.shape[1], 3, dtype=DT)
    model = Gated().eval()
    res = sparse_lrp.explain(
        model, x, EI, target=torch.ones(N, 2, dtype=DT) * model(x, EI, ea), composite=Epsilon(0.0), edge_attr=ea
    )
    (ref,) = grad_x_input(lambda v: model(v, EI, ea, detach=True).sum(), x)
    assert_close(res.node_feat, ref)

    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)
            self.register_buffer("alpha", torch.tensor([0.3, 1.0]))
            self.sm = nn.Softmax(0)

        def forward(self, x):
            w = self.sm(self.alpha)
            return w[0] * self.a(x) + w[1] * self.b(x)

    c = sparse_lrp.explain(Mix().double().eval(), x[:5], index=1, composite=Epsilon(0.0)).conservation
    assert c["in"] == pytest.approx(c["out"], abs=1e-12)


def test_edits_that_bypass_the_version_counter_are_seen():
    """Pruning code edits weights through ``.data`` (no version bump, same storage); a
    graph may change through ``.data`` or a NumPy view: cached transforms and sorted
    graphs must follow, as a fresh model and graph would."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    xs = torch.randn(5, 4, dtype=DT)
    for rule in (ZPlus(), Gamma(0.5)):
        sparse_lrp.explain(mlp, xs, None, composite=rule, target=0)  # fills the caches
        w = mlp[0].weight.data
        w[w.abs() < 0.3] = 0.0
        w.mul_(-1.5)
        fresh = copy.deepcopy(mlp)
        got = sparse_lrp.explain(mlp, xs, None, composite=rule, target=0).node_feat
        assert_close(got, sparse_lrp.explain(fresh, xs, None, composite=rule, target=0).node_feat)
    model = make_net().eval()
    x = torch.randn(N, F, dtype=DT)
    ei = EI.clone()
    sparse_lrp.explain(model, x, ei, index=3)
    ei.data[1, :4] = ei.data[1, :4].flip(0)  # re-wired through .data
    ei.numpy()[0, 5] = (ei[0, 5].item() + 1) % N  # and through a NumPy view
    got = sparse_lrp.explain(model, x, ei, index=3)
    want = sparse_lrp.explain(model, x, ei.clone(), index=3)
    assert_close(got.node_feat, want.node_feat)
    assert_close(got.edge, want.edge)


@pytest.mark.parametrize("rule", [ZPlus(), WSquare()])
def test_edits_that_keep_the_sum_are_seen(rule):
    """Weights moved between two connections through ``.data`` (sum and version unchanged)
    were served their stale transformed weights (ZPlus off by 0.41, WSquare by 0.89)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    xs = torch.rand(5, 4, dtype=DT)
    sparse_lrp.explain(mlp, xs, None, composite=rule, target=0)  # fills the caches
    mlp[0].weight.data[0, 0] += 0.75
    mlp[0].weight.data[0, 1] -= 0.75
    got = sparse_lrp.explain(mlp, xs, None, composite=rule, target=0).node_feat
    assert_close(got, sparse_lrp.explain(copy.deepcopy(mlp), xs, None, composite=rule, target=0).node_feat)
    # The same for a prepared operator's edge weights.
    ei = torch.tensor([[0, 1, 2, 0], [0, 0, 1, 1]])
    w = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=DT)
    op = sparse_lrp.prepare(ei, 3, 2)
    x, r = torch.rand(3, 2, dtype=DT), torch.rand(2, 2, dtype=DT)
    sparse_lrp.edge_lrp(x, op, w, r, rule)
    w.data[0] += 0.25
    w.data[1] -= 0.25
    assert_close(sparse_lrp.edge_lrp(x, op, w, r, rule), sparse_lrp.edge_lrp(x, ei, w.clone(), r, rule))


def test_a_subgraph_need_given_by_name(clean_handlers, x):
    """``subgraph="in_degrees"`` (one need by name, as the docs write it) is that need."""

    class Sum(gnn.MessagePassing):
        def forward(self, x, edge_index):
            return self.propagate(edge_index, x=x)

    def handler(call, x, edge_index):
        return call.edges(x, edge_index)

    sparse_lrp.register_handler(Sum, handler, subgraph="in_degrees")
    from sparse_lrp.layers import subgraph_needs

    assert subgraph_needs([Sum()]) == frozenset({"in_degrees"})
    sparse_lrp.register_handler(Sum, handler, subgraph="")
    assert subgraph_needs([Sum()]) == frozenset()


def test_hooks_on_a_submodule_a_handler_only_reads_are_refused_pruning_is_not():
    """GCNConv's handler reads ``lin``'s weight without calling ``lin``: a hook there would
    not run, so the explanation would describe another model. Pruning's pre-hook only
    refreshes the weight that is read, so a pruned layer is explained as it computes."""
    torch.manual_seed(0)
    model = gnn.GCN(F, H, 2, C).double().eval()
    x = torch.randn(N, F, dtype=DT)
    handle = model.convs[0].lin.register_forward_hook(lambda m, i, o: o * 3)
    with pytest.raises(ValueError, match=r"'convs.0.lin' has forward hooks"):
        sparse_lrp.explain(model, x, EI, index=2)
    assert model.convs[0].lin._forward_hooks  # (the model is left as it was)
    handle.remove()
    torch.nn.utils.prune.l1_unstructured(model.convs[0].lin, "weight", amount=0.5)
    with warnings.catch_warnings():  # (deprecated for parametrizations in newer torch)
        warnings.simplefilter("ignore")
        torch.nn.utils.weight_norm(model.convs[1].lin)
    y = model(x, EI).detach()
    res = sparse_lrp.explain(model, x, EI, index=2)
    assert_close(res.output, y[2].max().reshape(1))


def test_parameters_made_under_inference_mode_are_left_as_they_are():
    with torch.inference_mode():
        lin = nn.Linear(4, 2).double()
    x = torch.randn(3, 4, dtype=DT)
    flags = [p.requires_grad for p in lin.parameters()]
    res = sparse_lrp.explain(lin, x, None, target=0, composite=Epsilon(0.0))
    assert_close(res.node_feat.sum() + res.conservation["absorbed"], lin(x)[:, 0].sum().detach())
    assert [p.requires_grad for p in lin.parameters()] == flags and lin.weight.is_inference()


def test_a_half_precision_target_ratio_that_overflows_is_reported_lost():
    """R / y at a float16 output must fit float16 to flow backwards: what does not is lost."""
    torch.manual_seed(1)
    lin = nn.Linear(4, 3).half().eval()
    x = torch.randn(2, 4).half()
    y = lin(x).detach()
    target = torch.zeros(2, 3)
    target[0, 1] = 1000.0 * abs(float(y[0, 1])) * 100  # R / y = 1e5 > 65504
    res = sparse_lrp.explain(lin, x, None, target=target.half(), composite=Epsilon())
    c = res.conservation
    assert torch.isfinite(res.node_feat).all()
    assert c["lost"] == pytest.approx(float(target.half().sum()), rel=1e-3)


def test_a_graph_the_caller_drops_is_freed_with_its_cached_structures():

    from sparse_lrp.explain import _GRAPHS

    model = make_net().eval()
    x = torch.randn(N, F, dtype=DT)
    graph = [EI.clone()]
    sparse_lrp.explain(model, x, graph[0], index=3)
    sparse_lrp.explain(model, x, graph[0], index=4)  # (served from the cache)
    freed, before, after = drop_graph(graph, _GRAPHS._entries)
    assert freed and before > 0 and after < before


class _Mix(nn.Module):
    """``W1 x_i + sum_j W2 x_j`` as a plain module (not MessagePassing)."""

    def __init__(self, i, o):
        super().__init__()
        self.w1, self.w2 = nn.Linear(i, o, bias=False), nn.Linear(i, o, bias=False)

    def forward(self, x, edge_index):
        agg = torch.zeros_like(x).index_add_(0, edge_index[1], x[edge_index[0]])
        return self.w1(x) + self.w2(agg)


def _mix_handler(call, x, edge_index):
    m = call.module
    w = x.new_ones(edge_index.shape[1])
    agg = sparse_lrp.layers.base.MapBranch(call.ctx.operator(edge_index, x.shape[0], x.shape[0]), w, x)
    mixed = call.map([agg])  # the neighbour sum through call.map itself
    return call.map([call.dense_branch(x, m.w1.weight), call.dense_branch(mixed, m.w2.weight)])


def test_a_custom_layer_mixing_nodes_through_call_map_counts_its_hops(clean_handlers, x):
    sparse_lrp.register_handler(_Mix, _mix_handler, subgraph=())

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _Mix(F, H), _Mix(H, C)

        def forward(self, x, edge_index):
            return self.b(torch.relu(self.a(x, edge_index)), edge_index)

    torch.manual_seed(5)
    model = Two().double().eval()
    for index in (3, [3, 7]):
        res = sparse_lrp.explain(model, x, EI, index=index, target=1, composite=Epsilon(0.0))
        for t, node in enumerate([index] if isinstance(index, int) else index):
            (ref,) = grad_x_input(lambda v, node=node: model(v, EI)[node, 1], x)
            assert_close(res.node_feat if isinstance(index, int) else res.node_feat[t], ref)


def test_a_handler_that_applies_weights_without_primitives_is_refused(clean_handlers, x):
    sparse_lrp.register_handler(_Mix, lambda call, x, ei: call.original(x, ei), subgraph=())
    model = _Mix(F, C).double().eval()
    with pytest.raises(TypeError, match="issued no LRP map"):
        sparse_lrp.explain(model, x, EI, index=3)


def test_children_given_as_one_name(clean_handlers, x):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(F, H), nn.ReLU(), nn.Linear(H, C))

        def forward(self, x):
            return self.mlp(x)

    sparse_lrp.register_handler(Wrap, lambda call, x: call.module.mlp(x), children="mlp", subgraph=())
    torch.manual_seed(6)
    model = Wrap().double().eval()
    res = sparse_lrp.explain(model, x, None, target=0, composite=ZPlus())
    assert set(res.layers) >= {"mlp.0", "mlp.2"}
    want = sparse_lrp.explain(model.mlp, x, None, target=0, composite=ZPlus())
    assert_close(res.node_feat, want.node_feat)
