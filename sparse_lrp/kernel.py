"""The edge-wise LRP kernel: one algorithm for every rule and every linear operator.

For an operator ``z_j = sum_{i->j} w_ji x_i + b_j`` and a rule made of groups of terms
``f_k(x_i) g_k(w_ji)`` (see :mod:`sparse_lrp.rules`), each group computes::

    d_j  = sum_k (g_k(W) f_k(x))_j + b^g_j            # denominators
    s_j  = coef * [where] * R_j / stab(d_j)           # relevance per unit contribution
    R_i += sum_k f_k(x_i) (g_k(W)ᵀ s)_i               # input relevance
    R_e += sum_k g_k(w_e) sum_c f_k(x_i)_c s_jc       # relevance through edge e = (i -> j)

Groups whose contributions are combinations of a few shared products (Gamma's, see
:class:`~sparse_lrp.rules.Shared`) compute each product once forwards and once backwards,
with ``s`` combined across the groups.

The sums run over stored connections only. Two exact strategies evaluate them:
``"spmm"`` as CSR sparse-dense products (never an ``[E, C]`` tensor) and ``"scatter"``
as explicit per-edge messages aggregated with ``scatter_add`` in memory-bounded edge
chunks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .operators import (
    DEFAULT_MAX_MEMORY,
    DenseOperator,
    EdgeOperator,
    EdgeValues,
    FusedTerms,
    has_nonzero,
    summing_once,
)
from .rules import Rule, check_map_rule
from .validation import check_budget, check_edge_index, check_finite, check_same, check_tensor, non_finite

__all__ = ["Branch", "Propagated", "edge_lrp", "propagate", "propagate_branches", "stabilize"]

STRATEGIES = ("auto", "spmm", "scatter")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def widen(t):
    """A half-precision tensor in float32 (anything else as it is).

    Half precisions compute in float32: float16 overflows R / eps (65504 * 1e-6 is
    0.07), and an inf times a zero contribution is NaN; bfloat16 keeps 3 digits.
    """
    return t.float() if isinstance(t, Tensor) and t.dtype in HALF_DTYPES else t


class Propagated(NamedTuple):
    """What one propagation produced.

    ``node``: input relevance ``[N_in, C]``; ``edge``: relevance per connection
    (``[E]`` summed over channels) or None; ``absorbed``: the part of the output
    relevance ``[N_out, C]`` taken by the bias and the stabiliser (``R_out - flowed``).
    """

    node: Tensor
    edge: Tensor | None
    absorbed: Tensor | None


def stabilize(d: Tensor, eps: float, return_shift: bool = False):
    """``d + eps * sign(d)`` with ``sign(0) = +1`` (and the added ``eps * sign(d)`` if asked)."""
    if eps == 0:
        return (d, torch.zeros_like(d)) if return_shift else d
    # copysign is one cheap pass where torch.where over d ± eps costs five; adding +0.0
    # first turns -0.0 into +0.0 so that sign(0) = +1 holds for both zeros. eps is taken
    # in d's own dtype (a float64 scalar would upcast half inputs).
    out = d + 0.0
    shift = torch.copysign(_scalar(eps, out), out)
    out += shift
    return (out, shift) if return_shift else out


_SCALARS: dict[tuple, Tensor] = {}


def _scalar(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype and device, made once (a stabiliser
    is the same few numbers call after call)."""
    key = (value, like.dtype, like.device)
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) > 64:
            _SCALARS.clear()
        t = _SCALARS[key] = like.new_full((), value)
    return t


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

    ``backward`` returns ``([(input name, g(W)ᵀ s), ...], edge relevance)``. Terms of one
    branch whose weights split the edges between them (w⁺ / w⁻) become one fused product
    over stacked inputs (:class:`FusedTerms`); the rest run one by one.
    """
    by_branch: dict[int, list] = {}
    for pos, inp, f, gw in terms:
        by_branch.setdefault(pos, []).append((inp, f, gw))
    out = []
    for pos, items in by_branch.items():
        op = prepared[pos][0].op
        if strategy == "spmm" and isinstance(op, EdgeOperator) and len(items) > 1:
            values = [gw for _, _, gw in items]
            if FusedTerms.applies(op, values):
                fused = FusedTerms(op, [f for _, f, _ in items], values)
                names = [inp for inp, _, _ in items]
                out.append((pos, fused.forward, functools.partial(_fused_backward, fused, names)))
                continue
        for inp, f, gw in items:
            out.append(
                (
                    pos,
                    functools.partial(op.forward, gw, f, strategy, max_memory),
                    functools.partial(_backward, op, inp, gw, f, strategy=strategy, max_memory=max_memory),
                )
            )
    return out


def _backward(op, inp, gw, f, s, want_edge, *, strategy, max_memory):
    c, edge = op.backward(gw, f, s, strategy, want_edge, max_memory)
    return [(inp, c)], edge


def _fused_backward(fused, names, s, want_edge):
    parts, edge = fused.backward(s, want_edge)
    return list(zip(names, parts)), edge


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)`` for ``b`` broadcasting against ``a``, without an ``a``-sized temporary."""
    if b.dim() > a.dim():  # leading dimensions of size 1
        b = b.reshape(b.shape[b.dim() - a.dim() :])
    if a.dim() > b.dim():  # sum a over the dimensions b does not have...
        a = a.sum(tuple(range(a.dim() - b.dim())))
    spread = tuple(i for i, (n, m) in enumerate(zip(a.shape, b.shape)) if m == 1 and n > 1)
    if spread:  # ...and over those b is constant along, then multiply
        a = a.sum(spread, keepdim=True)
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _combine(acc: dict[str, Tensor], inputs: dict[str, Tensor], x: Tensor, ratio: bool, skip: set) -> Tensor:
    """Input relevance ``sum_k f_k ⊙ c_k`` from the per-input-transform sums ``c_k``.

    With ``ratio`` (proportional rules only) it returns ``R_in / x`` instead, which is
    ``sum_k m_k ⊙ c_k`` for ``f_k = x ⊙ m_k`` (``m = 1``, ``[x > 0]`` or ``[x < 0]``): no
    product with ``x`` and no division by it. Where ``x = 0`` the relevance ``x ⊙ ratio``
    is 0 whatever the ratio, so no mask is spent there; the ratio is then what a
    gradient would carry on (LRP-0 stays gradient × input through sums that cancel).
    ``skip`` names sign-restricted inputs that vanish (``"neg"``: ``x >= 0`` throughout).
    """
    if not ratio:
        out = None
        for name, c in acc.items():
            if name == "one":
                out = c if out is None else out.add_(c)
            else:
                out = c.mul_(inputs[name]) if out is None else out.addcmul_(c, inputs[name])
        return out
    pos, neg, out = acc.get("pos"), acc.get("neg"), acc.get("x")
    if pos is not None and neg is not None:
        signed = torch.where(x > 0, pos, neg)
    elif pos is not None:
        signed = pos if "neg" in skip else pos.masked_fill_(x < 0, 0)
    elif neg is not None:
        signed = neg if "pos" in skip else neg.masked_fill_(x > 0, 0)
    else:
        signed = None
    if out is None:
        return signed
    return out if signed is None else out.add_(signed)


