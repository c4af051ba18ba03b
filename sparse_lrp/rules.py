"""LRP rules as small, declarative objects.

Every rule explains a linear map ``z_j = sum_i w_ji x_i + b_j`` by redistributing the
relevance ``R_j`` of each output onto its inputs::

    R_i = sum_g coef_g * sum_j  c^g_ji / stab(sum_i' c^g_ji' + b^g_j) * R_j

where each *group* ``g`` has its own contributions ``c^g_ji`` (a sum of *terms*
``f_k(x_i) * g_k(w_ji)``), its own bias share ``b^g_j`` and its own coefficient.
Most rules have one group; AlphaBeta and Gamma have two.

A rule only *declares* its terms. The propagation itself (one algorithm for dense,
sparse and graph operators) lives in :mod:`sparse_lrp.kernel`, so every rule works
with every layer without extra code.

The stabilised denominator follows the field's reference implementations:
``stab(d) = d + stabilizer * sign(d)`` with ``sign(0) = +1``; an output whose
stabilised denominator is still exactly zero passes no relevance (never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .validation import non_finite

__all__ = [
    "check_map_rule",
    "Rule",
    "Term",
    "Group",
    "Epsilon",
    "Z",
    "ZPlus",
    "AlphaBeta",
    "Gamma",
    "WSquare",
    "Flat",
    "ZBox",
    "Pass",
]

# Names of input transforms. The kernel resolves them; "x", "pos" and "neg" make the
# relevance proportional to the input (R_i = x_i * c_i), which lets model-level LRP
# carry the ratio c through autograd. "one", "x-low" and "x-high" do not.
PROPORTIONAL_INPUTS = ("x", "pos", "neg")


def _ident(t: Tensor) -> Tensor:
    return t


def _pos(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _neg(t: Tensor) -> Tensor:
    return t.clamp(max=0)


def _square(t: Tensor) -> Tensor:
    return t * t


def _ones(t: Tensor) -> Tensor:
    return torch.ones_like(t)


def _zeros(t: Tensor) -> Tensor:
    return torch.zeros_like(t)


@dataclass(frozen=True)
class _Lift:
    """``t + γ t⁺`` (``up``) or ``t + γ t⁻``: a transform equal to any other with the same
    ``γ`` (not a closure per rule object), so that a cache keyed by it (a layer's
    transformed weights) serves every Gamma rule alike, one made per call included."""

    gamma: float
    up: bool

    def __call__(self, t: Tensor) -> Tensor:
        return t + self.gamma * (t.clamp(min=0) if self.up else t.clamp(max=0))


def broadcast_param(t: Tensor, x: Tensor, name: str = "a rule parameter (ZBox bound)") -> Tensor:
    """An input-shaped rule parameter (ZBox bounds) broadcast to ``x``'s shape and dtype,
    with an error that names it where it does not fit."""
    try:
        return torch.broadcast_to(t.to(x), x.shape)
    except RuntimeError:
        shapes = f"of shape {tuple(t.shape)} does not broadcast against the input {tuple(x.shape)}"
        raise ValueError(f"{name} {shapes}") from None


def check_map_rule(caller: str, rule: object) -> None:
    """``rule`` must be a linear-map rule (not ``Pass``, which only element-wise steps take)."""
    if isinstance(rule, Pass) or not isinstance(rule, Rule):
        raise TypeError(f"{caller} needs a linear-map rule (Epsilon, ZPlus, ...), got {rule!r}")


@dataclass(frozen=True)
class Term:
    """One contribution term ``f(x_i) * g(w_ji)``.

    ``inp`` names the input transform: ``"x"`` (x), ``"pos"`` (x⁺), ``"neg"`` (x⁻),
    ``"one"`` (1), ``"x-low"``/``"x-high"`` (x less a ZBox bound). ``weight`` maps weight
    values elementwise (it sees only the stored, non-zero connections).
    """

    inp: str
    weight: Callable[[Tensor], Tensor]
    # True where g(w) is zero on many connections (w⁺, w⁻): the kernel then checks
    # whether the term vanishes altogether (a positive adjacency has no w⁻).
    may_vanish: bool = False


# The sign-split products: P = w⁺x⁺ + w⁻x⁻ (signs agree: contributions >= 0) and
# Q = w⁺x⁻ + w⁻x⁺ (signs oppose: <= 0), with P + Q = w x. Both list w⁺ first, so a sparse
# operator runs them on one fused structure (see operators.FusedTerms).
_AGREE = (Term("pos", _pos, True), Term("neg", _neg, True))
_OPPOSE = (Term("neg", _pos, True), Term("pos", _neg, True))


@dataclass(frozen=True)
class Shared:
    """Groups whose contributions are combinations of a few shared products.

    ``units``: term tuples, each one product (its terms split the weights' support, so
    a sparse operator runs it as one fused product). Group ``g`` has contributions
    ``sum_u mix[g][u] U_u``, and ``sum_u plain[u] U_u`` equals the plain forward ``W x``,
    so with the forward output known the last unit needs no product. The kernel then
    computes each unit once forwards, and once backwards with ``s_u = sum_g mix[g][u] s_g``.
    The groups' own terms stay the rule's definition (and the reference it is tested against).
    """

    units: tuple[tuple[Term, ...], ...]
    mix: tuple[tuple[float, ...], ...]
    plain: tuple[float, ...]


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator.

    ``where`` restricts the group to outputs whose forward pre-activation ``z_j`` is
    ``">=0"`` or ``"<0"`` (used by Gamma); ``None`` means all outputs.
    ``plain`` marks a group whose contributions are exactly the forward ``w_ji x_i``,
    so a known forward output can stand in for its denominator.
    """

    terms: tuple[Term, ...]
    bias: Callable[[Tensor], Tensor]
    coef: float = 1.0
    where: str | None = None
    plain: bool = False


