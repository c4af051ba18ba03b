"""torch_geometric graph layers as node mixing (edge maps) plus feature mixing (Linear).

Each handler recomputes its layer's forward with the LRP primitives; the layer's own
normalisation code (``gcn_norm``, ChebConv's Laplacian, GAT's attention) is called,
never rewritten, so the recomputed output equals the layer's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import GRAPH_STRUCTURES, DiagonalOperator, owned
from . import register_handler
from .base import LayerCall, MapBranch


def check_graph(call: LayerCall, edge_index, what: str = "edge_index") -> None:
    """A layer's graph: given (not None), a ``[2, E]`` edge list (not a sparse adjacency),
    read source to target."""
    kind = f"{call.name or '<model>'} ({type(call.module).__name__})"
    if edge_index is None:
        raise ValueError(
            f"{kind} got no {what} (None): on a heterogeneous graph, an edge type the model uses is missing "
            "from edge_index_dict"
        )
    if not isinstance(edge_index, Tensor) or edge_index.layout != torch.strided:
        raise ValueError(
            f"{kind}: {what} must be a [2, E] tensor (SparseTensor/sparse adjacency inputs are not supported)"
        )
    if getattr(call.module, "flow", "source_to_target") != "source_to_target":
        raise ValueError(f"{kind}: only flow='source_to_target' is supported")


def _check_plain(call: LayerCall, x, edge_index) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{call.name} ({type(call.module).__name__}): bipartite (tuple) inputs are not supported")
    check_graph(call, edge_index)


def _pair(call: LayerCall, x, edge_index) -> tuple[Tensor, Tensor]:
    """``(x_src, x_dst)``: a bipartite layer's source and target node features (a pair, as
    a heterogeneous model passes them for an edge type between two node types), or ``x``
    twice."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2 or not all(isinstance(t, Tensor) for t in x):
            raise ValueError(
                f"{call.name} ({type(call.module).__name__}): bipartite inputs must be a pair of tensors "
                "(x_src, x_dst); a missing (None) side is not supported"
            )
        _check_plain(call, x[0], edge_index)
        return x[0], x[1]
    _check_plain(call, x, edge_index)
    return x, x


def _model_ids(call: LayerCall, edge_index: Tensor) -> Tensor | None:
    """Positions of the layer's input edges in the model's edge_index."""
    return call.ctx.edge_ids(edge_index)


def _follow(ids: Tensor | None, positions: Tensor) -> Tensor | None:
    """Compose a layer's edge re-ordering ``positions`` (``-1`` = added) with ``ids``."""
    if ids is None:
        return None
    if ids.numel() == 0:  # a graph without edges: every layer edge is an added loop
        return torch.full_like(positions, -1)
    return torch.where(positions >= 0, ids[positions.clamp(min=0)], -1)


def _replaced_loops(edge_index: Tensor, n: int) -> Tensor:
    """Edge positions after ``remove_self_loops`` + ``add_self_loops`` (GAT, ChebConv).

    Such layers drop input self-loops, so those carry no relevance.
    """
    from torch_geometric.utils import add_self_loops, remove_self_loops

    positions = torch.arange(edge_index.shape[1], device=edge_index.device)
    ei0, pos = remove_self_loops(edge_index, positions.to(torch.float64))
    _, pos = add_self_loops(ei0, pos, fill_value=-1.0, num_nodes=n)
    return pos.long()


def _one_loop_per_node(call: LayerCall, edge_index: Tensor, n: int, replace: bool) -> tuple[Tensor, Tensor | None]:
    """``(edge_index, ids)``, with ``replace`` after ``remove_self_loops`` + ``add_self_loops``
    as layers that replace the graph's loops by one per node build it (once per graph and
    explanation)."""
    from torch_geometric.utils import add_self_loops, remove_self_loops

    if not replace:
        return edge_index, _model_ids(call, edge_index)

    def build():
        ei = add_self_loops(remove_self_loops(edge_index)[0], num_nodes=n)[0]
        return ei, _follow(_model_ids(call, edge_index), _replaced_loops(edge_index, n))

    return call.ctx.memo(("one_loop_per_node", edge_index, n), build)


def _gcn_norm(call: LayerCall, edge_index, edge_weight, n, improved, add_self_loops, dtype):
    """``gcn_norm`` once per graph and explanation: every layer shares the result and its operator."""
    key = ("gcn_norm", edge_index, edge_weight, n, improved, add_self_loops, dtype)

    def compute():
        if edge_weight is None and call.ctx.edge_counts is None and call.ctx.is_given(edge_index):
            # An unweighted given graph normalises the same way every call: kept with the
            # graph, its normalised edges are one tensor, whose sorted structures are
            # kept too (explaining node after node pays neither again).
            def build():
                ei, w, ids = _gcn_norm_now(call, edge_index, None, n, improved, add_self_loops, dtype)
                # (without added loops gcn_norm hands back the graph itself: the entry must
                # not hold its own key, or a graph the caller drops would never be freed)
                return None if ei is edge_index else owned(ei), w, ids

            ei, w, ids = GRAPH_STRUCTURES.get(edge_index, build, "gcn_norm", n, improved, add_self_loops, dtype)
            return edge_index if ei is None else ei, w, ids
        return _gcn_norm_now(call, edge_index, edge_weight, n, improved, add_self_loops, dtype)

    return call.ctx.memo(key, compute)


