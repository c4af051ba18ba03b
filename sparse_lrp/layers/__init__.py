"""Layer handlers: one short adapter per layer type, all built on :mod:`.base`.

A handler is ``handler(call, *args, **kwargs) -> Tensor``: it recomputes the layer's
forward with the LRP primitives of :class:`~sparse_lrp.layers.base.LayerCall`, and
the backward pass follows. Register your own with :func:`register_handler`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .base import Context, LayerCall, MapBranch

__all__ = ["Context", "LayerCall", "MapBranch", "find_handler", "is_builtin", "register_handler", "supported_types"]

Handler = Callable[..., object]
_HANDLERS: dict[type, tuple[Handler, tuple[str, ...]]] = {}


def register_handler(module_type: type, handler: Handler, *, children: tuple[str, ...] = ()) -> None:
    """Explain every module of ``module_type`` with ``handler``.

    ``children`` names submodules the handler *calls* (such as GIN's ``nn``): they are
    explained by their own handlers. Other submodules are only read (their weights).
    A later registration for the same type replaces the earlier one.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    _HANDLERS[module_type] = (handler, tuple(children))


def find_handler(module: nn.Module) -> tuple[Handler, tuple[str, ...]] | None:
    """The handler for ``module``'s most specific registered type, if any."""
    for kind in type(module).__mro__:
        if kind in _HANDLERS:
            return _HANDLERS[kind]
    return None


def is_builtin(module: nn.Module) -> bool:
    """Whether ``module`` runs through a handler this library ships (not a user's)."""
    for kind in type(module).__mro__:
        if kind in _HANDLERS:
            return _BUILTIN.get(kind) is _HANDLERS[kind]
    return False


def supported_types() -> list[str]:
    return sorted(f"{t.__module__.split('.')[0]}.{t.__name__}" for t in _HANDLERS)


from . import convs, torch_nn  # noqa: E402,F401 - registers the built-in handlers

_BUILTIN = dict(_HANDLERS)