class Rule:
    """Base class of all linear-map rules.

    Args:
        stabilizer: the ``eps`` in ``d + eps * sign(d)``.
        zero_bias: leave the bias out of every denominator (it then absorbs nothing).
    """

    groups: tuple[Group, ...] = ()
    shared: Shared | None = None

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        if not (stabilizer >= 0 and stabilizer < float("inf")):
            raise ValueError(f"stabilizer must be a finite number >= 0, got {stabilizer!r}")
        self.stabilizer = float(stabilizer)
        self.zero_bias = bool(zero_bias)

    @property
    def proportional(self) -> bool:
        """True when every input relevance is ``x_i`` times a factor (see module doc)."""
        return all(t.inp in PROPORTIONAL_INPUTS for g in self.groups for t in g.terms)

    @property
    def needs_output_sign(self) -> bool:
        return any(g.where is not None for g in self.groups)

    def input(self, name: str, x: Tensor) -> Tensor:
        """Resolve an input transform name for input ``x``."""
        if name == "x":
            return x
        if name == "pos":
            return x.clamp(min=0)
        if name == "neg":
            return x.clamp(max=0)
        if name == "one":
            return torch.ones_like(x)
        raise ValueError(f"{type(self).__name__} has no input transform {name!r}")

    def map_inputs(self, fn: Callable[[Tensor], Tensor]) -> Rule:
        """Return this rule with input-shaped parameters mapped by ``fn``.

        Layer adapters that change the input layout (for example a transpose) call
        this; only rules that store input-shaped tensors (ZBox) need to react.
        """
        return self

    @property
    def per_row_inputs(self) -> bool:
        """Whether input-shaped parameters differ by row (then rows cannot be cut apart)."""
        return False

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._params().items())
        if self.zero_bias:
            extra += ", zero_bias=True"
        return f"{type(self).__name__}(stabilizer={self.stabilizer!r}{extra})"

    def _params(self) -> dict:
        return {}


class Epsilon(Rule):
    """LRP-ε: ``R_i = sum_j x_i w_ji / (z_j + ε sign(z_j)) * R_j``, ``z_j = sum_i x_i w_ji + b_j``.

    ``Epsilon(0)`` is LRP-0 (also exported as :data:`Z`); with no bias it equals
    gradient × input on ReLU networks.
    """

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(stabilizer=epsilon, zero_bias=zero_bias)
        self.groups = (Group((Term("x", _ident),), bias=_ident, plain=True),)

    @property
    def epsilon(self) -> float:
        return self.stabilizer

    def __repr__(self) -> str:
        return f"Epsilon(epsilon={self.stabilizer!r}, zero_bias={self.zero_bias!r})"


def Z(zero_bias: bool = False) -> Epsilon:  # noqa: N802 - reads as the rule's name
    """LRP-0, the basic rule: ``Epsilon(0)``."""
    return Epsilon(0.0, zero_bias=zero_bias)


