"""``LRPExplainer`` inside PyG's ``Explainer``: every supported configuration.

The masks are checked against :func:`sparse_lrp.explain` (itself checked against
gradient × input and dense references in ``test_layers``/``test_models``) and, for
bias-free LRP-0 models, against the model's own prediction (conservation).
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as gnn
from gnn_reference import DT, assert_close, make_batch, make_graph, randomise
from torch import nn
from torch_geometric.explain import Explainer, Explanation
from torch_geometric.explain.metric import fidelity, groundtruth_metrics
from torch_geometric.utils import k_hop_subgraph

import sparse_lrp
from sparse_lrp import Epsilon, LRPExplainer

N, F, H, C = 16, 4, 6, 3
EI = make_graph(N, extra=16, seed=4)
E = EI.shape[1]


class NodeModel(nn.Module):
    """Two GCN layers; ``head`` picks what the model returns after the logits."""

    def __init__(self, out=C, head="raw", bias=True):
        super().__init__()
        self.conv1 = gnn.GCNConv(F, H, bias=bias)
        self.conv2 = gnn.GCNConv(H, out, bias=bias)
        self.head = head

    def forward(self, x, edge_index):
        y = self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)
        if self.head == "log_softmax":
            return torch.log_softmax(y, -1)
        if self.head == "softmax":
            return torch.softmax(y, -1)
        if self.head == "sigmoid":
            return torch.sigmoid(y)
        return y


class GraphModel(nn.Module):
    def __init__(self, out=C, head="raw", bias=True):
        super().__init__()
        self.conv1 = gnn.GraphConv(F, H, bias=bias)
        self.conv2 = gnn.GCNConv(H, H, bias=bias)
        self.lin = nn.Linear(H, out, bias=bias)
        self.head = head

    def forward(self, x, edge_index, batch):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index))
        y = self.lin(gnn.global_add_pool(h, batch))
        return torch.log_softmax(y, -1) if self.head == "log_softmax" else y


@pytest.fixture
def x():
    return torch.randn(N, F, generator=torch.Generator().manual_seed(21), dtype=DT)


def node_model(out=C, head="raw", bias=True, seed=1):
    m = NodeModel(out, head, bias).double()
    return randomise(m, seed=seed, scale=0.6).eval() if bias else m.eval()


def make_explainer(model, composite="zplus", explanation_type="model", node="attributes", edge="object", **cfg):
    config = {"mode": "multiclass_classification", "task_level": "node", "return_type": "raw"}
    config.update(cfg)
    return Explainer(
        model,
        algorithm=LRPExplainer(composite=composite),
        explanation_type=explanation_type,
        node_mask_type=node,
        edge_mask_type=edge,
        model_config=config,
    )


def expected_node_mask(node_feat, kind):
    if kind == "attributes":
        return node_feat
    if kind == "object":
        return node_feat.sum(-1, keepdim=True)
    return node_feat.sum(-2, keepdim=True)


# --------------------------------------------------------------------------------------
# Mask types and shapes
# --------------------------------------------------------------------------------------

MASKS = [
    ("attributes", "object"),
    ("object", "object"),
    ("common_attributes", "object"),
    ("attributes", None),
    ("object", None),
    ("common_attributes", None),
    (None, "object"),
]
SHAPES = {"attributes": (N, F), "object": (N, 1), "common_attributes": (1, F)}


@pytest.mark.parametrize("node,edge", MASKS)
def test_mask_types_match_explain(node, edge, x):
    model = node_model()
    explainer = make_explainer(model, node=node, edge=edge)
    expl = explainer(x, EI, index=5)
    assert isinstance(expl, Explanation)
    y = model(x, EI).detach()
    res = sparse_lrp.explain(model, x, EI, index=5, target=int(y[5].argmax()), composite="zplus")
    if node is None:
        assert expl.get("node_mask") is None
    else:
        assert expl.node_mask.shape == SHAPES[node]
        assert_close(expl.node_mask, expected_node_mask(res.node_feat, node))
    if edge is None:
        assert expl.get("edge_mask") is None
    else:
        assert expl.edge_mask.shape == (E,)
        assert_close(expl.edge_mask, res.edge)
    assert torch.equal(expl.target, y.argmax(-1))


def test_lrp0_masks_conserve_the_logit(x):
    model = node_model(bias=False)
    explainer = make_explainer(model, composite=Epsilon(0.0), node="object")
    expl = explainer(x, EI, index=9)
    y = model(x, EI).detach()
    assert_close(expl.node_mask.sum(), y[9].max())


def test_phenomenon_explains_the_given_target(x):
    model = node_model()
    labels = torch.arange(N) % C
    explainer = make_explainer(model, explanation_type="phenomenon")
    expl = explainer(x, EI, target=labels, index=4)
    res = sparse_lrp.explain(model, x, EI, index=4, target=int(labels[4]), composite="zplus")
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    with pytest.raises(ValueError, match="target"):
        explainer(x, EI, index=4)  # phenomenon needs a target


def test_unsupported_configurations_are_refused():
    model = node_model()
    with pytest.raises(ValueError):
        make_explainer(model, explanation_type="model", node="attributes", edge="object", task_level="edge")


# --------------------------------------------------------------------------------------
# Return types and modes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("return_type,head", [("raw", "raw"), ("log_probs", "log_softmax"), ("probs", "softmax")])
def test_return_types_explain_the_logit(return_type, head, x):
    model = node_model(head=head)
    explainer = make_explainer(model, return_type=return_type)
    expl = explainer(x, EI, index=3)
    model.head = "raw"  # the same weights, returning logits
    y = model(x, EI).detach()
    res = sparse_lrp.explain(model, x, EI, index=3, target=int(y[3].argmax()), composite="zplus")
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)


@pytest.mark.parametrize("return_type,head", [("raw", "raw"), ("probs", "sigmoid")])
def test_binary_one_output(return_type, head, x):
    model = node_model(out=1, head=head, bias=False)
    explainer = make_explainer(model, composite=Epsilon(0.0), mode="binary_classification", return_type=return_type)
    model.head = "raw"
    logit = model(x, EI).detach()[:, 0]
    model.head = head
    for i in range(N):
        if logit[i] != 0:
            break
    expl = explainer(x, EI, index=i)
    # evidence for the predicted class: +logit for class 1, -logit for class 0
    assert_close(expl.node_mask.sum(), logit[i].abs())
    cls = int(logit[i] > 0)
    assert int(expl.target[i]) == cls
    model.head = "raw"
    res = sparse_lrp.explain(model, x, EI, index=i, target=cls, composite=Epsilon(0.0))
    assert_close(expl.node_mask, res.node_feat)


def test_binary_one_output_both_classes_phenomenon(x):
    model = node_model(out=1, bias=False)
    explainer = make_explainer(
        model, composite=Epsilon(0.0), explanation_type="phenomenon", mode="binary_classification"
    )
    logit = model(x, EI).detach()[:, 0]
    ones = explainer(x, EI, target=torch.ones(N, dtype=torch.long), index=6)
    zeros = explainer(x, EI, target=torch.zeros(N, dtype=torch.long), index=6)
    assert_close(ones.node_mask.sum(), logit[6])
    assert_close(zeros.node_mask, -ones.node_mask)


def test_binary_two_outputs(x):
    model = node_model(out=2)
    labels = torch.tensor([0, 1] * (N // 2))
    explainer = make_explainer(model, explanation_type="phenomenon", mode="multiclass_classification")
    expl = explainer(x, EI, target=labels, index=7)
    res = sparse_lrp.explain(model, x, EI, index=7, target=int(labels[7]), composite="zplus")
    assert_close(expl.node_mask, res.node_feat)
    # binary_classification mode with a two-logit model and class-label targets
    explainer_b = make_explainer(model, explanation_type="phenomenon", mode="binary_classification")
    expl_b = explainer_b(x, EI, target=labels, index=7)
    assert_close(expl_b.node_mask, res.node_feat)
    # ... but its own prediction as the target (explanation_type="model"): PyG flattens the
    # two logits per node into 2N targets; the error says so (not "give one target per row")
    explainer_m = make_explainer(model, explanation_type="model", mode="binary_classification")
    with pytest.raises(ValueError, match=r"one logit per output row.*\[N, 2\].*multiclass_classification"):
        explainer_m(x, EI, index=7)


def test_regression(x):
    model = node_model(out=1, bias=False)
    explainer = make_explainer(model, composite=Epsilon(0.0), node="object", mode="regression")
    y = model(x, EI).detach()[:, 0]
    expl = explainer(x, EI, index=2)
    assert_close(expl.node_mask.sum(), y[2])
    res = sparse_lrp.explain(model, x, EI, index=2, composite=Epsilon(0.0))
    assert_close(expl.node_mask, res.node[:, None])
    assert_close(expl.edge_mask, res.edge)


# --------------------------------------------------------------------------------------
# Several indices, graph level
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", ["attributes", "object", "common_attributes"])
def test_several_indices(node, x):
    model = node_model()
    idx = torch.tensor([2, 5, 9])
    explainer = make_explainer(model, node=node)
    expl = explainer(x, EI, index=idx)
    res = sparse_lrp.explain(model, x, EI, index=idx, composite="zplus")
    per = expected_node_mask(res.node_feat, node)  # [T, ...]
    rows, cols = SHAPES[node]
    assert expl.node_mask_per_target.shape == (rows, 3, cols)  # node axis first
    assert_close(expl.node_mask_per_target, per.transpose(0, 1))
    assert_close(expl.node_mask, per.sum(0))
    assert expl.edge_mask_per_target.shape == (E, 3)
    assert_close(expl.edge_mask_per_target, res.edge.T)
    assert_close(expl.edge_mask, res.edge.sum(0))
    for t, i in enumerate(idx.tolist()):
        one = explainer(x, EI, index=i)
        assert_close(expl.node_mask_per_target[:, t], one.node_mask)
        assert_close(expl.edge_mask_per_target[:, t], one.edge_mask)


@pytest.fixture
def graphs():
    ei, batch = make_batch((5, 6, 7), seed=8)
    xg = torch.randn(batch.numel(), F, generator=torch.Generator().manual_seed(3), dtype=DT)
    return xg, ei, batch


@pytest.mark.parametrize("return_type,head", [("raw", "raw"), ("log_probs", "log_softmax")])
def test_graph_level(return_type, head, graphs):
    xg, ei, batch = graphs
    model = randomise(GraphModel(head=head).double(), seed=5, scale=0.6).eval()
    explainer = make_explainer(model, task_level="graph", return_type=return_type)
    expl = explainer(xg, ei, index=1, batch=batch)
    model.head = "raw"
    y = model(xg, ei, batch).detach()
    res = sparse_lrp.explain(model, xg, ei, index=1, target=int(y[1].argmax()), composite="zplus", batch=batch)
    assert expl.node_mask.shape == xg.shape and expl.edge_mask.shape == (ei.shape[1],)
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert torch.all(expl.node_mask[batch != 1] == 0)
    assert torch.all(expl.edge_mask[batch[ei[1]] != 1] == 0)


class PoolLast(nn.Module):
    """Graph-level model whose last operation is the pooling (no layer after it)."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = gnn.GraphConv(F, H, bias=bias)
        self.conv2 = gnn.GCNConv(H, C, bias=bias)

    def forward(self, x, edge_index, batch):
        return gnn.global_mean_pool(self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index), batch)


