"""``scatter_add``: torch_scatter when it imports and works, native torch otherwise.

torch_scatter's ``scatter_add`` is a thin wrapper over ``Tensor.scatter_add_``; the
native fallback uses ``index_add_`` on the first dimension, which is the same sum.
A torch_scatter that imports but is broken (an ABI mismatch after a torch upgrade,
say) is detected with a tiny probe call and replaced by the fallback with one warning.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["scatter_add", "get_backend", "set_backend", "use_backend", "available_backends"]


def _probe_torch_scatter():
    try:
        import torch_scatter
    except ImportError:
        return None
    except Exception as err:
        warnings.warn(f"torch_scatter failed to import ({err}); using native torch scatter.", stacklevel=3)
        return None
    try:
        out = torch_scatter.scatter_add(torch.ones(3, 2), torch.tensor([0, 1, 0]), dim=0, dim_size=2)
        if not torch.equal(out, torch.tensor([[2.0, 2.0], [1.0, 1.0]])):
            raise RuntimeError(f"probe returned {out.tolist()}")
    except Exception as err:
        warnings.warn(f"torch_scatter is installed but broken ({err}); using native torch scatter.", stacklevel=3)
        return None
    return torch_scatter.scatter_add


_TORCH_SCATTER = _probe_torch_scatter()
_backend = "torch_scatter" if _TORCH_SCATTER is not None else "torch"


def available_backends() -> list[str]:
    """Backends usable in this process: always ``"torch"``, plus ``"torch_scatter"`` if it works."""
    return ["torch"] + (["torch_scatter"] if _TORCH_SCATTER is not None else [])


def get_backend() -> str:
    """The backend :func:`scatter_add` uses now."""
    return _backend


def set_backend(name: str) -> None:
    """Select ``"torch"`` or ``"torch_scatter"`` for every later :func:`scatter_add`."""
    global _backend
    if name not in ("torch", "torch_scatter"):
        raise ValueError(f"unknown scatter backend {name!r}; choose 'torch' or 'torch_scatter'")
    if name not in available_backends():
        raise ValueError("scatter backend 'torch_scatter' is not available (not installed or broken)")
    _backend = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a scatter backend."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def scatter_add(src: Tensor, index: Tensor, dim_size: int, out: Tensor | None = None) -> Tensor:
    """Sum rows of ``src [E, ...]`` into ``out[index[e]]``; ``out`` has ``dim_size`` rows.

    With ``out`` given, the sum is accumulated into it in place and it is returned.
    """
    if out is None:
        out = src.new_zeros((dim_size, *src.shape[1:]))
    if _backend == "torch_scatter":
        return _TORCH_SCATTER(src, index, dim=0, out=out)
    return out.index_add_(0, index, src)
