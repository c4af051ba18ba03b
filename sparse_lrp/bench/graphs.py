"""Graph scaling: a 3-layer GCN and GIN on random graphs of growing size.

For every model and size: the model's own forward (no autograd), autograd gradient x
input, and sparse_lrp's full-model LRP (every node's predicted class at once) without
and with edge relevance, plus the edge-chunked kernel under a memory budget. Times are
medians of interleaved repeats; peak memory is measured per call (see ``common``).

``python -m sparse_lrp.bench.graphs '<json>'`` is the memory probe the suite starts in a
fresh process per model and size (CPU), so earlier allocations cannot hide a peak.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable

import torch

from .common import MEMORY_NOTE_CPU, MEMORY_NOTE_CUDA, Config, Table, compare, cpu_memory_supported, peak_memory, ratio
from .lrp import grad_x_input, graph_lrp, has_explain
from .models import graph_model, random_graph

FEATURES, HIDDEN, CLASSES, DEGREE = 32, 64, 8, 10
DEFAULT_EDGES = {"tiny": (1e3, 4e3), "quick": (1e4, 1e6), "full": (1e4, 1e7)}
METHODS = ("fwd", "grad", "lrp", "lrp_edges", "chunked")

COLUMNS = [
    "model",
    "edges",
    "nodes",
    "fwd_ms",
    "grad_ms",
    "lrp_ms",
    "lrp_edges_ms",
    "chunked_ms",
    "lrp/fwd",
    "lrp/grad",
    "lrp_edges/fwd",
    "ns_per_edge",
    "mem_fwd_mb",
    "mem_grad_mb",
    "mem_lrp_mb",
    "mem_lrp_edges_mb",
    "mem_chunked_mb",
]
RATIOS = ["lrp/fwd", "lrp/grad", "lrp_edges/fwd"]


def edge_sizes(cfg: Config) -> list[int]:
    """Powers of ten from the smallest to the largest edge count (the mode's defaults)."""
    lo, hi = DEFAULT_EDGES[cfg.mode]
    lo = cfg.min_edges or lo
    hi = cfg.max_edges or hi
    if cfg.tiny:
        return [int(v) for v in (lo, hi)]
    sizes, e = [], float(lo)
    while e <= hi * 1.0001:
        sizes.append(round(e))
        e *= 10
    if sizes[-1] < hi * 0.9999:
        sizes.append(int(hi))
    return sizes


def setup(
    name: str,
    edges: int,
    device: str,
    seed: int = 0,
    features: int = FEATURES,
    hidden: int = HIDDEN,
    nodes: int | None = None,
):
    """Model and random graph: ``nodes`` defaults to ``edges / DEGREE``."""
    nodes = max(16, edges // DEGREE) if nodes is None else nodes
    x, edge_index = random_graph(nodes, edges, features, seed=seed, device=device)
    model = graph_model(name, features, hidden, CLASSES, seed=seed, device=device)
    return model, x, edge_index


def methods(model, x, edge_index, rule, budget: int, which=METHODS) -> dict[str, Callable[[], object]]:
    """The measured calls; each returns what it computed (kept alive until measured)."""

    def fwd():
        with torch.no_grad():
            return model(x, edge_index)

    table = {
        "fwd": fwd,
        "grad": lambda: grad_x_input(model, x, edge_index),
        "lrp": lambda: graph_lrp(model, x, edge_index, rule, edges=False),
        "lrp_edges": lambda: graph_lrp(model, x, edge_index, rule, edges=True),
        "chunked": lambda: graph_lrp(model, x, edge_index, rule, edges=False, strategy="scatter", max_memory=budget),
    }
    return {k: table[k] for k in which}


def measure_memory(fns: dict[str, Callable[[], object]], device: str) -> dict[str, float | None]:
    out = {}
    for name, fn in fns.items():
        res = fn()  # warm-up: lazy initialisation is not the call's memory
        del res
        out[name] = peak_memory(fn, device)
    return out


def memory_probe(spec: dict) -> dict[str, float | None]:
    """Run in a fresh process: set up one model and graph, measure every method's peak."""
    import sparse_lrp

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    model, x, edge_index = setup(
        spec["model"],
        spec["edges"],
        spec["device"],
        spec["seed"],
        spec.get("features", FEATURES),
        spec.get("hidden", HIDDEN),
        spec.get("nodes"),
    )
    fns = methods(model, x, edge_index, sparse_lrp.Epsilon(1e-6), spec["budget"], spec["methods"])
    return measure_memory(fns, spec["device"])


def probe_in_subprocess(spec: dict, timeout: float = 3600) -> dict[str, float | None]:
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_lrp.bench.graphs", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: Config, models: tuple[str, ...] = ("GCN", "GIN")) -> list[Table]:
    import sparse_lrp

    device = cfg.device
    table = Table(
        "graphs",
        f"Graph scaling on {device}: full-model LRP against the model's forward and gradient x input "
        "(median ms; peak memory in MiB)",
        COLUMNS,
        ratio_columns=RATIOS,
    )
    rule = sparse_lrp.Epsilon(1e-6)
    budget = int(cfg.memory_budget)
    table.note(
        f"3-layer GCN and GIN (PyG, edge_index path), {FEATURES} input features, hidden {HIDDEN}, {CLASSES} "
        f"classes; random graphs with {DEGREE} edges per node, no self loops; float32."
    )
    how = "sparse_lrp.explain" if has_explain() else "the layer-wise edge_lrp/linear_lrp helper"
    table.note(
        f"fwd: model(x, edge_index) without autograd; grad: forward + autograd gradient x input of every node's "
        f"predicted logit; lrp: {how} with Epsilon, every node's predicted class at once (node-feature relevance), "
        f"without / with (lrp_edges) edge relevance; chunked: the same as lrp with the edge-message kernel "
        f"(strategy='scatter') under max_memory = {budget / 2**20:g} MiB; ns_per_edge: lrp time per edge."
    )
    mem_ok = cfg.memory and (cfg.cuda or cpu_memory_supported())
    if cfg.memory and not mem_ok:
        table.note("Peak memory skipped: needs CUDA or Linux /proc/self/clear_refs.")
    elif mem_ok:
        table.note(MEMORY_NOTE_CUDA if cfg.cuda else MEMORY_NOTE_CPU)
        if not cfg.cuda and cfg.isolated():
            table.note("CPU memory is measured in a fresh process per model and size.")
    sizes = edge_sizes(cfg)
    for name in models:
        for edges in sizes:
            cfg.log(f"[graphs] {name}, {edges:,} edges")
            try:
                model, x, edge_index = setup(name, edges, device, cfg.seed)
            except (RuntimeError, MemoryError) as err:  # out of memory: stop growing this model
                table.note(f"{name} at {edges:,} edges: setup failed ({type(err).__name__}: {str(err)[:200]})")
                break
            fns = methods(model, x, edge_index, rule, budget)
            try:
                t = compare(fns, device=device, repeats=cfg.n_repeats(), warmup=cfg.warmup, max_seconds=cfg.time_cap())
            except (RuntimeError, MemoryError) as err:
                table.note(f"{name} at {edges:,} edges: {type(err).__name__}: {str(err)[:200]}")
                del model, x, edge_index, fns
                _free(device)
                break
            ms = {k: v.ms for k, v in t.items()}
            row = {
                "model": name,
                "edges": edges,
                "nodes": x.shape[0],
                "fwd_ms": ms["fwd"],
                "grad_ms": ms["grad"],
                "lrp_ms": ms["lrp"],
                "lrp_edges_ms": ms["lrp_edges"],
                "chunked_ms": ms["chunked"],
                "lrp/fwd": ratio(ms["lrp"], ms["fwd"]),
                "lrp/grad": ratio(ms["lrp"], ms["grad"]),
                "lrp_edges/fwd": ratio(ms["lrp_edges"], ms["fwd"]),
                "ns_per_edge": 1e6 * ms["lrp"] / edges,
            }
            if mem_ok:
                try:
                    if cfg.cuda or not cfg.isolated():
                        mem = measure_memory(fns, device)
                    else:
                        del model, x, edge_index, fns
                        spec = {
                            "model": name,
                            "edges": edges,
                            "device": device,
                            "seed": cfg.seed,
                            "budget": budget,
                            "methods": list(METHODS),
                            "threads": torch.get_num_threads(),
                        }
                        mem = probe_in_subprocess(spec)
                    row.update({f"mem_{k}_mb": v for k, v in mem.items()})
                except (RuntimeError, MemoryError, subprocess.TimeoutExpired) as err:
                    table.note(f"{name} at {edges:,} edges: memory not measured ({type(err).__name__}: {err!s:.200})")
            table.add(**row)
            model = x = edge_index = fns = None
            _free(device)
    add_targets(table, cfg)
    return [table]


def _free(device: str) -> None:
    import gc

    gc.collect(1)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def add_targets(table: Table, cfg: Config) -> None:
    budget_mb = cfg.memory_budget / 2**20
    for name in dict.fromkeys(r["model"] for r in table.rows):
        rows = [r for r in table.rows if r["model"] == name]
        if len(rows) >= 2:
            a, b = rows[0]["ns_per_edge"], rows[-1]["ns_per_edge"]
            spread = max(a / b, b / a)
            table.target(
                f"{name}: LRP time per edge flat from {rows[0]['edges']:,} to {rows[-1]['edges']:,} edges (<= 1.3x)",
                f"{a:.0f} -> {b:.0f} ns/edge ({spread:.2f}x)",
                spread <= 1.3,
            )
        big = rows[-1] if rows else None
        if big and big.get("mem_chunked_mb") is not None and big.get("mem_lrp_mb") is not None:
            extra = big["mem_chunked_mb"] - big["mem_lrp_mb"]
            table.target(
                f"{name} at {big['edges']:,} edges: edge-chunked LRP within its {budget_mb:g} MiB budget "
                "(extra peak over the CSR path)",
                f"{extra:+.0f} MiB",
                extra <= budget_mb,
            )
        if cfg.cuda and name == "GCN":
            huge = [r for r in rows if r["edges"] >= 1e8]
            if huge:
                r = huge[-1]
                table.target(
                    f"GCN at {r['edges']:,} edges on GPU: LRP <= 2x the model's forward",
                    f"{r['lrp/fwd']:.2f}x",
                    r["lrp/fwd"] is not None and r["lrp/fwd"] <= 2,
                )
            else:
                table.target("GCN at 1e8 edges on GPU: LRP <= 2x forward", "not run (use --max-edges 1e8)", None)


def per_edge_flatness(rows: list[dict]) -> float | None:
    vals = [r["ns_per_edge"] for r in rows if r.get("ns_per_edge")]
    if len(vals) < 2:
        return None
    return max(vals) / min(vals) if all(v > 0 and math.isfinite(v) for v in vals) else None


if __name__ == "__main__":
    print(json.dumps(memory_probe(json.loads(sys.argv[1]))))