def test_graph_level_pooling_last(graphs):
    xg, ei, batch = graphs
    model = randomise(PoolLast().double(), seed=5, scale=0.6).eval()
    explainer = make_explainer(model, task_level="graph")
    expl = explainer(xg, ei, index=1, batch=batch)
    y = model(xg, ei, batch).detach()
    res = sparse_lrp.explain(model, xg, ei, index=1, target=int(y[1].argmax()), composite="zplus", batch=batch)
    assert_close(expl.node_mask, res.node_feat)
    assert_close(expl.edge_mask, res.edge)
    assert torch.all(expl.node_mask[batch != 1] == 0)
    lrp0 = make_explainer(
        PoolLast(bias=False).double().eval(), composite=Epsilon(0.0), node="object", task_level="graph"
    )
    expl0 = lrp0(xg, ei, index=2, batch=batch)
    assert_close(expl0.node_mask.sum(), lrp0.model(xg, ei, batch).detach()[2].max())


def test_graph_level_lrp0_conserves(graphs):
    xg, ei, batch = graphs
    model = GraphModel(bias=False).double().eval()
    explainer = make_explainer(model, composite=Epsilon(0.0), node="object", task_level="graph")
    y = model(xg, ei, batch).detach()
    expl = explainer(xg, ei, index=2, batch=batch)
    assert_close(expl.node_mask.sum(), y[2].max())


