"""More PyG convolutions: DirGNNConv, PointTransformerConv, FeaStConv, EGConv, SuperGATConv,
AntiSymmetricConv, PDNConv and GatedGraphConv.

Each is explained as the library explains its kind: what the layer computes from its own
input as a multiplicative weight (attention, soft assignments, combination weights, gates,
edge weights from an MLP) is computed from the forward's values and held fixed; the linear
maps that carry relevance run under the layer's rule; element-wise activations pass it
unchanged (the Pass rule); max/min aggregation is the selection it computes.

``DirGNNConv`` (Rossi et al.)::

    out = α conv_out(x, reversed edges) + (1 - α) conv_in(x, edges) + lin(x)

Both inner convolutions are explained by their own handlers; the convex combination and
the root term are summed as model code sums (relevance split in proportion to the summands,
as GATConv's ``res``). The reversed graph holds the model's edges: each edge's relevance is
what flowed along it in both directions. A node reads its out-edges, which node targets'
k-hop subgraphs (in-edges) do not hold: a single target runs on the whole graph, batched
targets are refused.

``PointTransformerConv`` (Zhao et al.)::

    out_i = aggr_{j ∈ N(i) ∪ {i}} α_ij ⊙ (W x_j + δ_ij),   δ_ij = pos_nn(pos_i - pos_j)

with the per-channel attention ``α = softmax_j(attn_nn(W_dst x_i - W_src x_j + δ_ij))`` held
fixed. ``pos_nn`` is explained by its own layers over the edges' rows, so the positions are
treated as ``PointNetConv`` treats them: computed from the model's ``x`` they get relevance
through ``pos_i - pos_j`` (a difference is linear); a constant ``pos`` (``explain(...,
pos=pos)``) is a constant input of ``pos_nn``, whose share is absorbed, as a bias's.

``FeaStConv`` (Verma et al.)::

    out_i = aggr_j Σ_h q_h(x_j - x_i) W_h x_j + b,   q = softmax_h(u(x_j - x_i) + c)

the soft assignments ``q`` held fixed: each message is ``x_j`` times its own matrix
``Σ_h q_h W_h`` (a per-edge linear map, as NNConv's ``Θ(e)``).

``EGConv`` (Tailor et al.'s efficient graph convolution)::

    out_i = Σ_{a, b} w_{i,h,(a,b)} aggr_a(bases)_{i,b} + bias,   bases = W x,  w = comb_lin(x_i)

its per-node combination weights ``w`` held fixed: each aggregator (sum, mean, symnorm; max
and min as selections) is a map of its own over the bases, and the combination of the
aggregated bases a map per (node, channel) under the layer's rule. ``std``/``var`` are
refused (a variance is no linear map nor a selection).

``SuperGATConv`` in eval mode is GATConv with SuperGAT's attention (MX or SD), held fixed;
its self-supervised attention loss is a training matter (the explanation runs in eval mode).

``AntiSymmetricConv`` (Gravina et al.'s A-DGN), ``num_iters`` times::

    x ← x + ε act(x (W - Wᵀ - γI)ᵀ + phi(x) + b)

``phi`` is explained by its own handler; the antisymmetric weight is a linear map of its
own (a root term, :meth:`~.base.LayerCall.root`) summed with phi's output and the bias in
one map under the layer's rule; ``act`` (tanh by default) under the Pass rule; the
residual sums as model code does.

``PDNConv`` (Rozemberczki et al.): ``out = Â (x W) + b`` with edge weights ``sigmoid(mlp(e))``
held fixed (``edge_attr`` gets no relevance, as NNConv's), GCN-normalised with ``normalize``.

``GatedGraphConv`` (Li et al.), ``num_layers`` times ``m = aggr_j(x_j W_l)``, ``x ← GRU(m, x)``:
the GRU as LRP treats LSTMs (Arras et al.): the reset and update gates ``r``, ``z`` held
fixed, the candidate ``n = tanh(W_in m + b_in + r ⊙ (W_hn x + b_hn))`` one map over ``[m, x]``
(``r`` folded into its weights) under the layer's rule with tanh under the Pass rule, and
``x' = (1 - z) ⊙ n + z ⊙ x`` summed as model code sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import DenseOperator, RowwiseOperator
from . import register_handler
from .base import LayerCall, MapBranch
from .convs import _cached_ids, _check_plain, _gcn_norm, _heads, _model_ids, _one_loop_per_node, _pair, check_graph
from .message_convs import _refusal


def _side_by_side(call: LayerCall, *runs):
    """Run node-mixing steps that read the same nodes over the same graph (an aggregator
    each, DirGNN's two directions) as one hop, not one hop each: each map's output rows
    lie as far from the targets as the others'."""
    start = reached = call.ctx.hops_run
    outs = []
    for run in runs:
        call.ctx.hops_run = start
        outs.append(run())
        reached = max(reached, call.ctx.hops_run)
    call.ctx.hops_run = reached
    return outs


def _to_nodes(edges: Tensor) -> Tensor:
    """``[2, E]`` rows ``(edge, target)``: per-edge messages summed into their targets."""
    return torch.stack([torch.arange(edges.shape[1], device=edges.device), edges[1]])


# -- DirGNNConv ---------------------------------------------------------------------------
def dir_gnn_conv(call: LayerCall, x, edge_index) -> Tensor:
    """DirGNNConv: ``out = α conv_out(x, reversed) + (1 - α) conv_in(x, edge_index) + lin(x)``."""
    _check_plain(call, x, edge_index)
    m = call.module
    call.whole_graph_only(
        "reads its nodes' out-edges (conv_out aggregates over the reversed graph)",
        "seed them together with a float target= on the whole graph (their relevance summed)",
    )
    reverse = edge_index.flip([0])
    # (the reversed graph's edges are the model's, at the same positions)
    call.ctx.derived_edges(reverse, call.ctx.edge_ids(edge_index))
    x_in, x_out = _side_by_side(call, lambda: m.conv_in(x, edge_index), lambda: m.conv_out(x, reverse))
    out = m.alpha * x_out + (1 - m.alpha) * x_in
    if m.root_weight:
        out = out + call.linear(x, m.lin.weight, m.lin.bias)
    return out


# -- PointTransformerConv -----------------------------------------------------------------
def point_transformer_conv(call: LayerCall, x, pos, edge_index) -> Tensor:
    """PointTransformerConv: ``out_i = aggr_j α_ij ⊙ (W x_j + pos_nn(pos_i - pos_j))`` over the
    graph with its self-loops replaced by one per node (unless ``add_self_loops=False``), the
    attention ``α`` held fixed; bipartite: ``x`` and ``pos`` pairs."""
    from torch_geometric.utils import softmax

    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    pos_src, pos_dst = pos if isinstance(pos, (tuple, list)) else (pos, pos)
    n = x_dst.shape[0]
    ei, ids = _one_loop_per_node(call, edge_index, min(pos_src.shape[0], pos_dst.shape[0]), m.add_self_loops)
    src, dst = ei
    value = call.linear(x_src, m.lin.weight, m.lin.bias)
    rel = pos_dst.index_select(0, dst) - pos_src.index_select(0, src)
    if not rel.requires_grad:
        # Positions that are no model input: constant inputs of pos_nn, whose share of the
        # relevance no input receives (the conservation report counts it absorbed, as a bias's).
        call.ctx.constants = True
    with call.over_edges():  # (pos_nn's layers run over edge rows)
        delta = m.pos_nn(rel)
    with torch.no_grad():  # (the attention: constants of the forward)
        xs, xd = x_src.detach(), x_dst.detach()
        score = m.lin_dst(xd).index_select(0, dst) - m.lin_src(xs).index_select(0, src) + delta.detach()
        if m.attn_nn is not None:
            score = m.attn_nn(score)
        alpha = softmax(score, dst, num_nodes=n)
    msg = alpha * (value.index_select(0, src) + delta)
    return call.reduce_messages(msg, _to_nodes(ei), n, ids)


# -- FeaStConv ------------------------------------------------------------------------------
def feast_conv(call: LayerCall, x, edge_index) -> Tensor:
    """FeaStConv: ``out_i = aggr_j x_j (Σ_h q_jih W_h) + b``, the soft assignments
    ``q = softmax_h(u(x_j - x_i) + c)`` held fixed (self-loops replaced by one per node unless
    ``add_self_loops=False``; bipartite: messages from the source features)."""
    x_src, x_dst = _pair(call, x, edge_index)
    m = call.module
    n, heads, c = x_dst.shape[0], m.heads, m.out_channels
    ei, ids = _one_loop_per_node(call, edge_index, n, m.add_self_loops)
    src, dst = ei
    with torch.no_grad():  # (the per-edge matrices: constants of the forward)
        q = torch.softmax(m.u(x_src.detach()[src] - x_dst.detach()[dst]) + m.c.detach(), dim=1)  # [E, H]
        theta = torch.einsum("eh,hcf->efc", q, m.lin.weight.detach().view(heads, c, -1))  # [E, in, out]
    with call.over_edges():  # (a map over edge rows)
        msg = call.rowwise(x_src.index_select(0, src), theta)
    # (extra=[]: a selection with a bias and no root term; base.reduce_messages unpacks `extra`)
    return call.reduce_messages(msg, _to_nodes(ei), n, ids, extra=[], bias=m.bias)


# -- EGConv -----------------------------------------------------------------------------------
_EG_SUMS = ("symnorm", "sum", "mean")


def _eg_graph(call: LayerCall, edge_index: Tensor, x: Tensor):
    """``(edge_index, symnorm weights or None, ids)``: the graph EGConv aggregates over, as its
    forward builds it (its cache where filled)."""
    from torch_geometric.utils import add_remaining_self_loops

    m = call.module
    cache = m._cached_edge_index
    if "symnorm" in m.aggregators:
        if cache is not None:  # (the forward reads a filled cache whatever `cached` says now)
            return cache[0], cache[1], _cached_ids(call, cache[0], edge_index, x.shape[0], m.add_self_loops)
        return _gcn_norm(call, edge_index, None, x.shape[0], False, m.add_self_loops, x.dtype)
    if not m.add_self_loops:
        return edge_index, None, _model_ids(call, edge_index)

    def looped():
        # (as the forward: loops for the nodes up to the largest index the graph holds)
        positions = torch.arange(edge_index.shape[1], device=edge_index.device, dtype=torch.float64)
        ei, pos = add_remaining_self_loops(edge_index, positions, -1.0)
        ids = _model_ids(call, edge_index)
        pos = pos.long()
        return ei, None, None if ids is None else torch.where(pos >= 0, ids[pos.clamp(min=0)], -1)

    ei, _, ids = call.ctx.memo(("eg_loops", edge_index), looped)
    if m.cached and cache is not None:
        # (a cache of this graph: its loops' relevance goes where the forward's re-ordering puts
        # it, the last copy of a repeated one, as for the graph itself)
        same = cache[0].shape == ei.shape and torch.equal(cache[0], ei)
        return cache[0], None, ids if same else call.ctx.edge_ids(cache[0])
    return ei, None, ids


def _eg_needs(m) -> tuple[str, ...] | None:
    # A filled cache, or self-loops added up to the largest node index the graph holds (which
    # a k-hop subgraph renumbers): a single node target keeps the whole graph.
    if m._cached_edge_index is not None:
        return None
    if "symnorm" in m.aggregators:
        return ("weighted_in_degrees",)
    return None if m.add_self_loops else ()


def eg_conv(call: LayerCall, x, edge_index) -> Tensor:
    """EGConv: ``out_i = Σ_k w_ik aggr_k(x W)_i + b`` with each node's combination weights
    ``w = comb_lin(x_i)`` held fixed; aggregators sum, mean, symnorm (GCN-normalised sum),
    max and min."""
    from torch_geometric.nn.aggr import MaxAggregation, MinAggregation

    _check_plain(call, x, edge_index)
    m = call.module
    refused = [a for a in m.aggregators if a in ("std", "var")]
    if refused:
        raise _refusal(
            call,
            f"aggregators {refused} are not supported: LRP needs each aggregation to be a linear map "
            "(sum/mean/symnorm) or a selection (max/min), and a variance is a product of the messages",
        )
    if _eg_needs(m) is None:
        why = (
            "aggregates over its cached graph"
            if m._cached_edge_index is not None
            else "adds self-loops up to the graph's largest node index (aggregators without 'symnorm')"
        )
        call.whole_graph_only(
            why, "seed them together with a float target= on the whole graph (their relevance summed)"
        )
    n, heads = x.shape[0], m.num_heads
    c = m.out_channels // heads
    ei, sym_w, ids = _eg_graph(call, edge_index, x)
    bases = call.linear(x, m.bases_lin.weight, m.bases_lin.bias)  # [N, B * c]
    with torch.no_grad():  # (the combination weights: constants of the forward)
        comb = m.comb_lin(x.detach()).view(n, heads, -1)  # [N, H, A * B]
    selections = {"max": MaxAggregation(), "min": MinAggregation()}

    def aggregated(kind: str):
        if kind in selections:
            msg = bases.index_select(0, ei[0])
            return lambda: call.reduce_messages(msg, _to_nodes(ei), n, ids, aggregation=selections[kind])
        w = sym_w if kind == "symnorm" else call.aggr_weights(ei, None, n, x, kind="add" if kind == "sum" else kind)
        return lambda: call.edges(bases, ei, w, edge_ids=ids)

    parts = _side_by_side(call, *[aggregated(a) for a in m.aggregators])
    # Per (node, channel) row r = i * c + j: the aggregated bases [A * B] mixed into the heads [H].
    rows = torch.stack(parts, 1).view(n, -1, c).transpose(1, 2).reshape(n * c, -1)
    theta = comb.transpose(1, 2).unsqueeze(1).expand(n, c, -1, heads).reshape(n * c, -1, heads)
    bias = None if m.bias is None else m.bias.detach().view(heads, c).T.repeat(n, 1)
    out = call.map([MapBranch(RowwiseOperator(theta), theta, rows)], bias)
    return out.view(n, c, heads).transpose(1, 2).reshape(n, m.out_channels)


# -- SuperGATConv ------------------------------------------------------------------------------
def super_gat_conv(call: LayerCall, x, edge_index, neg_edge_index=None, batch=None) -> Tensor:
    """SuperGATConv: ``out_i = Σ_j α_ij Θ x_j + b`` (heads concatenated or averaged) with its
    attention ``α`` (MX or SD) held fixed; ``neg_edge_index``/``batch`` serve only the
    training-mode attention loss."""
    _check_plain(call, x, edge_index)
    m = call.module
    n = x.shape[0]
    ei, ids = _one_loop_per_node(call, edge_index, n, m.add_self_loops)
    h = call.linear(x, m.lin.weight, m.lin.bias).view(n, m.heads, m.out_channels)
    with torch.no_grad():  # (the layer's own attention, in eval mode: no dropout)
        hd = h.detach()
        alpha = m.get_attention(ei[1], hd.index_select(0, ei[1]), hd.index_select(0, ei[0]), num_nodes=n)
    return _heads(call, h, ei, alpha, ids, m.bias, m.concat)


# -- AntiSymmetricConv -------------------------------------------------------------------------
def antisymmetric_conv(call: LayerCall, x, edge_index, *args, **kwargs) -> Tensor:
    """AntiSymmetricConv: ``num_iters`` times ``x ← x + ε act(x (W - Wᵀ - γI)ᵀ + phi(x) + b)``."""
    check_graph(call, edge_index)
    m = call.module
    weight = (m.W - m.W.t() - m.gamma * m.eye).detach()
    for _ in range(m.num_iters):
        h = m.phi(x, edge_index, *args, **kwargs)
        h = call.map([call.self_loops(h, 1.0), call.root(x, weight)], m.bias)
        if m.act is not None:  # (any element-wise act: the Pass rule)
            h = call.passthrough(m.act, h)
        x = x + m.epsilon * h
    return x


# -- PDNConv -----------------------------------------------------------------------------------
def pdn_conv(call: LayerCall, x, edge_index, edge_attr=None) -> Tensor:
    """PDNConv: ``out = Â (x Θ) + b``, the edge weights ``sigmoid(mlp(e_ji))`` held fixed (``Â``
    GCN-normalised with them when ``normalize``)."""
    _check_plain(call, x, edge_index)
    m = call.module
    weight = None
    if edge_attr is not None:
        with torch.no_grad():  # (the edge weights: constants of the forward)
            weight = m.mlp(edge_attr.detach()).squeeze(-1)
    if m.normalize:
        ei, weight, ids = _gcn_norm(call, edge_index, weight, x.shape[0], False, m.add_self_loops, x.dtype)
    elif weight is None:
        raise _refusal(call, "normalize=False needs edge_attr (its edge weights are computed from it)")
    else:
        ei, ids = edge_index, _model_ids(call, edge_index)
    h = call.linear(x, m.lin.weight, m.lin.bias)
    return call.aggregate(h, ei, weight, bias=m.bias, edge_ids=ids)


# -- GatedGraphConv ----------------------------------------------------------------------------
def gated_graph_conv(call: LayerCall, x, edge_index, edge_weight=None) -> Tensor:
    """GatedGraphConv: ``num_layers`` times ``m = aggr_j w_ji x_j W_l``, ``x ← GRUCell(m, x)``
    with the GRU's gates held fixed and its candidate's tanh under the Pass rule (``x``
    padded with zero channels up to ``out_channels``, as the layer pads it)."""
    _check_plain(call, x, edge_index)
    m = call.module
    width = m.out_channels
    if x.shape[-1] > width:
        raise _refusal(call, f"got {x.shape[-1]} input channels, more than its out_channels ({width})")
    narrow = x.shape[-1]  # (the first step's maps read these channels only: the padding is no input
    # of the model, and a rule that shares by weights alone, Flat or w², would hand it relevance)
    if narrow < width:
        x = torch.cat([x, x.new_zeros(x.shape[0], width - narrow)], dim=1)
    first = x[:, :narrow] if narrow < width else x
    rnn = m.rnn
    w_ir, w_iz, w_in = rnn.weight_ih.detach().chunk(3)
    w_hr, w_hz, w_hn = rnn.weight_hh.detach().chunk(3)
    zero = rnn.weight_ih.new_zeros(3 * width)
    b_ir, b_iz, b_in = (zero if rnn.bias_ih is None else rnn.bias_ih.detach()).chunk(3)
    b_hr, b_hz, b_hn = (zero if rnn.bias_hh is None else rnn.bias_hh.detach()).chunk(3)
    for layer in range(m.num_layers):
        read, f = (first, narrow) if layer == 0 else (x, width)
        msg = call.aggregate(call.linear(read, m.weight[layer][:f].T), edge_index, edge_weight)
        with torch.no_grad():  # (the gates: constants of the forward)
            md, xd = msg.detach(), x.detach()
            reset = torch.sigmoid(md @ w_ir.T + b_ir + xd @ w_hr.T + b_hr)
            update = torch.sigmoid(md @ w_iz.T + b_iz + xd @ w_hz.T + b_hz)
        # The candidate's pre-activation, one map over [m, x]: x's matrix per row W_hnᵀ diag(r).
        theta = (w_hn.T[:f].unsqueeze(0) * reset.unsqueeze(1)).contiguous()  # [N, in, out]
        branches = [MapBranch(DenseOperator(w_in), w_in, msg)]
        branches.append(MapBranch(RowwiseOperator(theta), theta, read))
        cand = call.passthrough(torch.tanh, call.map(branches, b_in + reset * b_hn))
        x = (1 - update) * cand + update * x
    return x


def _register() -> None:
    import torch_geometric.nn as g

    # DirGNNConv reads out-edges (undeclared: a single target keeps the whole graph).
    register_handler(g.DirGNNConv, dir_gnn_conv, children=("conv_in", "conv_out"))
    # The others read their targets' in-edges (softmax, per-edge weights, added self-loops),
    # and GCN normalisation the in-degrees of their sources.
    register_handler(g.PointTransformerConv, point_transformer_conv, children=("pos_nn",), subgraph=())
    register_handler(g.FeaStConv, feast_conv, subgraph=())
    register_handler(g.EGConv, eg_conv, subgraph=_eg_needs)
    register_handler(g.SuperGATConv, super_gat_conv, subgraph=())
    register_handler(g.AntiSymmetricConv, antisymmetric_conv, children=("phi",), subgraph=())
    register_handler(g.PDNConv, pdn_conv, subgraph=lambda m: ("weighted_in_degrees",) if m.normalize else ())
    register_handler(g.GatedGraphConv, gated_graph_conv, subgraph=())


_register()
