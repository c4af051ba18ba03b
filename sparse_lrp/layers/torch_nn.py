"""torch.nn layers: Linear, BatchNorm, element-wise activations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..operators import DiagonalOperator
from . import register_handler
from .base import LayerCall, MapBranch


def linear(call: LayerCall, x: Tensor) -> Tensor:
    """``y = x Wᵀ + b``: one dense linear map."""
    m = call.module
    return call.linear(x, m.weight, m.bias)


def _batch_statistics(m: nn.Module) -> bool:
    """Whether eval-mode ``m`` normalises by its batch's statistics (as torch decides:
    without running buffers, whatever ``track_running_stats`` says now)."""
    return m.running_mean is None and m.running_var is None


def _batch_norm_needs(m: nn.Module) -> tuple[str, ...] | None:
    # Batch statistics read every node of the graph: undeclared, a single node target
    # keeps the whole graph. Running statistics read nothing beyond the node itself.
    return None if _batch_statistics(m) else ()


def batch_norm(call: LayerCall, x: Tensor) -> Tensor:
    """Eval-mode batch norm is the affine map ``y = a x + b`` per channel, explained as such:
    ``a = γ / sqrt(var + ε)``, ``b = β - a mean`` (without running statistics, the batch's
    own mean and variance, taken as constants)."""
    m = call.module
    if x.dim() != 2:
        raise ValueError(f"{call.name}: BatchNorm is supported on [N, C] inputs, got shape {tuple(x.shape)}")
    if not _batch_statistics(m):
        mean, var = m.running_mean, m.running_var
    else:
        call.whole_graph_only("normalises by batch statistics (no running statistics)", "give it running statistics")
        mean, var = x.detach().mean(0), x.detach().var(0, unbiased=False)
    scale = torch.rsqrt(var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach()
    shift = -mean * scale + (m.bias.detach() if m.bias is not None else 0)
    return call.map([MapBranch(DiagonalOperator(scale), scale, x)], shift)


def activation(call: LayerCall, x: Tensor, *args, **kwargs) -> Tensor:
    """Element-wise activations pass relevance unchanged."""
    m = call.module
    # Positively homogeneous maps (y = a(x) x with a piecewise constant): autograd's own
    # backward multiplies the ratio by a(x), which is exactly R_x = R_y. Out of place, as
    # the forward's saved outputs must stay intact.
    if isinstance(m, nn.ReLU):
        return torch.relu(x)
    if isinstance(m, nn.LeakyReLU):
        return torch.nn.functional.leaky_relu(x, m.negative_slope)
    if isinstance(m, nn.PReLU):
        return torch.nn.functional.prelu(x, m.weight.detach())
    # The class's forward: call.original may be another name's handler for a shared module.
    forward = type(m).forward.__get__(m)
    return call.passthrough(lambda t: forward(t, *args, **kwargs), x, normaliser=isinstance(m, nn.Sigmoid))


def identity(call: LayerCall, x: Tensor, *args, **kwargs) -> Tensor:
    return x


register_handler(nn.Linear, linear, subgraph=())
for _bn in (nn.BatchNorm1d,):
    register_handler(_bn, batch_norm, subgraph=_batch_norm_needs)
for _act in (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Threshold,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.RReLU,
):
    register_handler(_act, activation, subgraph=())
for _ident in (nn.Identity, nn.Dropout):
    register_handler(_ident, identity, subgraph=())

try:  # PyG's own Linear has the torch layout (weight [out, in], bias [out]).
    from torch_geometric.nn.dense.linear import Linear as _PygLinear

    register_handler(_PygLinear, linear, subgraph=())
except ImportError:  # pragma: no cover - torch_geometric is a dependency
    pass
