"""Many node targets can return sparse [T, N, ...] results: the same values as dense ones."""

import pytest
import torch
from torch_geometric.explain import Explainer
from torch_geometric.nn import GCN, GINEConv

import sparse_lrp


def _graph(n=60, e=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 5, generator=g), torch.randint(0, n, (2, e), generator=g)


def test_sparse_and_dense_results_agree():
    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 3, 3).eval()
    dense = sparse_lrp.explain(model, x, ei, index=[1, 2, 7], sparse_output=False)
    sparse = sparse_lrp.explain(model, x, ei, index=[1, 2, 7], sparse_output=True)
    for field in ("node_feat", "node", "edge"):
        got, want = getattr(sparse, field), getattr(dense, field)
        assert got.is_sparse and not want.is_sparse
        torch.testing.assert_close(got.to_dense(), want)
    for name, rec in dense.layers.items():
        for key, want in rec.items():
            torch.testing.assert_close(sparse.layers[name][key].to_dense(), want)
    assert sparse.conservation == pytest.approx(dense.conservation)
    # Sparse results hold only each target's computation subgraph.
    assert sparse.node_feat._nnz() < 3 * x.shape[0]


def test_sparse_edge_features_agree():
    torch.manual_seed(0)
    x, ei = _graph()
    ea = torch.rand(ei.shape[1], 4)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = GINEConv(torch.nn.Linear(5, 3), edge_dim=4)

        def forward(self, x, edge_index, edge_attr):
            return self.conv(x, edge_index, edge_attr)

    model = Net().eval()
    dense = sparse_lrp.explain(model, x, ei, index=[0, 4], edge_attr=ea, sparse_output=False)
    sparse = sparse_lrp.explain(model, x, ei, index=[0, 4], edge_attr=ea, sparse_output=True)
    torch.testing.assert_close(sparse.edge_attr.to_dense(), dense.edge_attr)
    torch.testing.assert_close(sparse.edge.to_dense(), dense.edge)


@pytest.mark.parametrize("node_mask_type", ["attributes", "object", "common_attributes"])
def test_explainer_with_sparse_results(node_mask_type):
    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 2, 3).eval()
    config = dict(mode="multiclass_classification", task_level="node", return_type="raw")

    def run(sparse_output):
        algorithm = sparse_lrp.LRPExplainer("zplus", sparse_output=sparse_output)
        explainer = Explainer(
            model,
            algorithm=algorithm,
            explanation_type="model",
            node_mask_type=node_mask_type,
            edge_mask_type="object",
            model_config=config,
        )
        return explainer(x, ei, index=torch.tensor([3, 9]))

    dense, sparse = run(False), run(True)
    torch.testing.assert_close(sparse.node_mask, dense.node_mask)
    torch.testing.assert_close(sparse.edge_mask, dense.edge_mask)
    torch.testing.assert_close(sparse.node_mask_per_target.to_dense(), dense.node_mask_per_target)


def _strictly_sorted(t: torch.Tensor) -> bool:
    """Indices in (target, row) order without repeats: what ``is_coalesced`` promises."""
    idx = t._indices()
    key = idx[0] * t.shape[1] + idx[1]
    return bool((key[1:] > key[:-1]).all())


@pytest.mark.parametrize("max_union", [None, 1])
@pytest.mark.parametrize("conv", ["gcn", "cheb"])
def test_sparse_results_are_coalesced(max_union, conv):
    from torch_geometric.nn import ChebConv

    torch.manual_seed(0)
    x, ei = _graph()
    if conv == "gcn":
        model = GCN(5, 16, 3, 3).eval()
    else:  # out-edges join the subgraphs (another path through the union)
        model = _Cheb(ChebConv(5, 3, K=2)).eval()
    idx = [7, 1, 30, 2]
    sparse = sparse_lrp.explain(model, x, ei, index=idx, sparse_output=True, max_union=max_union)
    dense = sparse_lrp.explain(model, x, ei, index=idx, sparse_output=False, max_union=max_union)
    for field in ("node_feat", "node", "edge"):
        got = getattr(sparse, field)
        assert got.is_coalesced() and _strictly_sorted(got)
        torch.testing.assert_close(got.to_dense(), getattr(dense, field))


class _Cheb(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


@pytest.mark.parametrize("max_union", [1, 500])
def test_chunked_targets_equal_one_pass(max_union):
    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 3, 3).eval()
    idx = [1, 2, 7, 11, 30]
    one = sparse_lrp.explain(model, x, ei, index=idx, composite="zplus", max_union=10**9)
    chunked = sparse_lrp.explain(model, x, ei, index=idx, composite="zplus", max_union=max_union)
    for field in ("node_feat", "node", "edge", "output", "target"):
        torch.testing.assert_close(getattr(chunked, field), getattr(one, field))
    for name, rec in one.layers.items():
        for key, want in rec.items():
            torch.testing.assert_close(chunked.layers[name][key], want)
    assert chunked.conservation == pytest.approx(one.conservation)
    # A class per target follows its target into its chunk.
    cls = torch.tensor([0, 1, 2, 0, 1])
    a = sparse_lrp.explain(model, x, ei, index=idx, target=cls, max_union=max_union)
    for t, i in enumerate(idx):
        single = sparse_lrp.explain(model, x, ei, index=i, target=int(cls[t]))
        torch.testing.assert_close(a.node_feat[t], single.node_feat)


