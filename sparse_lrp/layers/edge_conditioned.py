"""Edge-conditioned convolutions: layers whose weights are computed per edge from edge features.

``NNConv`` (Gilmer et al.'s MPNN, Simonovsky and Komodakis' ECC)::

    out_i = x_i Θ_root + aggr_{j->i} x_j Θ(e_ji) + b,    Θ(e) = nn(e).view(in, out)

LRP holds each edge's matrix ``Θ(e_ji)`` at its forward value, as the library holds
attention and gates (LRP's gating / AH treatment): the message ``m_e = x_j Θ_e`` is then
a linear map of ``x_j`` with a weight matrix per edge, explained under the layer's rule
(:meth:`~.base.LayerCall.rowwise`, a feature map over the edges' rows). The messages
are the inputs of the aggregation (add, mean or max, :meth:`~.base.LayerCall.reduce_messages`),
whose map also sums the root term ``x_i Θ_root`` (a feature map of its own,
:meth:`~.base.LayerCall.root`) and the bias, so their relevance is the edge relevance.
``edge_attr`` receives no relevance: it reaches the output only through ``Θ``, which is
held fixed (``nn`` runs as plain model code, not explained).

``GMMConv`` (Monti et al.'s MoNet) is the same with ``Θ(e) = sum_k w_k(e) G_k``: ``K``
learned matrices ``G_k`` mixed by Gaussian kernel weights of the edge's pseudo-coordinates
``w_k(e) = exp(-1/2 sum_d (e_d - μ_kd)² / σ_kd²)`` (per input and output channel with
``separate_gaussians``), held fixed as ``Θ`` is. Each edge's matrix ``[in, out]`` is formed,
as NNConv's forward forms its own (PyG's GMMConv forward needs ``[E, K, out]`` only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import register_handler
from .base import LayerCall
from .convs import _check_plain, _model_ids


def _checked(call: LayerCall, x, edge_index, edge_attr, size) -> None:
    _check_plain(call, x, edge_index)
    kind = f"{call.name or '<model>'} ({type(call.module).__name__})"
    if edge_attr is None:
        raise ValueError(f"{kind}: needs edge_attr (the edge weights are computed from it)")
    if size is not None and tuple(size) != (x.shape[0], x.shape[0]):
        raise ValueError(f"{kind}: bipartite size={tuple(size)} is not supported")


def _per_edge(call: LayerCall, x, edge_index, theta, root, bias) -> Tensor:
    """``x_i W_root + aggr_{j->i} x_j Θ_e + b`` for the fixed per-edge ``theta [E, in, out]``."""
    with call.over_edges():  # (a map over edge rows)
        msg = call.rowwise(x.index_select(0, edge_index[0]), theta)
    rows = torch.stack([torch.arange(edge_index.shape[1], device=x.device), edge_index[1]])
    extra = [call.root(x, root.weight)] if root is not None else []
    return call.reduce_messages(msg, rows, x.shape[0], _model_ids(call, edge_index), extra, bias)


def nn_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None) -> Tensor:
    """NNConv: ``out_i = x_i Θ_root + aggr_j x_j Θ(e_ji) + b`` with every ``Θ(e_ji)`` held fixed."""
    _checked(call, x, edge_index, edge_attr, size)
    m = call.module
    with torch.no_grad():  # (the per-edge weights: constants of the forward)
        theta = m.nn(edge_attr.detach()).view(edge_index.shape[1], x.shape[1], m.out_channels)
    return _per_edge(call, x, edge_index, theta, m.lin if m.root_weight else None, m.bias)


def gmm_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None) -> Tensor:
    """GMMConv: ``out_i = x_i Θ_root + aggr_j x_j (sum_k w_k(e_ji) G_k) + b``, the Gaussian
    kernel weights ``w_k`` held fixed."""
    _checked(call, x, edge_index, edge_attr, size)
    m = call.module
    f, c, k = x.shape[1], m.out_channels, m.kernel_size
    with torch.no_grad():  # (the kernel weights, as the layer's message computes them)
        e = edge_attr.detach().view(edge_index.shape[1], *[1] * (3 if m.separate_gaussians else 1), -1)
        mu, sigma = m.mu.detach().unsqueeze(0), m.sigma.detach().unsqueeze(0)
        w = torch.exp((-0.5 * (e - mu).pow(2) / (1e-15 + sigma.pow(2))).sum(-1))  # [E, K] or [E, in, out, K]
        if m.separate_gaussians:
            theta = (w * m.g.detach().view(1, f, c, k)).sum(-1)
        else:
            theta = torch.einsum("ek,fkc->efc", w, m.g.detach().view(f, k, c))
    return _per_edge(call, x, edge_index, theta, getattr(m, "root", None), m.bias)


def _register() -> None:
    import torch_geometric.nn as g

    # NNConv's nn is not named a child: it is not explained, only run for the weights held fixed.
    register_handler(g.NNConv, nn_conv, subgraph=())
    register_handler(g.GMMConv, gmm_conv, subgraph=())


_register()
