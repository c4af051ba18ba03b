"""Normalisation layers under the LN-rule: the centring is linear, the spread a constant.

A normalisation ``y = γ (x - α mean(x)) / σ(x) + β`` is no linear map of ``x``: its
spread ``σ`` depends on ``x``. The LN-rule (Ali et al., 2022, *XAI for Transformers:
Better Explanations through Conservative Propagation*) takes ``σ`` as the constant the
forward pass computed. What remains is linear, and explained piece by piece:

* the centring ``u = x - α mean(x)`` is model arithmetic, passed as every sum is (see
  :mod:`.base`): for the ratio ``c = R_u / u``, ``R_x_i = x_i (c_i - α mean(c))``. That is
  LRP-0 on the centring map, conservative, and it divides by nothing of its own
  (``R_u`` arrives proportional to ``u``), so it needs no stabiliser;
* ``h = u / σ``, a positive constant per node or graph, passes relevance unchanged;
* the affine ``γ h + β`` is a per-channel map under the layer's rule, its bias taking its
  share, as for eval-mode batch norm.

The mean runs over each node's features (LayerNorm, GroupNorm, RMSNorm, which does not
centre: exact on k-hop subgraphs) or over each graph's nodes (PyG's graph-mode LayerNorm,
GraphNorm, InstanceNorm with batch statistics, PairNorm): those read the whole graph, so a
single node target keeps it, and batched node targets are refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..operators import DiagonalOperator
from . import register_handler
from .base import LayerCall, MapBranch


def _affine(call: LayerCall, h: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight * h + bias`` over the last dimension of ``h``, as one per-channel map."""
    if weight is None and bias is None:
        return h
    c = h.shape[-1]
    w = weight.detach().reshape(c) if weight is not None else h.new_ones(c)
    b = bias.detach().reshape(c) if bias is not None else None
    out = call.map([MapBranch(DiagonalOperator(w), w, h.reshape(-1, c))], b)
    return out.reshape(h.shape)


def _standardised(x: Tensor, eps: float, centre: bool = True) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the last dimension, the spread held constant."""
    u = x - x.mean(-1, keepdim=True) if centre else x
    var = u.detach().pow(2).mean(-1, keepdim=True)
    return u * torch.rsqrt(var + eps)


def layer_norm(call: LayerCall, x: Tensor) -> Tensor:
    """``nn.LayerNorm``: ``γ (x - mean) / sqrt(var + ε) + β`` over the trailing
    ``normalized_shape`` of each row, ``var`` held constant."""
    m = call.module
    shape = tuple(m.normalized_shape)
    if tuple(x.shape[-len(shape) :]) != shape:
        raise ValueError(f"{call.name}: LayerNorm{shape} got an input of shape {tuple(x.shape)}")
    h = _standardised(x.reshape(*x.shape[: x.dim() - len(shape)], -1), m.eps)
    return _affine(call, h, m.weight, m.bias).reshape(x.shape)


def rms_norm(call: LayerCall, x: Tensor) -> Tensor:
    """``nn.RMSNorm``: ``γ x / sqrt(mean(x²) + ε)``, the root mean square held constant."""
    m = call.module
    shape = tuple(m.normalized_shape)
    if tuple(x.shape[-len(shape) :]) != shape:
        raise ValueError(f"{call.name}: RMSNorm{shape} got an input of shape {tuple(x.shape)}")
    eps = m.eps if m.eps is not None else torch.finfo(x.dtype).eps
    h = _standardised(x.reshape(*x.shape[: x.dim() - len(shape)], -1), eps, centre=False)
    return _affine(call, h, m.weight, None).reshape(x.shape)


def group_norm(call: LayerCall, x: Tensor) -> Tensor:
    """``nn.GroupNorm`` on ``[N, C, *]``: each row's channels in ``num_groups`` groups,
    each group standardised (with its positions), then ``γ``, ``β`` per channel."""
    m = call.module
    if x.dim() < 2 or x.shape[1] != m.num_channels:
        raise ValueError(f"{call.name}: GroupNorm needs [N, {m.num_channels}, *] inputs, got {tuple(x.shape)}")
    h = _standardised(x.reshape(x.shape[0], m.num_groups, -1), m.eps).reshape(x.shape)
    if not m.affine:
        return h
    return _affine(call, h.movedim(1, -1), m.weight, m.bias).movedim(-1, 1)


# -- normalisations over each graph's nodes (PyG) ---------------------------------------
def _graphs(call: LayerCall, x: Tensor, batch: Tensor | None, size: int | None) -> tuple[Tensor, int]:
    call.whole_graph_only(
        "normalises by statistics over each graph's nodes", "use a per-node normalisation (LayerNorm(mode='node'))"
    )
    groups = call.ctx.graph_groups
    if batch is None and groups is not None and groups.numel() > 1:
        # Several graphs of a batch explained in one pass, split by graph: exact only if
        # no graph's output reads another's nodes, which statistics over all rows do.
        raise ValueError(
            f"layer {call.name or '<model>'!r} ({type(call.module).__name__}) is called without `batch`, so it "
            "normalises by statistics over all the batch's graphs at once: each graph's output reads the "
            "others', and several graphs cannot be explained in one pass. Pass `batch` to the layer in the "
            "model's forward, or explain one graph at a time (index=g)"
        )
    if batch is None:
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1
    return batch, int(batch.max()) + 1 if size is None else int(size)


def _mean(x: Tensor, batch: Tensor, size: int) -> Tensor:
    """Each graph's mean row ``[size, C]`` (a linear map of ``x``: relevance follows it)."""
    from torch_geometric.utils import scatter

    return scatter(x, batch, 0, size, reduce="mean")


