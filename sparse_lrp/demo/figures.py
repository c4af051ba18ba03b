"""The demo's figures (PNG, matplotlib + networkx, no display needed).

* ``<dataset>_<target>.png`` for a few explained targets: top row, the target's
  computation subgraph once per method, edges coloured by the method's |relevance|
  (normalised per panel), the ground-truth edges underlaid in wide orange, ground-truth
  nodes filled orange and the explained node ringed in red; bottom row, the feature
  importance per method (Σ over the subgraph's nodes of |attribution|, normalised).
* ``summary.png``: edge ROC-AUC per dataset and method, and the median time per
  explanation (log scale).

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (no pyplot), so
nothing global changes and no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .runner import TITLES, DemoConfig, FigureItem, Report

__all__ = ["write_figures"]

_TRUTH = "#f5a623"
_MAX_DRAWN_NODES = 80


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _drawn_edges(item: FigureItem) -> torch.Tensor:
    """Which subgraph edges to draw: all, or for a large subgraph (hubs in BA graphs)
    the ground truth plus the strongest edges of any method, so the picture stays legible."""
    e = item.edge_index.shape[1]
    nodes = torch.unique(item.edge_index)
    if nodes.numel() <= _MAX_DRAWN_NODES:
        return torch.ones(e, dtype=torch.bool)
    keep = item.edge_truth > 0
    budget = 3 * _MAX_DRAWN_NODES // 2
    for s in item.scores.values():
        top = torch.topk(s, min(budget // max(1, len(item.scores)), e)).indices
        keep[top] = True
    # keep the edges into the explained node so the picture stays connected to it
    if item.task == "node":
        keep |= item.edge_index[1] == item.target
    return keep


def _plot_item(item: FigureItem, report: Report, path: Path) -> None:
    import networkx as nx
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    methods = [m for m in report.methods if m in item.scores]
    cols = len(methods)
    fig = Figure(figsize=(3.1 * cols, 6.4), layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False, height_ratios=[2.2, 1])
    keep = _drawn_edges(item)
    ei = item.edge_index[:, keep]
    truth = item.edge_truth[keep]
    g = nx.Graph()
    g.add_edges_from(map(tuple, ei.t().tolist()))
    if item.task == "node":
        g.add_node(item.target)
    pos = nx.spring_layout(g, seed=0, iterations=80)
    node_truth = {}
    if item.node_truth is not None:
        node_truth = {int(n): float(t) for n, t in zip(item.node_ids.tolist(), item.node_truth.tolist())}
    node_list = list(g.nodes)
    node_colors = [_TRUTH if node_truth.get(n, 0) > 0 else "#d0d0d0" for n in node_list]
    # one undirected edge per pair: the larger |score| of its two directions
    pairs: dict[tuple[int, int], int] = {}
    for j, (a, b) in enumerate(ei.t().tolist()):
        pairs.setdefault((min(a, b), max(a, b)), j)
    edges = list(pairs)
    truth_edges = [p for p in edges if float(truth[pairs[p]]) > 0 or _twin_truth(p, ei, truth)]
    cmap = colormaps["Blues"]
    aucs = _target_aucs(report, item)
    for c, m in enumerate(methods):
        ax = axes[0, c]
        score = item.scores[m][keep]
        pair_score = {}
        for j, (a, b) in enumerate(ei.t().tolist()):
            key = (min(a, b), max(a, b))
            pair_score[key] = max(pair_score.get(key, 0.0), float(score[j]))
        top = max(pair_score.values(), default=0.0) or 1.0
        vals = [pair_score[p] / top for p in edges]
        order = sorted(range(len(edges)), key=lambda i: vals[i])  # strongest drawn last (on top)
        nx.draw_networkx_edges(g, pos, edgelist=truth_edges, ax=ax, width=7, edge_color=_TRUTH, alpha=0.45)
        nx.draw_networkx_edges(
            g,
            pos,
            edgelist=[edges[i] for i in order],
            ax=ax,
            width=[0.6 + 2.6 * vals[i] for i in order],
            edge_color=[cmap(0.25 + 0.75 * vals[i]) for i in order],
        )
        nx.draw_networkx_nodes(g, pos, nodelist=node_list, node_color=node_colors, node_size=28, ax=ax)
        if item.task == "node":
            nx.draw_networkx_nodes(
                g, pos, nodelist=[item.target], node_color="none", edgecolors="red", linewidths=2, node_size=110, ax=ax
            )
        auc = aucs.get(m)
        ax.set_title(m + (f"\nedge AUC {auc:.2f}" if auc is not None and math.isfinite(auc) else ""), fontsize=9)
        ax.set_axis_off()
        bar_ax = axes[1, c]
        feat = item.features[m].double()
        total = float(feat.sum()) or 1.0
        names = item.feature_names[: feat.numel()]
        bar_ax.barh(range(feat.numel()), (feat / total).tolist(), color="#4a7ab7")
        bar_ax.set_yticks(range(feat.numel()), names, fontsize=7)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=7)
        bar_ax.set_xlabel("feature share of |relevance|", fontsize=7)
    what = f"node {item.target}" if item.task == "node" else f"graph {item.target}"
    fig.suptitle(
        f"{item.title}: {what} — edges coloured by |relevance| (dark blue = high); "
        "orange underlay/nodes = ground truth; red ring = explained node",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)


def _twin_truth(pair: tuple[int, int], ei: torch.Tensor, truth: torch.Tensor) -> bool:
    a, b = pair
    hit = ((ei[0] == a) & (ei[1] == b)) | ((ei[0] == b) & (ei[1] == a))
    return bool((truth[hit] > 0).any())


def _target_aucs(report: Report, item: FigureItem) -> dict[str, float]:
    first_seed = min((r.seed for r in report.records if r.dataset == item.dataset), default=None)
    return {
        r.method: r.edge_auc
        for r in report.records
        if r.dataset == item.dataset and r.target == item.target and r.seed == first_seed
    }


def _plot_summary(report: Report, path: Path) -> None:
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in report.rows))
    methods = report.methods
    colors = dict(zip(methods, _colors(len(methods))))
    fig = Figure(figsize=(max(9.0, 1.9 * len(datasets) * 2), 4.4), layout="constrained")
    ax_auc, ax_time = fig.subplots(1, 2)
    width = 0.8 / max(1, len(methods))
    for k, key, ax in ((0, "edge_auc", ax_auc), (1, "ms", ax_time)):
        for i, m in enumerate(methods):
            xs, ys, es = [], [], []
            for d_i, d in enumerate(datasets):
                row = next((r for r in report.rows if r["dataset"] == d and r["method"] == m), None)
                if row is None or not math.isfinite(row[key]):
                    continue
                xs.append(d_i + (i - (len(methods) - 1) / 2) * width)
                ys.append(row[key])
                es.append(row.get(key + "_std", 0.0) if row["seeds"] > 1 else 0.0)
            ax.bar(xs, ys, width, yerr=es if any(es) else None, color=colors[m], label=m if k == 0 else None)
        ax.set_xticks(range(len(datasets)), [TITLES.get(d, d) for d in datasets], fontsize=8)
    ax_auc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_auc.set_ylim(0, 1.05)
    ax_auc.set_ylabel("edge ROC-AUC vs ground truth")
    ax_auc.set_title("How right: edge AUC (0.5 = random)", fontsize=10)
    ax_time.set_yscale("log")
    ax_time.set_ylabel("ms per explanation (median)")
    ax_time.set_title("How costly: time per explanation", fontsize=10)
    fig.legend(loc="outside right center", fontsize=8)
    fig.savefig(path, dpi=110)


def write_figures(cfg: DemoConfig, report: Report) -> list[Path]:
    """Write the figures under ``cfg.out / "figures"``; returns their paths."""
    import matplotlib  # noqa: F401  (fail early with ImportError when it is missing)
    import networkx  # noqa: F401
    from tqdm.auto import tqdm

    out = cfg.out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in tqdm(report.figure_items, desc="figures", leave=False, disable=not cfg.progress):
        path = out / f"{item.dataset}_{'node' if item.task == 'node' else 'graph'}{item.target}.png"
        _plot_item(item, report, path)
        paths.append(path)
    if report.rows:
        path = out / "summary.png"
        _plot_summary(report, path)
        paths.append(path)
    return paths
