"""Heterogeneous graphs: ``explain(model, x_dict, edge_index_dict)`` and ``LRPExplainer``
with PyG's ``HeteroExplanation``.

(a) LRP-0 on bias-free ReLU models (``to_hetero``, ``HeteroConv`` with sum/mean/max over
    edge types, edge features per edge type) equals gradient x input of the explained
    logit, for every node type's features and every edge type's features.
(b) Every rule on a one-layer bipartite model (source type -> target type) equals the
    layer written out densely: node mixing over the edges into the target type, then the
    feature maps, one denominator with the root term (``gnn_reference``'s primitives).
(c) Several output rows equal single calls; the Explainer's masks have PyG's per-type
    shapes; bad input gets clear errors; the model is untouched.

The graph has a type with self-loops and multi-edges, multi-edges between types, a
node of each type on no edge, and an edge type without edges.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import (
    DT,
    Conn,
    _mask_zero_output,
    _mean_weights,
    _w,
    assert_close,
    carry,
    dense_lrp,
    edge_forward,
    edge_lrp,
    grad_x_input,
    lrp_explainer,
    randomise,
    typed_edges,
    zero_biases,
)
from gnn_reference import (
    RULES as ALL_RULES,
)
from torch import Tensor, nn

import sparse_lrp
from sparse_lrp import Epsilon, WSquare, ZPlus

NP, NA, FP, FA, D = 9, 7, 5, 4, 3
CITES, WRITES, REV, NONE = (
    ("paper", "cites", "paper"),
    ("author", "writes", "paper"),
    ("paper", "rev", "author"),
    (
        "author",
        "knows",
        "author",
    ),
)
METADATA = (["paper", "author"], [CITES, WRITES, REV, NONE])


def _graph(seed: int = 0) -> dict:
    """Paper 8 and author 6 lie on no edge; ``cites`` has self-loops and multi-edges."""
    g = torch.Generator().manual_seed(seed)

    def rand(n_src, n_dst, count):
        return typed_edges(n_src, n_dst, count, g)

    cites = torch.cat([torch.tensor([[0, 3, 1, 1, 1], [0, 3, 2, 2, 2]]), rand(NP - 1, NP - 1, 14)], 1)
    writes = torch.cat([torch.tensor([[2, 2], [4, 4]]), rand(NA - 1, NP - 1, 12)], 1)
    rev = rand(NP - 1, NA - 1, 10)
    return {CITES: cites, WRITES: writes, REV: rev, NONE: torch.zeros(2, 0, dtype=torch.long)}


EI = _graph()


@pytest.fixture
def x_dict():
    g = torch.Generator().manual_seed(1)
    return {"paper": torch.randn(NP, FP, generator=g, dtype=DT), "author": torch.randn(NA, FA, generator=g, dtype=DT)}


def _edge_attr(seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape[1], D, generator=g, dtype=DT) for k, v in EI.items()}


class Homogeneous(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind == "sage":
            self.conv1, self.conv2 = gnn.SAGEConv((-1, -1), 6), gnn.SAGEConv((-1, -1), 6, aggr="sum")
        elif kind == "graph":
            self.conv1, self.conv2 = gnn.GraphConv((-1, -1), 6), gnn.GraphConv((-1, -1), 6, aggr="mean")
        else:  # (GIN adds source and target features: one width for both types first)
            self.lin0 = gnn.Linear(-1, 6)
            self.conv1 = gnn.GINConv(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), train_eps=True)
            self.conv2 = gnn.GINConv(nn.Linear(6, 6), eps=0.3)
        self.lin = gnn.Linear(-1, 3)

    def forward(self, x, edge_index):
        if hasattr(self, "lin0"):
            x = self.lin0(x).relu()
        x = self.conv1(x, edge_index).relu()
        x = self.conv2(x, edge_index).relu()
        return self.lin(x)


class WithEdgeFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = gnn.Linear(-1, 6)
        self.conv = gnn.GINEConv(nn.Linear(6, 6), edge_dim=D)
        self.lin = gnn.Linear(-1, 3)

    def forward(self, x, edge_index, edge_attr):
        x = self.lin0(x).relu()
        return self.lin(self.conv(x, edge_index, edge_attr).relu())


class PaperLogits(nn.Module):
    """A heterogeneous model's paper logits (PyG's Explainer explains one tensor)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x_dict, edge_index_dict, edge_attr_dict=None):
        extra = () if edge_attr_dict is None else (edge_attr_dict,)
        return self.inner(x_dict, edge_index_dict, *extra)["paper"]


