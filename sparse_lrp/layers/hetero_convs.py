"""PyG's heterogeneous-native layers: per-type feature maps, and HGT/HAN attention.

* ``HeteroDictLinear``: ``out_t = x_t W_tᵀ + b_t`` per type ``t`` of the input dict: one
  feature map per type under the layer's rule.
* ``HeteroLinear``: ``out_r = x_r W_{κ(r)} + b_{κ(r)}`` per row ``r`` of type ``κ(r)``
  (``weight [types, in, out]``): the rows are split into the layer's own per-type
  segments (sorted by type unless ``is_sorted``, as its forward does), one feature map
  each, and put back in the given order. Exact, as a per-row operator would be (each
  output row reads its own row only), at the cost of a dense product per type.
* ``HGTConv`` (Hu et al., 2020), per target node ``j`` of type ``τ(j)`` and head ``h``:
  ``v_i = x_i W^V_{τ(i)} + b^V_{τ(i)}``, per edge type ``r`` a relation map
  ``v'_{r,ih} = v_ih M^V_{r,h}``, messages summed over the in-edges of *all* edge types
  ``m_jh = sum_{(i, r) -> j} α_{jih} v'_{r,ih}``, then ``a_j = GELU(m_j) W^O_{τ(j)} + b^O_{τ(j)}``
  and, where the widths agree, the skip ``out_j = σ(s_τ) a_j + (1 - σ(s_τ)) x_j``.
  Held fixed: the attention ``α`` (softmax over a target's in-edges across edge types of
  ``p_r <k'_i, q_j> / sqrt(d)``: keys and queries reach no relevance, the AH-rule as for
  GAT) and the skip gate ``σ(s_τ)``, a learned constant; the GELU passes relevance under
  the Pass rule. Relevance flows ``x -> v -> v' -> m -> a -> out``: the value projection,
  the relation maps (``v_rel``, a ``HeteroLinear``) and ``out_lin`` are feature maps
  under the layer's rule, the attention sum a node-mixing map over (node, head) rows
  whose messages carry the edge relevance, reported on each edge type's own edges.
* ``HANConv`` (Wang et al., 2019): ``h_i = x_i W_{τ(i)} + b_{τ(i)}``, per edge type
  (metapath) ``r`` node-level attention ``z_{r,jh} = ReLU(sum_{i -> j} α_{r,jih} h_ih)``,
  then per node type the semantic attention ``out_j = sum_r β_r z_{r,j}``. Held fixed: the
  node-level ``α`` (GAT-like, AH-rule) and the semantic weights ``β`` (a softmax over the
  edge types into the node type of scores that average all its nodes).

``α`` and ``β`` are computed by the layers' own code (``message`` and HAN's ``group``)
from the forward's values, never re-derived here, so the recomputed outputs equal the
layers' own.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from . import register_handler
from .base import LayerCall
from .convs import _heads, check_graph


def _check_dicts(call: LayerCall, x_dict, edge_index_dict=None) -> None:
    kind = type(call.module).__name__
    if not isinstance(x_dict, dict) or not all(isinstance(v, Tensor) for v in x_dict.values()):
        raise ValueError(f"{call.name or '<model>'} ({kind}): the input must be a dict of node types' features")
    for key, ei in (edge_index_dict or {}).items():
        check_graph(call, ei, f"edge_index[{key!r}]")


def _dict_pairs(m, x_dict) -> list[tuple]:
    """``(output key, input key, Linear)`` in the order ``HeteroDictLinear`` computes them."""
    import torch_geometric.backend
    import torch_geometric.typing

    keys = [k for k in m.lins if k in x_dict]
    fused = torch_geometric.backend.use_segment_matmul
    fused = len(x_dict) >= 10 if fused is None else fused
    if fused and torch_geometric.typing.WITH_GMM and keys:
        # (its grouped kernel hands the outputs out in x_dict's key order)
        return [(out, k, m.lins[k]) for out, k in zip(x_dict, keys)]
    return [(k, k, m.lins[k]) for k in keys]


def _dict_linear(call: LayerCall, m, x_dict, cols: slice = slice(None)) -> dict:
    """``HeteroDictLinear`` ``m`` on ``x_dict`` (the output columns ``cols`` of each map)."""
    out = {}
    for key, k, lin in _dict_pairs(m, x_dict):
        out[key] = call.linear(x_dict[k], lin.weight[cols], None if lin.bias is None else lin.bias[cols])
    return out


def hetero_dict_linear(call: LayerCall, x_dict) -> dict:
    """HeteroDictLinear: ``out_t = x_t W_tᵀ + b_t`` for each type ``t`` of ``x_dict``."""
    _check_dicts(call, x_dict)
    return _dict_linear(call, call.module, x_dict)


def _hetero_linear(call: LayerCall, m, x: Tensor, type_vec: Tensor) -> Tensor:
    """``HeteroLinear`` ``m`` on ``x`` as its forward computes it: rows sorted by type
    (unless ``is_sorted``), each segment of its type pointer through that type's weight,
    the bias by ``type_vec``, the rows put back."""
    from torch_geometric.index import index2ptr
    from torch_geometric.utils import index_sort

    if type_vec.dim() != 1 or type_vec.numel() != x.shape[0] or x.dim() != 2:
        raise ValueError(
            f"{call.name or '<model>'} (HeteroLinear): needs x [N, F] and a type_vec [N] "
            f"(got {tuple(x.shape)} and {tuple(type_vec.shape)})"
        )
    perm = None
    if not m.is_sorted and bool((type_vec[1:] < type_vec[:-1]).any()):
        type_vec, perm = index_sort(type_vec, m.num_types)
        x = x.index_select(0, perm)
    ptr = index2ptr(type_vec, m.num_types).tolist()
    if ptr[0] != 0 or ptr[-1] != x.shape[0] or any(a > b for a, b in itertools.pairwise(ptr)):
        raise ValueError(
            f"{call.name or '<model>'} (HeteroLinear): is_sorted=True but type_vec is not sorted, so the "
            "layer's own output rows are not all defined"
        )
    weight, bias = m.weight, m.bias
    parts = []
    for i, (start, end) in enumerate(itertools.pairwise(ptr)):
        if end == start:
            continue
        b = None
        if bias is not None:  # (the bias follows type_vec, the weights the segments: the same when sorted)
            types = type_vec[start:end]
            b = bias[i] if bool((types == i).all()) else bias.index_select(0, types)
        parts.append(call.linear(x[start:end], weight[i].T, b))
    out = torch.cat(parts) if parts else x.new_zeros(0, m.out_channels)
    if perm is not None:  # (row perm[k] of the output is row k of the sorted one)
        out = out.index_select(
            0, torch.empty_like(perm).index_copy_(0, perm, torch.arange(perm.numel(), device=perm.device))
        )
    return out


def hetero_linear(call: LayerCall, x: Tensor, type_vec: Tensor) -> Tensor:
    """HeteroLinear: ``out_r = x_r W_{κ(r)} + b_{κ(r)}``, one feature map per type."""
    return _hetero_linear(call, call.module, x, type_vec)


def _edge_type_ids(call: LayerCall, edge_index_dict) -> Tensor | None:
    """The positions of all edge types' edges, concatenated in ``edge_index_dict``'s order
    (None: some edge type is not the model's, and the layer's edges are its own)."""
    ids = [call.ctx.edge_ids(ei) for ei in edge_index_dict.values()]
    return None if any(i is None for i in ids) else torch.cat(ids)


def hgt_conv(call: LayerCall, x_dict, edge_index_dict) -> dict:
    """HGTConv: per-type values through relation maps, summed with the attention of every
    in-edge across edge types (fixed), then GELU (Pass), ``out_lin`` and the skip gate
    (fixed). See the module docstring."""
    from torch_geometric.utils.hetero import construct_bipartite_edge_index

    _check_dicts(call, x_dict, edge_index_dict)
    m = call.module
    H, D = m.heads, m.out_channels // m.heads
    n_rel = len(m.edge_types)
    with torch.no_grad():  # the layer's own attention, from the forward's values
        kqv = m.kqv_lin({k: v.detach() for k, v in x_dict.items()})
        k_dict, q_dict = {}, {}
        for key, val in kqv.items():
            k, q, _ = torch.tensor_split(val, 3, dim=1)
            k_dict[key], q_dict[key] = k.view(-1, H, D), q.view(-1, H, D)
        q, dst_offset = m._cat(q_dict)
        k, _, src_offset = m._construct_src_node_feat(k_dict, k_dict, edge_index_dict)
        ei, p_rel = construct_bipartite_edge_index(
            edge_index_dict, src_offset, dst_offset, edge_attr_dict=m.p_rel, num_nodes=k.size(0)
        )
        # (message() weighs the values by α: unit values give α itself)
        unit = k.new_ones(ei.shape[1], H, D)
        alpha = m.message(k.index_select(0, ei[0]), q.index_select(0, ei[1]), unit, p_rel, ei[1], None, q.size(0))
        alpha = alpha.view(-1, H, D)[..., 0]
    # The values: the last third of kqv_lin's maps, for the edge types' source types.
    sources = {et[0] for et in edge_index_dict}
    c = m.out_channels
    v_dict = _dict_linear(call, m.kqv_lin, {t: x for t, x in x_dict.items() if t in sources}, slice(2 * c, 3 * c))
    vs, types = [], []
    for edge_type in edge_index_dict:
        v = v_dict[edge_type[0]].view(-1, H, D)
        vs.append(v)
        types.append(
            torch.arange(H, device=v.device).view(-1, 1).repeat(1, v.shape[0]) * n_rel + m.edge_types_map[edge_type]
        )
    vs = torch.cat(vs).transpose(0, 1).reshape(-1, D)  # (rows by head, then edge type and node, as the layer)
    v = _hetero_linear(call, m.v_rel, vs, torch.cat(types, dim=1).flatten()).view(H, -1, D).transpose(0, 1)
    out = _heads(call, v, ei, alpha, _edge_type_ids(call, edge_index_dict), None, True, n=q.shape[0])
    out_dict = {}
    for node_type, start in dst_offset.items():
        if node_type in m.dst_node_types:
            out_dict[node_type] = out[start : start + q_dict[node_type].shape[0]]
    a_dict = _dict_linear(
        call, m.out_lin, {t: call.passthrough(torch.nn.functional.gelu, o) for t, o in out_dict.items()}
    )
    for node_type in out_dict:
        a, x = a_dict[node_type], x_dict[node_type]
        if a.size(-1) == x.size(-1):
            gate = m.skip[node_type].detach().sigmoid()
            a = gate * a + (1 - gate) * x
        out_dict[node_type] = a
    return out_dict


def han_conv(call: LayerCall, x_dict, edge_index_dict, return_semantic_attention_weights: bool = False):
    """HANConv: per edge type a GAT-like sum with the node-level attention fixed, ReLU,
    then per node type the semantic attention's weighted sum over edge types, its weights
    fixed. See the module docstring."""
    from torch_geometric.nn.conv.han_conv import group

    _check_dicts(call, x_dict, edge_index_dict)
    m = call.module
    H, D = m.heads, m.out_channels // m.heads
    sources = {et[0] for et in edge_index_dict}
    h_dict = {
        t: call.linear(x, m.proj[t].weight, m.proj[t].bias).view(-1, H, D) for t, x in x_dict.items() if t in sources
    }
    outs: dict = {t: [] for t in x_dict}
    for edge_type, edge_index in edge_index_dict.items():
        src, _, dst = edge_type
        key = "__".join(edge_type)
        with torch.no_grad():  # the layer's own node-level attention, from the forward's values
            h_src, h_dst = (m.proj[t](x_dict[t].detach()).view(-1, H, D) for t in (src, dst))
            a_src, a_dst = (h_src * m.lin_src[key]).sum(-1), (h_dst * m.lin_dst[key]).sum(-1)
            unit = h_src.new_ones(edge_index.shape[1], H, D)  # (message() weighs these by α)
            n_dst = h_dst.shape[0]
            alpha = m.message(unit, a_dst[edge_index[1]], a_src[edge_index[0]], edge_index[1], None, n_dst)
            alpha = alpha.view(-1, H, D)[..., 0]
        ids = call.ctx.edge_ids(edge_index)
        outs[dst].append(torch.relu(_heads(call, h_dict[src], edge_index, alpha, ids, None, True, n=n_dst)))
    out_dict, semantic = {}, {}
    for node_type, parts in outs.items():
        with torch.no_grad():  # the semantic attention, by the layer's own code
            _, beta = group([p.detach() for p in parts], m.q, m.k_lin)
        semantic[node_type] = beta
        if not parts:
            out_dict[node_type] = None
        elif beta is None:  # (no rows)
            out_dict[node_type] = torch.stack(parts).view(0, parts[0].shape[-1])
        else:
            out_dict[node_type] = torch.sum(beta.view(len(parts), 1, -1) * torch.stack(parts), dim=0)
    return (out_dict, semantic) if return_semantic_attention_weights else out_dict


def _register() -> None:
    import torch_geometric.nn as g

    register_handler(g.HeteroDictLinear, hetero_dict_linear, subgraph=())
    register_handler(g.HeteroLinear, hetero_linear, subgraph=())
    register_handler(g.HGTConv, hgt_conv)
    register_handler(g.HANConv, han_conv)


_register()
