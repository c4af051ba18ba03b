"""Graph scaling: a 3-layer GCN and GIN on random graphs of growing size.

For every model and size: the model's own forward (no autograd), autograd gradient x
input, and sparse_lrp's full-model LRP (every node's predicted class at once) without
and with edge relevance, plus the edge-chunked kernel under a memory budget. Times are
medians of interleaved repeats; peak memory is measured per call (see ``common``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import Config, Table, compare, memory_note, peak_memory, ratio
from .lrp import grad_x_input, graph_lrp, has_explain
from .models import graph_model, random_graph

FEATURES, HIDDEN, CLASSES, DEGREE = 32, 64, 8, 10
DEFAULT_EDGES = {"tiny": (1e3, 4e3), "quick": (1e4, 1e6), "full": (1e4, 1e7)}
METHODS = ("fwd", "grad", "lrp", "lrp_first", "lrp_edges", "chunked")

COLUMNS = [
    "model",
    "edges",
    "nodes",
    "fwd_ms",
    "grad_ms",
    "lrp_ms",
    "lrp_first_ms",
    "lrp_edges_ms",
    "chunked_ms",
    "lrp/fwd",
    "lrp/grad",
    "lrp_first/fwd",
    "lrp_edges/fwd",
    "ns_per_edge",
    "mem_fwd_mb",
    "mem_grad_mb",
    "mem_lrp_mb",
    "mem_lrp_edges_mb",
    "mem_chunked_mb",
]
RATIOS = ["lrp/fwd", "lrp/grad", "lrp_first/fwd", "lrp_edges/fwd"]


def edge_sizes(cfg: Config) -> list[int]:
    """Powers of ten from the smallest to the largest edge count (the mode's defaults)."""
    lo, hi = DEFAULT_EDGES[cfg.mode]
    lo = cfg.min_edges or lo
    hi = cfg.max_edges or hi
    if lo > hi:  # one bound given beyond the other's default: that bound wins
        lo, hi = (hi, hi) if cfg.max_edges else (lo, lo)
    if cfg.tiny:
        return sorted({int(lo), int(hi)})
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


def first_call(fn: Callable[[], object]) -> object:
    """``fn()`` as a first explanation of its graph and model: sparse_lrp's caches (the
    graph's sorted structures and normalisation, checks passed) forgotten before it."""
    import sparse_lrp

    if hasattr(sparse_lrp, "clear_caches"):
        sparse_lrp.clear_caches()
    return fn()


def methods(model, x, edge_index, rule, budget: int, which=METHODS) -> dict[str, Callable[[], object]]:
    """The measured calls; each returns what it computed (kept alive until measured)."""

    def fwd():
        with torch.no_grad():
            return model(x, edge_index)

    table = {
        "fwd": fwd,
        "grad": lambda: grad_x_input(model, x, edge_index),
        "lrp": lambda: graph_lrp(model, x, edge_index, rule, edges=False),
        "lrp_first": lambda: first_call(lambda: graph_lrp(model, x, edge_index, rule, edges=False)),
        "lrp_edges": lambda: graph_lrp(model, x, edge_index, rule, edges=True),
        "chunked": lambda: graph_lrp(model, x, edge_index, rule, edges=False, strategy="scatter", max_memory=budget),
    }
    return {k: table[k] for k in which}


def measure_memory(fns: dict[str, Callable[[], object]], device: str) -> dict[str, float | None]:
    """Peak extra memory of one call of each (already warmed-up) method, in MiB (None: failed)."""
    out: dict[str, float | None] = {}
    for name, fn in fns.items():
        try:
            out[name] = peak_memory(fn, device)
        except (RuntimeError, MemoryError):
            out[name] = None
            _free(device)
    return out


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
        f"(strategy='scatter') under max_memory = {budget / 2**20:g} MiB; ns_per_edge: lrp_first time per edge. "
        f"Repeated calls on one graph reuse its sorted structures (and GCN normalisation) from the call "
        f"before; lrp_first is a first call, every cache cleared (sparse_lrp.clear_caches()) before it."
    )
    note = memory_note(device) if cfg.memory else None
    mem_ok = note is not None
    if cfg.memory and not mem_ok:
        table.note("Peak memory skipped: no way to measure it here (needs CUDA, torch.profiler or Linux /proc).")
    elif mem_ok:
        table.note(note)
    timed = METHODS if cfg.mode == "full" or cfg.cuda else ("fwd", "grad", "lrp", "lrp_first", "lrp_edges")
    if "chunked" not in timed:
        table.note("chunked is measured for memory only in this mode (--full times it too).")
    sizes = edge_sizes(cfg)
    for name in models:
        for edges in sizes:
            if not cfg.cuda and not fits_in_memory(edges):
                table.note(
                    f"{name}: stopped before {edges:,} edges, which would need about "
                    f"{edges * BYTES_PER_EDGE / 2**30:.0f} GiB (more than 80% of the available memory)"
                )
                break
            cfg.log(f"[graphs] {name}, {edges:,} edges")
            try:
                model, x, edge_index = setup(name, edges, device, cfg.seed)
            except (RuntimeError, MemoryError) as err:  # out of memory: stop growing this model
                table.note(f"{name} at {edges:,} edges: setup failed ({type(err).__name__}: {str(err)[:200]})")
                break
            fns = methods(model, x, edge_index, rule, budget)
            # Warm every method up alone: one that runs out of memory is left out (its cells
            # stay empty) while the others are still measured at this size.
            failed = {}
            for k in list(fns):
                try:
                    res = fns[k]()
                    del res
                except (RuntimeError, MemoryError) as err:
                    failed[k] = f"{type(err).__name__}: {str(err)[:120]}"
                    del fns[k]
                    _free(device)
            for k, why in failed.items():
                table.note(f"{name} at {edges:,} edges: {k} failed ({why})")
            if "lrp" not in fns:
                model = x = edge_index = fns = None
                _free(device)
                break
            t = compare(
                {k: fns[k] for k in timed if k in fns},
                device=device,
                **{**cfg.timing(), "warmup": max(0, cfg.warmup - 1)},
            )
            ms = {k: v.ms for k, v in t.items()}
            mem = measure_memory({k: f for k, f in fns.items() if k != "lrp_first"}, device) if mem_ok else {}
            row = {
                "model": name,
                "edges": edges,
                "nodes": x.shape[0],
                "fwd_ms": ms.get("fwd"),
                "grad_ms": ms.get("grad"),
                "lrp_ms": ms["lrp"],
                "lrp_first_ms": ms.get("lrp_first"),
                "lrp_edges_ms": ms.get("lrp_edges"),
                "chunked_ms": ms.get("chunked"),
                "lrp/fwd": ratio(ms["lrp"], ms.get("fwd")),
                "lrp/grad": ratio(ms["lrp"], ms.get("grad")),
                "lrp_first/fwd": ratio(ms.get("lrp_first"), ms.get("fwd")),
                "lrp_edges/fwd": ratio(ms.get("lrp_edges"), ms.get("fwd")),
                # (a first call's: what one-off explanations of graphs of each size cost)
                "ns_per_edge": 1e6 * ms.get("lrp_first", ms["lrp"]) / edges,
            }
            row.update({f"mem_{k}_mb": v for k, v in mem.items()})
            table.add(**row)
            model = x = edge_index = fns = None
            _free(device)
    add_targets(table, cfg)
    return [table]


