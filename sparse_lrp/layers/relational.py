"""Relational graph convolutions: PyG's ``RGCNConv`` and ``FastRGCNConv`` (Schlichtkrull et al.)::

    out_i = x_i Θ_root + Σ_r Σ_{j ∈ N_r(i)} a_{r,i} x_j Θ_r + b

where ``N_r(i)`` are the sources of ``i``'s in-edges of relation ``r`` (``edge_type``),
``a_{r,i} = 1 / |N_r(i)|`` for ``aggr="mean"`` (the default: a mean per relation) and 1 for
``"add"``. ``Θ_r`` is a weight of its own, a combination ``Σ_b comp[r, b] V_b`` of shared
bases (``num_bases``) or block-diagonal (``num_blocks``).

Explained as RGCNConv computes it: node mixing first, then features. The relations'
aggregations are one edge map whose outputs are (node, relation) rows: edge ``j -> i`` of
relation ``r`` feeds row ``i·R + r``, so each relation averages (or, for ``"max"``/``"min"``,
selects) over its own in-edges, and the edge relevance is per edge of the model's graph.
The aggregates ``a_{i,r}`` and the root term ``x_i`` then form one linear map, a branch per
relation and one for the root, under the layer's rule with one denominator per output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import DenseOperator
from . import register_handler
from .base import LayerCall, MapBranch, aggr_name

# Aggregations that act per (node, relation) row the way the layer applies them per relation:
# sums (the edge map) and selections (each channel is its winning message's).
_AGGRS = ("add", "mean", "max", "min")


def _refusal(call: LayerCall, why: str) -> ValueError:
    return ValueError(f"{call.name or '<model>'} ({type(call.module).__name__}): {why}")


def _check(call: LayerCall, x, edge_index, edge_type) -> None:
    from torch_geometric.nn import FastRGCNConv

    m = call.module
    if isinstance(x, tuple):
        raise _refusal(call, "bipartite (tuple) inputs are not supported")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
        # (None or node indices: the layer reads rows of its weights as node embeddings)
        raise _refusal(
            call,
            "x must be a float [N, F] node feature matrix; featureless RGCN (x None or a LongTensor of "
            "node indices) has no input features to explain. Pass one-hot features instead "
            "(x = torch.eye(N)): the layer computes the same output from them",
        )
    if not isinstance(edge_index, Tensor) or edge_index.layout != torch.strided or edge_index.dim() != 2:
        raise _refusal(
            call,
            "edge_index must be a [2, E] tensor (SparseTensor/sparse adjacency inputs are not supported; "
            "convert with torch_geometric.utils.to_edge_index and pass edge_type)",
        )
    if not isinstance(edge_type, Tensor) or edge_type.is_floating_point() or edge_type.shape != edge_index.shape[1:]:
        raise _refusal(call, "needs edge_type, an integer tensor [E] with one relation per edge of edge_index")
    if getattr(m, "flow", "source_to_target") != "source_to_target":
        raise _refusal(call, "only flow='source_to_target' is supported")
    kind = aggr_name(m)
    fast = isinstance(m, FastRGCNConv)
    if kind not in (("add", "mean") if fast else _AGGRS):
        raise _refusal(
            call,
            f"aggr={getattr(m, 'aggr', kind)!r} is not supported: explained are "
            f"{'add/sum/mean (as FastRGCNConv computes)' if fast else 'add/sum/mean and max/min'}",
        )
    if kind != "add" and _may_take_segment_matmul(m):
        raise _refusal(
            call,
            f"with pyg-lib's segment_matmul, PyG may run aggr={kind!r} over all relations' transformed "
            "messages together (not per relation as its formula says), depending on a size heuristic: "
            "set torch_geometric.backend.use_segment_matmul = False for its per-relation loop",
        )


def _may_take_segment_matmul(m) -> bool:
    """Whether RGCNConv's forward may take its ``segment_matmul`` path, which transforms
    each message first and then aggregates all of a node's in-edges together (PyG leaves
    the per-relation mean as a TODO there); only sums are the same on both paths."""
    import torch_geometric.backend
    import torch_geometric.typing
    from torch_geometric.nn import FastRGCNConv

    if isinstance(m, FastRGCNConv) or m.num_bases is not None or m.num_blocks is not None:
        return False
    return bool(torch_geometric.typing.WITH_SEGMM) and torch_geometric.backend.use_segment_matmul is not False


def _relation_rows(call: LayerCall, edge_index: Tensor, edge_type: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(edges, ids)``: each edge ``j -> i`` of relation ``r`` as ``j -> i·R + r``, and its
    position in the model's edge_index (once per graph and explanation)."""
    num_rel = call.module.num_relations

    def build():
        kind = edge_type.long()
        # (another type would land in another node's rows; the layer's own forward fails on it)
        if kind.numel() and not bool(((kind >= 0) & (kind < num_rel)).all()):
            raise _refusal(call, f"edge_type must lie in [0, num_relations={num_rel})")
        return torch.stack([edge_index[0].long(), edge_index[1].long() * num_rel + kind]), call.ctx.edge_ids(edge_index)

    return call.ctx.memo(("relation_rows", edge_index, edge_type, num_rel), build)


