"""Node-selecting pooling: TopKPooling and SAGPooling in graph classifiers.

Reference, independent of the handlers: every model's forward written out by hand
(GraphConv and GINEConv as sums over the edges, each edge's message scaled by a factor
per layer placed on the ORIGINAL edge positions), the pooling as a gather of the kept
nodes times their gate, and the pooled graph built by hand from the kept set. Of the
pooling layer the reference takes only its selection ``perm`` and its multiplier
``score`` (by calling the layer), the multiplier detached: LRP holds the gate fixed.
With LRP-0 on bias-free ReLU networks the node (and edge-feature) relevance is then
gradient x input of the reference, and each layer's edge relevance the gradient with
respect to its edge scale factors (at 1).
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import DT, assert_close, assert_conserved, lrp_explainer, zero_biases
from torch import nn

import sparse_lrp
from sparse_lrp import Epsilon
from sparse_lrp.layers.base import Context

F, H, C, D = 4, 6, 3, 2
SIZES = (7, 8, 6)


def _batch(seed: int = 0):
    """Three graphs, each with a self-loop (node 0), a double edge (1 -> 2), an isolated
    node (its last) and random edges; the edges shuffled across graphs."""
    g = torch.Generator().manual_seed(seed)
    eis, off = [], 0
    for n in SIZES:
        e = torch.randint(0, n - 1, (2, 3 * n), generator=g)
        e = torch.cat([e[:, e[0] != e[1]], torch.tensor([[0, 1, 1], [0, 2, 2]])], 1)
        eis.append(e + off)
        off += n
    ei = torch.cat(eis, 1)
    ei = ei[:, torch.randperm(ei.shape[1], generator=g)].contiguous()
    batch = torch.cat([torch.full((n,), k) for k, n in enumerate(SIZES)])
    x = torch.randn(off, F, generator=g, dtype=DT)
    ea = torch.randn(ei.shape[1], D, generator=g, dtype=DT)
    return x, ei, batch, ea


def _max_pool(h, b, g):
    return h.new_zeros(g, h.shape[1]).scatter_reduce(0, b[:, None].expand_as(h), h, "amax", include_self=False)


def _add_pool(h, b, g):
    return h.new_zeros(g, h.shape[1]).index_add(0, b, h)


# --------------------------------------------------------------------------------------
# The reference: layers written out, the pooling's selection and gate from the layer
# --------------------------------------------------------------------------------------


def ref_graph_conv(m, x, src, dst, scale):
    agg = x.new_zeros(x.shape).index_add(0, dst, x[src] * scale[:, None])
    return agg @ m.lin_rel.weight.T + x @ m.lin_root.weight.T


def ref_gine(m, x, src, dst, ea, scale):
    msg = torch.relu(x[src] + ea @ m.lin.weight.T) * scale[:, None]
    return ((1 + m.eps) * x + x.new_zeros(x.shape).index_add(0, dst, msg)) @ m.nn.weight.T


def ref_pool(layer, h, src, dst, pos, b, ea=None):
    """The pooled graph: the layer's kept nodes ``perm``, each scaled by its detached
    gate; the edges between kept nodes renumbered by hand (``pos``: their positions in
    the model's edge_index)."""
    with torch.no_grad():
        *_, perm, score = layer(h.detach(), torch.stack([src, dst]), None, b)
    gate = score.detach() * layer.multiplier
    new = torch.full((h.shape[0],), -1, dtype=torch.long)
    new[perm] = torch.arange(perm.numel())
    keep = (new[src] >= 0) & (new[dst] >= 0)
    out = (h[perm] * gate[:, None], new[src[keep]], new[dst[keep]], pos[keep], b[perm])
    return out if ea is None else (*out, ea[keep])


class Net(nn.Module):
    """PyG's proteins_topk_pool.py, bias-free: (conv -> pool -> max/add readouts) twice."""

    def __init__(self, pool1: nn.Module, pool2: nn.Module):
        super().__init__()
        self.conv1 = gnn.GraphConv(F, H, bias=False)
        self.pool1 = pool1
        self.conv2 = gnn.GraphConv(H, H, bias=False)
        self.pool2 = pool2
        self.lin = nn.Linear(2 * H, C, bias=False)

    def forward(self, x, edge_index, batch):
        h = torch.relu(self.conv1(x, edge_index))
        h, ei, _, b, _, _ = self.pool1(h, edge_index, None, batch)
        r1 = torch.cat([gnn.global_max_pool(h, b), gnn.global_add_pool(h, b)], 1)
        h = torch.relu(self.conv2(h, ei))
        h, ei, _, b, _, _ = self.pool2(h, ei, None, b)
        r2 = torch.cat([gnn.global_max_pool(h, b), gnn.global_add_pool(h, b)], 1)
        return self.lin(r1 + r2)

    def reference(self, x, edge_index, batch, s1, s2):
        """The forward written out; ``s1``, ``s2``: conv1's and conv2's edge scale factors
        on the model's edge positions."""
        g = int(batch.max()) + 1
        src, dst = edge_index
        pos = torch.arange(edge_index.shape[1])
        h = torch.relu(ref_graph_conv(self.conv1, x, src, dst, s1))
        h, src, dst, pos, b = ref_pool(self.pool1, h, src, dst, pos, batch)
        r1 = torch.cat([_max_pool(h, b, g), _add_pool(h, b, g)], 1)
        h = torch.relu(ref_graph_conv(self.conv2, h, src, dst, s2[pos]))
        h, src, dst, pos, b = ref_pool(self.pool2, h, src, dst, pos, b)
        r2 = torch.cat([_max_pool(h, b, g), _add_pool(h, b, g)], 1)
        return (r1 + r2) @ self.lin.weight.T


POOLS = {
    "topk": lambda: (gnn.TopKPooling(H, 0.5), gnn.TopKPooling(H, 0.6)),
    "topk_int_ratio_multiplier": lambda: (gnn.TopKPooling(H, ratio=3, multiplier=2.0), gnn.TopKPooling(H, ratio=2)),
    "topk_min_score": lambda: (gnn.TopKPooling(H, min_score=0.12), gnn.TopKPooling(H, 0.5, nonlinearity="sigmoid")),
    "sag_graphconv": lambda: (gnn.SAGPooling(H, 0.5), gnn.SAGPooling(H, 0.6, multiplier=0.5)),
    "sag_gcn_min_score": lambda: (
        gnn.SAGPooling(H, min_score=0.12, GNN=gnn.GCNConv),
        gnn.SAGPooling(H, ratio=2, GNN=gnn.GCNConv),
    ),
}


def make_net(kind: str, seed: int = 1) -> Net:
    torch.manual_seed(seed)
    return zero_biases(Net(*POOLS[kind]()).double()).eval()


def reference_relevance(model, x, ei, batch, g: int, cls: int):
    """Gradient x input of graph ``g``'s logit ``cls`` (node features) and its gradients
    with respect to conv1's and conv2's edge scale factors."""
    xr = x.clone().requires_grad_(True)
    s1 = torch.ones(ei.shape[1], dtype=DT, requires_grad=True)
    s2 = torch.ones(ei.shape[1], dtype=DT, requires_grad=True)
    y = model.reference(xr, ei, batch, s1, s2)
    gx, g1, g2 = torch.autograd.grad(y[g, cls], [xr, s1, s2])
    return (gx * x).detach(), g1, g2, y.detach()


@pytest.mark.parametrize("kind", list(POOLS))
def test_lrp0_is_gradient_x_input_with_the_gate_fixed(kind):
    x, ei, batch, _ = _batch()
    model = make_net(kind)
    y = model(x, ei, batch).detach()
    s = torch.ones(ei.shape[1], dtype=DT)
    assert_close(model.reference(x, ei, batch, s, s), y)  # (the reference is the model)
    after_pool = 0.0
    for g in range(3):
        cls = int(y[g].argmax())
        res = sparse_lrp.explain(model, x, ei, batch=batch, index=g, task_level="graph", composite=Epsilon(0.0))
        ref_x, ref_e1, ref_e2, _ = reference_relevance(model, x, ei, batch, g, cls)
        assert res.target == cls
        assert_close(res.node_feat, ref_x, atol=1e-12, rtol=1e-9)
        assert res.node_feat[batch != g].abs().max() == 0  # (a graph's logit reads its own nodes only)
        # (2) conservation: the logit, all of it, on the input (nothing absorbed or lost)
        c = res.conservation
        assert c["in"] == pytest.approx(c["out"], abs=1e-12) and c["out"] == pytest.approx(float(y[g, cls]))
        assert abs(c["absorbed"]) < 1e-12 and c["lost"] == 0
        # (3) edge relevance of the layer after the pooling, on the model's own edges
        assert_close(res.layers["conv1"]["edge"], ref_e1, atol=1e-12, rtol=1e-9)
        assert_close(res.layers["conv2"]["edge"], ref_e2, atol=1e-12, rtol=1e-9)
        assert_close(res.edge, ref_e1 + ref_e2, atol=1e-12, rtol=1e-9)
        after_pool = max(after_pool, float(ref_e2.abs().max()))
    assert after_pool > 1e-3  # (edges between kept nodes carry relevance: the check can fail)


def test_edges_after_pooling_land_on_the_kept_edges():
    """conv2 runs on the pooled graph, whose node numbers are not the model's: its edge
    relevance sits on edges whose both ends pool1 kept, and matches the reference there
    (matching the pooled graph's (source, target) pairs against the model's edge_index
    would put it on other edges)."""
    x, ei, batch, _ = _batch(seed=3)
    model = make_net("topk", seed=4)
    with torch.no_grad():
        h = torch.relu(model.conv1(x, ei))
        *_, perm, _ = model.pool1(h, ei, None, batch)
    kept = torch.zeros(x.shape[0], dtype=torch.bool)
    kept[perm] = True
    between_kept = kept[ei[0]] & kept[ei[1]]
    res = sparse_lrp.explain(model, x, ei, batch=batch, index=[0, 1, 2], task_level="graph", composite=Epsilon(0.0))
    e2 = res.layers["conv2"]["edge"]  # [3, E]
    assert e2[:, ~between_kept].abs().max() == 0
    assert e2[:, between_kept].abs().sum() > 1e-3  # (there is relevance to misplace: the check can fail)
    for g in range(3):
        _, _, ref_e2, _ = reference_relevance(model, x, ei, batch, g, int(res.target[g]))
        assert_close(e2[g], ref_e2, atol=1e-12, rtol=1e-9)


def test_derived_edges_are_what_edge_ids_returns():
    ctx = Context(sparse_lrp.composites.resolve(None))
    ctx.edge_index = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    pooled = torch.tensor([[0, 1], [1, 0]])  # (renumbered: pairs 0 -> 1 and 1 -> 0 of another graph)
    assert ctx.edge_ids(pooled.clone()).tolist() == [0, -1]  # what pair matching finds
    ctx.derived_edges(pooled, torch.tensor([3, 2]))
    assert ctx.edge_ids(pooled).tolist() == [3, 2]
    assert ctx.edge_ids(pooled[:, :]).tolist() == [3, 2]  # (an alias: same storage, shape, strides)
    ctx.derived_edges(pooled, None)
    assert ctx.edge_ids(pooled) is None  # (none of the model's: reported as the layer's own)


class EdgeNet(nn.Module):
    """GINEConv -> TopKPooling (with edge features) -> GINEConv on the pooled graph and
    its gathered edge features -> readout."""

    def __init__(self):
        super().__init__()
        self.conv1 = gnn.GINEConv(nn.Linear(F, H, bias=False), edge_dim=D)
        self.pool = gnn.TopKPooling(H, 0.6)
        self.conv2 = gnn.GINEConv(nn.Linear(H, H, bias=False), edge_dim=D)
        self.lin = nn.Linear(H, C, bias=False)

    def forward(self, x, edge_index, batch, edge_attr):
        h = torch.relu(self.conv1(x, edge_index, edge_attr))
        h, ei, ea, b, _, _ = self.pool(h, edge_index, edge_attr, batch)
        h = torch.relu(self.conv2(h, ei, ea))
        return self.lin(gnn.global_add_pool(h, b))

    def reference(self, x, edge_index, batch, edge_attr):
        src, dst = edge_index
        s = torch.ones(src.numel(), dtype=DT)
        h = torch.relu(ref_gine(self.conv1, x, src, dst, edge_attr, s))
        pos = torch.arange(src.numel())
        h, src, dst, pos, b, ea = ref_pool(self.pool, h, src, dst, pos, batch, edge_attr)
        h = torch.relu(ref_gine(self.conv2, h, src, dst, ea, s[pos]))
        return _add_pool(h, b, int(batch.max()) + 1) @ self.lin.weight.T


def test_pooled_edge_features_return_to_the_original_edges():
    x, ei, batch, ea = _batch(seed=5)
    torch.manual_seed(6)
    model = zero_biases(EdgeNet().double()).eval()
    y = model(x, ei, batch, ea).detach()
    assert_close(model.reference(x, ei, batch, ea), y)
    for g in range(3):
        cls = int(y[g].argmax())
        res = sparse_lrp.explain(
            model, x, ei, batch=batch, edge_attr=ea, index=g, task_level="graph", composite=Epsilon(0.0)
        )
        xr, ear = x.clone().requires_grad_(True), ea.clone().requires_grad_(True)
        gx, gea = torch.autograd.grad(model.reference(xr, ei, batch, ear)[g, cls], [xr, ear])
        assert_close(res.node_feat, gx * x, atol=1e-12, rtol=1e-9)
        assert_close(res.edge_attr, gea * ea, atol=1e-12, rtol=1e-9)
        assert res.node_feat.sum() + res.edge_attr.sum() == pytest.approx(float(y[g, cls]), abs=1e-12)
        with torch.no_grad():
            h = torch.relu(model.conv1(x, ei, ea))
            *_, perm, _ = model.pool(h, ei, ea, batch)
        kept = torch.zeros(x.shape[0], dtype=torch.bool)
        kept[perm] = True
        # (conv2's messages read only the kept edges' features: the rest get conv1's share only)
        assert gea[kept[ei[0]] & kept[ei[1]]].abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["topk", "sag_gcn_min_score"])