def _gcn_norm_now(call: LayerCall, edge_index, edge_weight, n, improved, add_self_loops, dtype):
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import add_remaining_self_loops

    weight = call.degree_weights(edge_index, edge_weight)
    if edge_weight is None and weight is not None:
        # Unweighted, gcn_norm gives every self-loop weight 1 (its fill value, 2 when
        # improved, applies to weighted graphs only); the counts standing in keep that.
        improved = False
    ei, w = gcn_norm(edge_index, weight, n, improved, add_self_loops, "source_to_target", dtype)
    positions = torch.arange(edge_index.shape[1], device=edge_index.device)
    if add_self_loops and bool((edge_index[0] == edge_index[1]).any()):
        # Same re-ordering as gcn_norm, applied to edge positions (exact, multi-edges too).
        _, pos = add_remaining_self_loops(edge_index, positions.to(torch.float64), -1.0, n)
        positions = pos.long()
    elif add_self_loops:  # (no loops to move: the edges in order, then one new loop per node)
        positions = torch.cat([positions, positions.new_full((n,), -1)])
    return ei, w, _follow(_model_ids(call, edge_index), positions)


def gcn_conv(call: LayerCall, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
    """GCNConv: ``out = Â (x Θ) + b``."""
    _check_plain(call, x, edge_index)
    m = call.module
    h = call.linear(x, m.lin.weight, m.lin.bias)
    if m.normalize:
        ei, w, ids = _normalised(call, edge_index, edge_weight, x, m.improved, m.add_self_loops)
    else:
        ei, w, ids = edge_index, edge_weight, None
    return call.aggregate(h, ei, w, bias=m.bias, edge_ids=ids)


def _cached_graph(m) -> tuple[Tensor, Tensor] | None:
    """The normalised graph a GCN-style layer's forward takes from its cache, whatever
    graph it is given (PyG's GCNConv reads it only when ``cached=True``, APPNP whenever
    it is filled)."""
    from torch_geometric.nn import GCNConv

    if not m.normalize or (isinstance(m, GCNConv) and not m.cached):
        return None
    return getattr(m, "_cached_edge_index", None)


def _normalised(call: LayerCall, edge_index, edge_weight, x, improved, add_self_loops):
    """``(edge_index, weight, ids)`` of the layer's normalised graph: its cached one on the
    whole graph (k-hop subgraphs recompute it, exact when the cache came from this graph)."""
    cache = _cached_graph(call.module)
    if cache is not None and not call.ctx.on_subgraphs:
        key = ("cached_ids", cache[0], edge_index, x.shape[0], add_self_loops)
        return (*cache, call.ctx.memo(key, lambda: _cached_ids(call, cache[0], edge_index, x.shape[0], add_self_loops)))
    if cache is not None:
        _check_cache_is_the_graphs(call, cache, improved, add_self_loops)
    return _gcn_norm(call, edge_index, edge_weight, x.shape[0], improved, add_self_loops, x.dtype)


def _check_cache_is_the_graphs(call: LayerCall, cache: tuple[Tensor, Tensor], improved, add_self_loops) -> None:
    """On node targets' subgraphs a filled cache is recomputed per subgraph: exact only when
    it holds the given graph's normalisation (as after transductive training on it). One
    built from another graph is what the model uses whatever graph it is given, which no
    subgraph reproduces: refused."""
    given = call.ctx.given_graph
    if given is None:
        return
    edge_index, n, edge_weight = given

    def matches() -> bool:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm

        ei, w = gcn_norm(edge_index, edge_weight, n, improved, add_self_loops, "source_to_target", cache[1].dtype)
        return ei.shape == cache[0].shape and torch.equal(ei, cache[0]) and torch.allclose(w, cache[1])

    if not call.ctx.memo(("cache_is_the_graphs", cache[0], cache[1], edge_index), matches):
        raise ValueError(
            f"{call.name or '<model>'} ({type(call.module).__name__}): its cache (cached=True) holds the "
            "normalisation of another graph, which the model uses whatever graph it is given: node targets' "
            "k-hop subgraphs cannot reproduce it. Explain one target at a time (index=i uses the whole graph "
            "and the cache), or clear the cache (layer._cached_edge_index = None)"
        )


def _cached_ids(call: LayerCall, cached: Tensor, edge_index: Tensor, n: int, add_self_loops: bool) -> Tensor | None:
    """Positions in the model's edge_index of a cached normalised graph's edges.

    A cache built from the given graph holds its edges re-ordered by
    ``add_remaining_self_loops``, which keeps the weight of the last copy of a repeated
    self-loop: followed as ``gcn_norm`` does, that copy gets the loop's relevance (the
    k-th-copy matching of other graphs would give it to the first). A cache of the graph
    the layer is given, when that is one the model derived (DirGNNConv's reversed edges),
    maps through that graph's own positions, not by matching its edges to the model's."""
    from torch_geometric.utils import add_remaining_self_loops

    positions = torch.arange(edge_index.shape[1], device=edge_index.device)
    ei, pos = edge_index, positions
    if add_self_loops:
        ei, pos = add_remaining_self_loops(edge_index, positions.to(torch.float64), -1.0, n)
    if ei.shape == cached.shape and torch.equal(ei, cached):
        return _follow(_model_ids(call, edge_index), pos.long())
    return call.ctx.edge_ids(cached)


def _with_root(call: LayerCall, a: Tensor, x: Tensor, lin_neigh, lin_root) -> Tensor:
    """``lin_neigh(a) + lin_root(x)``: one linear map over the pair ``[a, x]``."""
    branches = [call.dense_branch(a, lin_neigh.weight)]
    if lin_root is not None:
        branches.append(call.dense_branch(x, lin_root.weight))
    bias = lin_neigh.bias
    if lin_root is not None and lin_root.bias is not None:
        bias = lin_root.bias if bias is None else bias + lin_root.bias
    return call.map(branches, bias)


def graph_conv(call: LayerCall, x, edge_index, edge_weight=None, size=None) -> Tensor:
    """GraphConv: ``out = W_rel aggr_j(w_ji x_j) + W_root x_i + b`` (bipartite: ``x_j`` the
    source features, ``x_i`` the target's)."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    a = call.aggregate(x_src, edge_index, edge_weight, num_out=x_dst.shape[0])
    return _with_root(call, a, x_dst, m.lin_rel, m.lin_root)


def sage_conv(call: LayerCall, x, edge_index, size=None) -> Tensor:
    """SAGEConv: ``out = W_l mean_j(h_j) + W_r x_i + b``, ``h = ReLU(W x + b)`` with ``project``, else ``x``;
    ``normalize`` divides each row by its L2 norm, held constant (the LN-rule, see :mod:`.norms`)."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    # The projection feeds the neighbour messages only: PyG's root weight reads the raw x.
    h = call.passthrough(torch.relu, call.linear(x_src, m.lin.weight, m.lin.bias)) if m.project else x_src
    a = call.aggregate(h, edge_index, num_out=x_dst.shape[0])
    out = _with_root(call, a, x_dst, m.lin_l, m.lin_r if m.root_weight else None)
    if m.normalize:  # (as F.normalize: a norm below 1e-12 counts as 1e-12)
        out = out / out.detach().norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
    return out


def gin_conv(call: LayerCall, x, edge_index, size=None) -> Tensor:
    """GINConv: ``out = nn((1 + ε) x_i + sum_j x_j)``; ``nn`` is explained by its own layers."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    loops = [call.self_loops(x_dst, 1.0 + m.eps.detach())]
    return m.nn(call.aggregate(x_src, edge_index, extra=loops, num_out=x_dst.shape[0]))


def gine_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None) -> Tensor:
    """GINEConv: ``out = nn((1 + ε) x_i + sum_j ReLU(x_j + lin(e_ji)))``.

    The per-edge messages are the inputs of the sum, so their relevance is the edge
    relevance; through the ReLU it splits between ``x_j`` and the edge features.
    """
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    if edge_attr is None:
        raise ValueError(f"{call.name}: GINEConv needs edge_attr")
    e = m.lin(edge_attr) if m.lin is not None else edge_attr
    msg = torch.relu(x_src.index_select(0, edge_index[0]) + e)
    num_edges = edge_index.shape[1]
    rows = torch.stack([torch.arange(num_edges, device=x_src.device), edge_index[1]])
    ids = call.ctx.edge_ids(edge_index)
    loops = [call.self_loops(x_dst, 1.0 + m.eps.detach())]
    return m.nn(call.reduce_messages(msg, rows, x_dst.shape[0], ids, extra=loops))


def _attention(call: LayerCall, x, edge_index, edge_attr):
    """Run the layer once for its attention coefficients ``α [E', H]`` (kept fixed); ``x``
    as the layer got it (a bipartite pair too)."""
    # The class's forward, not call.original: a module found under several names is
    # routed once per name, so call.original may be another name's handler (which
    # returns no attention). The handler recomputes the class's forward anyway.
    forward = type(call.module).forward.__get__(call.module)
    _, (ei, alpha) = forward(x, edge_index, edge_attr=edge_attr, return_attention_weights=True)
    if call.module.add_self_loops:
        # (a bipartite layer adds loops to the nodes both sides have, as PyG does)
        n = x.shape[0] if isinstance(x, Tensor) else min(x[0].shape[0], x[1].shape[0])
        positions = call.ctx.memo(("loops", edge_index, n), lambda: _replaced_loops(edge_index, n))
    else:
        positions = torch.arange(edge_index.shape[1], device=edge_index.device)
    ids = _follow(_model_ids(call, edge_index), positions) if positions.numel() == ei.shape[1] else None
    return ei, alpha.detach(), ids


def _per_head(index: Tensor, heads: int) -> Tensor:
    """Row ``r`` of a per-(row, head) layout: ``r * heads + h`` for every head, flattened."""
    return (index[:, None] * heads + torch.arange(heads, device=index.device)).reshape(-1)


def _head_ids(ids: Tensor | None, heads: int) -> Tensor | None:
    return None if ids is None else ids[:, None].expand(-1, heads).reshape(-1)


def _joined_heads(out: Tensor, n: int, heads: int, concat: bool) -> Tensor:
    """``[n * heads, c]`` rows back to the layer's output: heads concatenated or averaged."""
    out = out.view(n, heads, out.shape[-1])  # (sizes named: -1 is unknown with no rows)
    return out.reshape(n, heads * out.shape[-1]) if concat else out.mean(1)


def _heads(call: LayerCall, h, ei, alpha, ids, bias: Tensor | None, concat: bool, n: int | None = None) -> Tensor:
    """Per-head node mixing ``out_jh = sum_i α_jih h_ih`` as one edge map over (node, head)
    rows, into ``n`` target nodes (default: as many as ``h`` has)."""
    n_src, heads, c = h.shape
    n = n_src if n is None else n
    stacked = torch.stack([_per_head(ei[0], heads), _per_head(ei[1], heads)])
    b = None
    if bias is not None:
        b = bias.view(1, heads, c) if concat else bias.view(1, 1, c)
        b = torch.broadcast_to(b, (n, heads, c)).reshape(n * heads, c)
    out = call.aggregate(
        h.reshape(n_src * heads, c), stacked, alpha.reshape(-1), bias=b, edge_ids=_head_ids(ids, heads),
        num_out=n * heads,
    )  # fmt: skip
    return _joined_heads(out, n, heads, concat)


def gat_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None, return_attention_weights=None) -> Tensor:
    """GATConv: ``out_j = sum_i α_ji Θ x_i + b`` with the forward's attention ``α`` fixed
    (bipartite: ``x_i`` the source features, ``Θ`` its ``lin_src`` where it has one)."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    ei, alpha, ids = _attention(call, x, edge_index, edge_attr)
    lin = m.lin if m.lin is not None else m.lin_src
    h = call.linear(x_src, lin.weight, lin.bias).view(-1, m.heads, m.out_channels)
    out = _heads(call, h, ei, alpha, ids, m.bias, m.concat, n=x_dst.shape[0])
    if getattr(m, "res", None) is not None:
        out = out + call.linear(x_dst, m.res.weight, m.res.bias)
    return out


def gatv2_conv(call: LayerCall, x, edge_index, edge_attr=None, return_attention_weights=None) -> Tensor:
    """GATv2Conv: ``out_j = sum_i α_ji (W_l x_i + b_l) + b`` with the forward's ``α`` fixed."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    ei, alpha, ids = _attention(call, x, edge_index, edge_attr)
    h = call.linear(x_src, m.lin_l.weight, m.lin_l.bias).view(-1, m.heads, m.out_channels)
    out = _heads(call, h, ei, alpha, ids, m.bias, m.concat, n=x_dst.shape[0])
    if getattr(m, "res", None) is not None:
        out = out + call.linear(x_dst, m.res.weight, m.res.bias)
    return out


def transformer_conv(call: LayerCall, x, edge_index, edge_attr=None, return_attention_weights=None) -> Tensor:
    """TransformerConv: ``out_j = sum_i α_ji (W_v x_i + b_v + W_e e_ji) + W_s x_j + b_s``, the
    forward's attention ``α`` fixed, and with ``beta`` its gate ``β`` too (as LRP treats
    gating): ``out = β skip + (1 - β) attention``.

    With ``edge_dim`` the per-edge messages ``W_v x_i + W_e e_ji`` are the inputs of the
    sum, so their relevance is the edge relevance, split between ``x_i`` and ``e_ji``.
    Bipartite: values from the source features, the skip from the target's.
    """
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    if edge_attr is not None and m.lin_edge is None:
        raise ValueError(f"{call.name}: TransformerConv got edge_attr but has no edge_dim (no lin_edge)")
    heads, c = m.heads, m.out_channels
    forward = type(m).forward.__get__(m)  # (the class's: see _attention)
    _, (ei, alpha) = forward(x, edge_index, edge_attr=edge_attr, return_attention_weights=True)
    alpha, ids = alpha.detach(), _model_ids(call, edge_index)
    value = call.linear(x_src, m.lin_value.weight, m.lin_value.bias).view(-1, heads, c)
    n = x_dst.shape[0]
    if m.lin_edge is None:
        out = _heads(call, value, ei, alpha, ids, None, m.concat, n=n)
    else:
        num_edges = ei.shape[1]
        with call.over_edges():  # (a map over edge rows)
            e = call.linear(edge_attr, m.lin_edge.weight, m.lin_edge.bias).view(-1, heads, c)
        msg = value.index_select(0, ei[0]) + e
        rows = torch.stack([torch.arange(num_edges * heads, device=ei.device), _per_head(ei[1], heads)])
        out = call.reduce_messages(msg.reshape(-1, c), rows, n * heads, _head_ids(ids, heads), weight=alpha.reshape(-1))
        out = _joined_heads(out, n, heads, m.concat)
    if not m.root_weight:
        return out
    skip = call.linear(x_dst, m.lin_skip.weight, m.lin_skip.bias)
    if m.lin_beta is None:
        return out + skip
    with torch.no_grad():
        a, s = out.detach(), skip.detach()
        beta = torch.sigmoid(torch.nn.functional.linear(torch.cat([a, s, a - s], -1), m.lin_beta.weight))
    return beta * skip + (1 - beta) * out


def res_gated_graph_conv(call: LayerCall, x, edge_index, edge_attr=None) -> Tensor:
    """ResGatedGraphConv: ``out_i = sum_{j->i} η_ji ⊙ v_j + W_s x_i + b``, its gates
    ``η_ji = act(k_i + q_j)`` held fixed (as LRP treats gating). The gated per-edge messages
    are the inputs of the sum, so their relevance is the edge relevance; with ``edge_dim``
    each value ``v_ji = W_v [x_j, e_ji] + b_v`` splits it between the node and the edge.
    Bipartite: keys and the skip from the target features, queries and values the source's."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    if (edge_attr is None) != (m.edge_dim is None):
        raise ValueError(f"{call.name}: ResGatedGraphConv needs edge_attr exactly when it has edge_dim")
    src, dst = edge_index
    with torch.no_grad():
        xs, xd = x_src.detach(), x_dst.detach()
        if m.edge_dim is None:
            k, q = m.lin_key(xd).index_select(0, dst), m.lin_query(xs).index_select(0, src)
        else:
            e = edge_attr.detach()
            k = m.lin_key(torch.cat([xd.index_select(0, dst), e], -1))
            q = m.lin_query(torch.cat([xs.index_select(0, src), e], -1))
        gate = m.act(k + q)
    if m.edge_dim is None:
        v = call.linear(x_src, m.lin_value.weight, m.lin_value.bias).index_select(0, src)
    else:
        with call.over_edges():  # (a map over edge rows)
            v = call.linear(
                torch.cat([x_src.index_select(0, src), edge_attr], -1), m.lin_value.weight, m.lin_value.bias
            )
    rows = torch.stack([torch.arange(edge_index.shape[1], device=dst.device), dst])
    extra = [call.root(x_dst, m.lin_skip.weight)] if m.root_weight else []
    return call.reduce_messages(gate * v, rows, x_dst.shape[0], _model_ids(call, edge_index), extra, m.bias)


def le_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """LEConv: ``out_i = sum_{j->i} w_ji (Θ1 x_j + b1 - Θ2 x_i) + Θ3 x_i + b3`` as one map.
    Both ends' terms of a message travel on its edge (the ``-Θ2 x_i`` one from ``i`` to
    itself), so an edge's relevance is its whole message's; ``Θ3 x_i`` is a feature map of
    its own, summed in as a self-loop (:meth:`~.base.LayerCall.root`)."""
    _check_plain(call, x, edge_index)
    m = call.module
    n = x.shape[0]
    a = call.linear(x, m.lin1.weight, m.lin1.bias)
    b = call.linear(x, m.lin2.weight, m.lin2.bias)
    w = x.new_ones(edge_index.shape[1]) if edge_weight is None else edge_weight.detach()
    ids = _model_ids(call, edge_index)
    at_target = call.ctx.memo(("le_targets", edge_index), lambda: torch.stack([edge_index[1], edge_index[1]]))
    own = MapBranch(call.ctx.operator(at_target, n, n), -w, b, edge_ids=ids, record_edges=True)
    root = call.root(x, m.lin3.weight)
    return call.edges(a, edge_index, w, bias=m.lin3.bias, edge_ids=ids, extra=[own, root])


def cluster_gcn_conv(call: LayerCall, x, edge_index) -> Tensor:
    """ClusterGCNConv: ``out = Θ_out (Â + λ diag(Â)) x + Θ_root x + b``, ``Â`` each edge
    weighted by its target's inverse in-degree (self-loops added)."""
    from torch_geometric.utils import degree

    _check_plain(call, x, edge_index)
    m = call.module
    n = x.shape[0]

    def normalised():
        ei, ids = _one_loop_per_node(call, edge_index, n, m.add_self_loops)
        # (in torch's default dtype, as the layer's degree() computes them: the same weights)
        deg_inv = 1.0 / degree(ei[1], num_nodes=n).clamp(min=1.0)
        w = deg_inv.index_select(0, ei[1])
        return ei, torch.where(ei[0] == ei[1], w + m.diag_lambda * w, w).to(x.dtype), ids

    ei, w, ids = call.ctx.memo(("cluster_gcn", edge_index, n, m.add_self_loops, m.diag_lambda, x.dtype), normalised)
    a = call.aggregate(x, ei, w, edge_ids=ids)
    return _with_root(call, a, x, m.lin_out, m.lin_root)


