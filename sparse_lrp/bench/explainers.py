"""Per-explanation cost against PyG's explainers, on the same model, graph and nodes."""

from __future__ import annotations

import torch

from . import libs
from .common import Config, Table, compare, ratio
from .graphs import FEATURES, HIDDEN
from .lrp import grad_x_input, graph_lrp, has_explain
from .models import graph_model, random_graph

CASES = {
    # (nodes, edges, explained nodes, GNNExplainer epochs, models)
    "tiny": (100, 500, 2, 10, ("GCN",)),
    "quick": (1_000, 10_000, 3, 100, ("GCN",)),
    "full": (10_000, 100_000, 10, 100, ("GCN", "GIN")),
}
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
    from torch_geometric.explain import GNNExplainer

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
    gnn = pyg_explainer(model, GNNExplainer(epochs=epochs))
    out[f"GNNExplainer ({epochs} epochs)"] = (each(lambda n: gnn(x, edge_index, index=n)), "node features + edges")
    if have_captum:
        from torch_geometric.explain.algorithm import CaptumExplainer

        sal = pyg_explainer(model, CaptumExplainer("Saliency"))
        ig = pyg_explainer(model, CaptumExplainer("IntegratedGradients"))
        out["Captum Saliency"] = (each(lambda n: sal(x, edge_index, index=n)), "node features + edges")
        out["Captum IntegratedGradients"] = (each(lambda n: ig(x, edge_index, index=n)), "node features + edges")
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
        fns = explainer_methods(model, x, edge_index, nodes, epochs, have_captum)
        t = compare(
            {label: fn for label, (fn, _) in fns.items()},
            device=device,
            **cfg.timing(),
        )
        per = {label: t[label].ms / k for label in fns}
        for label, (_, what) in fns.items():
            table.add(
                model=name,
                method=label,
                ms_per_explanation=per[label],
                **{"method/lrp": ratio(per[label], per["sparse_lrp"])},
                attributions=what,
            )
        gnn = next(label for label in per if label.startswith("GNNExplainer"))
        r = ratio(per[gnn], per["sparse_lrp"])
        table.target(
            f"{name}: sparse_lrp >= 100x faster than GNNExplainer (100 epochs) per explanation",
            f"{r:.0f}x" + ("" if epochs == 100 else f" (at {epochs} epochs)"),
            (r >= 100) if epochs == 100 else None,
        )
    return [table]
