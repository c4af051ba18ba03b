"""PyG aggregation modules used as a model's readout (pooling node rows into graphs).

Sum, mean and max pooling are the model's own arithmetic and pass relevance as sums and
selections do (see :mod:`.base`). The attention-like readouts weigh each node by a
softmax over its graph; as for attention in message passing, LRP holds those weights at
their forward values, which leaves a weighted sum, passed as such.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import register_handler
from .base import LayerCall, softmax_weights


def _softmax(scores: Tensor, index, ptr, dim_size, dim) -> Tensor:
    from torch_geometric.utils import softmax

    with torch.no_grad():
        return softmax(scores, index, ptr, dim_size, dim)


def attentional_aggregation(call: LayerCall, x: Tensor, index=None, ptr=None, dim_size=None, dim=-2) -> Tensor:
    """``AttentionalAggregation``: ``out_g = sum_{i in g} softmax_g(gate(x))_i · nn(x)_i``,
    the gates held fixed (read off the gate network without explaining it); ``nn`` is
    explained by its own layers."""
    m = call.module
    with torch.no_grad():
        xd = x.detach()
        gate = m.gate_mlp(xd, batch=index, batch_size=dim_size) if m.gate_mlp is not None else m.gate_nn(xd)
    if m.mlp is not None:
        x = m.mlp(x, batch=index, batch_size=dim_size)
    elif m.nn is not None:
        x = m.nn(x)
    return m.reduce(_softmax(gate, index, ptr, dim_size, dim) * x, index, ptr, dim_size, dim)


def softmax_aggregation(call: LayerCall, x: Tensor, index=None, ptr=None, dim_size=None, dim=-2) -> Tensor:
    """``SoftmaxAggregation`` as a readout: ``out_g = sum_{i in g} softmax_g(t x)_i x_i``
    per channel, the softmax weights held fixed."""
    m = call.module
    return m.reduce(softmax_weights(call.name, m, x, index, dim_size, ptr, dim) * x, index, ptr, dim_size, dim)


try:
    from torch_geometric.nn import aggr as _aggr
except ImportError:  # pragma: no cover - torch_geometric is a dependency
    _aggr = None
if _aggr is not None:
    # (node rows pooled into graphs: a graph-level readout reads every node of its graph)
    register_handler(_aggr.AttentionalAggregation, attentional_aggregation, children=("nn", "mlp"))
    register_handler(_aggr.SoftmaxAggregation, softmax_aggregation)