def gcn2_conv(call: LayerCall, x, x_0, edge_index, edge_weight=None) -> Tensor:
    """GCN2Conv (GCNII): ``h = (1 - α) Â x + α x_0``, ``out = (1 - β) h + β h Θ``; with
    ``shared_weights=False`` the two summands of ``h`` take their own ``Θ1``, ``Θ2``. The
    identity and ``Θ`` parts are branches of one map (one denominator, the rule on each)."""
    _check_plain(call, x, edge_index)
    m = call.module
    if m.normalize:
        ei, w, ids = _normalised(call, edge_index, edge_weight, x, False, m.add_self_loops)
    else:
        ei, w, ids = edge_index, edge_weight, None
    w = x.new_ones(ei.shape[1]) if w is None else w.detach()
    x_0 = x_0[: x.shape[0]]
    keep = x.new_full((x.shape[1],), 1.0 - m.beta)

    def mixed(h: Tensor, weight: Tensor) -> list[MapBranch]:
        return [MapBranch(DiagonalOperator(keep), keep, h), call.dense_branch(h, m.beta * weight.T)]

    if m.weight2 is None:
        h = call.aggregate(x, ei, w * (1 - m.alpha), edge_ids=ids, extra=[call.self_loops(x_0, m.alpha)])
        return call.map(mixed(h, m.weight1))
    h = call.aggregate(x, ei, w * (1 - m.alpha), edge_ids=ids)
    return call.map(mixed(h, m.weight1) + mixed(x_0 * m.alpha, m.weight2))


