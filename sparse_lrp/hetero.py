"""LRP on heterogeneous graphs: ``explain(model, x_dict, edge_index_dict)``.

A heterogeneous model (``to_hetero``, ``HeteroConv``, or one written by hand) runs one
layer per edge type: each is a (bipartite) graph layer from a source to a target node
type, explained by its handler as on a homogeneous graph, and the model's own code sums
the edge types' outputs per node type (LRP-0 on that sum, as on any sum in a model).
Edge relevance is numbered over all edge types' edges at once (:class:`Context`'s
``edge_types``) and handed back per edge type.

Explanations run on the whole graph: k-hop computation subgraphs, which batch many node
targets of a homogeneous graph into one pass, are not cut across node and edge types.
Several output rows share one forward pass, and each takes its own backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .composites import resolve
from .explain import (
    _HETERO_EDGE_FEATURES,
    ExplainResult,
    _as_index,
    _backward,
    _collect,
    _conservation,
    _forward,
    _validate_kwargs,
    _validate_model,
    _watched,
)
from .layers.base import Context
from .validation import check_budget, check_edge_index, check_finite, check_tensor

__all__ = ["explain_hetero"]


def _validate(model: nn.Module, x_dict: Mapping, edge_index_dict: Any, kwargs: dict) -> Tensor:
    """Check a heterogeneous input; returns one node type's features (device, dtype)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not x_dict:
        raise ValueError("x_dict holds no node type: there is nothing to explain")
    for k, v in x_dict.items():
        check_tensor(f"x[{k!r}]", v)
        check_finite(f"x[{k!r}]", v)
    ref = next(iter(x_dict.values()))
    for k, v in x_dict.items():
        if v.device != ref.device or v.dtype != ref.dtype:
            raise ValueError(
                f"x[{k!r}] is {v.dtype} on {v.device} but another node type's features are {ref.dtype} on "
                f"{ref.device}: every node type's features must share one dtype and device"
            )
    if not isinstance(edge_index_dict, Mapping):
        raise TypeError(
            "x is a dict of node types' features (a heterogeneous graph): edge_index must be a dict "
            f"{{(src, rel, dst): [2, E] tensor}}, got {type(edge_index_dict).__name__}"
        )
    for key, ei in edge_index_dict.items():
        if not (isinstance(key, tuple) and len(key) == 3):
            raise ValueError(f"edge types are (source, relation, target) triples, got {key!r}")
        src, _, dst = key
        for side in (src, dst):
            if side not in x_dict:
                raise ValueError(f"edge type {key!r} names node type {side!r}, which x has no features for")
        try:
            check_edge_index(ei, x_dict[src].shape[0], x_dict[dst].shape[0])
        except (TypeError, ValueError) as err:
            raise type(err)(f"edge_index[{key!r}]: {err}") from None
        if ei.device != ref.device:
            raise ValueError(f"edge_index[{key!r}] is on {ei.device} but x is on {ref.device}")
    seen: dict[tuple, Any] = {}
    for key, ei in edge_index_dict.items():
        # (a layer's edges are told to be an edge type's by their tensor: two types sharing
        # one could not be told apart, and one type would take the other's relevance)
        if ei.numel() and (ei.data_ptr(), tuple(ei.shape), ei.stride()) in seen:
            other = seen[(ei.data_ptr(), tuple(ei.shape), ei.stride())]
            raise ValueError(
                f"edge types {other!r} and {key!r} share one edge_index tensor: their relevance could not be "
                "told apart; pass a copy (.clone()) for one of them"
            )
        seen[(ei.data_ptr(), tuple(ei.shape), ei.stride())] = key
    _validate_kwargs(kwargs, ref)
    ea = next((kwargs[k] for k in _HETERO_EDGE_FEATURES if isinstance(kwargs.get(k), Mapping)), None)
    for key, t in (ea or {}).items():
        if key not in edge_index_dict:
            raise ValueError(f"edge features given for edge type {key!r}, which edge_index does not have")
        if isinstance(t, Tensor) and t.shape[0] != edge_index_dict[key].shape[1]:
            raise ValueError(
                f"edge features of {key!r} have {t.shape[0]} rows for {edge_index_dict[key].shape[1]} edges"
            )
    _validate_model(model, ref)
    return ref


def _by_type(flat: Tensor, spans: list[tuple[Any, int, int]]) -> dict[Any, Tensor]:
    return {key: flat[..., start:end] for key, start, end in spans}


def _passes(model, x_dict, edge_index_dict, kwargs, jobs, composite, edges, strategy, max_memory):
    """One forward pass, then a backward pass per ``(rows, target)`` job: a result each."""
    ctx = Context(resolve(composite), strategy=strategy, max_memory=max_memory, want_edges=edges)
    ctx.modules = list(model.modules())
    start, spans = 0, []
    ctx.edge_types = []
    for key, ei in edge_index_dict.items():
        ctx.edge_types.append((key, ei, start))
        spans.append((key, start, start + ei.shape[1]))
        start += ei.shape[1]
    ctx.handled = _collect(model, ctx.traversed)
    ctx.composite.check_names([name for name, _, _ in ctx.handled])
    every = None if any(rows is None for rows, _ in jobs) else torch.cat([rows for rows, _ in jobs])
    ctx.few_rows = every is not None
    ctx.watched = _watched(model, ctx.handled, ctx.traversed)
    results = []
    try:
        run = _forward(model, ctx, x_dict, edge_index_dict, kwargs, every, None)
        # (what the forward itself left in the records: each backward pass starts from it)
        start_from = (ctx.records, ctx.side, ctx.absorbed, ctx.lost)
        for i, (rows, target) in enumerate(jobs):
            records, side, ctx.absorbed, ctx.lost = start_from
            ctx.records, ctx.side = {k: dict(v) for k, v in records.items()}, dict(side)
            ctx.side_by_layer = {}
            node_feat, ea_rel, value, cls, _, _ = _backward(ctx, run, rows, target, retain=i < len(jobs) - 1)
            results.append(_result(ctx, spans, start, edges, node_feat, ea_rel, value, cls, rows))
    finally:
        ctx.release()
    return results


