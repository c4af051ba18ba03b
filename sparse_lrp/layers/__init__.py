"""Layer handlers: one short adapter per layer type, all built on :mod:`.base`.

A handler is ``handler(call, *args, **kwargs) -> Tensor``: it recomputes the layer's
forward with the LRP primitives of :class:`~sparse_lrp.layers.base.LayerCall`, and
the backward pass follows. Register your own with :func:`register_handler`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .base import Context, LayerCall, MapBranch, MergedEdgesError

__all__ = [
    "Context",
    "LayerCall",
    "MapBranch",
    "MergedEdgesError",
    "find_handler",
    "register_handler",
    "subgraph_needs",
    "supported_types",
]

Handler = Callable[..., object]
Needs = Callable[[nn.Module], "tuple[str, ...] | None"]
_HANDLERS: dict[type, tuple[Handler, tuple[str, ...]]] = {}
_SUBGRAPH: dict[type, frozenset[str] | Needs | None] = {}


# What a layer reads of the graph beyond its own nodes' incoming edges, so that a k-hop
# computation subgraph keeps it exact: "in_degrees" (neighbours' in-degrees, counted
# from their incoming edges), "out_degrees" (out-degrees, as ChebConv's Laplacian does),
# "weighted_in_degrees" (in-degrees as sums of edge weights that the handler takes from
# LayerCall.degree_weights, as GCN normalisation does: then the many edges into a node at
# the subgraph's border travel as one edge carrying their total weight).
SUBGRAPH_NEEDS = ("in_degrees", "out_degrees", "weighted_in_degrees")


def register_handler(
    module_type: type,
    handler: Handler,
    *,
    children: tuple[str, ...] = (),
    subgraph: tuple[str, ...] | Needs | None = None,
) -> None:
    """Explain every module of ``module_type`` with ``handler``.

    ``children`` names submodules the handler *calls* (such as GIN's ``nn``): they are
    explained by their own handlers. Other submodules are only read (their weights).
    ``subgraph`` declares what the layer reads of the graph beyond its nodes' incoming
    edges (``()`` for nothing, or names from ``SUBGRAPH_NEEDS``); node targets then run
    on k-hop subgraphs that keep exactly that. Left None, a single target keeps the
    whole graph. Where the reads depend on the module's settings, ``subgraph`` is a
    function ``module -> needs or None``. A later registration for the same type
    replaces the earlier one.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(subgraph):
        subgraph = _checked_needs(subgraph)
    _HANDLERS[module_type] = (handler, (children,) if isinstance(children, str) else tuple(children))
    _SUBGRAPH[module_type] = subgraph


def _checked_needs(subgraph) -> frozenset[str] | None:
    if isinstance(subgraph, str):  # one need by name ("in_degrees"); "" declares none
        subgraph = (subgraph,) if subgraph else ()
    if subgraph is not None and not set(subgraph) <= set(SUBGRAPH_NEEDS):
        raise ValueError(f"subgraph needs must be among {SUBGRAPH_NEEDS}, got {subgraph!r}")
    return None if subgraph is None else frozenset(subgraph)


def subgraph_needs(modules) -> frozenset[str] | None:
    """What the handled ``modules`` read beyond in-edges; None if one did not declare it."""
    needs: set[str] = set()
    for module in modules:
        for kind in type(module).__mro__:
            if kind in _HANDLERS:
                declared = _SUBGRAPH.get(kind)
                if callable(declared):  # per instance (a BatchNorm without running statistics)
                    declared = _checked_needs(declared(module))
                if declared is None:
                    return None
                needs |= declared
                break
    return frozenset(needs)


def find_handler(module: nn.Module) -> tuple[Handler, tuple[str, ...]] | None:
    """The handler for ``module``'s most specific registered type, if any."""
    for kind in type(module).__mro__:
        if kind in _HANDLERS:
            return _HANDLERS[kind]
    return None


def supported_types() -> list[str]:
    return sorted(f"{t.__module__.split('.')[0]}.{t.__name__}" for t in _HANDLERS)


from . import (  # noqa: E402,F401 - registers the built-in handlers
    aggr,
    convs,
    edge_conditioned,
    hetero_convs,
    message_convs,
    more_convs,
    norms,
    pool,
    relational,
    sparse,
    torch_nn,
)
