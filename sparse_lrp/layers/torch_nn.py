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


def multihead_attention(
    call: LayerCall,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention``: ``out = W_o concat_h(A_h V_h) + b_o``, ``V = value W_vᵀ + b_v``,
    its attention ``A`` (softmax of queries against keys, masks applied) held at the
    forward's values, as LRP's AH-rule takes it: relevance flows to the values only. Each
    head's mixing is an edge map from key positions to query positions under the layer's
    rule; the relevance through each (query, key) pair is recorded as the layer's
    ``edge_local`` (batch, head, query, key order)."""
    m = call.module
    if m.bias_k is not None or m.add_zero_attn:
        raise ValueError(f"{call.name}: MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
    with torch.no_grad():
        _, probs = type(m).forward(
            m, query.detach(), key.detach(), value.detach(), key_padding_mask=key_padding_mask,
            need_weights=True, attn_mask=attn_mask, average_attn_weights=False, is_causal=is_causal,
        )  # fmt: skip
    batched = query.dim() == 3

    def to_bse(t: Tensor) -> Tensor:  # (to [batch, sequence, embedding])
        return t.unsqueeze(0) if not batched else t if m.batch_first else t.transpose(0, 1)

    v, q_len = to_bse(value), to_bse(query).shape[1]
    probs = probs if batched else probs.unsqueeze(0)  # [B, H, L, S]
    b, s, e = v.shape
    heads, d = m.num_heads, m.head_dim
    w_v = m.in_proj_weight[2 * e :] if m._qkv_same_embed_dim else m.v_proj_weight
    b_v = m.in_proj_bias[2 * e :] if m.in_proj_bias is not None else None
    vals = call.linear(v, w_v, b_v).reshape(b * s * heads, d)  # rows (batch, key, head)
    key = ("attention_pairs", b, heads, q_len, s, str(v.device))
    pairs = call.ctx.memo(key, lambda: _pairs(b, heads, q_len, s, v.device))
    op = call.ctx.operator(pairs, b * s * heads, b * q_len * heads)
    mixed = call.map([MapBranch(op, probs.detach().reshape(-1), vals, record_edges=True)])  # rows (batch, query, head)
    out = call.linear(mixed.reshape(b, q_len, heads * d), m.out_proj.weight, m.out_proj.bias)
    if not batched:
        out = out.squeeze(0)
    elif not m.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = probs.mean(1) if average_attn_weights else probs
        weights = weights if batched else weights.squeeze(0)
    return out, weights


def _pairs(b: int, heads: int, q_len: int, s: int, device) -> Tensor:
    """Every (key row -> query row) pair of every batch and head, in ``[B, H, L, S]`` order."""
    bi = torch.arange(b, device=device).view(b, 1, 1, 1)
    hi = torch.arange(heads, device=device).view(1, heads, 1, 1)
    li = torch.arange(q_len, device=device).view(1, 1, q_len, 1)
    si = torch.arange(s, device=device).view(1, 1, 1, s)
    src = ((bi * s + si) * heads + hi).expand(b, heads, q_len, s).reshape(-1)
    dst = ((bi * q_len + li) * heads + hi).expand(b, heads, q_len, s).reshape(-1)
    return torch.stack([src, dst])


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
# (attention reads every position of a sequence: no subgraph declaration, whole graph)
register_handler(nn.MultiheadAttention, multihead_attention)
for _ident in (nn.Identity, nn.Dropout):
    register_handler(_ident, identity, subgraph=())

try:  # PyG's own Linear has the torch layout (weight [out, in], bias [out]).
    from torch_geometric.nn.dense.linear import Linear as _PygLinear

    register_handler(_PygLinear, linear, subgraph=())
except ImportError:  # pragma: no cover - torch_geometric is a dependency
    pass
