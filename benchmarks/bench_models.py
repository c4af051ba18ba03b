#!/usr/bin/env python
"""Full-model LRP of a 3-layer GCN and GIN against the model's own costs and PyG's explainers.

Setting (defaults): a 3-layer GCN and a 3-layer GIN, hidden 64, 32 input features,
8 classes, on a random graph with 100k nodes and 1M edges (no self loops), float32, CPU.

Measured, each as the median of interleaved repeats after a warm-up, in one process:

1. Large graph: full-model LRP (Epsilon; every node's predicted class at once) giving
   node-feature relevance, without and with edge relevance, against
   (a) the model's own forward (PyG edge_index path, no autograd) and
   (b) autograd gradient x input of the same logits.
2. Small graph (1k nodes, 10k edges), per explanation of one node: sparse_lrp against
   PyG's CaptumExplainer('IntegratedGradients') and GNNExplainer(epochs=100).
3. Small graph: 1,000 target nodes in one batched call (``explain(..., index=tensor)``)
   against 1,000 single calls, the single calls extrapolated from a sample of 20.

Targets (PASS/MISS printed for each):
- full-model LRP <= 2x the model's forward;
- full-model LRP <= 1x autograd gradient x input;
- per explanation >= 100x faster than GNNExplainer;
- 1,000 nodes batched >= 20x faster than 1,000 single calls.

Usage::

    python benchmarks/bench_models.py                       # the spec setting (a few minutes)
    python benchmarks/bench_models.py --nodes 10000 --edges 100000 --batch 200   # quicker
    python benchmarks/bench_models.py --markdown out.md --csv out.csv

The shared machinery (models, graphs, timing, memory probe) is ``sparse_lrp.bench``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import sparse_lrp
from sparse_lrp.bench import graphs, libs
from sparse_lrp.bench.common import (
    Config,
    Table,
    compare,
    env_line,
    environment,
    memory_note,
    ratio,
    render,
    write_csv,
)
from sparse_lrp.bench.explainers import pyg_explainer
from sparse_lrp.bench.lrp import graph_lrp, has_explain
from sparse_lrp.bench.models import graph_model, random_graph

RULE = sparse_lrp.Epsilon(1e-6)


def large_graph(args, cfg: Config) -> Table:
    table = Table(
        "models_large",
        f"Full-model LRP on {args.nodes:,} nodes / {args.edges:,} edges ({cfg.device}; median ms)",
        [
            "model",
            "fwd_ms",
            "grad_ms",
            "lrp_ms",
            "lrp_edges_ms",
            "lrp/fwd",
            "lrp_edges/fwd",
            "lrp/grad",
            "lrp_edges/grad",
            "mem_fwd_mb",
            "mem_grad_mb",
            "mem_lrp_mb",
            "mem_lrp_edges_mb",
        ],
        ratio_columns=["lrp/fwd", "lrp_edges/fwd", "lrp/grad", "lrp_edges/grad"],
    )
    table.note(
        "fwd: model(x, edge_index) without autograd; grad: forward + autograd gradient x input of every node's "
        "predicted logit; lrp / lrp_edges: sparse_lrp.explain(model, x, edge_index, composite=Epsilon) explaining "
        "every node's predicted class at once, node-feature relevance without / with edge relevance."
    )
    which = ("fwd", "grad", "lrp", "lrp_edges")
    for name in args.models:
        cfg.log(f"[large] {name}: {args.nodes:,} nodes, {args.edges:,} edges")
        x, edge_index = random_graph(args.nodes, args.edges, args.features, seed=args.seed, device=cfg.device)
        model = graph_model(name, args.features, args.hidden, graphs.CLASSES, seed=args.seed, device=cfg.device)
        fns = graphs.methods(model, x, edge_index, RULE, cfg.memory_budget, which)
        t = compare(fns, device=cfg.device, **cfg.timing())
        ms = {k: v.ms for k, v in t.items()}
        row = {f"{k}_ms": v for k, v in ms.items()}
        row.update(
            {
                "model": name,
                "lrp/fwd": ratio(ms["lrp"], ms["fwd"]),
                "lrp_edges/fwd": ratio(ms["lrp_edges"], ms["fwd"]),
                "lrp/grad": ratio(ms["lrp"], ms["grad"]),
                "lrp_edges/grad": ratio(ms["lrp_edges"], ms["grad"]),
            }
        )
        if args.memory:
            fns["lrp"]()
            row.update({f"mem_{k}_mb": v for k, v in graphs.measure_memory(fns, cfg.device).items()})
        table.add(**row)
        for col, limit, what in (
            ("lrp/fwd", 2.0, "full-model LRP <= 2x the model's forward"),
            ("lrp_edges/fwd", 2.0, "full-model LRP with edge relevance <= 2x the model's forward"),
            ("lrp/grad", 1.0, "full-model LRP <= 1x autograd gradient x input"),
            ("lrp_edges/grad", 1.0, "full-model LRP with edge relevance <= 1x autograd gradient x input"),
        ):
            v = row[col]
            table.target(f"{name}: {what}", f"{v:.2f}x" if v else "–", v is not None and v <= limit)
    if args.memory:
        table.note(memory_note(cfg.device) or "peak memory: no way to measure it here")
    return table


def small_graph(args, cfg: Config) -> Table:
    table = Table(
        "models_small",
        f"Per explanation on {args.small_nodes:,} nodes / {args.small_edges:,} edges ({cfg.device}; median ms)",
        ["model", "method", "ms_per_explanation", "method/lrp", "note"],
        ratio_columns=["method/lrp"],
    )
    have_captum = libs.captum() is not None
    if not have_captum:
        table.note(f"CaptumExplainer skipped: {libs.why_missing['captum']}")
    for name in args.models:
        x, edge_index = random_graph(
            args.small_nodes, args.small_edges, args.features, seed=args.seed, device=cfg.device
        )
        model = graph_model(name, args.features, args.hidden, graphs.CLASSES, seed=args.seed, device=cfg.device)
        g = torch.Generator().manual_seed(args.seed + 1)
        perm = torch.randperm(args.small_nodes, generator=g)
        nodes = perm[: args.explain_nodes].tolist()
        cfg.log(f"[small] {name}: {len(nodes)} explanations per method")

        def each(fn, nodes=nodes):
            return lambda: [fn(n) for n in nodes]

        fns = {"sparse_lrp": each(lambda n, m=model, x=x, ei=edge_index: graph_lrp(m, x, ei, RULE, index=n))}
        gnn = pyg_explainer(model, _gnnexplainer(args.epochs))
        fns[f"GNNExplainer ({args.epochs} epochs)"] = each(lambda n, e=gnn, x=x, ei=edge_index: e(x, ei, index=n))
        if have_captum:
            from torch_geometric.explain.algorithm import CaptumExplainer

            ig = pyg_explainer(model, CaptumExplainer("IntegratedGradients"))
            fns["CaptumExplainer IntegratedGradients"] = each(lambda n, e=ig, x=x, ei=edge_index: e(x, ei, index=n))
        t = compare(fns, device=cfg.device, **cfg.timing())
        per = {k: v.ms / len(nodes) for k, v in t.items()}
        for k, v in per.items():
            table.add(model=name, method=k, ms_per_explanation=v, **{"method/lrp": ratio(v, per["sparse_lrp"])})
        gname = next(k for k in per if k.startswith("GNNExplainer"))
        r = ratio(per[gname], per["sparse_lrp"])
        table.target(f"{name}: per explanation >= 100x faster than {gname}", f"{r:.0f}x", r is not None and r >= 100)

        # batched: T targets in one call against T single calls (extrapolated from a sample)
        if not has_explain():
            table.note("batched explanations need sparse_lrp.explain; skipped")
            continue
        batch = perm[: args.batch].to(cfg.device)
        sample = perm[: args.sample].tolist()
        cfg.log(f"[small] {name}: {batch.numel()} nodes batched vs {len(sample)} single calls")
        tb = compare(
            {
                "batched": lambda b=batch, m=model, x=x, ei=edge_index: graph_lrp(m, x, ei, RULE, index=b),
                "single": lambda s=sample, m=model, x=x, ei=edge_index: [graph_lrp(m, x, ei, RULE, index=n) for n in s],
            },
            device=cfg.device,
            **cfg.timing(),
        )
        single_each = tb["single"].ms / len(sample)
        batched_total = tb["batched"].ms
        single_total = single_each * batch.numel()
        table.add(
            model=name,
            method=f"sparse_lrp, {batch.numel()} nodes in one call",
            ms_per_explanation=batched_total / batch.numel(),
            **{"method/lrp": ratio(batched_total / batch.numel(), per["sparse_lrp"])},
            note=f"{batched_total:.0f} ms for all",
        )
        table.add(
            model=name,
            method=f"sparse_lrp, {batch.numel()} single calls",
            ms_per_explanation=single_each,
            **{"method/lrp": ratio(single_each, per["sparse_lrp"])},
            note=f"{single_total:.0f} ms for all, extrapolated from {len(sample)} calls",
        )
        r = ratio(single_total, batched_total)
        table.target(
            f"{name}: {batch.numel()} nodes batched >= 20x faster than {batch.numel()} single calls "
            f"(extrapolated from {len(sample)})",
            f"{r:.1f}x",
            r is not None and r >= 20,
        )
    table.note(
        "Every method explains the same nodes' predicted classes; PyG explainers with node_mask_type='attributes', "
        "edge_mask_type='object'; sparse_lrp.explain(model, x, edge_index, index=node, composite=Epsilon) with edge "
        "relevance; IntegratedGradients with captum's default 50 steps."
    )
    return table


def _gnnexplainer(epochs: int):
    from torch_geometric.explain import GNNExplainer

    return GNNExplainer(epochs=epochs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--models", nargs="+", default=["GCN", "GIN"], choices=["GCN", "GIN"])
    p.add_argument("--small-nodes", type=int, default=1_000)
    p.add_argument("--small-edges", type=int, default=10_000)
    p.add_argument("--explain-nodes", type=int, default=5, help="explained nodes per method on the small graph")
    p.add_argument("--epochs", type=int, default=100, help="GNNExplainer epochs")
    p.add_argument("--batch", type=int, default=1_000, help="target nodes in the batched call")
    p.add_argument("--sample", type=int, default=20, help="single calls timed to extrapolate the batch's")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop repeating a method after this much time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurements")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None, help="write the tables as Markdown here")
    p.add_argument("--csv", default=None, help="write the tables as CSV here (one file per table: PREFIX_NAME.csv)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config(mode="full", device=args.device, repeats=args.repeats, max_seconds=args.max_seconds, seed=args.seed)
    env = environment(args.device)
    print(env_line(env) + "\n", flush=True)
    t0 = time.perf_counter()
    tables = []
    if not args.skip_large:
        tables.append(large_graph(args, cfg))
        print(render(tables[-1]) + "\n", flush=True)
    if not args.skip_small:
        tables.append(small_graph(args, cfg))
        print(render(tables[-1]) + "\n", flush=True)
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(f"{env_line(env)}\n\n" + "\n\n".join(render(t, markdown=True) for t in tables) + "\n")
    if args.csv:
        prefix = args.csv[:-4] if args.csv.endswith(".csv") else args.csv
        for t in tables:
            write_csv(t, f"{prefix}_{t.name}.csv", env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