def test_graph_level_several_indices(graphs):
    xg, ei, batch = graphs
    model = randomise(GraphModel().double(), seed=5, scale=0.6).eval()
    explainer = make_explainer(model, task_level="graph")
    expl = explainer(xg, ei, index=torch.tensor([0, 2]), batch=batch)
    assert expl.node_mask_per_target.shape == (xg.shape[0], 2, xg.shape[1])
    for t, g in enumerate([0, 2]):
        one = explainer(xg, ei, index=g, batch=batch)
        assert_close(expl.node_mask_per_target[:, t], one.node_mask)
        assert_close(expl.edge_mask_per_target[:, t], one.edge_mask)
    assert_close(expl.node_mask, expl.node_mask_per_target.sum(1))


# --------------------------------------------------------------------------------------
# PyG tooling on LRP explanations
# --------------------------------------------------------------------------------------


def test_fidelity(x):
    model = node_model()
    explainer = make_explainer(model, node="object")
    expl = explainer(x, EI, index=torch.tensor([1, 4, 8]))
    pos, neg = fidelity(explainer, expl)
    assert 0.0 <= float(pos) <= 1.0 and 0.0 <= float(neg) <= 1.0


def test_fidelity_phenomenon(x):
    model = node_model()
    labels = torch.arange(N) % C
    explainer = make_explainer(model, explanation_type="phenomenon", node="attributes")
    expl = explainer(x, EI, target=labels, index=3)
    pos, neg = fidelity(explainer, expl)
    assert 0.0 <= float(pos) <= 1.0 and 0.0 <= float(neg) <= 1.0