class Stacked(nn.Module):
    """``HeteroConv`` with its aggregation over edge types, then a head."""

    def __init__(self, aggr: str) -> None:
        super().__init__()
        self.conv = gnn.HeteroConv(
            {
                CITES: gnn.GINConv(nn.Linear(FP, 6), eps=0.2),
                WRITES: gnn.SAGEConv((FA, FP), 6),
                REV: gnn.GraphConv((FP, FA), 6, aggr="mean"),
                NONE: gnn.GraphConv(FA, 6),
            },
            aggr=aggr,
        )
        self.conv2 = gnn.HeteroConv(
            {CITES: gnn.SAGEConv(6, 6), WRITES: gnn.GraphConv((6, 6), 6), REV: gnn.GraphConv((6, 6), 6)}, aggr=aggr
        )
        self.lin = nn.Linear(6, 3)

    def forward(self, x_dict, edge_index_dict):
        h = {k: v.relu() for k, v in self.conv(x_dict, edge_index_dict).items()}
        return self.lin(self.conv2(h, edge_index_dict)["paper"].relu())


def _lazy_init(model: nn.Module, *args) -> nn.Module:
    with torch.no_grad():
        model(*args)
    return zero_biases(randomise(model)).eval()


def _hetero(kind: str, x_dict) -> nn.Module:
    return _lazy_init(PaperLogits(gnn.to_hetero(Homogeneous(kind), METADATA, aggr="sum")).double(), x_dict, EI)


def _check_grad_x_input(model, x_dict, res, row, cls, *extra):
    keys = list(x_dict)

    def logit(*leaves):
        xs = dict(zip(keys, leaves[: len(keys)]))
        args = [
            dict(zip(e.keys(), leaves[len(keys) + i * len(e) : len(keys) + (i + 1) * len(e)]))
            for i, e in enumerate(extra)
        ]
        return model(xs, EI, *args)[row, cls]

    flat_extra = [t for e in extra for t in e.values()]
    refs = grad_x_input(logit, *x_dict.values(), *flat_extra)
    for k, ref in zip(keys, refs):
        assert_close(res.node_feat[k], ref)
    if extra:
        for k, ref in zip(extra[0], refs[len(keys) :]):
            assert_close(res.edge_attr[k], ref)
    c = res.conservation
    assert c["in"] == pytest.approx(c["out"], rel=1e-9)
    assert c["out"] == pytest.approx(float(model(x_dict, EI, *extra)[row, cls].detach()), rel=1e-12)


@pytest.mark.parametrize("kind", ["sage", "graph", "gin"])
def test_lrp0_to_hetero_equals_gradient_times_input(kind, x_dict):
    model = _hetero(kind, x_dict)
    y = model(x_dict, EI)
    for row in (2, NP - 1):  # (paper 8 is on no edge: its own features only)
        res = sparse_lrp.explain(model, x_dict, EI, index=row, composite=Epsilon(0))
        _check_grad_x_input(model, x_dict, res, row, int(y[row].argmax()))
        assert set(res.edge) == set(EI) and all(res.edge[k].shape == (v.shape[1],) for k, v in EI.items())
    assert float(res.node["author"].abs().sum()) == 0.0  # paper 8 reads no author


@pytest.mark.parametrize("aggr", ["sum", "mean", "max"])
def test_lrp0_hetero_conv_equals_gradient_times_input(aggr, x_dict):
    model = zero_biases(randomise(Stacked(aggr).double())).eval()
    y = model(x_dict, EI)
    res = sparse_lrp.explain(model, x_dict, EI, index=4, composite=Epsilon(0))
    _check_grad_x_input(model, x_dict, res, 4, int(y[4].argmax()))
    # every layer's edge record is per edge type, and they add up to the edge relevance
    total = {k: torch.zeros(v.shape[1], dtype=DT) for k, v in EI.items()}
    for rec in res.layers.values():
        for k, v in rec.get("edge", {}).items():
            total[k] = total[k] + v
    for k in EI:
        assert_close(res.edge[k], total[k])
    assert float(res.edge[CITES].abs().sum()) > 0 and float(res.edge[WRITES].abs().sum()) > 0