class RatioOverflowError(ArithmeticError):
    """``R / stab(d)`` overflowed the dtype (a tiny denominator under large relevance)."""


class NonFiniteError(ValueError):
    """A map's contributions, or its relevance ratios even in float64, are not finite."""


class _Options(NamedTuple):
    rule: Rule
    strategy: str
    want_edge: bool
    want_absorbed: bool | str
    max_memory: int
    ratio: bool


def propagate_branches(
    branches: list[Branch],
    relevance: Tensor,
    rule: Rule,
    bias: Tensor | None = None,
    z: Tensor | None = None,
    strategy: str = "auto",
    want_edge: bool = False,
    want_absorbed: bool | str = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
    ratio: bool = False,
    keep_wide: bool = False,
) -> tuple[list[tuple[Tensor, Tensor | None]], Tensor | None]:
    """Run ``rule`` over ``z = sum_b op_b(x_b) + bias``, all branches sharing one denominator.

    A layer that adds several linear maps (a root weight beside the neighbour
    aggregation, APPNP's teleport term) is one linear map over the concatenated inputs;
    sharing the denominator applies the rule to that joint map, not to each summand.
    Returns ``[(R_in_b, edge_b)]`` per branch and the absorbed relevance: ``[N_out, C]``
    for ``want_absorbed=True``, its sum (a 0-d tensor) for ``"total"``, else None.
    ``ratio=True`` (proportional rules) returns ``R_in_b / x_b`` (any finite value where
    ``x_b = 0``) in place of ``R_in_b``. No input checks (see :func:`edge_lrp`).

    Half precisions compute in float32 (see :func:`widen`). Where ``R / stab(d)``, or a
    sum on the way, overflows (float32: a denominator near 1e-40, or huge relevance over
    a dead unit's eps), an infinite ratio times a zero contribution would be NaN: the map
    is recomputed in float64. Results come back in the inputs' dtype, or as computed
    with ``keep_wide`` (for a caller that narrows them itself).
    """
    opts = _Options(rule, strategy, want_edge, want_absorbed, max_memory, ratio)
    work = torch.float32 if relevance.dtype in HALF_DTYPES else relevance.dtype
    try:
        results, absorbed = _in_dtype(work, branches, relevance, bias, z, opts)
    except RatioOverflowError:
        if work == torch.float64:
            raise NonFiniteError(
                f"{rule!r}: relevance / denominator overflows float64 (denominators near 1e-300): "
                "use a larger stabilizer"
            ) from None
        work = torch.float64
        try:
            results, absorbed = _in_dtype(work, branches, relevance, bias, z, opts)
        except RatioOverflowError:
            raise NonFiniteError(
                f"{rule!r}: relevance / denominator overflows even in float64 (inputs or relevance "
                "near the dtype's limit): scale them down or use a larger stabilizer"
            ) from None
    if keep_wide or work == relevance.dtype:
        return results, absorbed
    results = [(r.to(b.x.dtype), None if e is None else e.to(b.weight.dtype)) for (r, e), b in zip(results, branches)]
    return results, None if absorbed is None else absorbed.to(relevance.dtype)


