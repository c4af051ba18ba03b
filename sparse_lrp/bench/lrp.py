"""How the benchmark calls sparse_lrp: model-level ``sparse_lrp.explain`` where it exists.

The layer-wise helpers here are exact LRP for the benchmark's own models (a ReLU MLP is
``linear_lrp`` per layer with relevance passing the ReLUs unchanged; a GCN/GIN layer is
``edge_lrp`` over the normalised adjacency plus ``linear_lrp`` for its weights). They run
the sparse-weight suite (where the layer weights are sparse tensors) and stand in for
``sparse_lrp.explain`` on installs that predate it.

Every explanation starts from the explained logit: ``R_out[b, t] = f(x)[b, t]`` for the
target class ``t`` (the predicted class unless given), zero elsewhere.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import torch
from torch import Tensor, nn

import sparse_lrp


def has_explain() -> bool:
    return callable(getattr(sparse_lrp, "explain", None))


@functools.cache  # timed loops call it: inspect once
def explain_accepts(name: str) -> bool:
    """Whether ``sparse_lrp.explain`` takes keyword ``name`` (False where it does not exist)."""
    if not has_explain():
        return False
    try:
        params = inspect.signature(sparse_lrp.explain).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def start_relevance(out: Tensor, target: Tensor | None = None, index: Tensor | None = None) -> Tensor:
    """``R[b, t_b] = out[b, t_b]`` on the explained rows (all rows when ``index`` is None)."""
    rows = torch.arange(out.shape[0], device=out.device) if index is None else index.reshape(-1)
    if target is None:
        target = out[rows].argmax(1)
    target = torch.as_tensor(target, device=out.device).reshape(-1).expand(rows.shape[0])
    r = torch.zeros_like(out)
    r[rows, target] = out[rows, target]
    return r


# --------------------------------------------------------------------------------------
# MLPs


def mlp_layers(model: nn.Sequential) -> list[tuple[Tensor, Tensor | None]]:
    return [(m.weight.detach(), None if m.bias is None else m.bias.detach()) for m in model if isinstance(m, nn.Linear)]


def layers_lrp(
    layers: list[tuple[Tensor, Tensor | None]],
    x: Tensor,
    rule,
    target: Tensor | None = None,
    first=None,
    **kwargs,
) -> Tensor:
    """LRP of a ReLU MLP given as ``[(weight, bias), ...]`` (dense or sparse weights): ``[B, in]``.

    ``rule`` explains every layer, ``first`` (if given) the first one.
    """
    acts = [x]
    h = x
    for i, (w, b) in enumerate(layers):
        h = (w @ h.T).T if w.layout != torch.strided else h @ w.T
        if b is not None:
            h = h + b
        if i < len(layers) - 1:
            h = h.relu()
        acts.append(h)
    r = start_relevance(h, target)
    for i in reversed(range(len(layers))):
        w, b = layers[i]
        layer_rule = first if (i == 0 and first is not None) else rule
        r = sparse_lrp.linear_lrp(acts[i], w, r, layer_rule, bias=b, **kwargs)
    return r


def composite(rule, first=None):
    """``rule`` for every layer, or a Composite with ``first`` on the input layer."""
    if first is None:
        return rule
    return sparse_lrp.Composite(default=rule, first=first)


def mlp_lrp(model: nn.Sequential, x: Tensor, rule, target: Tensor | None = None, first=None) -> Tensor:
    """Input relevance ``[B, in]`` of every row's target (predicted) class."""
    if has_explain():
        kwargs = {"composite": composite(rule, first)}
        if target is not None:
            kwargs["target"] = target
        if explain_accepts("edges"):
            kwargs["edges"] = False
        return sparse_lrp.explain(model, x, None, **kwargs).node_feat
    with torch.no_grad():
        return layers_lrp(mlp_layers(model), x, rule, target, first=first)


# --------------------------------------------------------------------------------------
# graph models


class GraphLRP(NamedTuple):
    node_feat: Tensor
    edge: Tensor | None