def gen_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None) -> Tensor:
    """GENConv (DeeperGCN): ``out_i = mlp(norm(aggr_j(ReLU(x_j + e_ji) + ε)) + x_i)``, the
    softmax aggregation's weights held fixed (as attention), MessageNorm's norms too. The
    per-edge messages are the inputs of the aggregation: their relevance is the edge
    relevance, split between ``x_j`` and the edge features (``ε``, a constant, keeps its
    share: absorbed)."""
    _check_plain(call, x, edge_index)
    m = call.module
    src = call.linear(x, m.lin_src.weight, m.lin_src.bias) if hasattr(m, "lin_src") else x
    msg = src.index_select(0, edge_index[0])
    if edge_attr is not None:
        if hasattr(m, "lin_edge"):
            with call.over_edges():  # (a map over edge rows)
                edge_attr = call.linear(edge_attr, m.lin_edge.weight, m.lin_edge.bias)
        msg = msg + edge_attr
    msg = torch.relu(msg) + m.eps
    rows = torch.stack([torch.arange(edge_index.shape[1], device=x.device), edge_index[1]])
    out = call.reduce_messages(msg, rows, x.shape[0], _model_ids(call, edge_index))
    if hasattr(m, "lin_aggr_out"):
        out = call.linear(out, m.lin_aggr_out.weight, m.lin_aggr_out.bias)
    if hasattr(m, "msg_norm"):
        out = m.msg_norm(x, out)
    dst = call.linear(x, m.lin_dst.weight, m.lin_dst.bias) if hasattr(m, "lin_dst") else x
    return m.mlp(out + dst)


