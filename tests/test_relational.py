"""RGCNConv and FastRGCNConv against the layer written out per relation.

``out_i = x_i Θ_root + Σ_r Σ_{j ∈ N_r(i)} a_{r,i} x_j Θ_r + b`` with ``a_{r,i} = 1/|N_r(i)|``
(mean) or 1 (add). The references below build a dense adjacency per relation and ``Θ_r``
from the layer's parameters (bases combined, blocks laid on the diagonal) by hand; LRP runs
through them with the rule formulas of ``gnn_reference`` (node mixing per connection, so
multi-edges stay separate, then the joint feature map over the aggregates and the root).

The graph has self-loops, an isolated node, multi-edges (copies of one relation and of
two), several relations and one relation without edges.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from gnn_reference import (
    DT,
    RULES,
    Conn,
    assert_close,
    assert_conserved,
    carry,
    dense_rule_lrp,
    edge_forward,
    edge_lrp,
    lrp_explainer,
    make_graph,
    randomise,
    to_model_edges,
)
from torch import nn
from torch_geometric.nn import FastRGCNConv, RGCNConv

import sparse_lrp
from sparse_lrp import Composite, Epsilon, Flat, Gamma, WSquare, ZPlus

N, F, H, C, REL = 14, 6, 4, 3, 4  # (relation 3 has no edges)


def relational_graph(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index, edge_type)``: ``make_graph``'s awkward cases, relations 0-2 at random
    (relation 3 has none); of the three copies of ``1 -> 2`` two are of relation 0 (a mean
    over them counts both) and one of relation 2."""
    ei = make_graph(N, extra=16, seed=seed)
    et = torch.randint(0, REL - 1, (ei.shape[1],), generator=torch.Generator().manual_seed(seed + 1))
    copies = ((ei[0] == 1) & (ei[1] == 2)).nonzero().view(-1)
    et[copies] = torch.tensor([0, 0, 2])
    return ei, et


EI, ET = relational_graph(3)
E = EI.shape[1]


@pytest.fixture
def x():
    return torch.randn(N, F, generator=torch.Generator().manual_seed(5), dtype=DT)


@pytest.mark.parametrize("seed", [3, 11])
def test_graph_has_every_awkward_case(seed):
    ei, et = relational_graph(seed)
    assert (ei[0] == ei[1]).any()  # self-loops
    assert set(et.tolist()) == {0, 1, 2}  # several relations, and relation 3 without edges
    copies = (ei[0] == 1) & (ei[1] == 2)
    assert sorted(et[copies].tolist()) == [0, 0, 2]  # multi-edges of one relation and of two
    assert any(v not in set(ei.view(-1).tolist()) for v in range(N))  # an isolated node


# -- the layer written out -------------------------------------------------------------
def theta(m) -> torch.Tensor:
    """``Θ_r`` as dense ``[R, in, out]``."""
    w = m.weight
    if m.num_bases is not None:
        return torch.einsum("rb,bio->rio", m.comp, w)
    if m.num_blocks is not None:
        return torch.stack([torch.block_diag(*w[r]) for r in range(m.num_relations)])
    return w


def connections(m) -> torch.Tensor:
    """``[R, in, out]``: True where ``Θ_r`` has a connection (off the blocks it has none)."""
    if m.num_blocks is None:
        return torch.ones(m.num_relations, m.in_channels_l, m.out_channels, dtype=torch.bool)
    ones = torch.ones_like(m.weight[0], dtype=torch.bool)
    return torch.stack([torch.block_diag(*ones) for _ in range(m.num_relations)])


def edge_scale(m, ei, et) -> torch.Tensor:
    """``a_{r,i}`` of each edge ``j -> i`` of relation ``r``: 1, or 1 / (its target's r-edges)."""
    if m.aggr in ("add", "sum"):
        return torch.ones(ei.shape[1], dtype=DT)
    assert m.aggr == "mean"
    count = torch.zeros(m.num_relations, N, dtype=DT).index_put((et, ei[1]), torch.ones(ei.shape[1], dtype=DT), True)
    return 1.0 / count[et, ei[1]]