def graph_lrp(
    model: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    rule,
    *,
    index: int | Tensor | None = None,
    edges: bool = True,
    max_memory: int | None = None,
    strategy: str | None = None,
) -> GraphLRP:
    """Node-feature (and edge) relevance of the model's predicted classes.

    ``index``: the explained nodes (None: every node's prediction at once, the sum of the
    per-node explanations). ``max_memory``/``strategy`` select the edge-chunked kernel.
    """
    if has_explain():
        kwargs: dict = {"composite": rule}
        if index is not None:
            kwargs["index"] = index
        if explain_accepts("edges"):
            kwargs["edges"] = edges
        if max_memory is not None and explain_accepts("max_memory"):
            kwargs["max_memory"] = max_memory
        if strategy is not None and explain_accepts("strategy"):
            kwargs["strategy"] = strategy
        res = sparse_lrp.explain(model, x, edge_index, **kwargs)
        return GraphLRP(res.node_feat, getattr(res, "edge", None) if edges else None)
    if index is not None:
        index = torch.as_tensor(index, device=x.device).reshape(-1)
        if index.numel() > 1:
            raise NotImplementedError("batched explanations need sparse_lrp.explain")
    with torch.no_grad():
        return _graph_lrp_layers(model, x, edge_index, rule, index, edges, max_memory, strategy)


def _graph_lrp_layers(model, x, edge_index, rule, index, edges, max_memory, strategy) -> GraphLRP:
    from torch_geometric.nn import GCNConv, GINConv
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    kernel = {"strategy": strategy or "auto"}
    if max_memory is not None:
        kernel["max_memory"] = int(max_memory)
    n, e = x.shape[0], edge_index.shape[1]
    ops: dict[str, tuple] = {}

    def operator(kind: str, conv):
        if kind not in ops:
            if kind == "gcn":
                ei, w = gcn_norm(edge_index, None, n, add_self_loops=True, dtype=x.dtype)
            else:  # GIN: neighbours with weight 1, the node itself with 1 + eps
                loops = torch.arange(n, device=x.device)
                ei = torch.cat([edge_index, torch.stack([loops, loops])], 1)
                w = torch.cat([x.new_ones(e), x.new_full((n,), 1.0 + float(conv.eps))])
            ops[kind] = (sparse_lrp.prepare(ei, n, n), w)
        return ops[kind]

    # forward, keeping every linear map's input and output
    steps = []  # ("edge", op, w, inp, bias, z) or ("dense", weight, bias, inp)
    h = x
    convs = list(model.convs)
    for i, conv in enumerate(convs):
        if isinstance(conv, GCNConv):
            op, w = operator("gcn", conv)
            hw = h @ conv.lin.weight.T
            z = op.csr(w) @ hw
            if conv.bias is not None:
                z = z + conv.bias
            steps += [("dense", conv.lin.weight, None, h), ("edge", op, w, hw, conv.bias, z)]
            h = z
        elif isinstance(conv, GINConv):
            op, w = operator("gin", conv)
            agg = op.csr(w) @ h
            steps.append(("edge", op, w, h, None, agg))
            h = agg
            for m in conv.nn:
                if isinstance(m, nn.Linear):
                    steps.append(("dense", m.weight, m.bias, h))
                    h = m(h)
                elif isinstance(m, nn.ReLU):
                    h = h.relu()
                else:
                    raise TypeError(f"unsupported module in GINConv.nn: {type(m).__name__}")
        else:
            raise TypeError(f"the layer-wise fallback supports GCNConv and GINConv, not {type(conv).__name__}")
        if i < len(convs) - 1:
            h = h.relu()
    r = start_relevance(h, None, index)
    edge_rel = x.new_zeros(e) if edges else None
    for step in reversed(steps):
        if step[0] == "dense":
            _, weight, bias, inp = step
            r = sparse_lrp.linear_lrp(inp, weight, r, rule, bias=bias, **kernel)
        else:
            _, op, w, inp, bias, z = step
            out = sparse_lrp.edge_lrp(
                inp, op, w, r, rule, bias=bias, z=z, return_edge_relevance=edges, check=False, **kernel
            )
            if edges:
                r, er = out
                edge_rel += er[:e]
            else:
                r = out
    return GraphLRP(r, edge_rel)


def grad_x_input(model: nn.Module, x: Tensor, *args, index: Tensor | None = None) -> Tensor:
    """Autograd gradient × input of the predicted logits (summed over the explained rows)."""
    x = x.detach().requires_grad_(True)
    out = model(x, *args)
    rows = torch.arange(out.shape[0], device=out.device) if index is None else index.reshape(-1)
    pred = out[rows].detach().argmax(1)
    (grad,) = torch.autograd.grad(out[rows, pred].sum(), x)
    return (grad * x).detach()