def edge_conv(call: LayerCall, x, edge_index) -> Tensor:
    """EdgeConv: ``out_i = aggr_j nn([x_i, x_j - x_i])``: ``nn`` is explained by its own
    layers over the edges' rows, and its outputs, the messages, carry the edge relevance."""
    _check_plain(call, x, edge_index)
    m = call.module
    x_i, x_j = x.index_select(0, edge_index[1]), x.index_select(0, edge_index[0])
    with call.over_edges():
        msg = m.nn(torch.cat([x_i, x_j - x_i], -1))
    rows = torch.stack([torch.arange(edge_index.shape[1], device=x.device), edge_index[1]])
    return call.reduce_messages(msg, rows, x.shape[0], _model_ids(call, edge_index))


def pna_conv(call: LayerCall, x, edge_index, edge_attr=None) -> Tensor:
    """PNAConv: per tower, messages ``pre([x_i, x_j, enc(e_ji)])`` (MLPs over the edges'
    rows), several aggregations each scaled by degree functions (constants of the graph),
    then ``post([x_i, aggregated])`` and ``lin``. Mean, sum, min and max aggregate as
    :meth:`~.base.LayerCall.reduce_messages` explains them; std and var are refused."""
    _check_plain(call, x, edge_index)
    m = call.module
    towers, f_in = m.towers, m.F_in
    h = x.view(-1, towers, f_in) if m.divide_input else x.view(-1, 1, f_in).repeat(1, towers, 1)
    parts = [h.index_select(0, edge_index[1]), h.index_select(0, edge_index[0])]
    if edge_attr is not None:
        with call.over_edges():  # (a map over edge rows)
            e = call.linear(edge_attr, m.edge_encoder.weight, m.edge_encoder.bias)
        parts.append(e.view(-1, 1, f_in).repeat(1, towers, 1))
    joined = torch.cat(parts, dim=-1)
    with call.over_edges():
        msg = torch.stack([nn_(joined[:, i]) for i, nn_ in enumerate(m.pre_nns)], dim=1)
    n, num_edges = x.shape[0], edge_index.shape[1]
    rows = torch.stack([torch.arange(num_edges, device=x.device), edge_index[1]])
    scaler = m.aggr_module
    ids = _model_ids(call, edge_index)
    flat = call.reduce_messages(msg.reshape(num_edges, towers * f_in), rows, n, ids, aggregation=scaler.aggr)
    # (each aggregation's [N, towers * F] block back to PyG's [N, towers, F], concatenated last)
    out = torch.cat([b.view(n, towers, f_in) for b in flat.split(towers * f_in, dim=1)], dim=-1)
    deg = torch.bincount(edge_index[1], minlength=n).to(x.dtype).view(-1, 1, 1)
    scaled = [out * _degree_scale(name, deg, scaler) for name in scaler.scaler]
    out = torch.cat([h, *scaled], dim=-1)
    out = torch.cat([nn_(out[:, i]) for i, nn_ in enumerate(m.post_nns)], dim=1)
    return call.linear(out, m.lin.weight, m.lin.bias)


