"""Node-selecting pooling: PyG's ``TopKPooling`` and ``SAGPooling`` (graph U-Nets, SAG pool).

Both keep some nodes of each graph and scale each kept node's features by its score:

* ``TopKPooling``: ``y = σ(x·p / ||p||)`` (``σ = tanh`` by default, the ``nonlinearity``),
  or with ``min_score`` a softmax of ``x·p`` over each graph;
* ``SAGPooling``: the same of ``gnn(x, edge_index)``, its own GNN's one output channel
  in place of ``x`` (times the selection's ``1 x 1`` weight ``p``);

then the top ``k`` nodes of each graph by ``y`` (``k = ⌈ratio · n⌉`` for a float
``ratio``, ``ratio`` itself for an int; with ``min_score`` the nodes scoring above it,
each graph's best one always) are kept: ``x' = multiplier · y_i · x_i`` for kept ``i``,
and the edges between kept nodes, their nodes renumbered (``edge_attr`` gathered along).

LRP holds what the layer computes from its own input beyond a linear map at its forward
value, as it holds attention and gates: the selection ``perm`` and the multiplier
``multiplier · y_i`` are constants, so the layer is a gather with a fixed gate per kept
node. All the relevance of a kept node's pooled features returns to that node's
features; a dropped node gets none through this path, and the score's own parameters
(TopKPooling's ``select.weight``, SAGPooling's ``gnn``) get none: they only make the
gate. The selection is PyG's own: the layer's forward runs once, as it is, under
``no_grad`` (SAGPooling's ``gnn`` with it, as model code: explained by no handler and
given no relevance), so the kept set equals the layer's; the handler then recomputes
``x'`` with the same operations on the input that carries relevance. The returned
``score`` is that forward's (a constant: model code that uses it passes no relevance).

The pooled graph's edges are the kept ones of the input graph: declared to the context
(:meth:`~sparse_lrp.layers.base.Context.derived_edges`), so that later layers report
their edge relevance on the model's own edges (their renumbered node pairs name other
edges there). ``edge_attr`` is gathered by an index, so its relevance returns to the
original edges' features.

The top ``k`` of a graph ranks all its nodes: node targets' k-hop subgraphs would select
other nodes, so a single node target runs on the whole graph and batched node targets
are refused; graph-level targets (the use case) run as any graph-level model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import register_handler
from .base import LayerCall
from .convs import check_graph


def node_selecting_pool(
    call: LayerCall,
    x: Tensor,
    edge_index: Tensor,
    edge_attr: Tensor | None = None,
    batch: Tensor | None = None,
    attn: Tensor | None = None,
) -> tuple:
    """``TopKPooling`` / ``SAGPooling``: ``x' = multiplier · score_i · x[perm]``, the kept
    set ``perm`` and ``score`` held at the layer's own forward values (a fixed gate)."""
    m = call.module
    call.whole_graph_only(
        "selects the top-scoring nodes of each whole graph",
        "for a graph-level model pass task_level='graph'",
    )
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{call.name} ({type(m).__name__}): node features must be an [N, F] tensor")
    check_graph(call, edge_index)
    positions = torch.arange(edge_index.shape[1], device=edge_index.device)
    with torch.no_grad():
        # The layer's own forward, with the edges' positions as their attributes: the kept
        # edges' positions come back where their attributes would.
        detached = None if attn is None else attn.detach()
        forward = type(m).forward.__get__(m)  # (the class's: call.original may be another name's handler)
        _, ei_out, kept, batch_out, perm, score = forward(x.detach(), edge_index, positions, batch, detached)
    out = x[perm] * score.view(-1, 1)  # (the forward's operations, in its order)
    if m.multiplier != 1:
        out = m.multiplier * out
    ids = call.ctx.edge_ids(edge_index)  # (the input graph's edges among the model's)
    call.ctx.derived_edges(ei_out, None if ids is None else ids[kept])
    call.ctx.pooled_batches.append(batch_out)  # (later layers' records split by its graphs)
    ea_out = None if edge_attr is None else edge_attr[kept]
    return out, ei_out, ea_out, batch_out, perm, score


def _register() -> None:
    import torch_geometric.nn as g

    # (no subgraph= declared: the selection ranks every node of a graph, which no k-hop
    # subgraph keeps)
    register_handler(g.TopKPooling, node_selecting_pool)
    register_handler(g.SAGPooling, node_selecting_pool)


_register()
