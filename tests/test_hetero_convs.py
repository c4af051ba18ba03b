"""PyG's heterogeneous-native layers: ``HeteroDictLinear``, ``HeteroLinear``, ``HGTConv``,
``HANConv``.

(a) LRP-0 on bias-free models equals gradient x input of the same model written out by
    hand in this file, with the parts LRP holds fixed as constants: HGT's attention
    (softmax across edge types) and skip gate, HAN's node-level and semantic attention,
    GELU under the Pass rule (a fixed per-entry scale ``gelu(o) / o``). The attention is
    taken from the layers' own ``message`` (a message hook), checked against the formula,
    and the written-out forward against the layer's output. Edge relevance per edge type
    and position equals gradient x input of a per-edge scale on each layer's messages.
(b) Every rule on one HeteroDictLinear / HeteroLinear layer equals the per-type maps
    written out densely (``gnn_reference.dense_lrp``).
(c) Several rows equal single calls; PyG's Explainer returns a ``HeteroExplanation``;
    the composite's ``top`` rule reaches a layer that returns a dict; the model is untouched.

The graph: three node types (``venue`` is no edge type's target), four edge types with
self-loops and multi-edges, and a paper, an author and a venue on no edge.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import (
    DT,
    _mask_zero_output,
    assert_close,
    assert_conserved,
    dense_lrp,
    grad_x_input,
    lrp_explainer,
    randomise,
    typed_edges,
    zero_biases,
)
from gnn_reference import RULES as ALL_RULES
from torch import Tensor, nn
from torch_geometric.utils import softmax

import sparse_lrp
from sparse_lrp import Epsilon, ZPlus
from sparse_lrp.composites import Composite

NP, NA, NV, FP, FA, FV, C, HEADS = 9, 7, 3, 6, 4, 5, 6, 2
CITES, WRITES, REV, HOSTS = (
    ("paper", "cites", "paper"),
    ("author", "writes", "paper"),
    ("paper", "rev", "author"),
    ("venue", "hosts", "paper"),
)
METADATA = (["paper", "author", "venue"], [CITES, WRITES, REV, HOSTS])
RULES = {"epsilon0": lambda: Epsilon(0.0), **ALL_RULES}


def _graph() -> dict:
    """Paper 8, author 6 and venue 2 lie on no edge; ``cites`` has self-loops and
    multi-edges, ``writes`` multi-edges."""
    g = torch.Generator().manual_seed(0)

    def rand(n_src, n_dst, count):
        return typed_edges(n_src, n_dst, count, g)

    cites = torch.cat([torch.tensor([[0, 3, 1, 1, 1], [0, 3, 2, 2, 2]]), rand(NP - 1, NP - 1, 12)], 1)
    writes = torch.cat([torch.tensor([[2, 2], [4, 4]]), rand(NA - 1, NP - 1, 10)], 1)
    rev = rand(NP - 1, NA - 1, 9)
    hosts = torch.cat([torch.tensor([[0, 1], [5, 5]]), rand(NV - 1, NP - 1, 4)], 1)
    return {CITES: cites, WRITES: writes, REV: rev, HOSTS: hosts}


EI = _graph()


@pytest.fixture
def x_dict():
    g = torch.Generator().manual_seed(1)
    return {
        "paper": torch.randn(NP, FP, generator=g, dtype=DT),
        "author": torch.randn(NA, FA, generator=g, dtype=DT),
        "venue": torch.randn(NV, FV, generator=g, dtype=DT),
    }


class HGT(nn.Module):
    """Two HGTConv layers (lazy input widths; the skip applies where they agree) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = gnn.HGTConv(-1, C, METADATA, heads=HEADS)
        self.conv2 = gnn.HGTConv(-1, C, METADATA, heads=HEADS)
        self.lin = nn.Linear(C, 3)

    def forward(self, x_dict, edge_index_dict):
        h = {k: v.relu() for k, v in self.conv1(x_dict, edge_index_dict).items()}
        h = self.conv2({**h, "venue": x_dict["venue"]}, edge_index_dict)
        return self.lin(h["paper"].relu())


class HAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = gnn.HANConv(-1, C, METADATA, heads=HEADS)
        self.lin = nn.Linear(C, 3)

    def forward(self, x_dict, edge_index_dict):
        return self.lin(self.conv(x_dict, edge_index_dict)["paper"])


def _model(cls, x_dict, biases: bool = False) -> nn.Module:
    model = cls().double()
    with torch.no_grad():  # (lazy widths)
        model(x_dict, EI)
    model = randomise(model, seed=4, scale=0.6)
    return (model if biases else zero_biases(model)).eval()


# -- the layers written out, with what LRP holds fixed as constants -------------------
def _messages(layer, model, x_dict, ei) -> list[dict]:
    """The message() inputs and output of each propagate call of ``layer``."""
    seen = []
    handle = layer.register_message_forward_hook(lambda mod, inputs, out: seen.append({**inputs[0], "out": out}))
    try:
        with torch.no_grad():
            model(x_dict, ei)
    finally:
        handle.remove()
    return seen


def _by_type(values: Tensor, ei: dict) -> dict:
    sizes = [e.shape[1] for e in ei.values()]
    return dict(zip(ei, values.split(sizes)))


def hgt_alpha(layer, model, x_dict, ei) -> dict:
    """HGT's attention per edge type ``[E, H]``: softmax over each target's in-edges of all
    types of ``p_r <k', q> / sqrt(d)``, checked against the layer's own messages."""
    (msg,) = _messages(layer, model, x_dict, ei)
    score = (msg["q_i"] * msg["k_j"]).sum(-1) * msg["edge_attr"] / math.sqrt(msg["q_i"].shape[-1])
    alpha = softmax(score, msg["index"], num_nodes=msg["size_i"])
    assert_close(msg["out"], (msg["v_j"] * alpha[..., None]).reshape(msg["out"].shape))
    return _by_type(alpha, ei)


def _pass_scale(o: Tensor, fn) -> Tensor:
    """The Pass rule through an element-wise ``fn`` as a fixed per-entry scale."""
    o = o.detach()
    return torch.where(o == 0, 0.0, fn(o) / torch.where(o == 0, 1.0, o))


def hgt_layer(m, x_dict, ei, alpha, scale) -> dict:
    """HGTConv by hand: values, relation maps per (edge type, head), the attention sum over
    all in-edges with each edge's message times ``scale``, GELU (Pass), out_lin, skip."""
    H, D, R = m.heads, m.out_channels // m.heads, len(m.edge_types)
    v = {}
    for t, x in x_dict.items():
        lin = m.kqv_lin.lins[t]
        v[t] = (x @ lin.weight[2 * C :].detach().T + lin.bias[2 * C :].detach()).view(-1, H, D)
    agg = {t: x_dict[t].new_zeros(x_dict[t].shape[0], H, D) for t in x_dict if t in m.dst_node_types}
    for et, e in ei.items():
        src, _, dst = et
        rel = [m.v_rel.weight[h * R + m.edge_types_map[et]].detach() for h in range(H)]
        vr = torch.stack([v[src][:, h] @ rel[h] for h in range(H)], 1)
        agg[dst] = agg[dst].index_add(0, e[1], vr[e[0]] * alpha[et][..., None] * scale[et][:, None, None])
    out = {}
    for t, a in agg.items():
        o = a.reshape(-1, C)
        lin = m.out_lin.lins[t]
        a = (o * _pass_scale(o, torch.nn.functional.gelu)) @ lin.weight.detach().T + lin.bias.detach()
        if a.shape[-1] == x_dict[t].shape[-1]:
            gate = m.skip[t].detach().sigmoid()
            a = gate * a + (1 - gate) * x_dict[t]
        out[t] = a
    return out


def hgt_model(model, x_dict, ei, alphas, scales) -> Tensor:
    h = {k: v.relu() for k, v in hgt_layer(model.conv1, x_dict, ei, alphas[0], scales[0]).items()}
    h = hgt_layer(model.conv2, {**h, "venue": x_dict["venue"]}, ei, alphas[1], scales[1])
    return h["paper"].relu() @ model.lin.weight.detach().T + model.lin.bias.detach()


