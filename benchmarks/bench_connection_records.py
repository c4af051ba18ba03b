"""Per-target connection relevance of a SparseLinear layer: what it costs on top of the
same batched explanation without it (``edges=False``).

Setting: a pruned MLP 256 -> 256 (10% of the connections, a SparseLinear) -> ReLU -> 10,
512 samples; T of them explained in one call, each with its own ``edge_local`` record.
Run: ``python benchmarks/bench_connection_records.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import sparse_lrp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    dense = nn.Linear(256, 256)
    layer = sparse_lrp.SparseLinear.from_dense(dense, torch.rand(256, 256) < 0.1)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(256, 10)).eval()
    x = torch.randn(512, 256)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, SparseLinear nnz {layer.weight._nnz():,}")
    for t_count in (8, 64, 512):
        index = list(range(t_count))
        both = median_ms(lambda index=index: sparse_lrp.explain(model, x, None, index=index))
        plain = median_ms(lambda index=index: sparse_lrp.explain(model, x, None, index=index, edges=False))
        print(
            f"T={t_count}: with per-target connection records {both:.1f} ms, without {plain:.1f} ms "
            f"({both / plain:.2f}x)"
        )


if __name__ == "__main__":
    main()