def ssg_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """SSGConv: ``out = Θ (α x + (1 - α)/K sum_k Â^k x) + b`` as one map over the hops."""
    _check_plain(call, x, edge_index)
    m = call.module
    _refuse_filled_cache(call, "_cached_h")
    ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, m.add_self_loops, x.dtype)
    hops = [x]
    for _ in range(m.K):
        hops.append(call.aggregate(hops[-1], ei, w, edge_ids=ids))
    coefs = [m.alpha] + [(1 - m.alpha) / m.K] * m.K
    return call.map([call.dense_branch(h, c * m.lin.weight) for h, c in zip(hops, coefs)], m.lin.bias)


def mixhop_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """MixHopConv: ``out = concat_{p in powers} Θ_p Â^p x + b``, each power its own map."""
    _check_plain(call, x, edge_index)
    m = call.module
    ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, m.add_self_loops, x.dtype)
    hops = [x]
    for _ in range(max(m.powers)):
        hops.append(call.aggregate(hops[-1], ei, w, edge_ids=ids))
    c = m.out_channels
    outs = []
    for k, p in enumerate(m.powers):
        bias = None if m.bias is None else m.bias[k * c : (k + 1) * c]
        outs.append(call.linear(hops[p], m.lins[p].weight, bias))
    return torch.cat(outs, dim=-1)


def agnn_conv(call: LayerCall, x, edge_index) -> Tensor:
    """AGNNConv: ``out_i = sum_j α_ij x_j``, ``α = softmax_j(β cos(x_i, x_j))`` (self-loops
    added) held fixed, as attention."""
    from torch_geometric.utils import softmax

    _check_plain(call, x, edge_index)
    m = call.module
    n = x.shape[0]
    ei, ids = _one_loop_per_node(call, edge_index, n, m.add_self_loops)
    with torch.no_grad():
        xn = torch.nn.functional.normalize(x.detach(), p=2.0, dim=-1)
        alpha = softmax(m.beta.detach() * (xn[ei[1]] * xn[ei[0]]).sum(-1), ei[1], num_nodes=n)
    return call.aggregate(x, ei, alpha, edge_ids=ids)


