"""Many node targets: one batched ``explain(index=...)`` call against single calls.

Setting of the GNN issue: a 3-layer GCN (hidden 64) on a random graph with 100k nodes and
1M edges. Single calls are timed on a sample and extrapolated to all targets (said in the
output); the batched call is the median of ``--repeats`` calls after a batched warm-up.
Run: ``python benchmarks/bench_many_targets.py [--targets 1000] [--sample 5] [--repeats 3]
[--compare-max-union 262144 65536]`` (the last also times other rows-per-pass budgets, in
repeats interleaved with the default's).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch_geometric.nn import GCN

import sparse_lrp
from sparse_lrp.explain import UNION_ROWS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--sample", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timed batched calls (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--compare-max-union",
        type=int,
        nargs="*",
        default=[],
        help="also time the batched call with these max_union budgets (rows per pass) against the default",
    )
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.nodes, a.features).to(a.device)
    edge_index = torch.randint(0, a.nodes, (2, a.edges)).to(a.device)
    model = GCN(a.features, 64, 3, 4).to(a.device).eval()
    idx = torch.randperm(a.nodes)[: a.targets].to(a.device)

    def sync():
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    sparse_lrp.explain(model, x, edge_index, index=int(idx[0]))  # warm-up
    singles, kept = [], []
    for i in idx[: a.sample]:
        sync()
        t = time.perf_counter()
        one = sparse_lrp.explain(model, x, edge_index, index=int(i))
        sync()
        singles.append(time.perf_counter() - t)
        kept.append(one.node_feat)
    single = statistics.median(singles)
    # The batched call, and any other max_union budgets, timed in interleaved repeats
    # (after a batched warm-up) so that none of them pays the process's first big passes.
    sparse_lrp.explain(model, x, edge_index, index=idx[: max(2, a.targets // 20)])
    budgets = [None, *a.compare_max_union]
    times: dict = {b: [] for b in budgets}
    for _ in range(a.repeats):
        for budget in budgets:
            sync()
            t = time.perf_counter()
            out = sparse_lrp.explain(model, x, edge_index, index=idx, max_union=budget)
            sync()
            times[budget].append(time.perf_counter() - t)
            if budget is None:
                res = out
    batched = statistics.median(times[None])
    layout = "sparse" if res.node_feat.is_sparse else "dense"
    where = torch.cuda.get_device_name(x.device) if x.is_cuda else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {a.nodes:,} nodes, {a.edges:,} edges")
    diff = max(
        float(((res.node_feat[t].to_dense() if res.node_feat.is_sparse else res.node_feat[t]) - f).abs().max())
        for t, f in enumerate(kept)
    )
    print(f"single call (on its k-hop subgraph): median {single * 1e3:.0f} ms over {a.sample} calls")
    print(f"{a.targets} single calls, extrapolated: {single * a.targets:.0f} s")
    print(
        f"{a.targets} targets in one call: {batched:.1f} s (median of {a.repeats}) = "
        f"{batched / a.targets * 1e3:.1f} ms per target "
        f"({layout} results; max |batched - single| over the sampled targets {diff:.1e})"
    )
    ratio = single * a.targets / batched
    print(f"batched is {ratio:.1f}x faster; target >= 20x -> {'PASS' if ratio >= 20 else 'MISS'}")
    for budget in a.compare_max_union:
        other = statistics.median(times[budget])
        print(
            f"max_union={budget:,} rows per pass: {other:.1f} s, {other / batched:.2f}x the default "
            f"(max_union={UNION_ROWS:,})"
        )


if __name__ == "__main__":
    main()