def test_lrp0_edge_features_per_edge_type_equal_gradient_times_input(x_dict):
    model = _lazy_init(
        PaperLogits(gnn.to_hetero(WithEdgeFeatures(), METADATA, aggr="sum")).double(), x_dict, EI, _edge_attr()
    )
    ea = _edge_attr()
    y = model(x_dict, EI, ea)
    res = sparse_lrp.explain(model, x_dict, EI, index=1, composite=Epsilon(0), edge_attr_dict=ea)
    _check_grad_x_input(model, x_dict, res, 1, int(y[1].argmax()), ea)
    assert res.edge_attr[CITES].shape == (EI[CITES].shape[1], D)
    assert float(res.edge_attr[CITES].abs().sum()) > 0


# -- (b) one bipartite layer, every rule, against the layer written out ---------------
RULES = {"epsilon0": lambda: Epsilon(0.0), **ALL_RULES}


def _neigh_root(xs, xd, ei, R, rule, w, lin_neigh, lin_root, eps=None):
    """``lin_neigh(sum_e w_e xs[src_e]) + lin_root(xd)`` (GIN: ``lin((1 + eps) xd + sum)``)."""
    n, E = xd.shape[0], ei.shape[1]
    conns = [Conn(ei[0], ei[1], w, xs, torch.arange(E))]
    if eps is not None:
        conns.append(Conn(torch.arange(n), torch.arange(n), torch.full((n,), 1 + eps, dtype=DT), xd))
    a = edge_forward(conns, n)
    pairs = [(a, _w(lin_neigh))] + ([(xd, _w(lin_root))] if lin_root is not None else [])
    bias = sum(lin.bias.detach() for lin in (lin_neigh, lin_root) if lin is not None and lin.bias is not None)
    bias = None if isinstance(bias, int) else bias
    out = sum(p @ wt.T for p, wt in pairs) + (0 if bias is None else bias)
    R = _mask_zero_output(R, out)
    rs = dense_lrp(pairs, R, rule, bias)
    parts = edge_lrp(conns, carry(rs[0], a), rule, n)
    r_src, r_e = parts[0]
    r_dst = rs[1] if lin_root is not None else parts[1][0] if eps is not None else torch.zeros_like(xd)
    return out, r_src, r_dst, r_e


def _ref_gat(m, xs, xd, ei, R, rule):
    """Bipartite GATConv (no added loops) with the forward's attention fixed, per head."""
    n, H, C = xd.shape[0], m.heads, m.out_channels
    with torch.no_grad():
        _, (ei_a, alpha) = m((xs, xd), ei, return_attention_weights=True)
    assert torch.equal(ei_a, ei)
    lin = m.lin if m.lin is not None else m.lin_src
    h = (xs @ _w(lin).T).view(-1, H, C)
    bias = m.bias.detach().view(H, C)
    conns = [Conn(ei[0], ei[1], alpha[:, k], h[:, k], torch.arange(ei.shape[1])) for k in range(H)]
    out = torch.cat([edge_forward([c], n, bias[k]) for k, c in enumerate(conns)], 1)
    R = _mask_zero_output(R, out)
    r_h, r_e = [], torch.zeros(ei.shape[1], dtype=DT)
    for k, (c, r) in enumerate(zip(conns, R.view(n, H, C).unbind(1))):
        ((rh, re),) = edge_lrp([c], r, rule, n, bias[k])
        r_h.append(rh)
        r_e = r_e + re
    (r_x,) = dense_lrp([(xs, _w(lin))], carry(torch.stack(r_h, 1), h).reshape(-1, H * C), rule)
    return out, r_x, torch.zeros_like(xd), r_e


def _mean(ei: Tensor, n: int) -> Tensor:
    return _mean_weights(ei, n, torch.ones(ei.shape[1], dtype=DT))


def _ref_sage(m, xs, xd, ei, R, r):
    return _neigh_root(xs, xd, ei, R, r, _mean(ei, xd.shape[0]), m.lin_l, m.lin_r if m.root_weight else None)


def _ref_graph(m, xs, xd, ei, R, r):
    w = _mean(ei, xd.shape[0]) if m.aggr == "mean" else torch.ones(ei.shape[1], dtype=DT)
    return _neigh_root(xs, xd, ei, R, r, w, m.lin_rel, m.lin_root)


def _ref_gin(m, xs, xd, ei, R, r):
    return _neigh_root(xs, xd, ei, R, r, torch.ones(ei.shape[1], dtype=DT), m.nn, None, eps=float(m.eps))