@pytest.mark.parametrize("composite", ["epsilon", "zplus", "gamma"])
def test_several_graphs_in_one_call_equal_single_calls(kind, composite):
    x, ei, batch, _ = _batch(seed=7)
    model = make_net(kind, seed=8)
    joint = sparse_lrp.explain(model, x, ei, batch=batch, index=[0, 2], task_level="graph", composite=composite)
    assert joint.node_feat.shape == (2, *x.shape) and joint.edge.shape == (2, ei.shape[1])
    for t, g in enumerate([0, 2]):
        one = sparse_lrp.explain(model, x, ei, batch=batch, index=g, task_level="graph", composite=composite)
        assert_close(joint.node_feat[t], one.node_feat, atol=1e-12, rtol=1e-9)
        assert_close(joint.edge[t], one.edge, atol=1e-12, rtol=1e-9)
        for name, rec in one.layers.items():  # (the pooled layers' node records split by graph too)
            for k, v in rec.items():
                assert joint.layers[name][k].shape == (2, *v.shape), (name, k)
                assert_close(joint.layers[name][k][t], v, atol=1e-12, rtol=1e-9)
    assert_conserved(joint, abs=1e-10)


@pytest.mark.parametrize("kind", ["topk", "sag_graphconv"])
def test_pyg_explainer_graph_level_masks(kind):
    x, ei, batch, _ = _batch(seed=9)
    model = make_net(kind, seed=10)
    explainer = lrp_explainer(model, task_level="graph")
    expl = explainer(x, ei, batch=batch, index=1)
    assert expl.node_mask.shape == x.shape and expl.edge_mask.shape == (ei.shape[1],)
    res = sparse_lrp.explain(model, x, ei, batch=batch, index=1, task_level="graph", composite="zplus")
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert expl.node_mask[batch != 1].abs().max() == 0 and expl.node_mask.abs().max() > 0
    many = explainer(x, ei, batch=batch, index=torch.tensor([0, 2]))
    assert many.node_mask.shape == x.shape and many.edge_mask.shape == (ei.shape[1],)
    assert many.node_mask_per_target.shape == (x.shape[0], 2, F)
    assert many.edge_mask_per_target.shape == (ei.shape[1], 2)
    assert_close(many.node_mask, many.node_mask_per_target.sum(1))