def _in_dtype(dtype, branches, relevance, bias, z, opts: _Options):
    """:func:`_propagate_branches` on inputs cast to ``dtype`` (a no-op where they are)."""
    if relevance.dtype != dtype:
        branches = [Branch(b.op, b.x.to(dtype), b.weight.to(dtype)) for b in branches]
        relevance, bias, z = (None if t is None else t.to(dtype) for t in (relevance, bias, z))
    return _propagate_branches(branches, relevance, bias, z, opts)


def _propagate_branches(branches: list[Branch], relevance: Tensor, bias, z, opts: _Options):
    """:func:`propagate_branches` in ``relevance``'s dtype."""
    rule, strategy, want_edge, want_absorbed, max_memory, ratio = opts
    strategy = _resolve_strategy(strategy, relevance)
    if ratio and not rule.proportional:
        raise ValueError(f"{rule!r} is not proportional to its input: no ratio form")
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
        if ("neg" in uses or "pos" in uses) and b.x.numel():
            lo, hi = torch.aminmax(b.x)  # one pass (and one sync) for both signs
            if lo >= 0:
                skip.add("neg")
            if hi <= 0:
                skip.add("pos")
        elif "neg" in uses or "pos" in uses:  # no inputs at all: nothing to skip on
            skip.update({"neg", "pos"} & uses)
        prepared.append((b, skip, {}))

    # Per branch and input transform, the sum over groups and terms of g(W)ᵀ s.
    acc: list[dict[str, Tensor]] = [{} for _ in branches]
    edges: list[Tensor | None] = [None for _ in branches]
    flowed = None  # want_absorbed=True: the relevance that reached the inputs, per output
    denominators: list[tuple[Tensor, bool]] = []  # (d, whether to sum it in the check)
    left, extra = None, 0.0  # "total": what did not (a tensor to sum, or already a sum) + bias dots
    # A single stabilised group over all outputs absorbs exactly s * (bias share + shift).
    g0 = rule.groups[0]
    direct = len(rule.groups) == 1 and g0.coef == 1.0 and g0.where is None and rule.stabilizer > 0

    def products_of(term_list):
        terms = []  # (branch position, input name, f, g(w))
        for pos, (b, skip, inputs) in enumerate(prepared):
            for term in term_list:
                if term.inp in skip:
                    continue
                gw = b.op.transform(b.weight, term.weight)
                if term.may_vanish and not has_nonzero(gw.edge if isinstance(gw, EdgeValues) else gw):
                    continue
                if term.inp not in inputs:
                    inputs[term.inp] = rule.input(term.inp, b.x)
                terms.append((pos, term.inp, inputs[term.inp], gw))
        return _products(prepared, terms, strategy, max_memory)

    def run_backward(products, s):
        for pos, _, backward in products:
            parts, part_edge = backward(s, want_edge)
            for name, c in parts:
                acc[pos][name] = c if name not in acc[pos] else acc[pos][name].add_(c)
            if part_edge is not None:
                edges[pos] = part_edge if edges[pos] is None else edges[pos] + part_edge

    # Rules whose groups mix a few shared products (Gamma) compute each product once:
    # forward values U_u, and backward once per product with s_u = sum_g mix_gu s_g.
    shared = rule.shared
    groups = rule.groups
    if z is not None and len(groups) > 1 and all(g.where is not None for g in groups):
        # Groups split the outputs by the sign of z. Below a ReLU no relevance reaches a
        # z < 0 unit (and an explained logit has one sign), so one group is often dead:
        # the live one alone needs fewer products than the shared form of all of them.
        negative = z < 0

        def has_relevance(g) -> bool:
            return has_nonzero(relevance.masked_fill(negative if g.where == ">=0" else ~negative, 0))

        rest = tuple(g for g in groups[1:] if has_relevance(g))
        # (the first group is live unless all relevance sits in the others)
        live = rest if rest and not has_relevance(groups[0]) else (groups[0], *rest)
        if len(live) < len(groups):
            groups, shared = live, None
    if shared is not None:
        unit_products = [products_of(unit) for unit in shared.units]
        unit_values: list[Tensor | None] = [None] * len(shared.units)
        plain = None  # W x, the forward's contributions: z less its bias when z is known
        if z is not None:
            plain = z if bias is None else z - bias
        for u, prods in enumerate(unit_products):
            if plain is not None and u == len(unit_products) - 1:
                # sum_u plain_u U_u = W x: the last unit follows from the others.
                rest = plain.clone()
                for v in range(u):
                    rest.add_(unit_values[v], alpha=-shared.plain[v])
                unit_values[u] = rest.div_(shared.plain[u])
                continue
            val = None
            for _, forward, _ in prods:
                val = forward() if val is None else val.add_(forward())
            unit_values[u] = relevance.new_zeros(relevance.shape) if val is None else val
        unit_s: list[Tensor | None] = [None] * len(shared.units)

    for g, group in enumerate(groups):
        products = None if shared is not None else products_of(group.terms)

        # d: the denominator before stabilising; `contrib` the contributions alone, or
        # None where they are d minus the (full) bias, which the absorbed sum then
        # subtracts by a dot product instead of forming z - b.
        contrib = None
        if shared is not None:
            d = None
            for u, value in enumerate(unit_values):
                c = shared.mix[g][u]
                if c:
                    d = value * c if d is None else d.add_(value, alpha=c)
            d = contrib = relevance.new_zeros(relevance.shape) if d is None else d
            if use_bias:
                d = d + group.bias(bias)
        elif group.plain and z is not None:
            if use_bias:
                d = z
            else:
                d = contrib = z if bias is None else z - bias
        else:
            d = None
            for _, forward, _ in products:
                d = forward() if d is None else d.add_(forward())
            d = contrib = relevance.new_zeros(relevance.shape) if d is None else d
            if use_bias:
                d = d + group.bias(bias)
        # With eps > 0 the stabilised denominator is never zero: skip the zero test.
        if rule.stabilizer > 0:
            stab, shift = stabilize(d, rule.stabilizer, return_shift=True)
            s = relevance / stab
        else:
            s = _safe_divide(relevance, d)
        # (checked with the results, in one host read at the end; the forward's output
        # itself needs no pass of its own: it is checked at the entry, or R = z * grad
        # carries any non-finite value of it into the results)
        denominators.append((d, d is not z))
        if group.where is not None:
            s = s * ((z >= 0) if group.where == ">=0" else (z < 0))
        if group.coef != 1.0:
            s = s * group.coef
        if want_absorbed == "total" and direct:
            # One group over all outputs: R - s contrib = s (stab(d) - contrib), the bias
            # share and the stabiliser's shift, summed as one dot product (the shift is
            # this group's own temporary: the bias share joins it in place).
            if use_bias:
                shift = shift.add_(bias if contrib is None else group.bias(bias))
            left = torch.dot(s.reshape(-1), shift.reshape(-1))
        elif want_absorbed == "total":
            # One running R - sum_g s_g contrib_g, in place; its elementwise differences
            # are small where conservation is good, so summing them loses no accuracy
            # (a difference of two large sums would).
            if left is None:
                left = relevance.clone()
            left.addcmul_(s, contrib if contrib is not None else z, value=-1)
            if contrib is None:
                extra = extra + _dot(s, bias)
        elif want_absorbed:
            part = s * (contrib if contrib is not None else z - bias)
            flowed = part if flowed is None else flowed + part
        if shared is None:
            run_backward(products, s)
            continue
        for u in range(len(unit_s)):
            c = shared.mix[g][u]
            if c:
                unit_s[u] = s * c if unit_s[u] is None else unit_s[u].add_(s, alpha=c)
    if shared is not None:
        for prods, s_u in zip(unit_products, unit_s):
            if s_u is not None:
                run_backward(prods, s_u)

    results = []
    for b, (_, skip, inputs), a, edge in zip(branches, prepared, acc, edges):
        r_in = _combine(a, inputs, b.x, ratio, skip) if a else torch.zeros_like(b.x)
        if want_edge and edge is None:
            edge = b.weight.new_zeros(b.weight.shape)
        results.append((r_in, edge))
    absorbed = None
    if want_absorbed == "total" and direct:
        absorbed = left
    elif want_absorbed == "total":
        absorbed = (left.sum() if left is not None else relevance.sum()) + extra
    elif want_absorbed:
        absorbed = relevance - flowed if flowed is not None else relevance.clone()
    _check_finite_run(rule, denominators, results, absorbed)
    return results, absorbed