def _relation_weights(m) -> Tensor:
    """``Θ_r`` for every relation: ``[R, F, out]``, bases combined as the layer combines
    them, or the blocks ``[R, B, F/B, out/B]`` with ``num_blocks``."""
    w = m.weight.detach()
    if m.num_bases is not None:
        w = (m.comp.detach() @ w.view(m.num_bases, -1)).view(m.num_relations, m.in_channels_l, m.out_channels)
    return w


def _branch(x: Tensor, weight: Tensor) -> MapBranch:
    # A slice or combination of the layer's weights made for this call: nothing for the
    # operator's transform cache to keep (keyed by the parameter, slices would share a key).
    return MapBranch(DenseOperator(weight), weight, x)


def rgcn_conv(call: LayerCall, x, edge_index, edge_type=None) -> Tensor:
    """RGCNConv / FastRGCNConv: ``out_i = x_i Θ_root + Σ_r Σ_{j ∈ N_r(i)} a_{r,i} x_j Θ_r + b``,
    ``a_{r,i} = 1/|N_r(i)|`` (mean) or 1 (add); ``"max"``/``"min"`` select per relation
    and channel before ``Θ_r``, as RGCNConv does."""
    _check(call, x, edge_index, edge_type)
    m = call.module
    n, num_rel = x.shape[0], m.num_relations
    rows, ids = _relation_rows(call, edge_index, edge_type)
    a = call.aggregate(x, rows, edge_ids=ids, num_out=n * num_rel).reshape(n, num_rel, -1)
    w = _relation_weights(m)
    root = None if m.root is None else m.root.detach()
    bias = m.bias
    if m.num_blocks is None:
        branches = [_branch(a[:, r], w[r].T) for r in range(num_rel)]
        if root is not None:
            branches.append(_branch(x, root.T))
        return call.map(branches, bias)
    # Block-diagonal Θ_r: output block k reads input block k of every relation, so each block
    # is its own map over the connections the layer has (Flat counts no others); the root
    # weight is dense and feeds every block.
    size_in, size_out = w.shape[2], w.shape[3]
    outs = []
    for k in range(m.num_blocks):
        cols_in, cols_out = slice(k * size_in, (k + 1) * size_in), slice(k * size_out, (k + 1) * size_out)
        branches = [_branch(a[:, r, cols_in], w[r, k].T) for r in range(num_rel)]
        if root is not None:
            branches.append(_branch(x, root[:, cols_out].T))
        outs.append(call.map(branches, None if bias is None else bias[cols_out]))
    return torch.cat(outs, dim=1)


def _register() -> None:
    import torch_geometric.nn as g

    # A mean per relation counts a node's own in-edges by type: nothing beyond them.
    register_handler(g.RGCNConv, rgcn_conv, subgraph=())
    register_handler(g.FastRGCNConv, rgcn_conv, subgraph=())


_register()
