"""Convolutions that compute each message per edge, then aggregate: FiLMConv, GeneralConv, PointNetConv.

``FiLMConv`` (Brockschmidt's GNN-FiLM), with ``(β, γ) = g(x_i)`` per relation ``r`` and for
the skip term (``g`` a Linear by default, the layer's ``films``/``film_skip``)::

    out_i = act(γ_s,i ⊙ W_s x_i + β_s,i) + Σ_r aggr_{j ∈ N_r(i)} act(γ_r,i ⊙ W_r x_j + β_r,i)

``γ`` and ``β`` are computed from the target's features and held fixed, as the library
holds gates: each message ``γ_r,i ⊙ W_r x_j + β_r,i`` is then a linear map of ``x_j`` with
its own matrix ``W_rᵀ diag(γ_r,i)`` and bias ``β_r,i`` (a per-edge bias, absorbing its
share), explained under the layer's rule, and ``act`` (ReLU by default) passes relevance
unchanged (the Pass rule). Each relation aggregates its own in-edges (``aggr`` "mean" by
default: a mean per relation), and the skip term joins that node mixing as a self-loop.

``GeneralConv`` (You et al.'s design space)::

    out_i = 1/H Σ_h aggr_j α_jih m_jih + W_s x_i + b_s,   m_ji = W x_j + b (+ W' x_i + b') (+ W_e e_ji + b_e)

its attention ``α`` (additive or dot-product, softmax over ``i``'s in-edges) held fixed; the
messages are sums of linear maps (``directed_msg=False`` adds the target's term,
``in_edge_channels`` the edge's), so their relevance is the edge relevance, split between
``x_j``, ``x_i`` and ``e_ji``. ``l2_normalize`` divides each output row by its norm held
fixed (the LN-rule, as SAGEConv's ``normalize``).

``PointNetConv`` (Qi et al.'s PointNet++ set layer)::

    out_i = global_nn(aggr_{j ∈ N(i) ∪ {i}} local_nn([x_j, pos_j - pos_i]))

``local_nn`` and ``global_nn`` are explained by their own layers (``local_nn`` over the
edges' rows), the aggregation (max by default) as :meth:`~.base.LayerCall.reduce_messages`
explains it: the winning messages carry the edge relevance. ``pos`` is the point cloud's
geometry: where the model computes it from its input (``conv(None, x, edge_index)``, or a
slice of ``x``) the relative positions pass relevance back to it (a difference is linear);
where it is a constant (``explain(..., pos=pos)``) the relative positions are constant
inputs of ``local_nn``, whose share is absorbed as a bias's (the conservation report counts
it with ``absorbed``). ``node_feat`` is always the relevance of the model's ``x``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import RowwiseOperator
from . import register_handler
from .base import LayerCall, MapBranch, aggr_name
from .convs import _head_ids, _model_ids, _one_loop_per_node, _pair, check_graph


def _refusal(call: LayerCall, why: str) -> ValueError:
    return ValueError(f"{call.name or '<model>'} ({type(call.module).__name__}): {why}")


def _grouped(
    call: LayerCall, msg, dst, group, groups: int, n: int, ids, extra, bias=None, weight=None, scale: float = 1.0
) -> Tensor:
    """``out_i = scale Σ_g aggr_{e: dst_e = i, group_e = g} w_e m_e + extra + bias``: per-edge
    messages ``msg [E, C]`` (each scaled by the fixed ``weight [E]``) aggregated per target and
    group (FiLM's relations, GeneralConv's heads) under the layer's aggregation, then summed
    over the groups with the ``extra`` branches (a skip term) and ``bias``."""
    edges = torch.arange(msg.shape[0], device=msg.device)
    to_nodes = torch.stack([edges, dst])
    if groups == 1 and scale == 1.0:
        return call.reduce_messages(msg, to_nodes, n, ids, extra, bias, weight)
    by_group = torch.stack([edges, dst * groups + group])
    if aggr_name(call.module) in ("add", "sum", "mean"):
        # Sums (a mean per group divides by the target's in-degree in that group) of sums:
        # one edge map straight into the targets, with the skip term and bias in it.
        w = call.aggr_weights(by_group, weight, n * groups, msg)
        w = msg.new_ones(msg.shape[0]) if w is None else w.detach()
        return call.messages(msg, to_nodes, n, ids, extra, bias, scale * w)
    # Selections (max/min) or fixed softmax weightings per target and group; what sums them
    # with the skip term and bias is a map under the layer's rule (as reduce_messages does).
    chosen = call.reduce_messages(msg, by_group, n * groups, ids, weight=weight).view(n, groups, -1)
    return call.map([call.self_loops(chosen[:, g], scale) for g in range(groups)] + list(extra), bias)


def _modulated(call: LayerCall, x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """``act(γ ⊙ (x Wᵀ) + β)`` row by row, ``γ``, ``β [rows, out]`` fixed: each row's map is
    ``Wᵀ diag(γ_r)`` with the bias ``β_r`` (``weight [out, in]``, or one per row ``[rows, out, in]``)."""
    theta = weight.transpose(-1, -2) * gamma.unsqueeze(-2)  # [rows, in, out]
    z = call.map([MapBranch(RowwiseOperator(theta), theta, x)], beta)
    act = call.module.act
    return z if act is None else call.passthrough(act, z)  # (any element-wise act: the Pass rule)


def film_conv(call: LayerCall, x, edge_index, edge_type=None) -> Tensor:
    """FiLMConv: ``out_i = act(γ_s,i ⊙ W_s x_i + β_s,i) + Σ_r aggr_{j ∈ N_r(i)} act(γ_r,i ⊙ W_r x_j + β_r,i)``,
    ``(β, γ) = film(x_i)`` held fixed (bipartite: messages from the source features, the
    modulation and the skip term from the target's)."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    c, num_rel = m.out_channels, m.num_relations
    src, dst = edge_index
    ids = _model_ids(call, edge_index)
    rel = None
    if num_rel > 1:
        if not isinstance(edge_type, Tensor) or edge_type.is_floating_point() or edge_type.shape != src.shape:
            raise _refusal(call, f"num_relations={num_rel} needs edge_type, an integer tensor [E] (one per edge)")
        # PyG propagates relation r's edges for r < num_relations: edges of other types send nothing.
        keep = (edge_type >= 0) & (edge_type < num_rel)
        if not bool(keep.all()):
            src, dst, ids = src[keep], dst[keep], None if ids is None else ids[keep]
        rel = edge_type[keep].long()
    with torch.no_grad():  # (the modulation: constants of the forward, read from the targets)
        xd = x_dst.detach()
        beta_s, gamma_s = m.film_skip(xd).split(c, dim=-1)
        films = torch.stack([film(xd) for film in m.films])  # [R, N, 2C]
        beta, gamma = films[0 if rel is None else rel, dst].split(c, dim=-1)  # [E, C] each
        weights = torch.stack([lin.weight.detach() for lin in m.lins])  # [R, C, F]
    skip = _modulated(call, x_dst, m.lin_skip.weight.detach(), gamma_s, beta_s)
    with call.over_edges():  # (a map over edge rows)
        msg = _modulated(call, x_src.index_select(0, src), weights[0 if rel is None else rel], gamma, beta)
    groups = 1 if rel is None else num_rel
    return _grouped(call, msg, dst, rel, groups, x_dst.shape[0], ids, [call.self_loops(skip, 1.0)])


def _general_attention(m, x_src: Tensor, x_dst: Tensor, edge_index: Tensor, edge_attr) -> Tensor:
    """GeneralConv's attention ``α [E, H]`` as its ``message`` computes it, from the forward's
    values (constants)."""
    from torch_geometric.utils import softmax

    src, dst = edge_index
    with torch.no_grad():
        x_j, x_i = x_src.detach().index_select(0, src), x_dst.detach().index_select(0, dst)
        ea = None if edge_attr is None else edge_attr.detach()
        out_j = m.message_basic(x_i, x_j, ea).view(-1, m.heads, m.out_channels)
        if m.attention_type == "dot_product":  # (the reverse message as the query)
            score = (m.message_basic(x_j, x_i, ea).view_as(out_j) * out_j).sum(-1) / m.scaler
        else:
            score = (out_j * m.att_msg).sum(-1)
        return softmax(torch.nn.functional.leaky_relu(score, 0.2), dst, num_nodes=x_dst.shape[0])


def general_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None) -> Tensor:
    """GeneralConv: ``out_i = 1/H Σ_h aggr_j α_jih m_jih + W_s x_i + b_s``, the messages
    ``m_ji = W x_j + b (+ W' x_i + b') (+ W_e e_ji + b_e)``, the attention ``α`` (1 without
    ``attention``) held fixed; ``W_s`` the identity without ``skip_linear`` and with as many
    input as output channels."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    n, heads, c = x_dst.shape[0], m.heads, m.out_channels
    # (the inputs' sizes; on node targets' subgraphs also the whole graph's, whose inputs the
    # model was given)
    given = call.ctx.given_graph
    sizes = {(x_src.shape[0], n)} | (set() if given is None else {(given[1], given[1])})
    if size is not None and tuple(size) not in sizes:
        raise _refusal(call, f"size={tuple(size)} other than the inputs' ({x_src.shape[0]}, {n}) is not supported")
    if edge_attr is not None and m.in_edge_channels is None:
        raise _refusal(call, "got edge_attr but has no in_edge_channels (no lin_edge)")
    src, dst = edge_index
    msg = call.linear(x_src, m.lin_msg.weight, m.lin_msg.bias).index_select(0, src)
    if not m.directed_msg:  # (the target's term travels on the edge too: its relevance is the edge's)
        msg = msg + call.linear(x_dst, m.lin_msg_i.weight, m.lin_msg_i.bias).index_select(0, dst)
    if edge_attr is not None:
        with call.over_edges():  # (a map over edge rows)
            msg = msg + call.linear(edge_attr, m.lin_edge.weight, m.lin_edge.bias)
    alpha = _general_attention(m, x_src, x_dst, edge_index, edge_attr).reshape(-1) if m.attention else None
    if isinstance(m.lin_self, torch.nn.Identity):
        extra, bias = [call.self_loops(x_dst, 1.0)], None
    else:
        extra, bias = [call.root(x_dst, m.lin_self.weight)], m.lin_self.bias
    # Rows (edge, head) into targets, one group per head: the heads' mean is a scale of 1/H.
    group = torch.arange(heads, device=src.device).repeat(src.numel())
    ids = _head_ids(_model_ids(call, edge_index), heads)
    hdst = dst.repeat_interleave(heads)
    out = _grouped(call, msg.reshape(-1, c), hdst, group, heads, n, ids, extra, bias, alpha, scale=1.0 / heads)
    if m.normalize_l2:  # (as F.normalize: a norm below 1e-12 counts as 1e-12)
        out = out / out.detach().norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
    return out


def point_net_conv(call: LayerCall, x, pos, edge_index) -> Tensor:
    """PointNetConv: ``out_i = global_nn(aggr_{j ∈ N(i) ∪ {i}} local_nn([x_j, pos_j - pos_i]))``
    (the graph's self-loops replaced by one per node, unless ``add_self_loops=False``);
    bipartite: ``x`` and ``pos`` pairs, messages from the sources' features."""
    check_graph(call, edge_index)
    m = call.module
    x_src = x[0] if isinstance(x, (tuple, list)) else x
    pos_src, pos_dst = pos if isinstance(pos, (tuple, list)) else (pos, pos)
    if x_src is None and not (pos_src.requires_grad or pos_dst.requires_grad):
        raise _refusal(
            call,
            "got x=None and a constant pos: its output depends on no model input, so there is nothing to "
            "explain. Pass the positions as the model's x (explain(model, pos, edge_index)) and the layer "
            "the tensor the model computes from it",
        )
    n = pos_dst.shape[0]
    ei, ids = _one_loop_per_node(call, edge_index, min(pos_src.shape[0], n), m.add_self_loops)
    src, dst = ei
    rel = pos_src.index_select(0, src) - pos_dst.index_select(0, dst)
    if not rel.requires_grad:
        # Positions that are no model input: constant inputs of local_nn, whose share of the
        # relevance no input receives (the conservation report counts it absorbed, as a bias's).
        call.ctx.constants = True
    h = rel if x_src is None else torch.cat([x_src.index_select(0, src), rel], dim=-1)
    with call.over_edges():  # (local_nn's layers run over edge rows)
        msg = h if m.local_nn is None else m.local_nn(h)
    rows = torch.stack([torch.arange(src.numel(), device=src.device), dst])
    out = call.reduce_messages(msg, rows, n, ids)
    return out if m.global_nn is None else m.global_nn(out)


def _register() -> None:
    import torch_geometric.nn as g

    # Each reads its targets' in-edges only (softmax, per-relation mean, added self-loops).
    register_handler(g.FiLMConv, film_conv, subgraph=())
    register_handler(g.GeneralConv, general_conv, subgraph=())
    register_handler(g.PointNetConv, point_net_conv, children=("local_nn", "global_nn"), subgraph=())


_register()