def _check_finite_run(rule: Rule, denominators: list[tuple[Tensor, bool]], results: list, absorbed) -> None:
    """One host read over the denominators, results and absorbed relevance. A non-finite
    denominator would turn its outputs' relevance into 0 or NaN silently: an error. With
    finite denominators, a non-finite result is an overflow (``R / stab(d)``, or a sum on
    the way) in this dtype: :class:`RatioOverflowError`, recomputed in float64."""
    parts = [d.sum() for d, check in denominators if check]
    parts += [t.sum() for r, e in results for t in (r, e) if t is not None and t.numel()]
    if isinstance(absorbed, Tensor):
        parts.append(absorbed if absorbed.dim() == 0 else absorbed.sum())
    if not parts or math.isfinite((parts[0] if len(parts) == 1 else torch.stack(parts).sum()).item()):
        return
    for d, _ in denominators:
        kind = non_finite(d)
        if kind:
            raise NonFiniteError(
                f"{rule!r}: its contributions sum to {kind} in {d.dtype}: look for NaN/Inf in the weights "
                "or inputs; an overflow needs smaller rule parameters or inputs, or float64"
            )
    if any(non_finite(t) for r, e in results for t in (r, e) if t is not None) or (
        isinstance(absorbed, Tensor) and non_finite(absorbed)
    ):
        raise RatioOverflowError


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