def cg_conv(call: LayerCall, x, edge_index, edge_attr=None) -> Tensor:
    """CGConv: ``out_i = x_i + bn(sum_j σ(W_f z_ij + b_f) ⊙ softplus(W_s z_ij + b_s))``,
    ``z_ij = [x_i, x_j, e_ij]``: the gate ``σ(...)`` held fixed, softplus passing relevance
    (Pass rule); the gated messages carry the edge relevance."""
    _check_plain(call, x, edge_index)
    m = call.module
    parts = [x.index_select(0, edge_index[1]), x.index_select(0, edge_index[0])]
    if edge_attr is not None:
        parts.append(edge_attr)
    z = torch.cat(parts, dim=-1)
    with torch.no_grad():
        gate = torch.sigmoid(m.lin_f(z.detach()))
    with call.over_edges():  # (a map over edge rows)
        s = call.passthrough(torch.nn.functional.softplus, call.linear(z, m.lin_s.weight, m.lin_s.bias))
    rows = torch.stack([torch.arange(edge_index.shape[1], device=x.device), edge_index[1]])
    out = call.reduce_messages(gate * s, rows, x.shape[0], _model_ids(call, edge_index))
    return (out if m.bn is None else m.bn(out)) + x


def fa_conv(call: LayerCall, x, x_0, edge_index, edge_weight=None, return_attention_weights=None) -> Tensor:
    """FAConv: ``out_i = sum_j α_ij w_ij x_j + ε x_0,i``, its signed attention
    ``α_ij = tanh(a_l x_j + a_r x_i)`` held fixed (computed from the forward's values, so the
    layer's cache is left as it is), ``w`` the GCN-normalised weights."""
    _check_plain(call, x, edge_index)
    m = call.module
    if m.normalize:
        ei, w, ids = _normalised(call, edge_index, None, x, False, m.add_self_loops)
    else:
        if edge_weight is None:
            raise ValueError(f"{call.name}: FAConv(normalize=False) needs edge_weight")
        ei, w, ids = edge_index, edge_weight, _model_ids(call, edge_index)
    with torch.no_grad():
        xd = x.detach()
        alpha = torch.tanh(m.att_l(xd)[ei[0]] + m.att_r(xd)[ei[1]]).squeeze(-1)
    extra = [call.self_loops(x_0, m.eps)] if m.eps != 0.0 else None
    return call.aggregate(x, ei, alpha * w.detach(), edge_ids=ids, extra=extra)


def arma_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """ARMAConv: per stack ``k``, ``h_t = act(Â h_{t-1} W_t + x V_t + b_t)`` (``h_0 = x``,
    ``Â`` GCN-normalised without self-loops), the output the stacks' mean: each step one map
    (the propagation and the root term ``x V_t``, a feature map of its own, as its branches),
    ``act`` explained by its own handler."""
    _check_plain(call, x, edge_index)
    m = call.module
    ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, False, x.dtype)
    stacks = []
    for k in range(m.num_stacks):
        h = x
        for t in range(m.num_layers):
            weight = m.init_weight[k] if t == 0 else m.weight[0 if m.shared_weights else t - 1][k]
            root = m.root_weight[0 if m.shared_weights else t][k]
            bias = None if m.bias is None else m.bias[0 if m.shared_weights else t][k].reshape(-1)
            hw = call.linear(h, weight.T)
            h = call.aggregate(hw, ei, w, edge_ids=ids, bias=bias, extra=[call.root(x, root.T)])
            if m.act is not None:
                h = m.act(h)
        stacks.append(h)
    return torch.stack(stacks).mean(0)


def _degree_scale(name: str, deg: Tensor, agg) -> Tensor | float:
    """PNA's degree scaler ``name`` per node (a constant of the graph, as its forward computes it)."""
    if name == "identity":
        return 1.0
    if name == "amplification":
        return torch.log(deg + 1) / agg.avg_deg_log
    if name == "attenuation":
        return agg.avg_deg_log / torch.log(deg.clamp(min=1) + 1)
    if name == "linear":
        return deg / agg.avg_deg_lin
    if name == "inverse_linear":
        return agg.avg_deg_lin / deg.clamp(min=1)
    raise ValueError(f"unknown PNA scaler {name!r}")


def _refuse_filled_cache(call: LayerCall, attr: str) -> None:
    """SGConv/SSGConv with a filled cache return ``lin(cache)``, whatever x and graph they
    are given: a constant of the input, with nothing to explain. (Read, never written:
    explaining neither fills nor clears the cache.)"""
    if getattr(call.module, attr, None) is not None:
        kind = type(call.module).__name__
        raise ValueError(
            f"{call.name or '<model>'} ({kind}): its cache (cached=True) holds propagated features "
            "that no longer depend on the input x, so its output cannot be explained in terms of x. "
            f"Construct it with cached=False for explaining, or clear the cache (layer.{attr} = None)"
        )


def sg_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """SGConv: ``out = Θ Â^K x + b``."""
    _check_plain(call, x, edge_index)
    m = call.module
    _refuse_filled_cache(call, "_cached_x")
    ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, m.add_self_loops, x.dtype)
    for _ in range(m.K):
        x = call.aggregate(x, ei, w, edge_ids=ids)
    return call.linear(x, m.lin.weight, m.lin.bias)


def tag_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """TAGConv: ``out = sum_k Θ_k Â^k x + b`` as one linear map over the hops."""
    _check_plain(call, x, edge_index)
    m = call.module
    if m.normalize:
        ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, False, x.dtype)
    else:
        ei, w, ids = edge_index, edge_weight, None
    hops = [x]
    for _ in range(m.K):
        hops.append(call.aggregate(hops[-1], ei, w, edge_ids=ids))
    bias = m.bias
    for lin in m.lins:
        if lin.bias is not None:
            bias = lin.bias if bias is None else bias + lin.bias
    return call.map([call.dense_branch(h, lin.weight) for h, lin in zip(hops, m.lins)], bias)


