"""The fixed cost of one small explanation: time and torch operations per call.

Setting: the demo's scale, a 700-node Barabasi-Albert graph (5 edges per new node), a
3-layer GCN (10 -> 20 -> 20 -> 4); one node explained per call, with LRP (node-feature
and edge relevance) and, as the baseline in the same process, one forward + autograd
gradient x input. On a graph this small a single target runs on the whole graph
(``sparse_lrp.explain.WHOLE_GRAPH_ROWS``); the last rows take the k-hop subgraph path
that targets take where the whole graph would cost more, for comparison. ``aten ops`` counts the torch operator calls
torch.profiler records in one call: on a graph this small they, not the arithmetic, set
the time.
A second table explains one node of a binary tree (tiny k-hop subgraphs) on the whole graph
and on its subgraph, with the default's choice. Run: ``python
benchmarks/bench_call_overhead.py [--calls 40] [--threads 1] [--tree-nodes 10000]``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch
from torch.profiler import profile
from torch_geometric.nn import GCN, GIN
from torch_geometric.utils import barabasi_albert_graph

import sparse_lrp


def per_call(fn, calls: int) -> tuple[float, float]:
    """``(median ms, aten operator calls)`` of ``fn(i)`` over ``calls`` nodes."""
    for i in range(3):
        fn(i)
    times = []
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    with profile() as prof:
        fn(calls)
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    return statistics.median(times) * 1e3, ops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tree-nodes", type=int, default=10_000, help="binary tree for the path comparison (0: skip)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n = 700
    edge_index, x = barabasi_albert_graph(n, 5), torch.randn(n, 10)
    model = GCN(10, 20, 3, 4).eval()

    def grad_x_input(i: int) -> None:
        xi = x.clone().requires_grad_(True)
        out = model(xi, edge_index)
        (g,) = torch.autograd.grad(out[i, out[i].argmax()], xi)
        _ = g * xi

    rows = [("forward + gradient x input", *per_call(grad_x_input, a.calls))]
    for rule in ("epsilon", "zplus"):
        rows.append(
            (
                f"sparse_lrp.explain, {rule}",
                *per_call(lambda i, r=rule: sparse_lrp.explain(model, x, edge_index, index=i, composite=r), a.calls),
            )
        )
    # The same calls on the target's k-hop subgraph, the path of targets whose graph is
    # much larger than their subgraph (here the whole graph's pass is the default).
    explain_module = importlib.import_module("sparse_lrp.explain")
    default = explain_module.WHOLE_GRAPH_ROWS
    explain_module.WHOLE_GRAPH_ROWS = None  # (always the subgraph)
    try:
        for rule in ("epsilon", "zplus"):
            rows.append(
                (
                    f"sparse_lrp.explain, {rule}, on the k-hop subgraph",
                    *per_call(
                        lambda i, r=rule: sparse_lrp.explain(model, x, edge_index, index=i, composite=r), a.calls
                    ),
                )
            )
    finally:
        explain_module.WHOLE_GRAPH_ROWS = default
    print(f"{n} nodes, {edge_index.shape[1]} edges, GCN 10-20-20-4, torch {torch.__version__}, {a.threads} thread(s)")
    base_ms, base_ops = rows[0][1], rows[0][2]
    print("| method | median ms | vs gradient | aten ops per call | vs gradient |")
    print("| --- | --: | --: | --: | --: |")
    for name, ms, ops in rows:
        print(f"| {name} | {ms:.2f} | {ms / base_ms:.2f}x | {ops} | {ops / base_ops:.1f}x |")
    if a.tree_nodes:
        tree_paths(a.tree_nodes, a.calls, explain_module)


def tree_paths(n: int, calls: int, explain_module) -> None:
    """A graph whose k-hop subgraphs are tiny (a binary tree, edges both ways): one node
    target on the whole graph against its subgraph, and the default's choice (the cost
    model behind ``WHOLE_GRAPH_ROWS``: the subgraph's fixed cost in rows of a pass)."""
    child = torch.arange(1, n)
    parent = torch.div(child - 1, 2, rounding_mode="floor")
    edge_index = torch.cat([torch.stack([parent, child]), torch.stack([child, parent])], 1)
    x = torch.randn(n, 10)
    rows_total = n + edge_index.shape[1]
    default = explain_module.WHOLE_GRAPH_ROWS
    print(f"\nbinary tree, {n} nodes, {edge_index.shape[1]} edges ({rows_total} rows); 3-layer GCN and GIN, hidden 32")
    print("| model | whole graph ms | per row (us) | k-hop subgraph ms | default ms (path) |")
    print("| --- | --: | --: | --: | --: |")
    for name, cls in (("GCN", GCN), ("GIN", GIN)):
        model = cls(10, 32, 3, 4).eval()
        times = {}
        for path, setting in (("whole", 2**62), ("subgraph", None), ("default", default)):
            explain_module.WHOLE_GRAPH_ROWS = setting
            try:
                times[path] = per_call(
                    lambda i, m=model: sparse_lrp.explain(m, x, edge_index, index=(37 * i) % n), calls
                )[0]
            finally:
                explain_module.WHOLE_GRAPH_ROWS = default
        took = (
            "whole"
            if abs(times["default"] - times["whole"]) < abs(times["default"] - times["subgraph"])
            else "subgraph"
        )
        print(
            f"| {name} | {times['whole']:.1f} | {1e3 * times['whole'] / rows_total:.2f} | {times['subgraph']:.1f} "
            f"| {times['default']:.1f} ({took}) |"
        )


if __name__ == "__main__":
    main()
