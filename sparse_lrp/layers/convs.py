"""torch_geometric graph layers as node mixing (edge maps) plus feature mixing (Linear).

Each handler recomputes its layer's forward with the LRP primitives; the layer's own
normalisation code (``gcn_norm``, ChebConv's Laplacian, GAT's attention) is called,
never rewritten, so the recomputed output equals the layer's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import register_handler
from .base import LayerCall


def _check_plain(call: LayerCall, x, edge_index) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{call.name} ({type(call.module).__name__}): bipartite (tuple) inputs are not supported")
    if not isinstance(edge_index, Tensor) or edge_index.layout != torch.strided:
        raise ValueError(
            f"{call.name} ({type(call.module).__name__}): edge_index must be a [2, E] tensor "
            "(SparseTensor/sparse adjacency inputs are not supported)"
        )
    if getattr(call.module, "flow", "source_to_target") != "source_to_target":
        raise ValueError(f"{call.name}: only flow='source_to_target' is supported")


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


def _gcn_norm(call: LayerCall, edge_index, edge_weight, n, improved, add_self_loops, dtype):
    """``gcn_norm`` once per graph and explanation: every layer shares the result and its operator."""
    key = ("gcn_norm", edge_index, edge_weight, n, improved, add_self_loops, dtype)
    return call.ctx.memo(key, lambda: _gcn_norm_now(call, edge_index, edge_weight, n, improved, add_self_loops, dtype))


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
    if add_self_loops:
        # Same re-ordering as gcn_norm, applied to edge positions (exact, multi-edges too).
        _, pos = add_remaining_self_loops(edge_index, positions.to(torch.float64), -1.0, n)
        positions = pos.long()
    return ei, w, _follow(_model_ids(call, edge_index), positions)


def gcn_conv(call: LayerCall, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
    """GCNConv: ``out = Â (x Θ) + b``."""
    _check_plain(call, x, edge_index)
    m = call.module
    h = call.linear(x, m.lin.weight, m.lin.bias)
    cache = getattr(m, "_cached_edge_index", None) if m.cached else None
    if m.normalize and cache is not None and not call.ctx.on_subgraphs:
        # The layer's own forward uses its cached normalised graph, whatever it is given.
        ei, w = cache
        ids = call.ctx.edge_ids(ei)
    elif m.normalize:
        ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], m.improved, m.add_self_loops, x.dtype)
    else:
        ei, w, ids = edge_index, edge_weight, None
    w = _aggr_weights(call, ei, w, x.shape[0], h)
    return call.edges(h, ei, w, m.bias, edge_ids=ids)


def _aggr_weights(call: LayerCall, edge_index: Tensor, weight: Tensor | None, num_out: int, like: Tensor):
    """Per-edge weights under which the layer's aggregation is a plain sum over in-edges.

    ``add``/``sum`` keep ``weight``; ``mean`` divides it by each target's number of
    in-edges (complete for every node a target depends on, on k-hop subgraphs too).
    Other aggregations (max, softmax, several at once) are not linear maps: refused.
    """
    aggr = _aggr_name(call.module)
    if aggr in ("add", "sum"):
        return weight
    if aggr == "mean":
        count = torch.bincount(edge_index[1], minlength=num_out).clamp(min=1).to(like.dtype)
        w = like.new_ones(edge_index.shape[1]) if weight is None else weight.detach()
        return w / count.index_select(0, edge_index[1])
    raise ValueError(
        f"{call.name or '<model>'} ({type(call.module).__name__}): aggr={aggr!r} is not supported (use add/sum/mean): "
        "LRP needs the aggregation to be a linear map"
    )


def _aggregate(call: LayerCall, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None) -> Tensor:
    """Sum or mean of incoming messages ``w_e x_i`` as one edge map."""
    return call.edges(x, edge_index, _aggr_weights(call, edge_index, edge_weight, x.shape[0], x))


def _aggr_name(module) -> str:
    # PyG resolves aggr (a name, an Aggregation object, a list) into aggr_module.
    agg = getattr(module, "aggr_module", None)
    if agg is None:
        return str(module.aggr)
    kind = type(agg).__name__.replace("Aggregation", "").lower()
    return "add" if kind == "sum" else kind if kind != "multi" else str(module.aggr)


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
    """GraphConv: ``out = W_rel aggr_j(w_ji x_j) + W_root x_i + b``."""
    _check_plain(call, x, edge_index)
    m = call.module
    a = _aggregate(call, x, edge_index, edge_weight)
    return _with_root(call, a, x, m.lin_rel, m.lin_root)


def sage_conv(call: LayerCall, x, edge_index, size=None) -> Tensor:
    """SAGEConv: ``out = W_l mean_j(h_j) + W_r x_i + b``, ``h = ReLU(W x + b)`` with ``project``, else ``x``."""
    _check_plain(call, x, edge_index)
    m = call.module
    if m.normalize:
        raise ValueError(f"{call.name}: SAGEConv(normalize=True) (L2 output normalisation) is not supported")
    # The projection feeds the neighbour messages only: PyG's root weight reads the raw x.
    h = call.passthrough(torch.relu, call.linear(x, m.lin.weight, m.lin.bias)) if m.project else x
    a = _aggregate(call, h, edge_index, None)
    return _with_root(call, a, x, m.lin_l, m.lin_r if m.root_weight else None)


def gin_conv(call: LayerCall, x, edge_index, size=None) -> Tensor:
    """GINConv: ``out = nn((1 + ε) x_i + sum_j x_j)``; ``nn`` is explained by its own layers."""
    _check_plain(call, x, edge_index)
    m = call.module
    w = _aggr_weights(call, edge_index, None, x.shape[0], x)
    a = call.edges(x, edge_index, w, extra=[call.self_loops(x, 1.0 + float(m.eps))])
    return m.nn(a)


def gine_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None) -> Tensor:
    """GINEConv: ``out = nn((1 + ε) x_i + sum_j ReLU(x_j + lin(e_ji)))``.

    The per-edge messages are the inputs of the sum, so their relevance is the edge
    relevance; through the ReLU it splits between ``x_j`` and the edge features.
    """
    _check_plain(call, x, edge_index)
    m = call.module
    if edge_attr is None:
        raise ValueError(f"{call.name}: GINEConv needs edge_attr")
    e = m.lin(edge_attr) if m.lin is not None else edge_attr
    msg = torch.relu(x.index_select(0, edge_index[0]) + e)
    num_edges = edge_index.shape[1]
    rows = torch.stack([torch.arange(num_edges, device=x.device), edge_index[1]])
    ids = call.ctx.edge_ids(edge_index)
    w = _aggr_weights(call, edge_index, None, x.shape[0], x)
    loops = [call.self_loops(x, 1.0 + float(m.eps))]
    return m.nn(call.messages(msg, rows, x.shape[0], ids, extra=loops, weight=w))


def _attention(call: LayerCall, x, edge_index, edge_attr):
    """Run the layer once for its attention coefficients ``α [E', H]`` (kept fixed)."""
    # The class's forward, not call.original: a module found under several names is
    # routed once per name, so call.original may be another name's handler (which
    # returns no attention). The handler recomputes the class's forward anyway.
    forward = type(call.module).forward.__get__(call.module)
    _, (ei, alpha) = forward(x, edge_index, edge_attr=edge_attr, return_attention_weights=True)
    if call.module.add_self_loops:
        positions = call.ctx.memo(("loops", edge_index, x.shape[0]), lambda: _replaced_loops(edge_index, x.shape[0]))
    else:
        positions = torch.arange(edge_index.shape[1], device=edge_index.device)
    ids = _follow(_model_ids(call, edge_index), positions) if positions.numel() == ei.shape[1] else None
    return ei, alpha.detach(), ids


def _heads(call: LayerCall, h, ei, alpha, ids, bias: Tensor | None, concat: bool) -> Tensor:
    """Per-head node mixing ``out_jh = sum_i α_jih h_ih`` as one edge map over (node, head) rows."""
    n, heads, c = h.shape
    mean = _aggr_weights(call, ei, None, n, h)  # 1 / in-degree for mean, else None
    if mean is not None:
        alpha = alpha * mean[:, None]
    offs = torch.arange(heads, device=h.device)
    src = (ei[0][:, None] * heads + offs).reshape(-1)
    dst = (ei[1][:, None] * heads + offs).reshape(-1)
    ids = None if ids is None else ids[:, None].expand(-1, heads).reshape(-1)
    stacked = torch.stack([src, dst])
    b = None
    if bias is not None:
        b = bias.view(1, heads, c) if concat else bias.view(1, 1, c)
        b = torch.broadcast_to(b, (n, heads, c)).reshape(n * heads, c)
    out = call.edges(h.reshape(n * heads, c), stacked, alpha.reshape(-1), b, edge_ids=ids)
    out = out.view(n, heads, c)
    return out.reshape(n, heads * c) if concat else out.mean(1)


def gat_conv(call: LayerCall, x, edge_index, edge_attr=None, size=None, return_attention_weights=None) -> Tensor:
    """GATConv: ``out_j = sum_i α_ji Θ x_i + b`` with the forward's attention ``α`` fixed."""
    _check_plain(call, x, edge_index)
    m = call.module
    if m.lin is None:
        raise ValueError(f"{call.name}: bipartite GATConv (lin_src/lin_dst) is not supported")
    ei, alpha, ids = _attention(call, x, edge_index, edge_attr)
    h = call.linear(x, m.lin.weight, m.lin.bias).view(-1, m.heads, m.out_channels)
    out = _heads(call, h, ei, alpha, ids, m.bias, m.concat)
    if getattr(m, "res", None) is not None:
        out = out + call.linear(x, m.res.weight, m.res.bias)
    return out


def gatv2_conv(call: LayerCall, x, edge_index, edge_attr=None, return_attention_weights=None) -> Tensor:
    """GATv2Conv: ``out_j = sum_i α_ji (W_l x_i + b_l) + b`` with the forward's ``α`` fixed."""
    _check_plain(call, x, edge_index)
    m = call.module
    ei, alpha, ids = _attention(call, x, edge_index, edge_attr)
    h = call.linear(x, m.lin_l.weight, m.lin_l.bias).view(-1, m.heads, m.out_channels)
    out = _heads(call, h, ei, alpha, ids, m.bias, m.concat)
    if getattr(m, "res", None) is not None:
        out = out + call.linear(x, m.res.weight, m.res.bias)
    return out


def sg_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """SGConv: ``out = Θ Â^K x + b``."""
    _check_plain(call, x, edge_index)
    m = call.module
    if getattr(m, "_cached_x", None) is not None:
        # The layer's own forward then returns lin(_cached_x), whatever x and graph it is
        # given: a constant of the input, with nothing to explain. (Read, never written:
        # explaining neither fills nor clears the cache.)
        raise ValueError(
            f"{call.name or '<model>'} (SGConv): its cache (cached=True) holds propagated features "
            "that no longer depend on the input x, so its output cannot be explained in terms of x. "
            "Construct it with cached=False for explaining, or clear the cache (layer._cached_x = None)"
        )
    ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, m.add_self_loops, x.dtype)
    w = _aggr_weights(call, ei, w, x.shape[0], x)
    for _ in range(m.K):
        x = call.edges(x, ei, w, edge_ids=ids)
    return call.linear(x, m.lin.weight, m.lin.bias)