# The hungriest method (autograd gradient x input through PyG's GCNConv, which keeps the
# [E, hidden] messages of every layer) needed about 650 bytes per edge at hidden 64; with
# the graph itself and a margin, a size is run on CPU only where this much is available.
BYTES_PER_EDGE = 1000


def available_memory() -> int | None:
    """Linux MemAvailable in bytes, or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def fits_in_memory(edges: int) -> bool:
    """Whether a CPU run at ``edges`` edges should fit (a CPU out-of-memory kills the process)."""
    avail = available_memory()
    return avail is None or edges * BYTES_PER_EDGE <= 0.8 * avail


def _free(device: str) -> None:
    import gc

    from .common import _malloc_trim

    gc.collect(1)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    else:
        _malloc_trim()  # hand the last size's memory back before the next, larger one


def add_targets(table: Table, cfg: Config) -> None:
    budget_mb = cfg.memory_budget / 2**20
    for name in dict.fromkeys(r["model"] for r in table.rows):
        rows = [r for r in table.rows if r["model"] == name]
        if len(rows) >= 2:
            a, b = rows[0]["ns_per_edge"], rows[-1]["ns_per_edge"]
            spread = max(a / b, b / a)
            # The forward's own spread says whether the small sizes are launch/overhead-bound.
            forward = ""
            if rows[0]["fwd_ms"] and rows[-1]["fwd_ms"]:
                fa, fb = (1e6 * r["fwd_ms"] / r["edges"] for r in (rows[0], rows[-1]))
                forward = f"; the forward's {fa:.0f} -> {fb:.0f}, {max(fa / fb, fb / fa):.2f}x"
            table.target(
                f"{name}: LRP time per edge flat from {rows[0]['edges']:,} to {rows[-1]['edges']:,} edges (<= 1.3x)",
                f"{a:.0f} -> {b:.0f} ns/edge ({spread:.2f}x{forward})",
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