def _snapshot(model):
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "forward": {k: "forward" in m.__dict__ for k, m in model.named_modules()},
    }


@pytest.mark.parametrize("kind", ["topk_min_score", "sag_gcn_min_score"])
def test_model_untouched(kind):
    x, ei, batch, _ = _batch(seed=11)
    model = make_net(kind, seed=12)
    eval_res = sparse_lrp.explain(model, x, ei, batch=batch, index=[0, 1], task_level="graph")
    model.train()
    model.pool1.select.weight.requires_grad_(False)
    before = _snapshot(model)
    res = sparse_lrp.explain(model, x, ei, batch=batch, index=[0, 1], task_level="graph")
    after = _snapshot(model)
    assert before["params"].keys() == after["params"].keys()
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k
    for key in ("requires_grad", "training", "grads", "forward"):
        assert before[key] == after[key], key
    assert not before["requires_grad"]["pool1.select.weight"] and all(before["training"].values())
    assert_close(res.node_feat, eval_res.node_feat)  # (train mode explained as eval mode)


class UNet(nn.Module):
    """A node-level graph U-Net: conv -> TopKPooling -> conv on the pooled graph ->
    unpooled back to the kept nodes, added to the skip, -> conv per node."""

    def __init__(self):
        super().__init__()
        self.conv1 = gnn.GraphConv(F, H, bias=False)
        self.pool = gnn.TopKPooling(H, 0.5)
        self.conv2 = gnn.GraphConv(H, H, bias=False)
        self.conv3 = gnn.GraphConv(H, C, bias=False)

    def forward(self, x, edge_index):
        h = torch.relu(self.conv1(x, edge_index))
        p, pei, _, _, perm, _ = self.pool(h, edge_index)
        p = torch.relu(self.conv2(p, pei))
        return self.conv3(h + torch.zeros_like(h).index_copy(0, perm, p), edge_index)

    def reference(self, x, edge_index):
        src, dst = edge_index
        s = torch.ones(src.numel(), dtype=DT)
        h = torch.relu(ref_graph_conv(self.conv1, x, src, dst, s))
        with torch.no_grad():
            *_, perm, _ = self.pool(h.detach(), edge_index)
        zero = torch.zeros(x.shape[0], dtype=torch.long)
        p, psrc, pdst, _, _ = ref_pool(self.pool, h, src, dst, torch.arange(src.numel()), zero)
        p = torch.relu(ref_graph_conv(self.conv2, p, psrc, pdst, s[: psrc.numel()]))
        return ref_graph_conv(self.conv3, h + torch.zeros_like(h).index_copy(0, perm, p), src, dst, s)


