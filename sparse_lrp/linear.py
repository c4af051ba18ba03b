"""LRP for a linear layer ``y = x Wᵀ + b`` with a dense or sparse (COO/CSR) weight."""

from __future__ import annotations

import torch
from torch import Tensor

from .kernel import STRATEGIES, propagate
from .operators import DEFAULT_MAX_MEMORY, DenseOperator, EdgeOperator, TensorKeyed, summing_once
from .rules import Rule, broadcast_param, check_map_rule
from .validation import check_budget, check_finite, check_same, check_sparse_indices, check_tensor

__all__ = ["check_linear_call", "linear_lrp", "sparse_weight_edges"]


def sparse_weight_edges(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The connections of a sparse ``[out, in]`` weight as ``(edge_index, values)``.

    Duplicate COO entries are summed first (a sparse tensor means the sum of its
    entries), so a rule's weight transform sees each connection's real weight. The
    edges run input (column) -> output (row).
    """
    coo = weight.to_sparse_coo() if weight.layout != torch.sparse_coo else weight
    coo = coo.coalesce()
    rows, cols = coo.indices()
    return torch.stack([cols, rows]), coo.values()


# A pruned layer explained batch after batch coalesces its weight and builds its CSR
# structures once.
_OPERATORS = TensorKeyed(64, content=True)


def _operator(weight: Tensor) -> tuple[EdgeOperator, Tensor]:
    def build():
        check_sparse_indices("weight", weight)
        if weight.is_inference():  # (its index views exist only in inference mode)
            with torch.inference_mode():
                edge_index, values = sparse_weight_edges(weight)
            edge_index, values = edge_index.clone(), values.clone()
        else:
            edge_index, values = sparse_weight_edges(weight)
        return EdgeOperator(edge_index, weight.shape[1], weight.shape[0]), values

    return _OPERATORS.get(weight, build)


def check_linear_call(
    caller: str, x: Tensor, weight: Tensor, relevance: Tensor, rule: Rule, bias: Tensor | None
) -> None:
    """The checks of a ``linear_lrp`` call (shared with :func:`sparse_lrp.reference.linear_lrp`):
    a linear-map rule, a 2-D dense/COO/CSR weight, matching shapes, devices and dtypes, finite values."""
    check_map_rule(caller, rule)
    if isinstance(weight, Tensor) and weight.layout not in (torch.strided, torch.sparse_coo, torch.sparse_csr):
        raise TypeError(f"weight layout {weight.layout} is not supported; use dense, sparse COO or sparse CSR")
    if isinstance(weight, Tensor) and weight.layout != torch.strided and weight.dense_dim() > 0:
        raise TypeError(
            f"weight is a hybrid sparse tensor ({weight.dense_dim()} dense dimension(s)); "
            "give a 2-D sparse weight with scalar entries"
        )
    check_tensor("x", x, ndim=2)
    check_tensor("relevance", relevance, ndim=2)
    check_tensor("weight", weight, ndim=2)
    check_same("x", x, weight=weight, relevance=relevance, bias=bias)
    n_out, n_in = weight.shape
    if x.shape[1] != n_in:
        raise ValueError(f"x has {x.shape[1]} features but weight [out, in] = {tuple(weight.shape)} expects {n_in}")
    if relevance.shape != (x.shape[0], n_out):
        raise ValueError(f"relevance must have shape [B, out] = {(x.shape[0], n_out)}, got {tuple(relevance.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != n_out:
            raise ValueError(f"bias has {bias.shape[0]} entries but weight has {n_out} outputs")
    for name, t in (("x", x), ("weight", weight), ("relevance", relevance), ("bias", bias)):
        if t is not None:
            check_finite(name, t)


@summing_once
def linear_lrp(
    x: Tensor,
    weight: Tensor,
    relevance: Tensor,
    rule: Rule,
    bias: Tensor | None = None,
    *,
    strategy: str = "auto",
    return_absorbed: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
):
    """LRP through ``z = x Wᵀ + b`` (``torch.nn.Linear`` layout).

    With the basic rule ``R_i = x_i sum_j w_ji / z_j R_j``; ``rule`` picks the variant.
    A sparse weight runs the edge kernel over its stored connections (the batch becomes
    the channels), so cost scales with the non-zeros, not with ``in * out``.

    Args:
        x: ``[B, in]`` inputs.
        weight: ``[out, in]``, dense or a sparse COO/CSR tensor.
        relevance: ``[B, out]`` output relevance.
        rule: an LRP rule.
        bias: ``[out]`` or None.
        strategy: kernel strategy for sparse weights (``"auto"``, ``"spmm"``, ``"scatter"``).
        return_absorbed: also return the ``[B, out]`` relevance absorbed by bias and
            stabiliser.
        max_memory: byte budget for the kernel's edge chunks.

    Returns:
        ``R_in [B, in]`` (and the absorbed relevance when requested).
    """
    check_map_rule("linear_lrp", rule)  # (before the strategy: a wrong rule is the first thing to say)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    check_budget(max_memory)
    check_linear_call("linear_lrp", x, weight, relevance, rule, bias)

    with torch.no_grad():  # relevance is a result, not a differentiable function of the inputs
        return _linear(x, weight, relevance, rule, bias, strategy, return_absorbed, max_memory)


def _linear(x, weight, relevance, rule, bias, strategy, return_absorbed, max_memory):
    if weight.layout == torch.strided:
        res = propagate(DenseOperator(weight), x, weight, relevance, rule, bias=bias, want_absorbed=return_absorbed)
        return (res.node, res.absorbed) if return_absorbed else res.node
    if weight.layout not in (torch.sparse_coo, torch.sparse_csr):
        raise TypeError(f"weight layout {weight.layout} is not supported; use dense, sparse COO or sparse CSR")
    # The edge kernel works on [N_in, C]: inputs are rows, the batch is the channels.
    rule = rule.map_inputs(lambda t: broadcast_param(t, x).T)
    op, values = _operator(weight)
    b = bias[:, None] if bias is not None else None
    res = propagate(
        op,
        x.T.contiguous(),
        values,
        relevance.T.contiguous(),
        rule,
        bias=b,
        strategy=strategy,
        want_absorbed=return_absorbed,
        max_memory=max_memory,
    )
    return (res.node.T, res.absorbed.T) if return_absorbed else res.node.T