def test_groundtruth_metrics_against_receptive_field(x):
    """Relevance lives only in the 2-hop computation subgraph: precision 1 against it."""
    model = node_model()
    explainer = make_explainer(model, node="object")
    expl = explainer(x, EI, index=5)
    subset, _, _, edge_truth = k_hop_subgraph(5, 2, EI, num_nodes=N)
    truth = torch.zeros(N, dtype=torch.bool)
    truth[subset] = True
    pred = expl.node_mask.view(-1) != 0
    edge_pred = expl.edge_mask != 0
    # computed directly ...
    assert pred.any() and not (pred & ~truth).any()
    assert edge_pred.any() and not (edge_pred & ~edge_truth).any()
    # ... and with PyG's metric (it needs torchmetrics)
    pytest.importorskip("torchmetrics")
    precision, recall, accuracy = groundtruth_metrics(
        pred.to(DT), truth, ["precision", "recall", "accuracy"], threshold=0.5
    )
    assert precision == pytest.approx(1.0)
    assert recall == pytest.approx(float(pred.sum()) / float(truth.sum()))
    assert 0.0 <= accuracy <= 1.0
    edge_precision = groundtruth_metrics(edge_pred.to(DT), edge_truth, "precision", threshold=0.5)
    assert edge_precision == pytest.approx(1.0)


