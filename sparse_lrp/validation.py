"""Input checks with errors that name the problem.

They run once at the public entry points; internal calls pass ``check=False``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_tensor", "check_finite", "check_edge_index", "check_same", "check_sparse_indices", "non_finite"]


def check_tensor(name: str, t: object, ndim: int | None = None, floating: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    return t


def check_sparse_indices(name: str, t: Tensor) -> None:
    """A sparse COO/CSR tensor's stored indices lie within its shape (torch checks them only
    on request, and products read out of bounds otherwise)."""
    if t.layout == torch.sparse_coo:
        idx = t._indices()
        if not idx.numel():
            return
        lows, high = torch.stack([idx.amin(1), idx.amax(1)]).tolist()  # (one host read)
        low = min(lows)
    elif t.layout == torch.sparse_csr:
        crow, col = t.crow_indices(), t.col_indices()
        if crow.numel() != t.shape[0] + 1 or (crow.numel() > 1 and bool((crow[1:] < crow[:-1]).any())):
            raise ValueError(f"{name}: its CSR row pointers are not {t.shape[0] + 1} non-decreasing offsets")
        if int(crow[0]) != 0 or int(crow[-1]) != col.numel():
            raise ValueError(f"{name}: its CSR row pointers do not run from 0 to its {col.numel()} entries")
        if not col.numel():
            return
        low, high = int(col.min()), [t.shape[0] - 1, int(col.max())]
    else:
        return
    if low < 0:
        raise ValueError(f"{name} has a negative index ({low})")
    for dim, (top, size) in enumerate(zip(high, t.shape)):
        if top >= size:
            raise ValueError(f"{name} has an index {top} in dimension {dim}, out of range for shape {tuple(t.shape)}")


def non_finite(t: Tensor) -> str | None:
    """``"NaN"`` or ``"Inf"`` if ``t`` (or a sparse tensor's stored values) holds one, else None."""
    if t.layout == torch.sparse_coo:
        values = t._values()  # stored entries, coalesced or not
    elif t.layout == torch.sparse_csr:
        values = t.values()
    else:
        values = t
    # A finite sum proves every entry finite (one reduction, read as a Python float: no
    # elementwise isfinite on device); only a non-finite sum needs the full check.
    if values.numel() and not math.isfinite(values.sum().item()) and not bool(torch.isfinite(values).all()):
        return "NaN" if bool(torch.isnan(values).any()) else "Inf"
    return None


def check_finite(name: str, t: Tensor) -> None:
    bad = non_finite(t)
    if bad:
        raise ValueError(f"{name} contains {bad} values; LRP needs finite inputs")


def check_same(reference_name: str, reference: Tensor, **others: Tensor | None) -> None:
    """Every tensor in ``others`` must share ``reference``'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")
        if t.is_floating_point() and t.dtype != reference.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {reference_name} has dtype {reference.dtype}")


_SPARSE_HINT = (
    "explanations follow an edge list: convert it with "
    "`edge_index, edge_weight = torch_geometric.utils.to_edge_index(adj)` (for a transposed "
    "adj_t, as message passing takes it, use edge_index.flip(0)) and pass edge_weight to a "
    "model that reads it"
)


def check_edge_index(edge_index: Tensor, num_in: int, num_out: int) -> None:
    for name, size in (("num_in", num_in), ("num_out", num_out)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{name} must be an int >= 0 (a number of nodes), got {size!r}")
    if type(edge_index).__name__ == "SparseTensor":
        raise TypeError(f"edge_index is a torch_sparse SparseTensor; {_SPARSE_HINT}")
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.layout != torch.strided:
        raise TypeError(f"edge_index is a sparse adjacency matrix ({edge_index.layout}); {_SPARSE_HINT}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index must have dtype torch.int64 or torch.int32, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.numel() == 0:
        return
    if int(edge_index.min()) < 0:
        raise ValueError("edge_index contains negative indices")
    src_max, dst_max = int(edge_index[0].max()), int(edge_index[1].max())
    if src_max >= num_in:
        raise ValueError(f"edge_index[0] (inputs) has index {src_max}, out of range for {num_in} inputs")
    if dst_max >= num_out:
        raise ValueError(f"edge_index[1] (outputs) has index {dst_max}, out of range for {num_out} outputs")


def check_budget(max_memory) -> None:
    """``max_memory`` is a positive, finite number of bytes."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) or not 0 < max_memory < math.inf:
        raise ValueError(f"max_memory must be a positive, finite number of bytes, got {max_memory!r}")