@summing_once
def check_edge_call(
    caller: str,
    x: Tensor,
    edge_index: Tensor | EdgeOperator,
    edge_weight: Tensor | None,
    relevance: Tensor,
    rule: Rule,
    *,
    bias: Tensor | None = None,
    num_out: int | None = None,
    z: Tensor | None = None,
) -> None:
    """The checks of an ``edge_lrp`` call (shared with :func:`sparse_lrp.reference.edge_lrp`):
    a linear-map rule, matching shapes, devices and dtypes, edges in range, finite values."""
    check_map_rule(caller, rule)
    if edge_weight is not None and not isinstance(edge_weight, Tensor):
        raise TypeError(f"edge_weight must be a torch.Tensor or None, got {type(edge_weight).__name__}")
    op = edge_index if isinstance(edge_index, EdgeOperator) else None
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
    if op is not None and op.edited():
        raise ValueError(
            "the prepared operator's edge_index was changed in place after prepare(): its sorted "
            "structures describe the old edges; prepare the edited edge_index again"
        )
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
            raise ValueError(f"edge_weight has {edge_weight.shape[0]} entries but edge_index has {ei.shape[1]} edges")
    if bias is not None:
        check_tensor("bias", bias)
        try:
            shape = torch.broadcast_shapes(bias.shape, relevance.shape)
        except RuntimeError:
            shape = None
        if shape != relevance.shape:  # (extra leading dimensions broadcast, but widen)
            raise ValueError(
                f"bias of shape {tuple(bias.shape)} does not broadcast against relevance {tuple(relevance.shape)}"
            )
    if z is not None and z.shape != relevance.shape:
        raise ValueError(f"z has shape {tuple(z.shape)} but relevance has {tuple(relevance.shape)}")
    for name, t in (("x", x), ("relevance", relevance), ("edge_weight", edge_weight), ("bias", bias), ("z", z)):
        if t is not None:
            check_finite(name, t)


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
    check_map_rule("edge_lrp", rule)  # (before the strategy: a wrong rule is the first thing to say)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    op = edge_index if isinstance(edge_index, EdgeOperator) else None
    check_budget(max_memory)
    if check:
        check_edge_call("edge_lrp", x, edge_index, edge_weight, relevance, rule, bias=bias, num_out=num_out, z=z)
    if op is None:
        op = EdgeOperator(edge_index, x.shape[0], relevance.shape[0])
    if edge_weight is None:
        edge_weight = x.new_ones(op.num_edges)
    with torch.no_grad():  # relevance is a result, not a differentiable function of the inputs
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