def adjacency(m, ei, et) -> torch.Tensor:
    """``A [R, N, N]``, ``A[r, i, j] = Σ over the r-edges j -> i of a_{r,i}``."""
    return torch.zeros(m.num_relations, N, N, dtype=DT).index_put((et, ei[1], ei[0]), edge_scale(m, ei, et), True)


def dense_rgcn(m, x, ei=EI, et=ET) -> torch.Tensor:
    out = torch.einsum("rij,jf,rfo->io", adjacency(m, ei, et), x, theta(m))
    if m.root is not None:
        out = out + x @ m.root
    return out if m.bias is None else out + m.bias


def ref_rgcn(m, x, R, rule, ei=EI, et=ET, mixing=None):
    """``(out, R_x, R_edge)``: the joint map over ``[A_0 x, ..., A_{R-1} x, x]`` with one
    denominator, then each relation's node mixing, connection by connection (under
    ``mixing`` if given, else ``rule``)."""
    with torch.no_grad():
        adj, th, mask = adjacency(m, ei, et), theta(m), connections(m)
        aggs = [adj[r] @ x for r in range(m.num_relations)]
        X = torch.cat(aggs + ([x] if m.root is not None else []), 1)
        W = torch.cat([th[r].T for r in range(m.num_relations)] + ([m.root.T] if m.root is not None else []), 1)
        M = torch.cat(
            [mask[r].T for r in range(m.num_relations)]
            + ([torch.ones_like(m.root.T, dtype=torch.bool)] if m.root is not None else []),
            1,
        )
        b = None if m.bias is None else m.bias
        out = X @ W.T + (0 if b is None else b)
        R = torch.where(out == 0, 0.0, R)
        r_X, _ = dense_rule_lrp(X, W, R, rule, b, M)
        parts = torch.split(r_X, [a.shape[1] for a in aggs] + ([F] if m.root is not None else []), 1)
        r_x = parts[-1].clone() if m.root is not None else torch.zeros_like(x)
        edge = torch.zeros(ei.shape[1], dtype=DT)
        scale = edge_scale(m, ei, et)
        for r in range(m.num_relations):
            sel = (et == r).nonzero().view(-1)
            conn = Conn(ei[0, sel], ei[1, sel], scale[sel], x, sel)
            assert_close(edge_forward([conn], N), aggs[r])  # (the adjacency is these connections)
            ((r_xr, r_e),) = edge_lrp([conn], carry(parts[r], aggs[r]), mixing or rule, N)
            r_x = r_x + r_xr
            edge = edge + to_model_edges(r_e, sel, ei.shape[1])
    return out, r_x, edge


CONFIGS = {
    "mean": dict(),
    "add": dict(aggr="add"),
    "sum": dict(aggr="sum"),
    "bases": dict(num_bases=2),
    "blocks": dict(num_blocks=2),
    "no_root": dict(root_weight=False),
    "bases_add_no_root": dict(num_bases=3, aggr="add", root_weight=False),
    "blocks_add": dict(num_blocks=2, aggr="add"),
    "blocks_no_root": dict(num_blocks=2, root_weight=False),
}


class Net(nn.Module):
    """``head(relu(conv2(relu(conv1(x)))))``; ``dense=True`` runs the written-out layers."""

    def __init__(self, layer=RGCNConv, bias=False, **kw):
        super().__init__()
        self.conv1 = layer(F, H, REL, bias=bias, **kw)
        self.conv2 = layer(H, H, REL, bias=bias, **kw)
        self.head = nn.Linear(H, C, bias=bias)

    def forward(self, x, edge_index, edge_type, dense=False):
        def conv(m, h):
            return dense_rgcn(m, h, edge_index, edge_type) if dense else m(h, edge_index, edge_type)

        h = torch.relu(conv(self.conv1, x))
        return self.head(torch.relu(conv(self.conv2, h)))


def net(layer=RGCNConv, bias=False, seed=1, **kw) -> Net:
    return randomise(Net(layer, bias, **kw).double(), seed=seed, scale=0.6).eval()