def tag_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """TAGConv: ``out = sum_k Θ_k Â^k x + b`` as one linear map over the hops."""
    _check_plain(call, x, edge_index)
    m = call.module
    if m.normalize:
        ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, False, x.dtype)
    else:
        ei, w, ids = edge_index, edge_weight, None
    w = _aggr_weights(call, ei, w, x.shape[0], x)
    hops = [x]
    for _ in range(m.K):
        hops.append(call.edges(hops[-1], ei, w, edge_ids=ids))
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
    cache = getattr(m, "_cached_edge_index", None)
    if m.normalize and cache is not None and not call.ctx.on_subgraphs:
        # As GCNConv: the layer's own forward uses its cached normalised graph (filled on
        # its first call when cached=True), whatever graph it is given.
        ei, w = cache
        ids = call.ctx.edge_ids(ei)
    elif m.normalize:
        ei, w, ids = _gcn_norm(call, edge_index, edge_weight, x.shape[0], False, m.add_self_loops, x.dtype)
    w = _aggr_weights(call, ei, w, x.shape[0], x)
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
    norm = _aggr_weights(call, ei, norm, n, x)
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
    register_handler(g.GCNConv, gcn_conv, subgraph=_gcn_needs)
    register_handler(g.GraphConv, graph_conv, subgraph=())
    register_handler(g.SAGEConv, sage_conv, subgraph=())
    register_handler(g.GINConv, gin_conv, children=("nn",), subgraph=())
    register_handler(g.GINEConv, gine_conv, children=("nn", "lin"), subgraph=())
    register_handler(g.GATConv, gat_conv, subgraph=())
    register_handler(g.GATv2Conv, gatv2_conv, subgraph=())
    register_handler(g.SGConv, sg_conv, subgraph=_sg_needs)
    register_handler(g.TAGConv, tag_conv, subgraph=deg)
    register_handler(g.APPNP, appnp, subgraph=_appnp_needs)
    register_handler(g.ChebConv, cheb_conv, subgraph=_cheb_needs)


