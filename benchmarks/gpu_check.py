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
    ok &= later_paths()
    return ok


def _report(name: str, err: float, tol: float) -> bool:
    good = err < tol
    print(f"cuda {name}: max|cuda-cpu| = {err:.1e} {'ok' if good else 'FAIL'}")
    return good


def later_paths() -> bool:
    """Paths added after the first GPU run: restricted rows, unions, half precision, SparseLinear,
    pooling with ``batch``, and PyG's Explainer, each on CUDA against CPU."""
    from torch_geometric.explain import Explainer
    from torch_geometric.nn import GCN, GIN, global_add_pool

    from sparse_lrp.layers import base

    ok = True
    torch.manual_seed(1)
    n, e, f = 3000, 24000, 8
    ei = torch.randint(0, n, (2, e))
    x = torch.randn(n, f, dtype=torch.float64)
    model = GCN(f, 16, 3, 3).double().eval()
    index = torch.randperm(n)[:40]
    saved = base.RESTRICT_MIN_ROWS, base.RESTRICT_MAX_SHARE
    try:
        for rows in ("default", "always cut"):
            if rows == "always cut":
                base.RESTRICT_MIN_ROWS, base.RESTRICT_MAX_SHARE = 0, 1.0
            for comp in ("epsilon", "zplus", "gamma"):
                cpu = sparse_lrp.explain(model, x, ei, index=index, composite=comp)
                gpu = sparse_lrp.explain(model.to(DEV), x.to(DEV), ei.to(DEV), index=index, composite=comp)
                model.cpu()
                err = max(
                    (_dense(gpu.node_feat).cpu() - _dense(cpu.node_feat)).abs().max().item(),
                    (_dense(gpu.edge).cpu() - _dense(cpu.edge)).abs().max().item(),
                )
                ok &= _report(f"40 targets, {rows}, {comp}", err, 1e-9)
    finally:
        base.RESTRICT_MIN_ROWS, base.RESTRICT_MAX_SHARE = saved

    for dtype in (torch.float16, torch.bfloat16):
        m32 = GIN(f, 16, 2, 3).float().eval()
        half = GIN(f, 16, 2, 3).to(dtype).eval()
        half.load_state_dict(m32.state_dict())
        ref = sparse_lrp.explain(m32, x.float(), ei, index=[1, 6, 9], composite="zplus")
        got = sparse_lrp.explain(half.to(DEV), x.to(DEV, dtype), ei.to(DEV), index=[1, 6, 9], composite="zplus")
        finite = bool(torch.isfinite(got.node_feat).all()) and got.node_feat.dtype == dtype
        scale = float(ref.node_feat.abs().max())
        err = (got.node_feat.float().cpu() - ref.node_feat).abs().max().item() / scale
        good = finite and err < 3e-2
        ok &= good
        verdict = "ok" if good else "FAIL"
        print(f"cuda {dtype} GIN vs float32 CPU: relative max error {err:.1e}, finite {finite} {verdict}")

    dense = torch.nn.Linear(64, 32).double()
    mask = torch.rand(32, 64) < 0.1
    net = torch.nn.Sequential(sparse_lrp.SparseLinear.from_dense(dense, mask), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    net = net.double().eval()
    xs = torch.randn(7, 64, dtype=torch.float64)
    cpu = sparse_lrp.explain(net, xs, None, index=[0, 3], composite="zplus")
    gpu = sparse_lrp.explain(net.to(DEV), xs.to(DEV), None, index=[0, 3], composite="zplus")
    net.cpu()
    ok &= _report("SparseLinear MLP", (_dense(gpu.node_feat).cpu() - _dense(cpu.node_feat)).abs().max().item(), 1e-10)

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gnn = GIN(f, 16, 2, 16)
            self.head = torch.nn.Linear(16, 2)

        def forward(self, x, edge_index, batch):
            return self.head(global_add_pool(self.gnn(x, edge_index), batch))

    pooled = Pooled().double().eval()
    batch = torch.arange(n) * 6 // n
    within = ei[:, batch[ei[0]] == batch[ei[1]]]  # a batch of separate graphs: no edge joins two
    cpu = sparse_lrp.explain(pooled, x, within, batch=batch, index=[0, 2, 5])
    gpu = sparse_lrp.explain(pooled.to(DEV), x.to(DEV), within.to(DEV), batch=batch.to(DEV), index=[0, 2, 5])
    pooled.cpu()
    err = (_dense(gpu.node_feat).cpu() - _dense(cpu.node_feat)).abs().max().item()
    ok &= _report("graph-level GIN + pooling", err, 1e-9)

    def masks(device):
        explainer = Explainer(
            model=model.to(device),
            algorithm=sparse_lrp.LRPExplainer(composite="zplus"),
            explanation_type="model",
            node_mask_type="attributes",
            edge_mask_type="object",
            model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"),
        )
        out = explainer(x.to(device), ei.to(device), index=int(index[0]))
        return out.node_mask.cpu(), out.edge_mask.cpu()

    (nc, ec), (ng, eg) = masks("cpu"), masks(DEV)
    model.cpu()
    ok &= _report("PyG Explainer + LRPExplainer", max((ng - nc).abs().max().item(), (eg - ec).abs().max().item()), 1e-9)
    return ok


def _dense(t):
    return t.to_dense() if t.is_sparse else t


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
