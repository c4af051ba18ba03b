"""Composites: which rule explains which layer.

A :class:`Composite` maps each layer to a rule by module name (glob patterns), by
type, or by position: ``first`` applies to every linear map that reads the model's
input features (and to every feature map that no other feature map precedes, as GIN's
MLP after its neighbour sum), ``top`` to the layer that produces the explained output.

Presets (also selectable by name in :func:`sparse_lrp.explain` and
:class:`sparse_lrp.LRPExplainer`):

* ``"epsilon"``: Epsilon everywhere. Closest to the model (LRP-0 = gradient × input on
  bias-free ReLU networks); the small ε only absorbs near-zero denominators.
* ``"zplus"``: ZPlus in graph layers (every ``MessagePassing``), Epsilon in dense heads.
  Message passing sums many neighbours whose signed contributions cancel; z⁺ keeps only
  the supporting ones, which gives sparse, positive edge explanations. The dense head
  keeps Epsilon so the class evidence is split faithfully.
* ``"gamma"``: WSquare on the input layer (node features in graph benchmarks are often
  constant or one-hot, where an input-independent rule spreads relevance by weight
  strength instead of by feature value), Gamma(0.25) in hidden layers, Epsilon on top.
  The layered recommendation of the LRP overview literature, adapted to GNNs.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from .rules import Epsilon, Gamma, Pass, Rule, WSquare, ZPlus

__all__ = ["PRESETS", "Composite", "epsilon", "gamma", "resolve", "zplus"]


class Composite:
    """Assigns rules to layers.

    Args:
        default: rule for every linear layer not matched otherwise.
        by_name: ``{pattern: rule}``; patterns match the module's path in the model
            (``"convs.0"``, ``"convs.*"``, ``"lin"``) with :mod:`fnmatch`.
        by_type: ``{module_type: rule}``, matched with ``isinstance`` in insertion order.
        first: rule for linear maps whose input is the model's input features, and for
            feature maps that no other feature map precedes.
        top: rule for the layer that produces the explained output.
        activation: rule for element-wise activations (only :class:`Pass` is meaningful).

    Precedence: ``by_name`` > ``first``/``top`` > ``by_type`` > ``default``.
    """

    def __init__(
        self,
        default: Rule | None = None,
        *,
        by_name: dict[str, Rule] | None = None,
        by_type: dict[type, Rule] | None = None,
        first: Rule | None = None,
        top: Rule | None = None,
        activation: Rule | None = None,
    ) -> None:
        self.default = default if default is not None else Epsilon()
        self.by_name = dict(by_name or {})
        self.by_type = dict(by_type or {})
        self.first = first
        self.top = top
        self.activation = activation if activation is not None else Pass()
        for rule in [self.default, *self.by_name.values(), *self.by_type.values(), first, top]:
            if rule is not None and (not isinstance(rule, Rule) or isinstance(rule, Pass)):
                raise TypeError(f"composite rules for linear layers must be linear-map rules, got {rule!r}")
        for kind in self.by_type:
            if not isinstance(kind, type):
                raise TypeError(f"by_type keys must be module classes (e.g. GCNConv), got {kind!r}")

    def check_names(self, names: list[str]) -> None:
        """Raise if a ``by_name`` pattern matches none of the layers ``names`` (a typo, or
        a module inside a layer, whose maps take the layer's rule)."""
        for pattern in self.by_name:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
                raise ValueError(f"composite by_name pattern {pattern!r} matches no layer; layers: {shown}")

    def rule(self, name: str, module: nn.Module, *, reads_input: bool = False, is_top: bool = False) -> Rule:
        """The rule for module ``module`` at path ``name``."""
        for pattern, rule in self.by_name.items():
            if fnmatch.fnmatchcase(name, pattern):
                return rule
        if reads_input and self.first is not None:
            return self.first
        if is_top and self.top is not None:
            return self.top
        for kind, rule in self.by_type.items():
            if isinstance(module, kind):
                return rule
        return self.default

    def map_inputs(self, fn) -> Composite:
        """A copy whose rules have their input-shaped parameters (ZBox bounds) mapped by ``fn``."""

        def m(rule: Rule | None) -> Rule | None:
            return None if rule is None else rule.map_inputs(fn)

        return Composite(
            m(self.default),
            by_name={k: m(r) for k, r in self.by_name.items()},
            by_type={k: m(r) for k, r in self.by_type.items()},
            first=m(self.first),
            top=m(self.top),
            activation=self.activation,
        )

    def __repr__(self) -> str:
        return (
            f"Composite(default={self.default!r}, by_name={self.by_name!r}, by_type={self.by_type!r}, "
            f"first={self.first!r}, top={self.top!r})"
        )


def epsilon(eps: float = 1e-6) -> Composite:
    """Epsilon in every layer."""
    return Composite(Epsilon(eps))


def zplus(eps: float = 1e-6) -> Composite:
    """ZPlus in graph layers (``MessagePassing``), Epsilon in dense layers."""
    from torch_geometric.nn.conv import MessagePassing

    return Composite(Epsilon(eps), by_type={MessagePassing: ZPlus()})


def gamma(gamma: float = 0.25, first: Rule | None = None, eps: float = 1e-6) -> Composite:
    """``first`` (WSquare) on the input layer, Gamma in hidden layers, Epsilon on top."""
    return Composite(Gamma(gamma), first=first if first is not None else WSquare(), top=Epsilon(eps))


PRESETS = {"epsilon": epsilon, "zplus": zplus, "gamma": gamma}


def resolve(composite: Composite | Rule | str | None) -> Composite:
    """A composite from a composite, a single rule (used for every layer), or a preset name."""
    if composite is None:
        return epsilon()
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str):
        if composite not in PRESETS:
            raise ValueError(f"unknown composite preset {composite!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[composite]()
    if isinstance(composite, Pass):
        raise TypeError("Pass is for element-wise activations; give a linear-map rule such as Epsilon()")
    if isinstance(composite, Rule):
        return Composite(composite)
    raise TypeError(f"composite must be a Composite, a Rule or a preset name, got {type(composite).__name__}")
