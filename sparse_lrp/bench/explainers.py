"""Per-explanation cost against PyG's explainers, on the same model, graph and nodes.

Two tables: ``explainers`` (GCN/GIN on a homogeneous graph) and ``explainers_hetero`` (a
``to_hetero`` SAGE model on a generated two-node-type graph, explained through PyG's
``HeteroExplanation``).
"""

from __future__ import annotations

import torch

from . import libs
from .common import Config, Table, compare, ratio
from .graphs import CLASSES, FEATURES, HIDDEN
from .lrp import grad_x_input, graph_lrp, has_explain
from .models import graph_model, hetero_graph, hetero_model, random_graph

CASES = {
    # (nodes, edges, explained nodes, GNNExplainer epochs, models)
    "tiny": (100, 500, 2, 10, ("GCN",)),
    "quick": (1_000, 10_000, 3, 100, ("GCN",)),
    "full": (10_000, 100_000, 10, 100, ("GCN", "GIN")),
}
HETERO_CASES = {
    # (papers, authors, edges over the 3 edge types, explained papers, GNNExplainer epochs)
    "tiny": (100, 50, 500, 2, 10),
    "quick": (1_000, 500, 10_000, 3, 100),
    "full": (10_000, 5_000, 100_000, 10, 100),
}
HETERO_FEATURES = {"paper": FEATURES, "author": FEATURES // 2}
HETERO_MODEL = "SAGE (to_hetero)"
COLUMNS = ["model", "method", "ms_per_explanation", "method/lrp", "attributions"]
RATIOS = ["method/lrp"]
MODEL_CONFIG = {"mode": "multiclass_classification", "task_level": "node", "return_type": "raw"}


def pyg_explainer(model, algorithm):
    """PyG's Explainer on a private copy of ``model``.

    PyG explainers leave state on the model's message-passing layers (after
    GNNExplainer, CaptumExplainer's edge mask no longer reaches the graph), so each one
    gets its own copy; the parameters are the same.
    """
    import copy

    from torch_geometric.explain import Explainer

    return Explainer(
        copy.deepcopy(model),
        algorithm,
        explanation_type="model",
        node_mask_type="attributes",
        edge_mask_type="object",
        model_config=MODEL_CONFIG,
    )


def explainer_methods(model, x, edge_index, nodes: list[int], epochs: int, have_captum: bool) -> dict:
    """``{label: (callable explaining every node once, attributions)}``."""
    import sparse_lrp

    rule = sparse_lrp.Epsilon(1e-6)
    out = {}

    def each(fn):
        def run():
            return [fn(n) for n in nodes]

        return run

    out["sparse_lrp"] = (
        each(lambda n: graph_lrp(model, x, edge_index, rule, index=n, edges=True)),
        "node features + edges",
    )
    if has_explain():
        batch = torch.tensor(nodes, device=x.device)
        out["sparse_lrp batched"] = (
            lambda: graph_lrp(model, x, edge_index, rule, index=batch, edges=True),
            f"node features + edges, {len(nodes)} nodes in one call",
        )
    if hasattr(sparse_lrp, "LRPExplainer"):
        lrp_pyg = pyg_explainer(model, sparse_lrp.LRPExplainer(composite=rule))
        out["LRPExplainer (PyG)"] = (each(lambda n: lrp_pyg(x, edge_index, index=n)), "node features + edges")
    out["grad x input"] = (
        each(lambda n: grad_x_input(model, x, edge_index, index=torch.tensor([n], device=x.device))),
        "node features",
    )
    out.update(pyg_baselines(model, x, edge_index, each, epochs, have_captum))
    return out


def pyg_baselines(model, x, edge_index, each, epochs: int, have_captum: bool, what: str = "node features + edges"):
    """GNNExplainer and (with captum) Saliency and IntegratedGradients through PyG's
    Explainer: ``{label: (callable, attributions)}``; ``each(fn)`` runs ``fn`` per node."""
    from torch_geometric.explain import GNNExplainer

    out = {}
    gnn = pyg_explainer(model, GNNExplainer(epochs=epochs))
    out[f"GNNExplainer ({epochs} epochs)"] = (each(lambda n: gnn(x, edge_index, index=n)), what)
    if have_captum:
        from torch_geometric.explain.algorithm import CaptumExplainer

        sal = pyg_explainer(model, CaptumExplainer("Saliency"))
        ig = pyg_explainer(model, CaptumExplainer("IntegratedGradients"))
        out["Captum Saliency"] = (each(lambda n: sal(x, edge_index, index=n)), what)
        out["Captum IntegratedGradients"] = (each(lambda n: ig(x, edge_index, index=n)), what)
    return out


def hetero_methods(model, x_dict, edge_index_dict, nodes: list[int], epochs: int, have_captum: bool) -> dict:
    """:func:`explainer_methods` on a heterogeneous graph: ``{label: (callable, attributions)}``."""
    import sparse_lrp

    rule = sparse_lrp.Epsilon(1e-6)
    what = "node features + edges, per node and edge type"

    def each(fn):
        def run():
            return [fn(n) for n in nodes]

        return run

    out = {
        "sparse_lrp": (
            each(lambda n: sparse_lrp.explain(model, x_dict, edge_index_dict, index=n, composite=rule)),
            what,
        )
    }
    batch = torch.tensor(nodes, device=next(iter(x_dict.values())).device)
    out["sparse_lrp batched"] = (
        lambda: sparse_lrp.explain(model, x_dict, edge_index_dict, index=batch, composite=rule),
        f"{what}, {len(nodes)} nodes in one call",
    )
    lrp_pyg = pyg_explainer(model, sparse_lrp.LRPExplainer(composite=rule))
    out["LRPExplainer (PyG)"] = (each(lambda n: lrp_pyg(x_dict, edge_index_dict, index=n)), what)
    out.update(pyg_baselines(model, x_dict, edge_index_dict, each, epochs, have_captum, what))
    return out


def run(cfg: Config) -> list[Table]:
    nodes_n, edges_n, k, epochs, models = CASES[cfg.mode]
    table = Table(
        "explainers",
        f"Per explanation against PyG explainers ({nodes_n:,} nodes, {edges_n:,} edges, {k} explained nodes; "
        "median ms per explanation)",
        COLUMNS,
        ratio_columns=RATIOS,
    )
    have_captum = libs.captum() is not None
    if not have_captum:
        table.note(f"Captum rows skipped: {libs.why_missing['captum']}")
    table.note(
        "Every method explains the same nodes' predicted classes with PyG's Explainer settings "
        "node_mask_type='attributes', edge_mask_type='object' (sparse_lrp: explain(..., index=node)); "
        "method/lrp: how many times longer than sparse_lrp's single-node call. IntegratedGradients uses "
        "captum's default 50 steps; 'sparse_lrp batched' explains all the nodes in one call (time per node)."
    )
    device = cfg.device
    for name in models:
        x, edge_index = random_graph(nodes_n, edges_n, FEATURES, seed=cfg.seed, device=device)
        model = graph_model(name, FEATURES, HIDDEN, 8, seed=cfg.seed, device=device)
        g = torch.Generator().manual_seed(cfg.seed + 7)
        nodes = torch.randperm(nodes_n, generator=g)[:k].tolist()
        cfg.log(f"[explainers] {name}: {k} nodes")
        _timed_rows(table, name, explainer_methods(model, x, edge_index, nodes, epochs, have_captum), k, cfg, epochs)
    return [table, run_hetero(cfg, have_captum)]


def _timed_rows(table: Table, name: str, fns: dict, k: int, cfg, epochs: int) -> None:
    """Time ``fns`` (label -> (explain all ``k`` targets, what it attributes)) in one
    process, add a row per method (ms per explanation, ratio to sparse_lrp's) and the
    GNNExplainer target line."""
    t = compare({label: fn for label, (fn, _) in fns.items()}, device=cfg.device, **cfg.timing())
    per = {label: t[label].ms / k for label in fns}
    for label, (_, what) in fns.items():
        table.add(
            model=name,
            method=label,
            ms_per_explanation=per[label],
            **{"method/lrp": ratio(per[label], per["sparse_lrp"])},
            attributions=what,
        )
    gnn_target(table, name, per, epochs)


def gnn_target(table: Table, name: str, per: dict, epochs: int) -> None:
    gnn = next(label for label in per if label.startswith("GNNExplainer"))
    r = ratio(per[gnn], per["sparse_lrp"])
    table.target(
        f"{name}: sparse_lrp >= 100x faster than GNNExplainer (100 epochs) per explanation",
        f"{r:.0f}x" + ("" if epochs == 100 else f" (at {epochs} epochs)"),
        (r >= 100) if epochs == 100 else None,
    )


def run_hetero(cfg: Config, have_captum: bool) -> Table:
    """The ``explainers_hetero`` table: the same comparison on a heterogeneous graph."""
    papers, authors, edges_n, k, epochs = HETERO_CASES[cfg.mode]
    table = Table(
        "explainers_hetero",
        f"Per explanation on a heterogeneous graph against PyG explainers ({papers:,} papers + {authors:,} "
        f"authors, {edges_n:,} edges of 3 types, {k} explained papers; median ms per explanation)",
        COLUMNS,
        ratio_columns=RATIOS,
    )
    if not have_captum:
        table.note(f"Captum rows skipped: {libs.why_missing['captum']}")
    table.note(
        f"Model: 2 SAGEConv layers (hidden {HIDDEN}, sum aggregation) and a Linear head to {CLASSES} classes, made "
        "heterogeneous by to_hetero (aggr='sum'), returning the papers' logits; seeded, untrained. Edge types "
        "author-writes->paper (40%), paper-cites->paper (20%), paper-rev_writes->author (40%); "
        f"{HETERO_FEATURES['paper']} paper and {HETERO_FEATURES['author']} author features."
    )
    table.note(
        "Every method explains the same papers' predicted classes with PyG's Explainer settings "
        "node_mask_type='attributes', edge_mask_type='object' (a HeteroExplanation: masks per node and edge "
        "type); sparse_lrp: explain(model, x_dict, edge_index_dict, index=node); method/lrp: how many times "
        "longer than sparse_lrp's single-node call. IntegratedGradients uses captum's default 50 steps; "
        "'sparse_lrp batched' explains all the papers in one call (one forward pass, a backward pass each; "
        "time per node)."
    )
    device = cfg.device
    feats = (HETERO_FEATURES["paper"], HETERO_FEATURES["author"])
    x_dict, edge_index_dict = hetero_graph(papers, authors, edges_n, feats, seed=cfg.seed, device=device)
    model = hetero_model(x_dict, edge_index_dict, HIDDEN, CLASSES, seed=cfg.seed, device=device)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    nodes = torch.randperm(papers, generator=g)[:k].tolist()
    cfg.log(f"[explainers] {HETERO_MODEL}: {k} papers")
    fns = hetero_methods(model, x_dict, edge_index_dict, nodes, epochs, have_captum)
    _timed_rows(table, HETERO_MODEL, fns, k, cfg, epochs)
    return table