def test_threshold_config_topk(x):
    model = node_model()
    explainer = Explainer(
        model,
        algorithm=LRPExplainer(),
        explanation_type="model",
        node_mask_type="object",
        edge_mask_type="object",
        model_config={"mode": "multiclass_classification", "task_level": "node", "return_type": "raw"},
        threshold_config={"threshold_type": "topk", "value": 3},
    )
    expl = explainer(x, EI, index=5)
    assert int((expl.edge_mask != 0).sum()) <= 3


def test_visualize_graph(x, tmp_path):
    pytest.importorskip("networkx")
    pytest.importorskip("matplotlib")
    model = node_model()
    expl = make_explainer(model)(x, EI, index=5)
    path = tmp_path / "graph.png"
    expl.visualize_graph(str(path), backend="networkx")
    assert path.exists() and path.stat().st_size > 0


def test_visualize_feature_importance(x, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    model = node_model()
    expl = make_explainer(model)(x, EI, index=5)
    path = tmp_path / "features.png"
    expl.visualize_feature_importance(str(path), top_k=3)
    assert path.exists() and path.stat().st_size > 0


def test_every_node_in_a_permuted_order_explains_each_nodes_own_prediction(x):
    """PyG hands the algorithm one target per node; with as many targets as nodes, in
    another order, each target must still be explained for its own predicted class."""
    model = randomise(node_model(), seed=5)
    explainer = make_explainer(model)
    order = torch.arange(N).flip(0)
    expl = explainer(x, EI, index=order)
    pred = model(x, EI).argmax(1)
    assert not torch.equal(pred[order], pred)  # the permutation changes the classes
    for t in range(N):
        single = sparse_lrp.explain(model, x, EI, index=int(order[t]), target=int(pred[order[t]]), composite="zplus")
        assert_close(expl.node_mask_per_target[:, t], single.node_feat)


def test_regression_explains_the_outputs_own_values_or_the_given_target(x):
    """Regression: the relevance at the output is the target PyG hands over (the
    prediction for 'model', the given values for 'phenomenon'); with LRP-0 on a
    bias-free model the mask sums to it over every output column (one column alone was
    explained before)."""
    model = randomise(node_model(out=2, bias=False), seed=3)
    y = model(x, EI).detach()
    cfg = dict(mode="regression", task_level="node", return_type="raw")
    expl = make_explainer(model, composite=Epsilon(0.0), **cfg)(x, EI, index=3)
    assert float(expl.node_mask.sum()) == pytest.approx(float(y[3].sum()), rel=1e-9)
    target = torch.zeros_like(y)
    target[3] = torch.tensor([5.0, -1.0], dtype=DT)
    phen = make_explainer(model, composite=Epsilon(0.0), explanation_type="phenomenon", **cfg)
    assert float(phen(x, EI, index=3, target=target).node_mask.sum()) == pytest.approx(4.0, rel=1e-9)


def test_options_and_composite_keys_are_checked_when_given(x):
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['hop'\]"):
        LRPExplainer(hop=3)
    with pytest.raises(TypeError, match="by_type keys must be module classes"):
        sparse_lrp.Composite(Epsilon(), by_type={"GCNConv": Epsilon()})
    typo = sparse_lrp.Composite(Epsilon(), by_name={"conv3": Epsilon(0.0)})
    with pytest.raises(ValueError, match="'conv3' matches no layer; layers: 'conv1', 'conv2'"):
        sparse_lrp.explain(node_model(), x, EI, index=2, composite=typo)


def test_one_index_gets_only_the_joint_masks(x):
    """PyG passes index=3 as tensor([3]): the masks are that target's own, and no
    per-target copies are attached (PyG's thresholding and subgraph views would leave
    them stale)."""
    expl = make_explainer(node_model())(x, EI, index=3)
    assert not hasattr(expl, "node_mask_per_target") and not hasattr(expl, "edge_mask_per_target")
    res = sparse_lrp.explain(node_model(), x, EI, index=3, composite="zplus")
    assert_close(expl.node_mask, res.node_feat)


# --------------------------------------------------------------------------------------
# Regressions
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_binary_phenomenon_float_labels_are_class_labels(shape, x):
    """BCE-trained data stores binary labels as floats (0./1., [N] or [N, 1]): they name
    classes as long labels do (class 1 explains the logit, class 0 its negation), not
    relevance at the output (label 0 gave an all-zero mask, label 1 one summing to 1)."""
    model = node_model(out=1, bias=False)
    explainer = make_explainer(
        model, composite=Epsilon(0.0), explanation_type="phenomenon", mode="binary_classification"
    )
    logit = model(x, EI).detach()[:, 0]
    labels = torch.arange(N) % 2
    floats = labels.to(DT) if shape == "flat" else labels.to(DT)[:, None]
    for i in (6, 9):  # labels 0 and 1
        expl = explainer(x, EI, target=floats, index=i)
        # LRP-0 on a bias-free model conserves the explained (signed) logit
        assert_close(expl.node_mask.sum(), (2 * labels[i] - 1) * logit[i])
        assert_close(expl.node_mask, explainer(x, EI, target=labels, index=i).node_mask)
    both = explainer(x, EI, target=floats, index=torch.tensor([6, 9]))
    for t, i in enumerate((6, 9)):
        assert_close(both.node_mask_per_target[:, t], explainer(x, EI, target=labels, index=i).node_mask)


@pytest.mark.parametrize("node", ["attributes", "object"])
@pytest.mark.parametrize("targets", ["two", "as_many_as_nodes"])
def test_per_target_masks_are_sliced_with_the_explanation_subgraph(node, targets, x):
    """PyG tells node and edge attributes by dim 0: the per-target masks lie node/edge
    axis first, so get_explanation_subgraph() slices them like node_mask/edge_mask (with
    the target axis first they were left whole, or with T == N sliced along the targets)."""
    model = node_model()
    explainer = Explainer(
        model,
        algorithm=LRPExplainer(),
        explanation_type="model",
        node_mask_type=node,
        edge_mask_type="object",
        model_config={"mode": "multiclass_classification", "task_level": "node", "return_type": "raw"},
        threshold_config={"threshold_type": "topk", "value": 5},  # drops nodes and edges
    )
    idx = torch.tensor([5, 2]) if targets == "two" else torch.arange(N).flip(0)
    expl = explainer(x, EI, index=idx)
    assert expl.node_mask_per_target.shape[:2] == (N, idx.numel())
    assert expl.edge_mask_per_target.shape == (E, idx.numel())
    sub = expl.get_explanation_subgraph()
    # what PyG keeps: nodes with a positive node_mask, edges with a positive edge_mask
    # whose ends are both kept
    keep_node = expl.node_mask.sum(-1) > 0
    keep_edge = (expl.edge_mask > 0) & keep_node[EI[0]] & keep_node[EI[1]]
    assert 0 < int(keep_node.sum()) < N and 0 < int(keep_edge.sum()) < E
    assert sub.node_mask_per_target.shape[:2] == (int(keep_node.sum()), idx.numel())
    assert sub.edge_mask_per_target.shape == (int(keep_edge.sum()), idx.numel())
    single = make_explainer(model, node=node)  # the same masks, unthresholded
    for t, i in enumerate(idx.tolist()):
        one = single(x, EI, index=i)
        assert_close(sub.node_mask_per_target[:, t], one.node_mask[keep_node])
        assert_close(sub.edge_mask_per_target[:, t], one.edge_mask[keep_edge])


def test_per_target_layout_for_common_attributes_and_sparse_results(x, monkeypatch):
    """common_attributes per target is [1, T, F] (not per node: PyG must not take it for
    a node attribute when T == N); sparse results come node axis first too, coalesced,
    and common_attributes sums them over nodes without densifying [T, N, F]."""
    model = node_model()
    idx = torch.arange(N).flip(0)  # T == N
    singles = [sparse_lrp.explain(model, x, EI, index=int(i), composite="zplus") for i in idx]
    common = make_explainer(model, node="common_attributes")(x, EI, index=idx)
    assert common.node_mask_per_target.shape == (1, N, F)
    assert not common.is_node_attr("node_mask_per_target")
    assert common.is_edge_attr("edge_mask_per_target")
    for t, one in enumerate(singles):
        assert_close(common.node_mask_per_target[0, t], one.node_feat.sum(0))

    def run(node, sparse_output):
        explainer = Explainer(
            model,
            algorithm=LRPExplainer(sparse_output=sparse_output),
            explanation_type="model",
            node_mask_type=node,
            edge_mask_type="object",
            model_config={"mode": "multiclass_classification", "task_level": "node", "return_type": "raw"},
        )
        return explainer(x, EI, index=idx)

    densified = []
    to_dense = torch.Tensor.to_dense

    def recording_to_dense(self, *args, **kwargs):
        densified.append(tuple(self.shape))
        return to_dense(self, *args, **kwargs)

    for node, rows, cols in (("attributes", N, F), ("object", N, 1), ("common_attributes", 1, F)):
        monkeypatch.setattr(torch.Tensor, "to_dense", recording_to_dense)
        sparse = run(node, True)
        monkeypatch.undo()
        assert (N, N, F) not in densified  # no [T, N, F] result densified
        per = sparse.node_mask_per_target
        if node != "common_attributes":
            assert per.is_sparse and per.is_coalesced()
            assert sparse.edge_mask_per_target.is_sparse and sparse.edge_mask_per_target.is_coalesced()
            per = per.to_dense()
        assert per.shape == (rows, N, cols)
        assert_close(sparse.edge_mask_per_target.to_dense(), torch.stack([one.edge for one in singles], 1))
        for t, one in enumerate(singles):
            assert_close(per[:, t], expected_node_mask(one.node_feat, node))


@pytest.mark.parametrize("node,edge", [(None, "object"), ("attributes", None), ("object", None)])
def test_no_per_target_mask_without_its_mask_type(node, edge, x):
    expl = make_explainer(node_model(), node=node, edge=edge)(x, EI, index=torch.tensor([2, 5]))
    assert hasattr(expl, "node_mask_per_target") == (node is not None)
    assert hasattr(expl, "edge_mask_per_target") == (edge is not None)


def test_bad_indices_get_clear_errors(x, graphs):
    """A slice, float or out-of-range index is named as such (it failed inside the
    target lookup with a raw RuntimeError/IndexError)."""
    explainer = make_explainer(node_model())
    with pytest.raises(TypeError, match="index must be"):
        explainer(x, EI, index=slice(0, 3))
    with pytest.raises(TypeError, match="index must hold integers"):
        explainer(x, EI, index=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=f"index out of range for {N} nodes"):
        explainer(x, EI, index=torch.tensor([2, N]))
    with pytest.raises(ValueError, match=f"index out of range for {N} nodes"):
        explainer(x, EI, index=-N - 1)
    xg, ei, batch = graphs
    model = randomise(GraphModel().double(), seed=5, scale=0.6).eval()
    with pytest.raises(ValueError, match="index out of range for 3 graphs"):
        make_explainer(model, task_level="graph")(xg, ei, index=3, batch=batch)
    # a phenomenon target must have one entry per output row, as PyG hands them
    phen = make_explainer(node_model(), explanation_type="phenomenon")
    with pytest.raises(ValueError, match=f"target has 2 rows for {N} nodes"):
        phen(x, EI, target=torch.tensor([0, 1]), index=torch.tensor([0, 1]))