def pyg_layer_norm(call: LayerCall, x: Tensor, batch: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """PyG ``LayerNorm``: ``mode="node"`` is ``nn.LayerNorm`` per node; ``mode="graph"``
    centres by the mean over each graph's nodes and features and divides by their
    standard deviation (``std + ε`` without ``batch``, ``sqrt(var + ε)`` with it, as PyG)."""
    m = call.module
    if m.mode == "node":
        return _affine(call, _standardised(x, m.eps), m.weight, m.bias)
    if m.mode != "graph":
        raise ValueError(f"{call.name}: LayerNorm mode {m.mode!r} is not supported (use 'graph' or 'node')")
    whole = batch is None
    batch, size = _graphs(call, x, batch, batch_size)
    u = x - _mean(x, batch, size).mean(-1, keepdim=True).index_select(0, batch)
    if whole:
        spread = u.detach().pow(2).mean().sqrt() + m.eps
    else:
        spread = (_mean(u.detach().pow(2), batch, size).mean(-1, keepdim=True) + m.eps).sqrt().index_select(0, batch)
    h = u / spread
    return _affine(call, h, m.weight, m.bias) if m.weight is not None and m.bias is not None else h


def graph_norm(call: LayerCall, x: Tensor, batch: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """PyG ``GraphNorm``: ``γ (x - α mean) / sqrt(var + ε) + β`` per graph and channel,
    ``α`` (``mean_scale``) and the variance held constant."""
    m = call.module
    batch, size = _graphs(call, x, batch, batch_size)
    u = x - _mean(x, batch, size).index_select(0, batch) * m.mean_scale.detach()
    var = _mean(u.detach().pow(2), batch, size)
    return _affine(call, u * torch.rsqrt(var + m.eps).index_select(0, batch), m.weight, m.bias)


def _running_statistics(m: nn.Module) -> bool:
    """Whether eval-mode PyG ``InstanceNorm`` ``m`` uses running statistics (as its forward decides)."""
    return m.track_running_stats and m.running_mean is not None and m.running_var is not None


def instance_norm(call: LayerCall, x: Tensor, batch: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """PyG ``InstanceNorm``: each graph's channels standardised by their own mean and
    (biased) variance, or, with running statistics, the affine map ``a x + b`` per channel
    that eval-mode batch norm is."""
    m = call.module
    affine = m.weight is not None and m.bias is not None
    if _running_statistics(m):
        scale = torch.rsqrt(m.running_var + m.eps)
        if affine:
            scale = scale * m.weight.detach()
        shift = -m.running_mean * scale + (m.bias.detach() if affine else 0)
        return call.map([MapBranch(DiagonalOperator(scale), scale, x)], shift)
    batch, size = _graphs(call, x, batch, batch_size)
    u = x - _mean(x, batch, size).index_select(0, batch)
    var = _mean(u.detach().pow(2), batch, size)
    h = u * torch.rsqrt(var + m.eps).index_select(0, batch)
    return _affine(call, h, m.weight, m.bias) if affine else h


def pair_norm(call: LayerCall, x: Tensor, batch: Tensor | None = None, batch_size: int | None = None) -> Tensor:
    """PyG ``PairNorm``: ``s (x - mean) / d``, the mean over each graph's nodes; ``d`` (the
    root mean squared row norm of the graph, or each row's norm with ``scale_individually``)
    held constant."""
    m = call.module
    batch, size = _graphs(call, x, batch, batch_size)
    u = x - _mean(x, batch, size).index_select(0, batch)
    sq = u.detach().pow(2).sum(-1, keepdim=True)
    if m.scale_individually:
        d = m.eps + sq.sqrt()
    else:
        d = (m.eps + _mean(sq, batch, size)).sqrt().index_select(0, batch)
    return m.scale * u / d


def message_norm(call: LayerCall, x: Tensor, msg: Tensor, p: float = 2.0) -> Tensor:
    """PyG ``MessageNorm`` (DeeperGCN): ``s msg ||x||_p / ||msg||_p`` per row, both norms
    held constant: all relevance stays with the messages (``x`` enters as a statistic)."""
    with torch.no_grad():
        scale = x.detach().norm(p=p, dim=-1, keepdim=True) * call.module.scale.detach()
        scale = scale / msg.detach().norm(p=p, dim=-1, keepdim=True).clamp_min(1e-12)  # (as F.normalize)
    return msg * scale


def diff_group_norm(call: LayerCall, x: Tensor) -> Tensor:
    """PyG ``DiffGroupNorm``: ``x + λ sum_g BN(s_g x)``, the soft group assignment
    ``s = softmax(x W)`` held fixed (as LRP treats gating); its batch norm is explained by
    its own handler (eval mode: a per-channel affine map)."""
    m = call.module
    f, g = m.in_channels, m.groups
    with torch.no_grad():
        s = torch.softmax(torch.nn.functional.linear(x.detach(), m.lin.weight), dim=-1)
    out = (s.unsqueeze(-1) * x.unsqueeze(-2)).reshape(-1, g * f)
    return x + m.lamda * m.norm(out).view(-1, g, f).sum(-2)


register_handler(nn.LayerNorm, layer_norm, subgraph=())
register_handler(nn.GroupNorm, group_norm, subgraph=())
if hasattr(nn, "RMSNorm"):  # (torch >= 2.4)
    register_handler(nn.RMSNorm, rms_norm, subgraph=())

try:
    from torch_geometric.nn import norm as _pyg
except ImportError:  # pragma: no cover - torch_geometric is a dependency
    _pyg = None
if _pyg is not None:
    register_handler(_pyg.LayerNorm, pyg_layer_norm, subgraph=lambda m: () if m.mode == "node" else None)
    register_handler(_pyg.GraphNorm, graph_norm)
    register_handler(_pyg.InstanceNorm, instance_norm, subgraph=lambda m: () if _running_statistics(m) else None)
    register_handler(_pyg.PairNorm, pair_norm)
    register_handler(_pyg.MessageNorm, message_norm, subgraph=())
    register_handler(_pyg.DiffGroupNorm, diff_group_norm, children=("norm",), subgraph=())