def appnp(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """APPNP: ``h ← (1 - α) Â h + α x``, K times; each step one map over ``[h, x]``."""
    _check_plain(call, x, edge_index)
    m = call.module
    ei, w, ids = edge_index, edge_weight, None
    if m.normalize:
        ei, w, ids = _normalised(call, edge_index, edge_weight, x, False, m.add_self_loops)
    w = call.aggr_weights(ei, w, x.shape[0], x)  # (once: each step scales it by 1 - α)
    w = x.new_ones(ei.shape[1]) if w is None else w
    h = x
    for _ in range(m.K):
        h = call.edges(h, ei, (1 - m.alpha) * w, edge_ids=ids, extra=[call.self_loops(x, m.alpha)])
    return h


def cheb_conv(call: LayerCall, x, edge_index, edge_weight=None, batch=None, lambda_max=None) -> Tensor:
    """ChebConv: ``out = sum_k Θ_k T_k(L̂) x + b``, ``T_k = 2 L̂ T_{k-1} - T_{k-2}``.

    The scaled Laplacian has negative weights, so every rule sees signed edges here.
    """
    _check_plain(call, x, edge_index)
    m = call.module
    n = x.shape[0]
    if m.normalization is None and lambda_max is None:
        # PyG then scales by 2 / (2 max L_ii): the graph's largest degree.
        call.whole_graph_only("scales by the graph's largest degree (normalization=None)", "pass lambda_max")
    key = ("cheb", edge_index, edge_weight, n, m.normalization, lambda_max, x.dtype, batch)
    ei, norm = call.ctx.memo(
        key, lambda: m.__norm__(edge_index, n, edge_weight, m.normalization, lambda_max, x.dtype, batch)
    )
    positions = call.ctx.memo(("loops", edge_index, n), lambda: _replaced_loops(edge_index, n))
    ids = _follow(_model_ids(call, edge_index), positions) if positions.numel() == ei.shape[1] else None
    norm = call.aggr_weights(ei, norm, n, x)  # (once: the recursion doubles it)
    t = [x]
    if len(m.lins) > 1:
        t.append(call.edges(x, ei, norm, edge_ids=ids))
    for _ in m.lins[2:]:
        t.append(call.edges(t[-1], ei, 2 * norm, edge_ids=ids, extra=[call.self_loops(t[-2], -1.0)]))
    bias = m.bias
    return call.map([call.dense_branch(tk, lin.weight) for tk, lin in zip(t, m.lins)], bias)


def _register() -> None:
    import torch_geometric.nn as g

    # GCN-style normalisation reads the in-degree of every message's source, as a sum of
    # edge weights (gcn_norm gets them from LayerCall.degree_weights).
    deg = ("weighted_in_degrees",)
    register_handler(g.GCNConv, gcn_conv, subgraph=_cached_graph_needs)
    register_handler(g.GraphConv, graph_conv, subgraph=())
    register_handler(g.SAGEConv, sage_conv, subgraph=())
    register_handler(g.GINConv, gin_conv, children=("nn",), subgraph=())
    register_handler(g.GINEConv, gine_conv, children=("nn", "lin"), subgraph=())
    register_handler(g.GATConv, gat_conv, subgraph=())
    register_handler(g.GATv2Conv, gatv2_conv, subgraph=())
    register_handler(g.TransformerConv, transformer_conv, subgraph=())
    register_handler(g.ResGatedGraphConv, res_gated_graph_conv, subgraph=())
    register_handler(g.LEConv, le_conv, subgraph=())
    register_handler(g.ClusterGCNConv, cluster_gcn_conv, subgraph=())
    register_handler(g.GCN2Conv, gcn2_conv, subgraph=_cached_graph_needs)
    register_handler(g.GENConv, gen_conv, children=("mlp", "msg_norm"), subgraph=())
    register_handler(g.EdgeConv, edge_conv, children=("nn",), subgraph=())
    register_handler(g.PNAConv, pna_conv, children=("pre_nns", "post_nns"), subgraph=())
    register_handler(g.SSGConv, ssg_conv, subgraph=_sg_needs)
    register_handler(g.MixHopConv, mixhop_conv, subgraph=deg)
    register_handler(g.AGNNConv, agnn_conv, subgraph=())
    register_handler(g.CGConv, cg_conv, children=("bn",), subgraph=())
    register_handler(g.FAConv, fa_conv, subgraph=_cached_graph_needs)
    register_handler(g.ARMAConv, arma_conv, children=("act",), subgraph=deg)
    register_handler(g.SGConv, sg_conv, subgraph=_sg_needs)
    register_handler(g.TAGConv, tag_conv, subgraph=deg)
    register_handler(g.APPNP, appnp, subgraph=_cached_graph_needs)
    register_handler(g.ChebConv, cheb_conv, subgraph=_cheb_needs)


def _cached_graph_needs(m) -> tuple[str, ...] | None:
    # A filled cache is the graph the layer uses: a single node target keeps the whole graph
    # to use it; batched targets recompute it per subgraph (exact when the cache was built
    # from the given graph, as in transductive training).
    return None if _cached_graph(m) is not None else ("weighted_in_degrees",)


def _sg_needs(m) -> tuple[str, ...] | None:
    # A filled cache makes the handler refuse the layer (on the whole graph or a subgraph
    # alike): no subgraph is cut for a single node target that cannot be explained.
    if getattr(m, "_cached_x", None) is not None or getattr(m, "_cached_h", None) is not None:
        return None
    return ("weighted_in_degrees",)


def _cheb_needs(m) -> tuple[str, ...] | None:
    # Without normalisation the Laplacian's scale may be the graph's largest degree (when no
    # lambda_max is passed): undeclared, so a single node target keeps the whole graph.
    return None if m.normalization is None else ("in_degrees", "out_degrees")


_register()
