"""The dense reference: each rule evaluated literally, for checking results in tests.

Twins of :func:`sparse_lrp.linear_lrp` and :func:`sparse_lrp.edge_lrp` with the same
arguments (less the kernel's own: ``strategy``, ``max_memory``, a known ``z``, a prepared
operator) and the same results, computed the slow and obvious way. They materialise every
contribution ``c^g_ji`` of every group ``g`` of the rule as a dense ``[B, out, in]``
tensor (``[C, out, E]`` for edges) and evaluate::

    d^g_j = sum_i c^g_ji + b^g_j                    (b^g: the group's bias share)
    R_i   = sum_g coef_g sum_j [where_g] c^g_ji / stab(d^g_j) * R_j
    stab(d) = d + stabilizer * sign(d),  sign(0) = +1,  and 0 where stab(d) == 0

Of the library they use the rule objects' declarations (which terms, bias shares and
coefficients a rule has: its one definition, see :mod:`sparse_lrp.rules`), the public
functions' input checks and the reading of a sparse weight's entries (duplicates summed),
nothing of the kernel: no sparse products, no edge chunks, no fused terms, no shortcuts
through a known forward output and no float64 recomputation. So a result of
the kernel, of a sparse layer or of a layer handler you wrote can be checked against
them, in the precision of the inputs (pass float64 for tight tolerances).

Memory grows as ``B * out * in`` (``C * out * E``): meant for test sizes, and refused
above :data:`MAX_ELEMENTS` contributions.

Example::

    import torch, sparse_lrp
    from sparse_lrp import reference

    W = torch.randn(30, 50, dtype=torch.float64)
    W[torch.rand_like(W) < 0.9] = 0                       # a pruned weight
    x = torch.randn(8, 50, dtype=torch.float64)
    R = x @ W.T                                           # relevance of the outputs
    fast = sparse_lrp.linear_lrp(x, W.to_sparse_coo(), R, sparse_lrp.ZPlus())
    torch.testing.assert_close(fast, reference.linear_lrp(x, W.to_sparse_coo(), R, sparse_lrp.ZPlus()))
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernel import check_edge_call
from .linear import check_linear_call, sparse_weight_edges
from .rules import Rule, broadcast_param
from .validation import check_sparse_indices

__all__ = ["MAX_ELEMENTS", "linear_lrp", "edge_lrp"]

# The largest contribution tensor (elements) a reference call builds: 2^27 float64
# values are 1 GiB, and a call holds a few tensors of that size at once.
MAX_ELEMENTS = 2**27


def _stab(d: Tensor, eps: float) -> Tensor:
    return d + eps * torch.where(d >= 0, 1.0, -1.0).to(d.dtype)


def _dense_rule(x: Tensor, w: Tensor, mask: Tensor, relevance: Tensor, rule: Rule, bias: Tensor | None):
    """``rule`` on ``z = x wᵀ + bias`` over the connections ``mask``, all of it dense.

    ``x [B, in]``, ``w [out, in]`` (zero where ``mask`` is False), ``mask [out, in]``,
    ``relevance [B, out]``, ``bias`` None or broadcasting to ``[B, out]``. Returns the
    relevance through every connection per sample, ``[B, out, in]``.
    """
    size = x.shape[0] * w.shape[0] * w.shape[1]
    if size > MAX_ELEMENTS:
        raise ValueError(
            f"the dense reference would build {size:,} contributions ([B, out, in] = "
            f"[{x.shape[0]}, {w.shape[0]}, {w.shape[1]}]), more than reference.MAX_ELEMENTS = {MAX_ELEMENTS:,}: "
            "check at a smaller size"
        )
    b = None if bias is None else torch.broadcast_to(bias, relevance.shape)
    z = x @ w.T + (0.0 if b is None else b)  # the forward: where a group applies (Gamma)
    through = x.new_zeros(x.shape[0], *w.shape)
    for group in rule.groups:
        c = sum(
            rule.input(term.inp, x)[:, None, :] * torch.where(mask, term.weight(w), 0.0)[None] for term in group.terms
        )
        d = c.sum(2)
        if b is not None and not rule.zero_bias:
            d = d + group.bias(b)
        stab = _stab(d, rule.stabilizer)
        share = torch.where(stab == 0, 0.0, relevance / torch.where(stab == 0, 1.0, stab))
        if group.where == ">=0":
            share = torch.where(z >= 0, share, 0.0)
        elif group.where == "<0":
            share = torch.where(z < 0, share, 0.0)
        elif group.where is not None:
            raise ValueError(f"{rule!r}: unknown output condition {group.where!r}")
        through = through + group.coef * c * share[:, :, None]
    return through


def linear_lrp(
    x: Tensor,
    weight: Tensor,
    relevance: Tensor,
    rule: Rule,
    bias: Tensor | None = None,
    *,
    return_absorbed: bool = False,
):
    """The dense reference of :func:`sparse_lrp.linear_lrp` (same results; no ``strategy``/``max_memory``).

    ``x [B, in]``, ``weight [out, in]`` dense (every entry is a connection) or sparse
    COO/CSR (its stored entries are the connections, duplicates summed, a stored zero
    included), ``relevance [B, out]``, ``bias [out]``. Returns ``R_in [B, in]``, and the
    relevance ``[B, out]`` the bias and the stabiliser absorbed (``R_out`` less what
    reached the inputs) with ``return_absorbed``.
    """
    check_linear_call("reference.linear_lrp", x, weight, relevance, rule, bias)
    if weight.layout == torch.strided:
        w, mask = weight, torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    else:
        check_sparse_indices("weight", weight)
        (cols, rows), values = sparse_weight_edges(weight)
        w = x.new_zeros(weight.shape).index_put_((rows, cols), values.to(x.dtype))
        mask = torch.zeros(weight.shape, dtype=torch.bool, device=x.device).index_put_(
            (rows, cols), torch.ones_like(rows, dtype=torch.bool)
        )
    with torch.no_grad():
        through = _dense_rule(x, w, mask, relevance, rule, bias)
        r_in = through.sum(1)
        return (r_in, relevance - through.sum(2)) if return_absorbed else r_in


def edge_lrp(
    x: Tensor,
    edge_index: Tensor,
    edge_weight: Tensor | None,
    relevance: Tensor,
    rule: Rule,
    *,
    bias: Tensor | None = None,
    num_out: int | None = None,
    return_edge_relevance: bool = False,
    return_absorbed: bool = False,
):
    """The dense reference of :func:`sparse_lrp.edge_lrp` (same results; a plain ``edge_index``,
    no ``z``, ``strategy`` or ``max_memory``).

    Every edge ``e = (i -> j)`` is its own connection, parallel edges included: the
    dense map has one input column per edge (``x[i]``, weight ``w_e`` into row ``j``),
    and the channels of ``x [N_in, C]`` are its batch. Returns ``R_in [N_in, C]``, then
    the relevance through each edge ``[E]`` (summed over channels) and the absorbed
    relevance ``[N_out, C]`` when asked.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a [2, E] tensor, got {type(edge_index).__name__}")
    check_edge_call("reference.edge_lrp", x, edge_index, edge_weight, relevance, rule, bias=bias, num_out=num_out)
    src, dst = edge_index[0].long(), edge_index[1].long()
    n_in, n_out, e = x.shape[0], relevance.shape[0], edge_index.shape[1]
    w_e = x.new_ones(e) if edge_weight is None else edge_weight
    columns = torch.arange(e, device=x.device)
    w = x.new_zeros(n_out, e).index_put_((dst, columns), w_e)
    mask = torch.zeros(n_out, e, dtype=torch.bool, device=x.device).index_put_(
        (dst, columns), torch.ones(e, dtype=torch.bool, device=x.device)
    )
    # Input-shaped rule parameters (ZBox bounds) go per connection like the inputs.
    per_edge = rule.map_inputs(lambda t: broadcast_param(t, x).index_select(0, src).T)
    with torch.no_grad():
        b = None if bias is None else torch.broadcast_to(bias, relevance.shape).T
        through = _dense_rule(x.index_select(0, src).T, w, mask, relevance.T, per_edge, b)  # [C, N_out, E]
        per_column = through.sum(1)  # [C, E]: relevance reaching each connection's input
        out = (x.new_zeros(x.shape[1], n_in).index_add_(1, src, per_column).T,)
        if return_edge_relevance:
            out += (per_column.sum(0),)
        if return_absorbed:
            out += ((relevance.T - through.sum(2)).T,)
    return out[0] if len(out) == 1 else out