# name -> (layer, reference, edge type): GIN adds source and target features, so it maps
# papers to authors whose features are as wide (the test widens them)
BIPARTITE = {
    "sage": (lambda: gnn.SAGEConv((FA, FP), 4), _ref_sage, WRITES),
    "sage_no_root": (lambda: gnn.SAGEConv((FA, FP), 4, root_weight=False), _ref_sage, WRITES),
    "graph_add": (lambda: gnn.GraphConv((FA, FP), 4), _ref_graph, WRITES),
    "graph_mean": (lambda: gnn.GraphConv((FA, FP), 4, aggr="mean"), _ref_graph, WRITES),
    "gin": (lambda: gnn.GINConv(nn.Linear(FP, 4), eps=0.4), _ref_gin, REV),
    "gat_src_dst": (lambda: gnn.GATConv((FA, FP), 2, heads=2, add_self_loops=False), _ref_gat, WRITES),
}


class OneLayer(nn.Module):
    def __init__(self, conv: nn.Module, edge_type) -> None:
        super().__init__()
        self.conv, self.edge_type = conv, edge_type

    def forward(self, x_dict, edge_index_dict):
        src, _, dst = self.edge_type
        return self.conv((x_dict[src], x_dict[dst]), edge_index_dict[self.edge_type])


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("layer", list(BIPARTITE))
def test_bipartite_layer_rule_matches_dense_reference(layer, rule_name, x_dict):
    build, reference, edge_type = BIPARTITE[layer]
    m = randomise(build().double()).eval()
    model = OneLayer(m, edge_type)
    src, _, dst = edge_type
    if layer == "gin":
        x_dict = {**x_dict, "author": torch.randn(NA, FP, generator=torch.Generator().manual_seed(5), dtype=DT)}
    xs, xd, ei = x_dict[src], x_dict[dst], EI[edge_type]
    rule = RULES[rule_name]()
    out = model(x_dict, EI).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=DT) + 0.1
    ref_out, r_src, r_dst, r_e = reference(m, xs, xd, ei, R, rule)
    assert_close(ref_out, out)  # the reference computes what the layer computes
    res = sparse_lrp.explain(model, x_dict, EI, target=R, composite=rule)
    assert_close(res.node_feat[src], r_src)
    assert_close(res.node_feat[dst], r_dst)
    assert_close(res.edge[edge_type], r_e)
    for k in EI:
        if k != edge_type:
            assert float(res.edge[k].abs().sum()) == 0.0
    c = res.conservation
    assert c["out"] == pytest.approx(float(torch.where(out == 0, 0.0, R).sum()), rel=1e-9)
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=1e-7, abs=1e-8)


# -- (c) several targets, PyG's Explainer, errors, the model untouched ----------------
def test_several_rows_equal_single_calls(x_dict):
    model = _hetero("sage", x_dict)
    rows, classes = [5, 0, 2], torch.tensor([1, 2, 0])
    many = sparse_lrp.explain(model, x_dict, EI, index=rows, target=classes, composite=ZPlus())
    assert many.node_feat["paper"].shape == (3, NP, FP) and many.edge[WRITES].shape == (3, EI[WRITES].shape[1])
    for i, row in enumerate(rows):
        one = sparse_lrp.explain(model, x_dict, EI, index=row, target=int(classes[i]), composite=ZPlus())
        for k in x_dict:
            assert torch.equal(many.node_feat[k][i], one.node_feat[k])
            assert torch.equal(many.node[k][i], one.node[k])
        for k in EI:
            assert torch.equal(many.edge[k][i], one.edge[k])
        assert torch.equal(many.output[i : i + 1], one.output)
        for name, rec in one.layers.items():
            for k, v in rec.get("edge", {}).items():
                assert torch.equal(many.layers[name]["edge"][k][i], v)
    assert many.conservation["out"] == pytest.approx(float(many.output.sum()), rel=1e-12)
    # the rows share one forward pass: each has only its own backward pass
    calls = []
    hook = model.inner.register_forward_hook(lambda *_: calls.append(1))
    try:
        sparse_lrp.explain(model, x_dict, EI, index=rows, target=classes, composite=ZPlus())
    finally:
        hook.remove()
    assert len(calls) == 1


