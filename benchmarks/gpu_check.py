"""One-shot GPU check: CUDA correctness of the kernel and model LRP, and GCN timing.

Run on a CUDA machine: ``python benchmarks/gpu_check.py --edges 1e8``. Prints medians
and ratios measured in this process; exits non-zero if a correctness check fails.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import sparse_lrp
from sparse_lrp import rules

DEV = "cuda"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()
    sync()
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def correctness() -> bool:
    ok = True
    torch.manual_seed(0)
    n, e, c = 500, 4000, 16
    ei = torch.randint(0, n, (2, e))
    x, w, r, b = (
        torch.randn(n, c, dtype=torch.float64),
        torch.randn(e, dtype=torch.float64),
        torch.randn(n, c, dtype=torch.float64),
        torch.randn(c, dtype=torch.float64),
    )
    for rule in [
        rules.Epsilon(0.1),
        rules.ZPlus(),
        rules.AlphaBeta(),
        rules.Gamma(),
        rules.WSquare(),
        rules.Flat(),
        rules.ZBox(-3, 3),
    ]:
        ref, ref_e = sparse_lrp.edge_lrp(x, ei, w, r, rule, bias=b, return_edge_relevance=True)
        for strategy in ("spmm", "scatter"):
            got, got_e = sparse_lrp.edge_lrp(
                x.to(DEV),
                ei.to(DEV),
                w.to(DEV),
                r.to(DEV),
                rule,
                bias=b.to(DEV),
                strategy=strategy,
                return_edge_relevance=True,
            )
            err = max((got.cpu() - ref).abs().max().item(), (got_e.cpu() - ref_e).abs().max().item())
            good = err < 1e-10
            ok &= good
            print(f"cuda {strategy:7s} {type(rule).__name__:10s} max|cuda-cpu| = {err:.1e} {'ok' if good else 'FAIL'}")
    from torch_geometric.nn import GAT, GCN, GIN

    for cls in (GCN, GIN, GAT):
        model = cls(16, 32, 3, 4).double().eval()
        cpu = sparse_lrp.explain(model, x, ei, index=[3, 5, 9], composite="zplus")
        gpu = sparse_lrp.explain(model.to(DEV), x.to(DEV), ei.to(DEV), index=[3, 5, 9], composite="zplus")
        err = max(
            (gpu.node_feat.cpu() - cpu.node_feat).abs().max().item(), (gpu.edge.cpu() - cpu.edge).abs().max().item()
        )
        good = err < 1e-9
        ok &= good
        print(f"cuda explain {cls.__name__}: max|cuda-cpu| = {err:.1e} {'ok' if good else 'FAIL'}")
        model.cpu()
    return ok


def timing(num_edges: int, channels: int, repeats: int) -> None:
    from torch_geometric.nn import GCN

    n = num_edges // 10
    torch.manual_seed(0)
    ei = torch.randint(0, n, (2, num_edges), device=DEV)
    x = torch.randn(n, channels, device=DEV)
    model = GCN(channels, channels, 3, 8).to(DEV).eval()
    with torch.no_grad():
        t_fwd = timed(lambda: model(x, ei), repeats)

    def grad_x_input():
        xg = x.clone().requires_grad_()
        out = model(xg, ei)
        (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
        return xg * g

    def fresh():
        gc.collect()
        if DEV == "cuda":
            torch.cuda.empty_cache()

    # LRP first, then the memory-hungry autograd baseline (PyG materialises [E, C] messages).
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_lrp = timed(lambda: sparse_lrp.explain(model, x, ei, target=0, composite="epsilon", edges=False), repeats)
    fresh()
    t_lrp_e = timed(lambda: sparse_lrp.explain(model, x, ei, target=0, composite="epsilon"), repeats)
    fresh()
    lrp_peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")
    t_lrp_z = timed(lambda: sparse_lrp.explain(model, x, ei, target=0, composite="zplus", edges=False), repeats)
    fresh()
    try:
        t_grad = timed(grad_x_input, repeats)
    except torch.OutOfMemoryError:
        t_grad = float("nan")
    fresh()
    device_name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    mem = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")
    print(f"\n3-layer GCN, {n:,} nodes, {num_edges:,} edges, {channels} channels, {device_name}")
    print("| measure | median ms | ratio to forward |\n| --- | --- | --- |")
    for name, t in [
        ("model forward (PyG)", t_fwd),
        ("autograd grad x input", t_grad),
        ("LRP epsilon, node relevance", t_lrp),
        ("LRP epsilon + edge relevance", t_lrp_e),
        ("LRP zplus, node relevance", t_lrp_z),
    ]:
        print(f"| {name} | {t * 1e3:.1f} | {t / t_fwd:.2f}x |")
    verdict = "PASS" if t_lrp <= 2 * t_fwd else "MISS"
    print(f"peak GPU memory: LRP epsilon (+edges) {lrp_peak:.1f} GiB, whole run {mem:.1f} GiB")
    print(f"target: LRP <= 2x forward -> {verdict}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--edges", type=float, default=1e8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    DEV = a.device
    good = correctness()
    timing(int(a.edges), a.channels, a.repeats)
    raise SystemExit(0 if good else 1)