def test_node_level_single_target_runs_on_the_whole_graph_and_batched_ones_are_refused():
    x, ei, _, _ = _batch(seed=13)
    torch.manual_seed(14)
    model = UNet().double().eval()
    y = model(x, ei).detach()
    assert_close(model.reference(x, ei), y)
    node = 3
    res = sparse_lrp.explain(model, x, ei, index=node, composite=Epsilon(0.0))
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(model.reference(xr, ei)[node, int(y[node].argmax())], [xr])
    assert_close(res.node_feat, gx * x, atol=1e-12, rtol=1e-9)
    with pytest.raises(ValueError, match="selects the top-scoring nodes of each whole graph"):
        sparse_lrp.explain(model, x, ei, index=[3, 5])


def test_sparse_adjacency_is_refused():
    class PoolFirst(nn.Module):
        def __init__(self, sparse: bool):
            super().__init__()
            self.sparse = sparse
            self.pool = gnn.TopKPooling(F, 0.5)
            self.lin = nn.Linear(F, C, bias=False)

        def forward(self, x, edge_index, batch):
            if self.sparse:  # (an adjacency the model builds itself)
                n = x.shape[0]
                edge_index = torch.sparse_coo_tensor(
                    edge_index, torch.ones(edge_index.shape[1]), (n, n), check_invariants=False
                )
            h, _, _, b, _, _ = self.pool(x, edge_index, None, batch)
            return self.lin(gnn.global_add_pool(h, b))

    x, ei, batch, _ = _batch()
    model = PoolFirst(sparse=False).double().eval()
    res = sparse_lrp.explain(model, x, ei, batch=batch, index=0, task_level="graph", composite=Epsilon(0.0))
    assert res.node_feat.sum().item() == pytest.approx(res.output.item(), abs=1e-12)
    assert res.node_feat.abs().max() > 0
    model.sparse = True
    with pytest.raises(ValueError, match=r"pool \(TopKPooling\): edge_index must be a \[2, E\] tensor"):
        sparse_lrp.explain(model, x, ei, batch=batch, index=0, task_level="graph")