def han_fixed(m, model, x_dict, ei) -> tuple[dict, dict]:
    """HAN's node-level attention per edge type (checked against its messages) and its
    semantic attention per node type (from its own forward)."""
    seen = _messages(m, model, x_dict, ei)
    alpha = {}
    for et, msg in zip(ei, seen):
        a = torch.nn.functional.leaky_relu(msg["alpha_j"] + msg["alpha_i"], m.negative_slope)
        a = softmax(a, msg["index"], num_nodes=msg["size_i"])
        assert_close(msg["out"], (msg["x_j"] * a[..., None]).reshape(msg["out"].shape))
        alpha[et] = a
    with torch.no_grad():
        _, beta = m(x_dict, ei, return_semantic_attention_weights=True)
    return alpha, beta


def han_model(model, x_dict, ei, alpha, beta, scale) -> Tensor:
    m = model.conv
    H, D = m.heads, m.out_channels // m.heads
    h = {t: (x @ m.proj[t].weight.detach().T + m.proj[t].bias.detach()).view(-1, H, D) for t, x in x_dict.items()}
    parts = {t: [] for t in x_dict}
    for et, e in ei.items():
        src, _, dst = et
        z = (
            h[dst]
            .new_zeros(h[dst].shape)
            .index_add(0, e[1], h[src][e[0]] * alpha[et][..., None] * scale[et][:, None, None])
        )
        parts[dst].append(z.reshape(-1, C).relu())
    paper = sum(b * p for b, p in zip(beta["paper"], parts["paper"]))
    return paper @ model.lin.weight.detach().T + model.lin.bias.detach()


def _unit_scales(ei: dict) -> dict:
    return {k: torch.ones(v.shape[1], dtype=DT) for k, v in ei.items()}


def _grads(fn, x_dict, scale_dicts):
    """Gradient x input of ``fn(x_dict, scale_dicts)`` for each node type's features and
    each per-edge scale."""
    keys, ekeys = list(x_dict), [list(s) for s in scale_dicts]
    flat = list(x_dict.values()) + [t for s in scale_dicts for t in s.values()]

    def f(*leaves):
        xs = dict(zip(keys, leaves[: len(keys)]))
        rest, scales = leaves[len(keys) :], []
        for ek in ekeys:
            scales.append(dict(zip(ek, rest[: len(ek)])))
            rest = rest[len(ek) :]
        return fn(xs, scales)

    refs = grad_x_input(f, *flat)
    node = dict(zip(keys, refs[: len(keys)]))
    rest, edges = refs[len(keys) :], []
    for ek in ekeys:
        edges.append(dict(zip(ek, rest[: len(ek)])))
        rest = rest[len(ek) :]
    return node, edges


def _check_conserved(res) -> None:
    c = res.conservation
    assert abs(c["absorbed"]) < 1e-10 and c["lost"] == 0.0
    assert c["in"] == pytest.approx(c["out"], rel=1e-9, abs=1e-12)


