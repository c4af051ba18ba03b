"""The edge-wise LRP kernel: one algorithm for every rule and every linear operator.

For an operator ``z_j = sum_{i->j} w_ji x_i + b_j`` and a rule made of groups of terms
``f_k(x_i) g_k(w_ji)`` (see :mod:`sparse_lrp.rules`), each group computes::

    d_j  = sum_k (g_k(W) f_k(x))_j + b^g_j            # denominators
    s_j  = coef * [where] * R_j / stab(d_j)           # relevance per unit contribution
    R_i += sum_k f_k(x_i) (g_k(W)ᵀ s)_i               # input relevance
    R_e += sum_k g_k(w_e) sum_c f_k(x_i)_c s_jc       # relevance through edge e = (i -> j)

The sums run over stored connections only. Two exact strategies evaluate them:
``"spmm"`` as CSR sparse-dense products (never an ``[E, C]`` tensor) and ``"scatter"``
as explicit per-edge messages aggregated with ``scatter_add`` in memory-bounded edge
chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .operators import DEFAULT_MAX_MEMORY, DenseOperator, EdgeOperator, EdgeValues, FusedTerms
from .rules import Pass, Rule
from .validation import check_edge_index, check_finite, check_same, check_tensor

__all__ = ["Branch", "Propagated", "edge_lrp", "propagate", "propagate_branches", "stabilize"]

STRATEGIES = ("auto", "spmm", "scatter")


class Propagated(NamedTuple):
    """What one propagation produced.

    ``node``: input relevance ``[N_in, C]``; ``edge``: relevance per connection
    (``[E]`` summed over channels) or None; ``absorbed``: the part of the output
    relevance ``[N_out, C]`` taken by the bias and the stabiliser (``R_out - flowed``).
    """

    node: Tensor
    edge: Tensor | None
    absorbed: Tensor | None


def stabilize(d: Tensor, eps: float) -> Tensor:
    """``d + eps * sign(d)`` with ``sign(0) = +1``."""
    if eps == 0:
        return d
    # Add in d's own dtype: a float scalar tensor would round eps or upcast half inputs.
    return torch.where(d >= 0, d + eps, d - eps)


def _safe_divide(r: Tensor, d: Tensor) -> Tensor:
    # A zero denominator (a dead unit, an output with no connections) passes nothing on.
    zero = d == 0
    return torch.where(zero, 0.0, r / torch.where(zero, 1.0, d))


def _resolve_strategy(strategy: str, x: Tensor) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "auto":
        # CSR products are the faster exact path wherever torch implements them
        # (float32/float64 on CPU and CUDA); half precisions fall back to messages.
        return "spmm" if x.dtype in (torch.float32, torch.float64) else "scatter"
    return strategy


class Branch(NamedTuple):
    """One linear map ``op`` with stored ``weight`` applied to input ``x``."""

    op: EdgeOperator | DenseOperator
    x: Tensor
    weight: Tensor


def _products(prepared, terms, strategy: str, max_memory: int) -> list[tuple[int, Callable, Callable]]:
    """The sparse products a group needs: ``(branch, forward(), backward(s, want_edge))``.

    Terms of one branch whose weights split the edges between them (w⁺ / w⁻) become one
    fused product over stacked inputs (:class:`FusedTerms`); the rest run one by one.
    """
    by_branch: dict[int, list] = {}
    for pos, f, gw in terms:
        by_branch.setdefault(pos, []).append((f, gw))
    out = []
    for pos, items in by_branch.items():
        op = prepared[pos][0].op
        if strategy == "spmm" and isinstance(op, EdgeOperator) and len(items) > 1:
            values = [gw for _, gw in items]
            if FusedTerms.applies(op, values):
                fused = FusedTerms(op, [f for f, _ in items], values)
                out.append((pos, fused.forward, fused.backward))
                continue
        for f, gw in items:
            out.append(
                (
                    pos,
                    functools.partial(op.forward, gw, f, strategy, max_memory),
                    functools.partial(_backward, op, gw, f, strategy=strategy, max_memory=max_memory),
                )
            )
    return out


def _backward(op, gw, f, s, want_edge, *, strategy, max_memory):
    return op.backward(gw, f, s, strategy, want_edge, max_memory)


def propagate_branches(
    branches: list[Branch],
    relevance: Tensor,
    rule: Rule,
    bias: Tensor | None = None,
    z: Tensor | None = None,
    strategy: str = "auto",
    want_edge: bool = False,
    want_absorbed: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> tuple[list[tuple[Tensor, Tensor | None]], Tensor | None]:
    """Run ``rule`` over ``z = sum_b op_b(x_b) + bias``, all branches sharing one denominator.

    A layer that adds several linear maps (a root weight beside the neighbour
    aggregation, APPNP's teleport term) is one linear map over the concatenated inputs;
    sharing the denominator applies the rule to that joint map, not to each summand.
    Returns ``[(R_in_b, edge_b)]`` per branch and the absorbed relevance (or None).
    No input checks (see :func:`edge_lrp`).
    """
    strategy = _resolve_strategy(strategy, relevance)
    use_bias = bias is not None and not rule.zero_bias
    uses = {t.inp for g in rule.groups for t in g.terms}

    if rule.needs_output_sign and z is None:
        z = sum(b.op.forward(b.weight, b.x, strategy, max_memory) for b in branches)
        if bias is not None:
            z = z + bias

    # Per branch: resolved inputs, and which sign-restricted inputs vanish (x⁻ after a ReLU).
    prepared = []
    for b in branches:
        skip = set()
        if "neg" in uses and bool((b.x >= 0).all()):
            skip.add("neg")
        if "pos" in uses and bool((b.x <= 0).all()):
            skip.add("pos")
        prepared.append((b, skip, {}))

    results: list[list] = [[None, None] for _ in branches]
    flowed = torch.zeros_like(relevance) if want_absorbed else None
    for group in rule.groups:
        terms = []  # (branch position, f, g(w))
        for pos, (b, skip, inputs) in enumerate(prepared):
            for term in group.terms:
                if term.inp in skip:
                    continue
                gw = b.op.transform(b.weight, term.weight)
                if term.may_vanish and not (gw.any() if isinstance(gw, EdgeValues) else bool(gw.any())):
                    continue
                if term.inp not in inputs:
                    inputs[term.inp] = rule.input(term.inp, b.x)
                terms.append((pos, inputs[term.inp], gw))
        products = _products(prepared, terms, strategy, max_memory)

        if group.plain and z is not None:
            d_nobias = z - bias if bias is not None else z
            d = z if use_bias else d_nobias
        else:
            d = None
            for _, forward, _ in products:
                d = forward() if d is None else d + forward()
            d = relevance.new_zeros(relevance.shape) if d is None else d
            d_nobias = d
            if use_bias:
                d = d + group.bias(bias)
        # With eps > 0 the stabilised denominator is never zero: skip the zero test.
        s = relevance / stabilize(d, rule.stabilizer) if rule.stabilizer > 0 else _safe_divide(relevance, d)
        if group.where is not None:
            s = s * ((z >= 0) if group.where == ">=0" else (z < 0))
        if group.coef != 1.0:
            s = s * group.coef
        if flowed is not None:
            flowed = flowed + s * d_nobias
        for pos, _, backward in products:
            part, part_edge = backward(s, want_edge)
            slot = results[pos]
            slot[0] = part if slot[0] is None else slot[0] + part
            if part_edge is not None:
                slot[1] = part_edge if slot[1] is None else slot[1] + part_edge
    for b, slot in zip(branches, results):
        if slot[0] is None:  # every term of this branch vanished
            slot[0] = torch.zeros_like(b.x)
    if want_edge:
        for b, slot in zip(branches, results):
            if slot[1] is None:
                slot[1] = b.weight.new_zeros(b.weight.shape)
    absorbed = relevance - flowed if flowed is not None else None
    return [tuple(slot) for slot in results], absorbed


def propagate(
    op: EdgeOperator | DenseOperator,
    x: Tensor,
    weight: Tensor,
    relevance: Tensor,
    rule: Rule,
    bias: Tensor | None = None,
    z: Tensor | None = None,
    strategy: str = "auto",
    want_edge: bool = False,
    want_absorbed: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> Propagated:
    """Run ``rule`` over one operator ``op`` (no input checks; see :func:`edge_lrp`).

    ``x`` and ``relevance`` are laid out as ``op`` expects (``[N_in, C]``/``[N_out, C]``
    for an edge operator, ``[B, in]``/``[B, out]`` for a dense one); ``weight`` is the
    operator's stored weights; ``bias`` broadcasts against ``relevance``; ``z`` is the
    forward output if already known.
    """
    (node_edge,), absorbed = propagate_branches(
        [Branch(op, x, weight)], relevance, rule, bias, z, strategy, want_edge, want_absorbed, max_memory
    )
    return Propagated(node_edge[0], node_edge[1], absorbed)


def edge_lrp(
    x: Tensor,
    edge_index: Tensor | EdgeOperator,
    edge_weight: Tensor | None,
    relevance: Tensor,
    rule: Rule,
    *,
    bias: Tensor | None = None,
    num_out: int | None = None,
    z: Tensor | None = None,
    return_edge_relevance: bool = False,
    return_absorbed: bool = False,
    strategy: str = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY,
    check: bool = True,
):
    """LRP through a sparse operator given as edges: the library's kernel.

    For ``z_j = sum_{e=(i->j)} w_e x_i + b_j`` the basic rule gives
    ``R_i = sum_{e=(i->j)} x_i w_e / z_j * R_j``; ``rule`` chooses the contributions
    (see :mod:`sparse_lrp.rules`). Every edge is one connection.

    Args:
        x: inputs ``[N_in, C]`` (C channels: features, or a batch).
        edge_index: ``[2, E]``; row 0 the input (source) index ``i``, row 1 the output
            (target) index ``j``. Or an operator from :func:`sparse_lrp.prepare`,
            which reuses its index structures.
        edge_weight: ``[E]`` weights, or None for weight 1 on every edge.
        relevance: output relevance ``[N_out, C]``.
        rule: an LRP rule object.
        bias: broadcasts against ``[N_out, C]``; takes its rule-specific share.
        num_out: number of outputs (default ``relevance.shape[0]``).
        z: the forward output ``W x + b`` if already known; saves one product for rules
            whose denominator is the forward (Epsilon) or that need its sign (Gamma).
        return_edge_relevance: also return the relevance through each edge, ``[E]``,
            summed over channels.
        return_absorbed: also return the relevance ``[N_out, C]`` absorbed by the bias
            and the stabiliser; ``R_in.sum() + absorbed.sum() == relevance.sum()``.
        strategy: ``"spmm"`` (sparse products), ``"scatter"`` (edge messages), or
            ``"auto"`` (the faster exact one for the dtype).
        max_memory: byte budget for the ``[chunk, C]`` temporaries of edge messages and
            edge relevance.
        check: validate inputs (internal callers that validated already pass False).

    Returns:
        ``R_in [N_in, C]``, followed by the edge relevance and the absorbed relevance
        when requested.
    """
    if isinstance(rule, Pass) or not isinstance(rule, Rule):
        raise TypeError(f"edge_lrp needs a linear-map rule (Epsilon, ZPlus, ...), got {rule!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if edge_weight is not None and not isinstance(edge_weight, Tensor):
        raise TypeError(f"edge_weight must be a torch.Tensor or None, got {type(edge_weight).__name__}")
    op = edge_index if isinstance(edge_index, EdgeOperator) else None
    if check:
        check_tensor("x", x, ndim=2)
        check_tensor("relevance", relevance, ndim=2)
        if relevance.shape[1] != x.shape[1]:
            raise ValueError(
                f"relevance has {relevance.shape[1]} channels but x has {x.shape[1]} "
                f"(x is [N_in, C] = {tuple(x.shape)}, relevance is [N_out, C] = {tuple(relevance.shape)})"
            )
        if num_out is not None and num_out != relevance.shape[0]:
            raise ValueError(f"num_out={num_out} but relevance has {relevance.shape[0]} rows")
        check_same("x", x, relevance=relevance, edge_weight=edge_weight, bias=bias, z=z)
        ei = op.edge_index if op is not None else edge_index
        if op is not None and (op.num_in != x.shape[0] or op.num_out != relevance.shape[0]):
            raise ValueError(
                f"prepared operator maps {op.num_in} -> {op.num_out} but x has {x.shape[0]} rows "
                f"and relevance {relevance.shape[0]}"
            )
        check_edge_index(ei, x.shape[0], relevance.shape[0])
        if ei.device != x.device:
            raise ValueError(f"edge_index is on {ei.device} but x is on {x.device}")
        if edge_weight is not None:
            check_tensor("edge_weight", edge_weight, ndim=1)
            if edge_weight.shape[0] != ei.shape[1]:
                raise ValueError(
                    f"edge_weight has {edge_weight.shape[0]} entries but edge_index has {ei.shape[1]} edges"
                )
        if bias is not None:
            check_tensor("bias", bias)
            try:
                torch.broadcast_shapes(bias.shape, relevance.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"bias of shape {tuple(bias.shape)} does not broadcast against relevance {tuple(relevance.shape)}"
                ) from err
        if z is not None and z.shape != relevance.shape:
            raise ValueError(f"z has shape {tuple(z.shape)} but relevance has {tuple(relevance.shape)}")
        for name, t in (("x", x), ("relevance", relevance), ("edge_weight", edge_weight), ("bias", bias)):
            if t is not None:
                check_finite(name, t)
    if op is None:
        op = EdgeOperator(edge_index, x.shape[0], relevance.shape[0])
    if edge_weight is None:
        edge_weight = x.new_ones(op.num_edges)
    res = propagate(
        op,
        x,
        edge_weight,
        relevance,
        rule,
        bias=bias,
        z=z,
        strategy=strategy,
        want_edge=return_edge_relevance,
        want_absorbed=return_absorbed,
        max_memory=max_memory,
    )
    out = (res.node,)
    if return_edge_relevance:
        out += (res.edge,)
    if return_absorbed:
        out += (res.absorbed,)
    return out[0] if len(out) == 1 else out