def _gcn_needs(m) -> tuple[str, ...] | None:
    # A filled cache (cached=True) is the graph the layer uses: a single node target keeps
    # the whole graph to use it; batched targets recompute it per subgraph (exact when the
    # cache was built from the given graph, as in transductive training).
    if m.cached and getattr(m, "_cached_edge_index", None) is not None:
        return None
    return ("weighted_in_degrees",)


def _appnp_needs(m) -> tuple[str, ...] | None:
    # As GCNConv: a filled cache is the graph the layer uses (its forward reads it whenever
    # it normalises), so a single node target keeps the whole graph to use it.
    if m.normalize and getattr(m, "_cached_edge_index", None) is not None:
        return None
    return ("weighted_in_degrees",)


def _sg_needs(m) -> tuple[str, ...] | None:
    # A filled cache makes the handler refuse the layer (on the whole graph or a subgraph
    # alike): no subgraph is cut for a single node target that cannot be explained.
    if getattr(m, "_cached_x", None) is not None:
        return None
    return ("weighted_in_degrees",)


def _cheb_needs(m) -> tuple[str, ...] | None:
    # Without normalisation the Laplacian's scale may be the graph's largest degree (when no
    # lambda_max is passed): undeclared, so a single node target keeps the whole graph.
    return None if m.normalization is None else ("in_degrees", "out_degrees")


_register()