# -- (a) LRP-0 equals gradient x input with the fixed parts fixed ---------------------
@pytest.mark.parametrize("graph", ["given", "empty_type"])
def test_lrp0_hgt_equals_gradient_times_input_of_the_layers_written_out(graph, x_dict):
    model = _model(HGT, x_dict)
    # (an edge type without edges amid the others: the next one starts where it does)
    ei = EI if graph == "given" else {**EI, REV: torch.zeros(2, 0, dtype=torch.long)}
    alphas = [hgt_alpha(m, model, x_dict, ei) for m in (model.conv1, model.conv2)]
    y = model(x_dict, ei).detach()
    ones = [_unit_scales(ei), _unit_scales(ei)]
    assert_close(hgt_model(model, x_dict, ei, alphas, ones), y)  # written out = the layers
    for row in (2, 5, NP - 1):  # (paper 8 is on no edge: only the skips reach it)
        cls = int(y[row].argmax())
        res = sparse_lrp.explain(model, x_dict, ei, index=row, composite=Epsilon(0))
        node, edges = _grads(
            lambda xs, s, row=row, cls=cls: hgt_model(model, xs, ei, alphas, s)[row, cls], x_dict, ones
        )
        for k in x_dict:
            assert_close(res.node_feat[k], node[k])
        for k in ei:
            assert_close(res.layers["conv1"]["edge"][k], edges[0][k])
            assert_close(res.layers["conv2"]["edge"][k], edges[1][k])
            assert_close(res.edge[k], edges[0][k] + edges[1][k])
        _check_conserved(res)
        if row == NP - 1:
            assert float(sum(res.edge[k].abs().sum() for k in ei)) == 0.0
            assert (
                float(res.node["author"].abs().sum()) == 0.0 and float(res.node_feat["paper"][NP - 1].abs().sum()) > 0
            )
    # all rows at once, under a relevance target: every edge type carries relevance
    R = torch.rand(y.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    res = sparse_lrp.explain(model, x_dict, ei, target=R, composite=Epsilon(0))
    node, edges = _grads(lambda xs, s: (hgt_model(model, xs, ei, alphas, s) * (R / y)).sum(), x_dict, ones)
    for k in x_dict:
        assert_close(res.node_feat[k], node[k])
    for k in ei:
        assert_close(res.edge[k], edges[0][k] + edges[1][k])
        assert (float(res.edge[k].abs().sum()) > 0) == (ei[k].shape[1] > 0)
    assert float(res.node_feat["venue"][NV - 1].abs().sum()) == 0.0  # (the venue on no edge)


def test_lrp0_han_equals_gradient_times_input_of_the_layer_written_out(x_dict):
    model = _model(HAN, x_dict)
    alpha, beta = han_fixed(model.conv, model, x_dict, EI)
    assert beta["paper"].shape == (3,) and beta["venue"] is None  # (three metapaths into papers)
    y = model(x_dict, EI).detach()
    ones = [_unit_scales(EI)]
    assert_close(han_model(model, x_dict, EI, alpha, beta, ones[0]), y)
    for row in (2, 4):
        cls = int(y[row].argmax())
        res = sparse_lrp.explain(model, x_dict, EI, index=row, composite=Epsilon(0))
        node, edges = _grads(
            lambda xs, s, row=row, cls=cls: han_model(model, xs, EI, alpha, beta, s[0])[row, cls], x_dict, ones
        )
        for k in x_dict:
            assert_close(res.node_feat[k], node[k])
        for k in EI:
            assert_close(res.edge[k], edges[0][k])
            # (one layer: the edges into authors reach no paper)
            assert (float(res.edge[k].abs().sum()) == 0.0) == (k == REV)
        _check_conserved(res)


def test_hgt_returns_what_the_layer_returns_for_any_edge_type_order(x_dict):
    """HGT's relation maps are a ``HeteroLinear(is_sorted=True)`` whose rows follow the
    edge_index dict's order: given in another order than the metadata's, the layer's own
    segments decide which rows take which weights, and the handler follows them."""
    model = _model(HGT, x_dict)
    shuffled = {k: EI[k] for k in (HOSTS, CITES, REV, WRITES)}
    y = model(x_dict, shuffled).detach()
    assert not torch.allclose(y, model(x_dict, EI))
    res = sparse_lrp.explain(model, x_dict, shuffled, index=list(range(NP)), target=0, composite=Epsilon(0))
    assert_close(res.output, y[:, 0])


# -- (b) HeteroDictLinear / HeteroLinear: every rule against the maps written out ----
class DictLinear(nn.Module):
    def __init__(self, lazy: bool, bias: bool) -> None:
        super().__init__()
        widths = {"author": FA, "venue": FV, "paper": FP}  # (another order than x_dict's)
        self.lin = gnn.HeteroDictLinear(-1 if lazy else widths, 4, types=list(widths) if lazy else None, bias=bias)

    def forward(self, x_dict, edge_index_dict):
        out = self.lin(x_dict)
        return torch.cat([out["paper"], out["author"], out["venue"]])


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", ["plain", "lazy", "no_bias"])
def test_hetero_dict_linear_rule_matches_dense_reference(variant, rule_name, x_dict):
    model = DictLinear(lazy=variant == "lazy", bias=variant != "no_bias").double()
    with torch.no_grad():
        model(x_dict, EI)
    model = randomise(model, seed=6).eval()
    rule = RULES[rule_name]()
    out = model(x_dict, EI).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=DT) + 0.1
    res = sparse_lrp.explain(model, x_dict, EI, target=R, composite=rule)
    R = _mask_zero_output(R, out)
    rows = dict(zip(["paper", "author", "venue"], R.split([NP, NA, NV])))
    for t, x in x_dict.items():
        lin = model.lin.lins[t]
        (ref,) = dense_lrp([(x, lin.weight.detach())], rows[t], rule, None if lin.bias is None else lin.bias.detach())
        assert_close(res.node_feat[t], ref)
    assert_conserved(res, rel=1e-7, abs=1e-8)