# -- (1) LRP-0 is gradient x input ------------------------------------------------------
@pytest.mark.parametrize("seed", [3, 11])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_lrp0_is_gradient_x_input(config, seed, x):
    ei, et = relational_graph(seed)
    model = net(**CONFIGS[config])
    assert_close(model(x, ei, et, dense=True), model(x, ei, et))  # (the reference is the layer)
    index, target = [2, 5, 8, N - 1], torch.tensor([0, 2, 1, 0])
    res = sparse_lrp.explain(model, x, ei, index=index, target=target, composite=Epsilon(0.0), edge_type=et)
    for t, (i, k) in enumerate(zip(index, target.tolist())):
        xg = x.clone().requires_grad_(True)
        model(xg, ei, et, dense=True)[i, k].backward()
        assert_close(res.node_feat[t], (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)
    assert (res.node_feat.abs().sum() > 0).item()


@pytest.mark.parametrize("aggr", ["max", "min"])
def test_max_and_min_select_per_relation(aggr, x):
    """``aggr="max"``: each relation's channel-wise maximum over its in-edges, then ``Θ_r``.
    A selection: autograd's gradient through the layer itself goes to the winners too, so
    gradient x input of the model is the reference."""
    model = net(aggr=aggr)
    res = sparse_lrp.explain(model, x, EI, index=[2, 7], target=1, composite=Epsilon(0.0), edge_type=ET)
    for t, i in enumerate([2, 7]):
        xg = x.clone().requires_grad_(True)
        model(xg, EI, ET)[i, 1].backward()
        assert_close(res.node_feat[t], (xg.grad * x).detach(), atol=1e-12, rtol=1e-9)


# -- (2) every rule against the dense reference ------------------------------------------
ONE_LAYER = ["mean", "add", "bases", "blocks", "no_root"]


def layer(config, cls=RGCNConv, out=H):
    return randomise(cls(F, out, REL, **CONFIGS[config]).double(), seed=3).eval()


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("config", ONE_LAYER)
def test_rule_matches_dense_reference(config, rule_name, x):
    m = layer(config)
    rule = RULES[rule_name]()
    out = m(x, EI, ET).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(7), dtype=DT) + 0.1
    ref_out, ref_x, ref_edge = ref_rgcn(m, x, R, rule)
    assert_close(ref_out, out)
    res = sparse_lrp.explain(m, x, EI, target=R, composite=rule, edge_type=ET)
    assert_close(res.node_feat, ref_x)
    assert_close(res.edge, ref_edge)
    assert_conserved(res, rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("config", ["mean", "blocks", "blocks_no_root"])
def test_first_rule_takes_the_whole_feature_map(config, x):
    """``first=WSquare`` takes the joint map over the aggregates and the root (with
    ``num_blocks`` every block's map, also where no root term reads the input), never the
    node mixing, which keeps the default rule."""
    m = layer(config)
    out = m(x, EI, ET).detach()
    R = torch.rand(out.shape, generator=torch.Generator().manual_seed(8), dtype=DT) + 0.1
    res = sparse_lrp.explain(m, x, EI, target=R, composite=Composite(Gamma(0.25), first=WSquare()), edge_type=ET)
    _, want_x, want_edge = ref_rgcn(m, x, R, WSquare(), mixing=Gamma(0.25))
    assert_close(res.node_feat, want_x)
    assert_close(res.edge, want_edge)
    # (the mixture differs from either rule alone: the test tells them apart)
    for rule in (WSquare(), Gamma(0.25)):
        _, other_x, _ = ref_rgcn(m, x, R, rule)
        assert not torch.allclose(res.node_feat, other_x)


# -- (3) conservation, (4) edge relevance ------------------------------------------------
@pytest.mark.parametrize("config", list(CONFIGS))
def test_lrp0_conserves_relevance(config, x):
    model = net(**CONFIGS[config])
    res = sparse_lrp.explain(model, x, EI, index=[3, 5], target=0, composite=Epsilon(0.0), edge_type=ET)
    for t in range(2):
        assert res.node_feat[t].sum().item() == pytest.approx(res.output[t].item(), abs=1e-12)
    c = res.conservation
    assert abs(c["absorbed"]) < 1e-12 and abs(c["lost"]) < 1e-12
    assert c["in"] == pytest.approx(c["out"], abs=1e-12)


@pytest.mark.parametrize("config", ["mean", "add", "bases", "blocks", "no_root"])
def test_edge_relevance_is_each_message_by_hand(config, x):
    """One layer, LRP-0, output (i, k): edge ``j -> i`` of relation ``r`` carries its whole
    message ``a_{r,i} (x_j Θ_r)_k`` (the ratio at the explained logit is 1); other edges
    carry nothing. Without a root weight and bias the edges carry the whole output."""
    m = layer(config)
    with torch.no_grad():
        m.bias.zero_()
    i, k = 2, 1
    res = sparse_lrp.explain(m, x, EI, index=i, target=k, composite=Epsilon(0.0), edge_type=ET)
    with torch.no_grad():
        msg = edge_scale(m, EI, ET) * torch.einsum("ef,efo->eo", x[EI[0]], theta(m)[ET])[:, k]
    assert_close(res.edge, torch.where(EI[1] == i, msg, 0.0))
    if m.root is None:
        assert res.edge.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
    copies = ((EI[0] == 1) & (EI[1] == 2) & (ET == 0)).nonzero().view(-1)
    if i == 2:  # (the two copies of one relation are separate connections, equal here)
        assert copies.numel() == 2 and res.edge[copies[0]] != 0
        assert_close(res.edge[copies[0]], res.edge[copies[1]])


def test_edge_relevance_follows_the_edge_order(x):
    """Edges (and their types) permuted: every edge's relevance moves with it."""
    model = net(num_bases=2)
    perm = torch.randperm(E, generator=torch.Generator().manual_seed(9))
    for composite in ("epsilon", "zplus"):
        a = sparse_lrp.explain(model, x, EI, index=[4, 6], composite=composite, edge_type=ET)
        b = sparse_lrp.explain(model, x, EI[:, perm], index=[4, 6], composite=composite, edge_type=ET[perm])
        assert_close(b.edge, a.edge[:, perm])
        assert_close(b.node_feat, a.node_feat)
        assert a.edge.abs().sum() > 0


# -- (5) batched targets, subgraphs and the whole graph ----------------------------------
@pytest.mark.parametrize("config", ["mean", "blocks", "bases_add_no_root"])
def test_batched_targets_equal_single_calls_and_the_whole_graph(config, x, monkeypatch, rows_mode):
    """(``rows_mode``: the kernel on whole maps, and cut to the rows that carry relevance.)"""
    from sparse_lrp.layers import relational

    model = net(**CONFIGS[config])
    seen = []
    rows = relational._relation_rows

    def spy(call, edge_index, edge_type):
        seen.append(edge_index.shape[1])
        return rows(call, edge_index, edge_type)

    monkeypatch.setattr(relational, "_relation_rows", spy)
    explain_module = importlib.import_module("sparse_lrp.explain")
    index = [0, 5, 9, N - 1]
    for preset in ("epsilon", "zplus", "gamma"):
        batched = sparse_lrp.explain(model, x, EI, index=index, composite=preset, edge_type=ET)
        for row, i in enumerate(index):
            seen.clear()
            sub = sparse_lrp.explain(model, x, EI, index=i, composite=preset, edge_type=ET)
            assert seen and max(seen) < E  # (the conftest pins the k-hop subgraph path)
            with monkeypatch.context() as mp:
                mp.setattr(explain_module, "WHOLE_GRAPH_ROWS", 2**30)
                seen.clear()
                whole = sparse_lrp.explain(model, x, EI, index=i, composite=preset, edge_type=ET)
                assert seen and min(seen) == E
            for single in (sub, whole):
                assert_close(batched.node_feat[row], single.node_feat, atol=1e-12, rtol=1e-9)
                assert_close(batched.edge[row], single.edge, atol=1e-12, rtol=1e-9)
                assert_close(batched.output[row], single.output.reshape(()), atol=1e-12, rtol=1e-9)
            assert_close(sub.layers["conv1"]["edge"], whole.layers["conv1"]["edge"], atol=1e-12, rtol=1e-9)
            assert_conserved(sub, abs=1e-10)


# -- (6) FastRGCNConv --------------------------------------------------------------------
@pytest.mark.parametrize("config", ["mean", "add", "bases", "blocks", "no_root"])
def test_fast_rgcn_equals_rgcn(config, x):
    slow = net(**CONFIGS[config])
    fast = Net(FastRGCNConv, **CONFIGS[config]).double().eval()
    fast.load_state_dict(slow.state_dict())
    assert_close(fast(x, EI, ET), slow(x, EI, ET))
    for composite in (Epsilon(0.1), ZPlus(), Composite(Gamma(0.25), first=Flat()), "gamma"):
        a = sparse_lrp.explain(slow, x, EI, index=[1, 6], composite=composite, edge_type=ET)
        b = sparse_lrp.explain(fast, x, EI, index=[1, 6], composite=composite, edge_type=ET)
        assert_close(b.node_feat, a.node_feat)
        assert_close(b.edge, a.edge)
        assert a.node_feat.abs().sum() > 0


# -- (7) PyG's Explainer -----------------------------------------------------------------
def test_pyg_explainer_on_a_node_classifier(x):

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = RGCNConv(F, H, REL), RGCNConv(H, C, REL, num_bases=2)

        def forward(self, x, edge_index, edge_type):
            h = torch.relu(self.conv1(x, edge_index, edge_type))
            return torch.log_softmax(self.conv2(h, edge_index, edge_type), dim=-1)

    model = randomise(Classifier().double(), seed=2, scale=0.6).eval()
    explainer = lrp_explainer(model, return_type="log_probs")
    expl = explainer(x, EI, index=4, edge_type=ET)
    assert expl.node_mask.shape == (N, F) and expl.edge_mask.shape == (E,)
    pred = int(model(x, EI, ET)[4].argmax())
    res = sparse_lrp.explain(model, x, EI, index=4, target=pred, composite="zplus", edge_type=ET)
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert expl.edge_mask.abs().sum() > 0
    many = explainer(x, EI, index=torch.tensor([4, 9]), edge_type=ET)
    assert many.node_mask.shape == (N, F) and many.edge_mask.shape == (E,)
    assert many.node_mask_per_target.shape == (N, 2, F) and many.edge_mask_per_target.shape == (E, 2)


# -- (8) refusals ------------------------------------------------------------------------
class Calls(nn.Module):
    """One layer called as ``how`` says (to hand it what a model might)."""

    def __init__(self, conv, how):
        super().__init__()
        self.conv, self.how = conv, how

    def forward(self, x, edge_index, edge_type=None):
        return self.how(self.conv, x, edge_index, edge_type)


def _check_refused(conv, how, match, **kw):
    x = torch.randn(N, F, dtype=DT)
    with pytest.raises(ValueError, match=match):
        sparse_lrp.explain(Calls(conv.double().eval(), how), x, EI, index=2, **kw)


def test_featureless_rgcn_is_refused():
    conv = RGCNConv(N, 3, REL)  # (in_channels = number of nodes: its weight rows are node embeddings)
    _check_refused(
        conv, lambda m, x, ei, et: m(None, ei, et), r"conv \(RGCNConv\): x must be a float .* featureless", edge_type=ET
    )
    _check_refused(conv, lambda m, x, ei, et: m(torch.arange(N), ei, et), r"featureless RGCN", edge_type=ET)


def test_missing_edge_type_is_refused():
    _check_refused(RGCNConv(F, 3, REL), lambda m, x, ei, et: m(x, ei, et), r"\(RGCNConv\): needs edge_type")
    wrong = ET.to(DT)
    _check_refused(
        RGCNConv(F, 3, REL), lambda m, x, ei, et: m(x, ei, et), r"needs edge_type, an integer", edge_type=wrong
    )


@pytest.mark.parametrize("aggr", ["std", "softmax"])
def test_other_aggregations_are_refused(aggr):
    _check_refused(
        RGCNConv(F, 3, REL, aggr=aggr),
        lambda m, x, ei, et: m(x, ei, et),
        rf"aggr='{aggr}' is not supported",
        edge_type=ET,
    )


def test_fast_rgcn_max_is_refused():
    _check_refused(
        FastRGCNConv(F, 3, REL, aggr="max"),
        lambda m, x, ei, et: m(x, ei, et),
        r"\(FastRGCNConv\): aggr='max' is not supported",
        edge_type=ET,
    )


@pytest.mark.parametrize("cls", [RGCNConv, FastRGCNConv])
@pytest.mark.parametrize("kind", [REL, -1])
def test_unknown_relations_are_refused(cls, kind):
    """A type outside 0..R-1 (the layers' own forwards fail on it too) is no relation."""
    bad = ET.clone()
    bad[3] = kind
    how = lambda m, x, ei, et: m(x, ei, et)  # noqa: E731
    _check_refused(
        cls(F, 3, REL), how, rf"\({cls.__name__}\): edge_type must lie in \[0, num_relations=4\)", edge_type=bad
    )


def test_sparse_adjacency_is_refused():
    def sparse(ei):
        return torch.sparse_coo_tensor(ei, torch.ones(ei.shape[1], dtype=DT), (N, N), check_invariants=True)

    # given to explain: the conversion is shown
    conv = Calls(RGCNConv(F, 3, REL).double().eval(), lambda m, x, ei, et: m(x, ei, et))
    with pytest.raises(TypeError, match="to_edge_index"):
        sparse_lrp.explain(conv, torch.randn(N, F, dtype=DT), sparse(EI), index=2, edge_type=ET)
    # built inside the model: the layer says it
    how = lambda m, x, ei, et: m(x, sparse(ei), et)  # noqa: E731
    _check_refused(RGCNConv(F, 3, REL), how, r"\(RGCNConv\): edge_index must be a \[2, E\] tensor", edge_type=ET)


def test_segment_matmul_mean_is_refused(monkeypatch):
    """With pyg-lib's segment_matmul PyG may average all relations' messages together: a
    mean is refused unless that path is switched off; a sum is the same on both paths."""
    import torch_geometric.backend
    import torch_geometric.typing

    monkeypatch.setattr(torch_geometric.typing, "WITH_SEGMM", True)
    monkeypatch.setattr(torch_geometric.backend, "use_segment_matmul", None)
    x = torch.randn(N, F, dtype=DT)
    mean = Calls(randomise(RGCNConv(F, 3, REL).double()).eval(), lambda m, x, ei, et: m(x, ei, et))
    with pytest.raises(ValueError, match="use_segment_matmul = False"):
        sparse_lrp.explain(mean, x, EI, index=2, edge_type=ET)
    # (PyG's own forward, where it runs, takes its loop: its heuristic picks it at these sizes)
    total = Calls(randomise(RGCNConv(F, 3, REL, aggr="add").double()).eval(), lambda m, x, ei, et: m(x, ei, et))
    assert sparse_lrp.explain(total, x, EI, index=2, target=0, edge_type=ET).node_feat.abs().sum() > 0
    monkeypatch.setattr(torch_geometric.backend, "use_segment_matmul", False)
    assert sparse_lrp.explain(mean, x, EI, index=2, target=0, edge_type=ET).node_feat.abs().sum() > 0


# -- (9) the model is left as it was ----------------------------------------------------
def test_model_untouched_after_explaining(x):
    class Trained(Net):
        def __init__(self):
            super().__init__(bias=True, num_bases=2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x, edge_index, edge_type):
            h = self.drop(torch.relu(self.conv1(x, edge_index, edge_type)))
            return self.head(torch.relu(self.conv2(h, edge_index, edge_type)))

    model = randomise(Trained().double(), seed=6).train()
    model.conv2.eval()
    model.conv1.comp.requires_grad_(False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: m.training for k, m in model.named_modules()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    for index in (3, [2, 5], None):
        sparse_lrp.explain(model, x, EI, index=index, composite="gamma", edge_type=ET)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert {k: m.training for k, m in model.named_modules()} == flags
        assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
        assert all(p.grad is None for p in model.parameters())
    assert model.training and not model.conv2.training