class ZPlus(Rule):
    """z⁺: contributions ``x_i⁺ w_ji⁺ + x_i⁻ w_ji⁻``, bias share ``b_j⁺``.

    ``R_i = sum_j (x_i⁺ w_ji⁺ + x_i⁻ w_ji⁻) / stab(sum_i' (...) + b_j⁺) * R_j``.
    All contributions are >= 0, so relevance keeps its sign.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(stabilizer, zero_bias)
        self.groups = (Group(_AGREE, bias=_pos),)


class AlphaBeta(Rule):
    """αβ: ``R_i = sum_j (α p_ji / stab(P_j) - β n_ji / stab(N_j)) * R_j``.

    Positive contributions ``p_ji = x_i⁺ w_ji⁺ + x_i⁻ w_ji⁻`` with ``P_j = sum_i p_ji + b_j⁺``;
    negative ones ``n_ji = x_i⁺ w_ji⁻ + x_i⁻ w_ji⁺`` with ``N_j = sum_i n_ji + b_j⁻``.
    Requires ``α - β = 1`` and ``α, β >= 0`` so that relevance is conserved.
    """

    def __init__(
        self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, zero_bias: bool = False
    ) -> None:
        super().__init__(stabilizer, zero_bias)
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise ValueError(f"AlphaBeta needs finite alpha and beta, got alpha={alpha}, beta={beta}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0, got alpha={alpha}, beta={beta}")
        if abs((alpha - beta) - 1.0) > 1e-9:
            raise ValueError(f"AlphaBeta needs alpha - beta = 1, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.groups = (
            Group(_AGREE, bias=_pos, coef=self.alpha),
            Group(_OPPOSE, bias=_neg, coef=-self.beta),
        )

    def _params(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta}


class Gamma(Rule):
    """Generalised γ rule (favours contributions that agree with the output's sign).

    Where ``z_j >= 0``: contributions ``x_i⁺(w_ji + γ w_ji⁺) + x_i⁻(w_ji + γ w_ji⁻)``,
    bias share ``b_j + γ b_j⁺``.
    Where ``z_j < 0``: contributions ``x_i⁺(w_ji + γ w_ji⁻) + x_i⁻(w_ji + γ w_ji⁺)``,
    bias share ``b_j + γ b_j⁻``.
    ``γ = 0`` is LRP-ε; ``γ -> inf`` approaches z⁺.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(stabilizer, zero_bias)
        if not 0 <= gamma < math.inf:
            raise ValueError(f"Gamma needs gamma >= 0 (and finite), got {gamma!r}")
        self.gamma = g = float(gamma)
        up, down = _Lift(g, up=True), _Lift(g, up=False)
        self.groups = (
            Group((Term("pos", up), Term("neg", down)), bias=up, where=">=0"),
            Group((Term("pos", down), Term("neg", up)), bias=down, where="<0"),
        )
        # In the sign-split products P (_AGREE) and Q (_OPPOSE) the groups are (1+γ)P + Q
        # and P + (1+γ)Q: two shared products instead of four per direction, and with the
        # forward known, Q = w x - P. (Q alone is never a denominator here, so deriving
        # it, and its rounding where it is exactly 0, is harmless.)
        self.shared = Shared(units=(_AGREE, _OPPOSE), mix=((1.0 + g, 1.0), (1.0, 1.0 + g)), plain=(1.0, 1.0))

    def _params(self) -> dict:
        return {"gamma": self.gamma}


class WSquare(Rule):
    """w²: ``R_i = sum_j w_ji² / stab(sum_i' w_ji'² + b_j²) * R_j`` (input-independent)."""

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(stabilizer, zero_bias)
        self.groups = (Group((Term("one", _square),), bias=_square),)


class Flat(Rule):
    """Flat: every existing connection contributes 1, ``R_i = sum_j 1 / stab(n_j) * R_j``.

    ``n_j`` counts the stored connections of output ``j`` (for a sparse weight: its
    stored pattern). The bias takes no share.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(stabilizer, zero_bias)
        self.groups = (Group((Term("one", _ones),), bias=_zeros),)


class ZBox(Rule):
    """z^B for bounded inputs ``low <= x <= high`` (typically the first layer).

    Contributions ``x_i w_ji - low_i w_ji⁺ - high_i w_ji⁻``, bias share ``b_j``.
    ``low`` and ``high`` broadcast against the input.

    The contributions are computed as ``(x_i - low_i) w_ji⁺ + (x_i - high_i) w_ji⁻``, the
    same sum with two terms that are each >= 0 inside the box: where an output's
    contributions all vanish (inputs at a bound), its large ``R / eps`` meets only zero
    inputs, instead of cancelling between three products and taking the other outputs'
    digits with it. ``w⁺``/``w⁻`` split the connections, so it is one fused product.
    """

    def __init__(
        self, low: Tensor | float, high: Tensor | float, stabilizer: float = 1e-6, zero_bias: bool = False
    ) -> None:
        super().__init__(stabilizer, zero_bias)
        self.low = torch.as_tensor(low)
        self.high = torch.as_tensor(high)
        for name, bound in (("low", self.low), ("high", self.high)):
            if bound.is_floating_point() and non_finite(bound):
                raise ValueError(f"ZBox {name} must be finite (a box around the inputs)")
        self.groups = (
            Group(
                (Term("x-low", _pos, True), Term("x-high", _neg, True)),
                bias=_ident,
            ),
        )

    def input(self, name: str, x: Tensor) -> Tensor:
        if name in ("x-low", "x-high"):
            which = name[2:]
            return x - broadcast_param(self.low if which == "low" else self.high, x, f"ZBox {which}")
        return super().input(name, x)

    def map_inputs(self, fn: Callable[[Tensor], Tensor]) -> ZBox:
        return ZBox(fn(self.low), fn(self.high), self.stabilizer, self.zero_bias)

    @property
    def per_row_inputs(self) -> bool:
        return any(b.dim() >= 2 and b.shape[0] > 1 for b in (self.low, self.high))

    def _params(self) -> dict:
        return {"low": self.low, "high": self.high}


class Pass(Rule):
    """Element-wise activations: relevance passes unchanged, ``R_in = R_out``."""

    def __init__(self) -> None:
        super().__init__(0.0, False)
