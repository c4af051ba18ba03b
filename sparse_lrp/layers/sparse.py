"""A linear layer whose weight is sparse (pruned, or wired by prior knowledge), and its handler."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..linear import _operator
from ..validation import check_sparse_indices
from . import register_handler
from .base import LayerCall, MapBranch

__all__ = ["SparseLinear"]


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` where only the stored entries of a sparse ``W [out, in]`` exist.

    The weight is a sparse COO parameter (coalesced; trainable with sparse gradients).
    :func:`sparse_lrp.explain` runs the edge kernel over its connections, so the cost
    scales with the non-zeros, and ``res.layers[name]["edge_local"]`` holds the
    relevance through each connection, in the order of ``weight.indices()``.

    Args:
        weight: sparse COO or CSR ``[out, in]`` (a dense tensor: its non-zeros).
        bias: ``[out]`` or None.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be [out, in], got shape {tuple(weight.shape)}")
        check_sparse_indices("weight", weight)
        coo = weight.detach().to_sparse_coo().coalesce()
        self.out_features, self.in_features = coo.shape
        self.weight = nn.Parameter(coo)
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Tensor | None = None) -> SparseLinear:
        """The connections of ``linear`` kept by ``mask`` (default: its non-zero weights);
        a kept connection whose weight is 0 is stored too (Flat counts it)."""
        w = linear.weight.detach()
        keep = w != 0 if mask is None else mask.to(device=w.device, dtype=torch.bool)
        if keep.shape != w.shape:
            raise ValueError(f"mask must have the weight's shape {tuple(w.shape)}, got {tuple(keep.shape)}")
        # (indices of a dense mask: valid by construction, no checks to run)
        coo = torch.sparse_coo_tensor(keep.nonzero().T, w[keep], w.shape, check_invariants=False)
        return cls(coo, None if linear.bias is None else linear.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(self.weight, flat.T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, nnz={self.weight._nnz()}"


def sparse_linear(call: LayerCall, x: Tensor) -> Tensor:
    """SparseLinear: one edge map from the inputs (features) to the outputs, batch as channels."""
    m = call.module
    op, values = _operator(m.weight)  # (built once per weight version)
    flat = x.reshape(-1, x.shape[-1])
    bias = None if m.bias is None else m.bias[:, None]
    z = call.map([MapBranch(op, values.detach(), flat.T, record_edges=True, channels_are_rows=True)], bias)
    return z.T.reshape(*x.shape[:-1], m.out_features)


register_handler(SparseLinear, sparse_linear, subgraph=())