TYPES = torch.tensor([2, 0, 0, 1, 2, 0, 1, 2, 2, 0, 1])  # (type 3 has no rows)


class RowTypes(nn.Module):
    def __init__(self, type_vec: Tensor, **kwargs) -> None:
        super().__init__()
        self.hl = gnn.HeteroLinear(FP, 4, 4, **kwargs)
        self.register_buffer("type_vec", type_vec)

    def forward(self, x):
        return self.hl(x, self.type_vec)


HETERO_LINEAR = {
    "unsorted": (TYPES, {}),
    "sorted": (TYPES.sort().values, {"is_sorted": True}),
    "no_bias": (TYPES, {"bias": False}),
}


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("variant", list(HETERO_LINEAR))
def test_hetero_linear_rule_matches_dense_reference(variant, rule_name):
    type_vec, kwargs = HETERO_LINEAR[variant]
    model = randomise(RowTypes(type_vec, **kwargs).double(), seed=8).eval()
    x = torch.randn(type_vec.numel(), FP, generator=torch.Generator().manual_seed(9), dtype=DT)
    rule = RULES[rule_name]()
    out = model(x).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=DT) + 0.1
    res = sparse_lrp.explain(model, x, target=R, composite=rule)
    R = _mask_zero_output(R, out)
    ref = torch.zeros_like(x)
    hl = model.hl
    for i in range(hl.num_types):
        rows = type_vec == i
        if rows.any():
            bias = None if hl.bias is None else hl.bias[i].detach()
            (ref[rows],) = dense_lrp([(x[rows], hl.weight[i].detach().T)], R[rows], rule, bias)
    assert_close(res.node_feat, ref)
    assert_conserved(res, rel=1e-7, abs=1e-8)


def test_hetero_linear_follows_the_layers_own_segments():
    """``is_sorted=True`` with an unsorted type_vec: the layer takes each row's weight from
    its type pointer's segments (and its bias by type_vec); LRP-0 without biases is the
    gradient x input of the layer itself. Several rows equal single calls."""
    model = randomise(RowTypes(TYPES, is_sorted=True, bias=False).double(), seed=8).eval()
    x = torch.randn(TYPES.numel(), FP, generator=torch.Generator().manual_seed(9), dtype=DT)
    y = model(x).detach()
    rows = [0, 4, 9]
    many = sparse_lrp.explain(model, x, index=rows, target=1, composite=Epsilon(0))
    assert_close(many.output, y[rows, 1])
    for i, row in enumerate(rows):
        (ref,) = grad_x_input(lambda t, row=row: model(t)[row, 1], x)
        assert_close(many.node_feat[i], ref)
        one = sparse_lrp.explain(model, x, index=row, target=1, composite=ZPlus())
        assert torch.equal(
            sparse_lrp.explain(model, x, index=rows, target=1, composite=ZPlus()).node_feat[i], one.node_feat
        )
    # (with a bias, taken by type_vec where the weights follow the segments)
    biased = randomise(RowTypes(TYPES, is_sorted=True).double(), seed=8).eval()
    res = sparse_lrp.explain(biased, x, index=rows, target=1, composite=Epsilon(0))
    assert_close(res.output, biased(x).detach()[rows, 1])
    assert not torch.allclose(res.output, y[rows, 1])