def test_all_rows_jointly_and_a_relevance_target(x_dict):
    model = _hetero("graph", x_dict)
    y = model(x_dict, EI).detach()
    R = torch.rand(y.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    res = sparse_lrp.explain(model, x_dict, EI, target=R, composite=Epsilon(0))
    # (relevance R at an output y is carried back as the fixed ratio R / y)
    refs = grad_x_input(lambda p, a: (model({"paper": p, "author": a}, EI) * (R / y)).sum(), *x_dict.values())
    assert_close(res.node_feat["paper"], refs[0])
    assert_close(res.node_feat["author"], refs[1])


@pytest.mark.parametrize("node_mask_type", ["attributes", "object", "common_attributes"])
def test_explainer_returns_hetero_explanation(node_mask_type, x_dict):
    from torch_geometric.explain import HeteroExplanation

    model = _hetero("sage", x_dict)
    explainer = lrp_explainer(model, composite=Epsilon(0), node_mask_type=node_mask_type)
    expl = explainer(x_dict, EI, index=3)
    assert isinstance(expl, HeteroExplanation)
    expl.validate(raise_on_error=True)
    res = sparse_lrp.explain(model, x_dict, EI, index=3, composite=Epsilon(0))
    for k, feat in res.node_feat.items():
        want = {
            "attributes": feat,
            "object": feat.sum(-1, keepdim=True),
            "common_attributes": feat.sum(0, keepdim=True),
        }
        assert_close(expl[k].node_mask, want[node_mask_type])
    for k in EI:
        assert_close(expl[k].edge_mask, res.edge[k])
    both = explainer(x_dict, EI, index=torch.tensor([3, 6]))
    per = {"attributes": (NP, 2, FP), "object": (NP, 2, 1), "common_attributes": (1, 2, FP)}[node_mask_type]
    assert both["paper"].node_mask_per_target.shape == per
    assert both[CITES].edge_mask_per_target.shape == (EI[CITES].shape[1], 2)
    sixth = sparse_lrp.explain(model, x_dict, EI, index=6, composite=Epsilon(0))
    assert_close(both[CITES].edge_mask, res.edge[CITES] + sixth.edge[CITES])


def test_bad_heterogeneous_input_is_named(x_dict):
    model = _hetero("sage", x_dict)
    with pytest.raises(TypeError, match="edge_index must be a dict"):
        sparse_lrp.explain(model, x_dict, EI[CITES], index=0)
    with pytest.raises(ValueError, match="node type 'venue'"):
        sparse_lrp.explain(model, x_dict, {**EI, ("venue", "has", "paper"): EI[CITES]}, index=0)
    bad = EI[WRITES].clone()
    bad[0, 0] = NA
    with pytest.raises(ValueError, match=r"edge_index\[\('author', 'writes', 'paper'\)\].*out of range"):
        sparse_lrp.explain(model, x_dict, {**EI, WRITES: bad}, index=0)
    with pytest.raises(ValueError, match="share one dtype"):
        sparse_lrp.explain(model, {**x_dict, "author": x_dict["author"].float()}, EI, index=0)
    with pytest.raises(ValueError, match=r"x\['paper'\] contains NaN"):
        sparse_lrp.explain(model, {**x_dict, "paper": x_dict["paper"].clone().fill_(float("nan"))}, EI, index=0)
    with pytest.raises(ValueError, match="index out of range for the model's 9 output rows"):
        sparse_lrp.explain(model, x_dict, EI, index=NP)
    with pytest.raises(ValueError, match="share one edge_index tensor"):
        sparse_lrp.explain(model, x_dict, {**EI, ("paper", "cites_too", "paper"): EI[CITES]}, index=0)
    with pytest.raises(ValueError, match="negative row"):
        sparse_lrp.explain(model, x_dict, EI, index=-1)
    with pytest.raises(ValueError, match="edge type"):
        sparse_lrp.explain(model, x_dict, EI, index=0, edge_attr_dict={("a", "b", "c"): torch.ones(1, D, dtype=DT)})
    half = OneLayer(randomise(gnn.SAGEConv((FA, FP), 4).double()), WRITES)
    half.forward = lambda xd, ed: half.conv((xd["author"], None), ed[WRITES], size=(NA, NP))
    with pytest.raises(ValueError, match="a missing \\(None\\) side is not supported"):
        sparse_lrp.explain(half, x_dict, EI, index=0)


def test_model_untouched_also_after_an_error(x_dict):
    model = _hetero("gin", x_dict).train()
    model.inner.conv1.paper__cites__paper.eps.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = {k: m.training for k, m in model.named_modules()}
    sparse_lrp.explain(model, x_dict, EI, index=[1, 2])
    with pytest.raises(ValueError, match="out of range"):
        sparse_lrp.explain(model, x_dict, EI, index=50)  # (raised after the forward ran)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert {k: m.training for k, m in model.named_modules()} == modes
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class SameWidthGIN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = gnn.GINConv(nn.Linear(FP, 6), eps=0.1)
        self.conv2 = gnn.GINConv(nn.Linear(6, 6))
        self.lin = gnn.Linear(-1, 3)

    def forward(self, x, edge_index):
        return self.lin(self.conv2(self.conv1(x, edge_index).relu(), edge_index).relu())


def test_first_rule_takes_every_edge_types_first_layer(x_dict):
    """GIN's MLP reads the neighbour sum, not the input: as the first feature map it takes
    `first`, and so does every edge type's copy (not only the one the forward ran first)."""
    from sparse_lrp.composites import Composite

    x_same = {**x_dict, "author": torch.randn(NA, FP, generator=torch.Generator().manual_seed(8), dtype=DT)}
    model = _lazy_init(PaperLogits(gnn.to_hetero(SameWidthGIN(), METADATA, aggr="sum")).double(), x_same, EI)
    first = sparse_lrp.explain(model, x_same, EI, index=2, composite=Composite(Epsilon(0), first=WSquare()))
    named = Composite(Epsilon(0), by_name={"inner.conv1.*.nn": WSquare()})
    by_name = sparse_lrp.explain(model, x_same, EI, index=2, composite=named)
    plain = sparse_lrp.explain(model, x_same, EI, index=2, composite=Epsilon(0))
    for k in x_same:
        assert_close(first.node_feat[k], by_name.node_feat[k])
    assert not torch.allclose(first.node_feat["paper"], plain.node_feat["paper"])
    assert not torch.allclose(first.node_feat["author"], plain.node_feat["author"])


@pytest.mark.parametrize("kw", [{}, {"concat": False}, {"edge_dim": D}, {"beta": True}], ids=str)
def test_lrp0_bipartite_transformer_conv_with_fixed_attention(kw, x_dict):
    """Values from the source type, the skip from the target type; attention (and the beta
    gate) held at the forward's values, so LRP-0 is gradient x input with them constant."""
    conv = randomise(gnn.TransformerConv((FA, FP), 3, heads=2, bias=False, **kw).double()).eval()
    model = OneLayer(conv, WRITES)
    ei, ea = EI[WRITES], _edge_attr()[WRITES] if "edge_dim" in kw else None
    if ea is not None:
        model.forward = lambda xd, ed, edge_attr_dict: conv(
            (xd["author"], xd["paper"]), ed[WRITES], edge_attr=edge_attr_dict[WRITES]
        )
    extra = {} if ea is None else {"edge_attr_dict": {WRITES: ea}}
    y = model(x_dict, EI, **extra).detach()
    R = torch.rand(y.shape, generator=torch.Generator().manual_seed(4), dtype=DT)
    res = sparse_lrp.explain(model, x_dict, EI, target=R, composite=Epsilon(0), **extra)
    with torch.no_grad():
        _, (ei_a, alpha) = conv((x_dict["author"], x_dict["paper"]), ei, edge_attr=ea, return_attention_weights=True)

    def written_out(xs, xd, *e):
        msg = conv.lin_value(xs).view(-1, 2, 3)[ei_a[0]]
        if e:
            msg = msg + conv.lin_edge(e[0]).view(-1, 2, 3)
        out = torch.zeros(NP, 2, 3, dtype=DT).index_add(0, ei_a[1], msg * alpha[..., None])
        out = out.reshape(NP, 6) if conv.concat else out.mean(1)
        skip = conv.lin_skip(xd)
        if conv.lin_beta is None:
            return out + skip
        with torch.no_grad():
            beta = torch.sigmoid(conv.lin_beta(torch.cat([out, skip, out - skip], -1)))
        return beta * skip + (1 - beta) * out

    assert_close(written_out(x_dict["author"], x_dict["paper"], *([ea] if ea is not None else [])), y)
    refs = grad_x_input(
        lambda *t: (written_out(*t) * (R / y)).sum(),
        x_dict["author"],
        x_dict["paper"],
        *([ea] if ea is not None else []),
    )
    assert_close(res.node_feat["author"], refs[0])
    assert_close(res.node_feat["paper"], refs[1])
    if ea is not None:
        assert_close(res.edge_attr[WRITES], refs[2])


@pytest.mark.parametrize("edge_dim", [None, D])
def test_lrp0_bipartite_res_gated_conv_with_fixed_gates(edge_dim, x_dict):
    """Keys and the skip read the target type, queries and values the source type; the
    gates held at the forward's values, so LRP-0 is gradient x input with them constant."""
    conv = zero_biases(randomise(gnn.ResGatedGraphConv((FA, FP), 3, edge_dim=edge_dim).double())).eval()
    ei, ea = EI[WRITES], _edge_attr()[WRITES]
    src, dst = ei

    def layer(xs, xd, e):
        return conv((xs, xd), ei, edge_attr=e if edge_dim else None)

    model = OneLayer(conv, WRITES)
    model.forward = lambda xd, ed, edge_attr_dict: layer(xd["author"], xd["paper"], edge_attr_dict[WRITES])
    extra = {"edge_attr_dict": {WRITES: ea}}
    y = model(x_dict, EI, **extra).detach()
    R = torch.rand(y.shape, generator=torch.Generator().manual_seed(4), dtype=DT)
    res = sparse_lrp.explain(model, x_dict, EI, target=R, composite=Epsilon(0), **extra)

    def cat(*t):
        return torch.cat(t, -1) if edge_dim else t[0]

    with torch.no_grad():  # the gates, from the layer's own linear maps
        xs, xd = x_dict["author"], x_dict["paper"]
        gate = torch.sigmoid(conv.lin_key(cat(xd[dst], ea)) + conv.lin_query(cat(xs[src], ea)))

    def written_out(xs, xd, e):
        msg = gate * conv.lin_value(cat(xs[src], e))
        return torch.zeros(NP, 3, dtype=DT).index_add(0, dst, msg) + conv.lin_skip(xd)

    assert_close(written_out(xs, xd, ea), y)
    refs = grad_x_input(lambda *t: (written_out(*t) * (R / y)).sum(), xs, xd, ea)
    assert_close(res.node_feat["author"], refs[0])
    assert_close(res.node_feat["paper"], refs[1])
    if edge_dim:
        assert_close(res.edge_attr[WRITES], refs[2])


@pytest.mark.parametrize("aggr", ["mean", "max"])
def test_a_node_type_without_nodes(aggr, x_dict):
    """Authors with no rows (so no writes or rev edges): the papers' explanation is exact,
    and the empty type gets an empty relevance, for sum and selection aggregations alike."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = gnn.SAGEConv((-1, -1), 6, aggr=aggr), gnn.SAGEConv((-1, -1), 6, aggr=aggr)
            self.lin = gnn.Linear(-1, 3)

        def forward(self, x, edge_index):
            return self.lin(self.conv2(self.conv1(x, edge_index).relu(), edge_index).relu())

    x = {"paper": x_dict["paper"], "author": torch.zeros(0, FA, dtype=DT)}
    empty = torch.zeros(2, 0, dtype=torch.long)
    ei = {CITES: EI[CITES], WRITES: empty, REV: empty.clone(), NONE: empty.clone()}
    model = PaperLogits(gnn.to_hetero(Net(), METADATA, aggr="sum")).double()
    with torch.no_grad():
        model(x, ei)
    model = zero_biases(randomise(model)).eval()
    y = model(x, ei)
    res = sparse_lrp.explain(model, x, ei, index=3, composite=Epsilon(0))
    (ref,) = grad_x_input(lambda p: model({"paper": p, "author": x["author"]}, ei)[3, int(y[3].argmax())], x["paper"])
    assert_close(res.node_feat["paper"], ref)
    assert res.node_feat["author"].shape == (0, FA) and res.node["author"].shape == (0,)
    assert res.conservation["in"] == pytest.approx(res.conservation["out"], rel=1e-9)


def test_a_missing_edge_type_and_lazy_sizes_are_named(x_dict):
    model = _hetero("sage", x_dict)
    with pytest.raises(ValueError, match="missing from edge_index_dict"):
        sparse_lrp.explain(model, x_dict, {k: v for k, v in EI.items() if k != WRITES}, index=0)
    lazy = PaperLogits(gnn.to_hetero(Homogeneous("sage"), METADATA, aggr="sum")).double()
    with pytest.raises(ValueError, match=r"not initialised yet .* run the model once"):
        sparse_lrp.explain(lazy, x_dict, EI, index=0)
    with pytest.raises(ValueError, match="index is empty"):
        sparse_lrp.explain(model, x_dict, EI, index=[])


def test_several_rows_keep_each_rows_layer_records_under_gamma(x_dict):
    """Each row's backward pass starts from the forward's state: per-layer node records
    (with the first layers' share handed over directly under WSquare) equal single calls."""
    model = _hetero("graph", x_dict)
    many = sparse_lrp.explain(model, x_dict, EI, index=[5, 0], composite="gamma")
    for i, row in enumerate([5, 0]):
        one = sparse_lrp.explain(model, x_dict, EI, index=row, composite="gamma")
        for name, rec in one.layers.items():
            if "node" in rec:
                assert_close(many.layers[name]["node"][i], rec["node"])
        for k in x_dict:
            assert_close(many.node_feat[k][i], one.node_feat[k])
    first = [name for name in one.layers if name.startswith("inner.conv1.") and "node" in one.layers[name]]
    assert first and any(float(one.layers[name]["node"].abs().sum()) > 0 for name in first)


class TwoTypesOneTensor(nn.Module):
    """Papers and authors read through their own layers into the papers' logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = gnn.HeteroConv(
            {WRITES: gnn.GINEConv(nn.Linear(FP, 3), edge_dim=D), CITES: gnn.GINEConv(nn.Linear(FP, 3), edge_dim=D)}
        )

    def forward(self, x_dict, edge_index_dict, edge_attr_dict):
        return self.conv(x_dict, edge_index_dict, edge_attr_dict=edge_attr_dict)["paper"]


@pytest.mark.parametrize("rule", ["gamma", "wsquare"])
def test_one_tensor_passed_for_two_types_equals_two_copies(rule):
    """Inputs are told apart by their storage inside the explanation: two node types (or two
    edge types' features) given the same tensor get each its own relevance, as copies would
    (input-independent rules hand the first layer's relevance to its input directly)."""
    composite = WSquare() if rule == "wsquare" else rule
    x = torch.randn(NP, FP, generator=torch.Generator().manual_seed(4), dtype=DT)
    ea = torch.randn(EI[CITES].shape[1], D, generator=torch.Generator().manual_seed(5), dtype=DT)
    ei = {CITES: EI[CITES], WRITES: EI[CITES].clone()}
    model = randomise(TwoTypesOneTensor().double()).eval()
    same = sparse_lrp.explain(
        model, {"paper": x, "author": x}, ei, index=2, composite=composite, edge_attr_dict={CITES: ea, WRITES: ea}
    )
    copies = sparse_lrp.explain(
        model,
        {"paper": x, "author": x.clone()},
        ei,
        index=2,
        composite=composite,
        edge_attr_dict={CITES: ea, WRITES: ea.clone()},
    )
    for k in ("paper", "author"):
        assert_close(same.node_feat[k], copies.node_feat[k])
    for k in (CITES, WRITES):
        assert_close(same.edge_attr[k], copies.edge_attr[k])
    assert float(copies.node_feat["author"].abs().sum()) > 0  # (each type has relevance to lose)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gnn.GATConv((FP, FA), 4, add_self_loops=False, heads=2),
        lambda: gnn.TransformerConv((FP, FA), 4, heads=2),
        lambda: gnn.GATv2Conv((FP, FA), 4, add_self_loops=False),
    ],
)
def test_attention_into_a_node_type_without_nodes(make, x_dict):
    """An (empty) edge type into a type with no nodes runs through attention layers, whose
    per-head layouts have no rows: the papers' explanation is the one without that edge type."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = gnn.HeteroConv({CITES: gnn.GATConv(FP, 4, heads=2, concat=False), REV: make()})

        def forward(self, x_dict, edge_index_dict):
            return self.conv(x_dict, edge_index_dict)["paper"]

    x = {"paper": x_dict["paper"], "author": torch.zeros(0, FA, dtype=DT)}
    model = randomise(Net().double()).eval()
    ei = {CITES: EI[CITES], REV: torch.zeros(2, 0, dtype=torch.long)}
    res = sparse_lrp.explain(model, x, ei, index=3, composite="zplus")
    alone = sparse_lrp.explain(model, x, {CITES: EI[CITES]}, index=3, composite="zplus")
    assert_close(res.node_feat["paper"], alone.node_feat["paper"])
    assert_close(res.edge[CITES], alone.edge[CITES])
    assert res.node_feat["author"].shape == (0, FA) and res.edge[REV].shape == (0,)


def test_repeated_rows_and_refused_subgraph_options(x_dict):
    model = _hetero("sage", x_dict)
    twice = sparse_lrp.explain(model, x_dict, EI, index=[4, 4], composite="zplus")
    once = sparse_lrp.explain(model, x_dict, EI, index=4, composite="zplus")
    for k in x_dict:
        assert torch.equal(twice.node_feat[k][0], once.node_feat[k])
        assert torch.equal(twice.node_feat[k][1], once.node_feat[k])
    for kwargs in ({"hops": 2}, {"max_union": 1000}, {"sparse_output": True}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}: not supported on a heterogeneous graph"):
            sparse_lrp.explain(model, x_dict, EI, index=0, **kwargs)