def _result(ctx, spans, num_edges, edges, node_feat, ea_rel, value, cls, rows) -> ExplainResult:
    ref = next(iter(node_feat.values()))
    layers: dict[str, dict[str, Any]] = {}
    edge = ref.new_zeros(num_edges) if edges else None
    for name, rec in ctx.records.items():
        layers[name] = {}
        for k, v in rec.items():
            if k == "edge":
                edge = edge + v
                v = _by_type(v, spans)
            layers[name][k] = v
    flat_in = torch.cat([v.detach().flatten() for v in node_feat.values()])
    flat_ea = None if not ea_rel else torch.cat([v.detach().flatten() for v in ea_rel.values()])
    return ExplainResult(
        node_feat={k: v.detach() for k, v in node_feat.items()},
        node={k: v.detach().reshape(v.shape[0], math.prod(v.shape[1:])).sum(1) for k, v in node_feat.items()},
        edge=None if edge is None else _by_type(edge, spans),
        output=value.detach(),
        target=cls,
        index=rows,
        edge_attr=None if ea_rel is None else {k: v.detach() for k, v in ea_rel.items()},
        layers=layers,
        conservation=_conservation(ctx, value, flat_in, flat_ea),
    )


def _stacked(parts: list) -> Any:
    """Per-target results (tensors, or dicts of them) with a leading ``[T]`` dimension."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.stack(parts)
    if isinstance(first, Mapping):
        return {k: _stacked([p[k] for p in parts]) for k in first}
    return first if first is None else parts


def explain_hetero(
    model: nn.Module,
    x_dict: Mapping,
    edge_index_dict: Mapping,
    *,
    index=None,
    target=None,
    composite=None,
    edges: bool = True,
    strategy: str = "auto",
    max_memory: int,
    forward_kwargs: dict,
) -> ExplainResult:
    """:func:`~sparse_lrp.explain` on a heterogeneous graph: ``model(x_dict,
    edge_index_dict, **forward_kwargs)`` returns a tensor (e.g. one node type's logits),
    whose rows ``index`` names. Results are dicts: ``node_feat``/``node`` by node type,
    ``edge`` (and each layer's ``"edge"`` record) by edge type, ``edge_attr`` by edge type
    for edge features given as ``edge_attr_dict`` (or ``edge_attr``) dicts. Several rows in
    ``index`` give a leading ``[T]`` dimension: one forward pass over the whole graph, and a
    backward pass per row (the conservation report sums over them, as for a homogeneous
    graph's targets)."""
    ref = _validate(model, x_dict, edge_index_dict, forward_kwargs)
    check_budget(max_memory)
    if not isinstance(index, int) and index is not None and len(torch.as_tensor(index).reshape(-1)) == 0:
        raise ValueError("index is empty: there is nothing to explain")
    # (the output's rows are known once the model has run: the range is checked then)
    rows, many = (None, False) if index is None else _as_index(index, 2**62, "rows")
    if rows is not None and rows.numel() and int(rows.max()) >= 2**61:
        raise ValueError("index holds a negative row: name output rows by 0..N-1 on a heterogeneous graph")
    if rows is not None:
        rows = rows.to(ref.device)

    def run(jobs):
        return _passes(model, x_dict, edge_index_dict, forward_kwargs, jobs, composite, edges, strategy, max_memory)

    if not many:
        return run([(rows, target)])[0]
    t_count = rows.numel()
    if not t_count:
        raise ValueError("index is empty: there is nothing to explain")
    if target is not None and not isinstance(target, (int, Tensor)):
        target = torch.as_tensor(target, device=ref.device)
    per_index = isinstance(target, Tensor) and target.dim() > 0 and target.shape[0] == t_count
    # One forward pass serves every row; each row's backward pass is its own explanation.
    parts = run([(rows[i : i + 1], target[i : i + 1] if per_index else target) for i in range(t_count)])
    res = ExplainResult(
        node_feat=_stacked([p.node_feat for p in parts]),
        node=_stacked([p.node for p in parts]),
        edge=None if parts[0].edge is None else _stacked([p.edge for p in parts]),
        output=torch.cat([p.output for p in parts]),
        target=None if parts[0].target is None else torch.cat([p.target for p in parts]),
        index=rows,
        edge_attr=None if parts[0].edge_attr is None else _stacked([p.edge_attr for p in parts]),
        layers={name: _stacked([p.layers.get(name, {}) for p in parts]) for name in parts[0].layers},
        conservation={k: sum(p.conservation[k] for p in parts) for k in parts[0].conservation},
    )
    return res