# -- (c) several rows, PyG's Explainer, the top rule, the model untouched -------------
def test_several_rows_equal_single_calls(x_dict):
    model = _model(HGT, x_dict, biases=True)
    rows, classes = [5, 0, NP - 1], torch.tensor([1, 2, 0])
    many = sparse_lrp.explain(model, x_dict, EI, index=rows, target=classes, composite=ZPlus())
    assert many.node_feat["venue"].shape == (3, NV, FV) and many.edge[HOSTS].shape == (3, EI[HOSTS].shape[1])
    for i, row in enumerate(rows):
        one = sparse_lrp.explain(model, x_dict, EI, index=row, target=int(classes[i]), composite=ZPlus())
        for k in x_dict:
            assert torch.equal(many.node_feat[k][i], one.node_feat[k])
        for k in EI:
            assert torch.equal(many.edge[k][i], one.edge[k])
            for name in ("conv1", "conv2"):
                assert torch.equal(many.layers[name]["edge"][k][i], one.layers[name]["edge"][k])
        assert torch.equal(many.output[i : i + 1], one.output)
    assert float(many.edge[WRITES][0].abs().sum()) > 0


def test_explainer_returns_hetero_explanation(x_dict):
    from torch_geometric.explain import HeteroExplanation

    model = _model(HAN, x_dict, biases=True)
    explainer = lrp_explainer(model)
    expl = explainer(x_dict, EI, index=4)
    assert isinstance(expl, HeteroExplanation)
    expl.validate(raise_on_error=True)
    res = sparse_lrp.explain(model, x_dict, EI, index=4, composite="zplus")
    for k in x_dict:
        assert_close(expl[k].node_mask, res.node_feat[k])
    for k in EI:
        assert_close(expl[k].edge_mask, res.edge[k])
    assert float(expl[WRITES].edge_mask.abs().sum()) > 0


class LastHGT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = gnn.HeteroDictLinear(-1, C, types=METADATA[0])
        self.conv = gnn.HGTConv(C, 3, METADATA, heads=1)

    def forward(self, x_dict, edge_index_dict):
        return self.conv({k: v.relu() for k, v in self.lin(x_dict).items()}, edge_index_dict)["paper"]


def test_top_rule_reaches_a_layer_that_returns_a_dict(x_dict):
    """HGTConv is the last layer (its dict's paper entry is the output): the composite's
    ``top`` rule takes its maps, as ``by_type`` does, and ``first`` takes HeteroDictLinear's."""
    from sparse_lrp import WSquare

    model = _model(LastHGT, x_dict, biases=True)
    top = sparse_lrp.explain(model, x_dict, EI, index=3, composite=Composite(Epsilon(0), top=ZPlus()))
    by_type = Composite(Epsilon(0), by_type={gnn.HGTConv: ZPlus()})
    named = sparse_lrp.explain(model, x_dict, EI, index=3, composite=by_type)
    plain = sparse_lrp.explain(model, x_dict, EI, index=3, composite=Epsilon(0))
    for k in x_dict:
        assert_close(top.node_feat[k], named.node_feat[k])
    assert not torch.allclose(top.node_feat["paper"], plain.node_feat["paper"])
    first = sparse_lrp.explain(model, x_dict, EI, index=3, composite=Composite(Epsilon(0), first=WSquare()))
    lin = sparse_lrp.explain(model, x_dict, EI, index=3, composite=Composite(Epsilon(0), by_name={"lin": WSquare()}))
    for k in x_dict:
        assert_close(first.node_feat[k], lin.node_feat[k])


@pytest.mark.parametrize("cls", [HGT, HAN])
def test_model_untouched(cls, x_dict):
    model = _model(cls, x_dict, biases=True).train()
    next(model.parameters()).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = {k: m.training for k, m in model.named_modules()}
    sparse_lrp.explain(model, x_dict, EI, index=[1, 2])
    with pytest.raises(ValueError, match="out of range"):
        sparse_lrp.explain(model, x_dict, EI, index=50)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert {k: m.training for k, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m.__dict__.get("forward"))
        assert not getattr(m, "_message_forward_hooks", None)
