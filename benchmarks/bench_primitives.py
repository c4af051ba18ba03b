"""The small tensor primitives the kernel and the subgraph code lean on, against plain torch.

Each row times the library's helper and the plain-torch call it replaces, interleaved in
one process (medians), and prints their ratio; the sizes bracket the thresholds the helpers
switch at. It backs the choices stated in ``sparse_lrp/operators.py`` and
``sparse_lrp/layers/base.py``:

* ``sort_ints``: a stable integer sort whose keys are padded up to 2^15 elements when
  they are a little short of it (torch's CPU sort takes a radix sort only from there);
* ``has_nonzero``: one min/max reduction instead of ``Tensor.any``;
* ``rowdot``: per-row dot products as a batched matmul from 2^20 elements, vecdot below;
* ``nonzero_rows``: rows with a nonzero entry, as used to cut maps to their active rows.

Run: ``python benchmarks/bench_primitives.py [--repeats 30] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

try:
    import sparse_lrp  # noqa: F401
except ImportError:  # run from a checkout without installing: the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sparse_lrp.bench.common import compare, grid
from sparse_lrp.operators import has_nonzero, nonzero_rows, rowdot, sort_ints


def _int_view_any_rows(t: torch.Tensor) -> torch.Tensor:
    """The row test the active-row cut used before: ``any`` over the values' bits."""
    return t.view(torch.int64 if t.shape[1] * t.element_size() % 8 == 0 else torch.int32).any(1).nonzero().squeeze(1)


def cases(g: torch.Generator):
    """``(primitive, size, ours, plain)`` callables; each pair computes the same thing."""
    for n in (4_000, 8_000, 10_000, 12_000, 16_000, 32_000, 100_000):
        bound = max(1, n // 10)
        key = torch.randint(0, bound, (n,), generator=g).to(torch.int32)
        yield (
            "sort_ints vs torch.sort (stable, int32 keys)",
            f"{n:,} keys",
            lambda k=key, b=bound: sort_ints(k, b),
            lambda k=key: torch.sort(k, stable=True),
        )
    for shape in ((64, 1024), (1024, 1024), (1_000_000,)):
        w = torch.randn(shape, generator=g).clamp(min=0)
        yield (
            "has_nonzero vs Tensor.any (float32)",
            "x".join(map(str, shape)),
            lambda w=w: has_nonzero(w),
            lambda w=w: bool(w.any()),
        )
    for rows in (1_000, 16_384, 32_768, 65_536, 100_000, 262_144):
        a, b = torch.randn(rows, 64, generator=g), torch.randn(rows, 64, generator=g)
        yield (
            "rowdot vs linalg.vecdot (float32)",
            f"{rows:,}x64",
            lambda a=a, b=b: rowdot(a, b),
            lambda a=a, b=b: torch.linalg.vecdot(a, b),
        )
    for rows in (16_384, 262_144):
        t = torch.zeros(rows, 64)
        hit = torch.randint(0, rows, (rows // 10,), generator=g)
        t[hit] = torch.randn(hit.numel(), 64, generator=g)
        yield (
            "nonzero_rows vs int-view any (float32)",
            f"{rows:,}x64, 10% rows set",
            lambda t=t: nonzero_rows(t),
            lambda t=t: _int_view_any_rows(t),
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, size, ours, plain in cases(g):
        t = compare({"ours": ours, "plain": plain}, device="cpu", repeats=a.repeats, min_seconds=0.05)
        rows.append(
            [
                name,
                size,
                f"{1e3 * t['ours'].median:.3f}",
                f"{1e3 * t['plain'].median:.3f}",
                f"{t['plain'].median / t['ours'].median:.2f}x",
            ]
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms of interleaved calls")
    print(grid(["primitive", "size", "ours_ms", "plain_ms", "plain/ours"], rows, a.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