def test_khop_union_keeps_degrees_with_one_ghost_per_target():
    from sparse_lrp.explain import _khop_union

    # A path 5 -> 4 -> 3 -> 2 -> 1 -> 0 plus a second in-edge 6 -> 2; target 0, two hops.
    ei = torch.tensor([[5, 4, 3, 2, 1, 6], [4, 3, 2, 1, 0, 2]])
    _, node_v, ghost, _, edge_e, sub_ei, centers, hop = _khop_union(ei, 7, torch.tensor([0]), hops=2)
    assert dict(zip(node_v[~ghost].tolist(), hop[~ghost].tolist())) == {0: 0, 1: 1, 2: 2}
    assert hop[ghost].tolist() == [3]  # (ghosts stand beyond the last hop)
    # Nodes within two hops (0, 1, 2) and one ghost; the edges into them all stay.
    assert node_v[~ghost].tolist() == [0, 1, 2] and int(ghost.sum()) == 1
    assert sorted(edge_e.tolist()) == [2, 3, 4, 5]
    # 3 -> 2 and 6 -> 2 now leave the ghost: node 2 keeps its in-degree of 2.
    g = int(torch.nonzero(ghost)[0])
    into_2 = sub_ei[:, sub_ei[1] == int(torch.nonzero(node_v == 2)[0])]
    assert into_2.shape[1] == 2 and (into_2[0] == g).all()
    assert int(node_v[centers[0]]) == 0


def test_a_graph_explained_node_after_node_is_checked_and_read_once(monkeypatch):
    """The range check of a graph explained call after call was cached as None, which the
    cache read as a miss: it reran on every call (a min and two max passes over a 1M-edge
    graph). And every cache lookup re-read the graph's content (its sum): 8 passes per
    call, where one suffices."""
    import importlib

    from sparse_lrp import operators

    explain_module = importlib.import_module("sparse_lrp.explain")  # (the module, not the function)

    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 3, 3).eval()
    checks, reads = [], []
    check, content = explain_module.check_edge_index, operators._content
    monkeypatch.setattr(explain_module, "check_edge_index", lambda *a: checks.append(1) or check(*a))
    monkeypatch.setattr(operators, "_content", lambda t: reads.append(t is ei) or content(t))
    for node in (3, 4, 5):
        reads.clear()
        sparse_lrp.explain(model, x, ei, index=node)
        assert sum(reads) == 1
    assert len(checks) == 1
    ei.add_(0)  # a new version: checked again
    sparse_lrp.explain(model, x, ei, index=3)
    assert len(checks) == 2


def test_edge_grouping_is_reused_per_graph_and_renewed_when_it_changes():
    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 3, 3).eval()
    first = sparse_lrp.explain(model, x, ei, index=4)
    again = sparse_lrp.explain(model, x, ei, index=4)  # cached grouping of ei's edges
    torch.testing.assert_close(again.node_feat, first.node_feat)
    # An in-place change of the same tensor must not reuse the old grouping.
    flipped = ei.flip(0)
    ei.copy_(flipped)
    changed = sparse_lrp.explain(model, x, ei, index=4)
    fresh = sparse_lrp.explain(model, x, flipped.clone(), index=4)
    torch.testing.assert_close(changed.node_feat, fresh.node_feat)
    torch.testing.assert_close(changed.edge, fresh.edge)
    assert not torch.allclose(changed.node_feat, first.node_feat)


def test_per_layer_records_of_node_targets_are_laid_out_when_read():
    """Node targets' per-layer records stay subgraph rows until read; then they equal
    the full-graph records, and pickle / print as plain values."""
    import importlib
    import pickle

    lazy_records = importlib.import_module("sparse_lrp.explain").LazyRecords
    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 3, 3).eval()
    one = sparse_lrp.explain(model, x, ei, index=7)
    many = sparse_lrp.explain(model, x, ei, index=[7, 2])
    # the full graph keeps every record as a tensor: the independent reference here
    seed = torch.zeros(x.shape[0], 3)
    seed[7, one.target] = one.output
    full = sparse_lrp.explain(model, x, ei, target=seed)
    assert set(one.layers) == set(full.layers) and set(many.layers) == set(full.layers)
    for name, rec in one.layers.items():
        assert isinstance(rec, lazy_records) and not rec._values  # nothing built yet
        assert set(rec) == set(full.layers[name])
        for key in rec:
            torch.testing.assert_close(rec[key], full.layers[name][key], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(many.layers[name][key][0], rec[key])
        assert set(rec._values) == set(rec)
        copy = pickle.loads(pickle.dumps(rec))
        assert type(copy) is dict and all(torch.equal(copy[k], rec[k]) for k in rec)
        assert repr(rec) == repr(dict(rec.items()))


def test_results_go_sparse_only_above_the_documented_size(monkeypatch):
    """The automatic switch compares what the dense results would really take (every
    record's rows times its width) with the limit: dense up to it, sparse beyond."""
    import importlib

    explain_module = importlib.import_module("sparse_lrp.explain")
    torch.manual_seed(0)
    x, ei = _graph()
    model = GCN(5, 16, 3, 3).eval()
    dense = sparse_lrp.explain(model, x, ei, index=[1, 2, 7], sparse_output=False)
    tensors = [dense.node_feat, dense.node, dense.edge] + [t for rec in dense.layers.values() for t in rec.values()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    monkeypatch.setattr(explain_module, "DENSE_OUTPUT_BYTES", size)
    assert not sparse_lrp.explain(model, x, ei, index=[1, 2, 7]).node_feat.is_sparse
    monkeypatch.setattr(explain_module, "DENSE_OUTPUT_BYTES", size - 1)
    assert sparse_lrp.explain(model, x, ei, index=[1, 2, 7]).node_feat.is_sparse
