"""Whole-model LRP: :func:`explain` any supported PyTorch / PyG model.

The model runs its own ``forward`` code once, with each supported module temporarily
routed through its layer handler (:mod:`sparse_lrp.layers`); one backward pass then
carries the relevance to the inputs and records edge relevance per layer. Nothing of
the model is changed: train/eval mode, parameters, ``requires_grad`` and hooks are the
same afterwards, also when an error is raised midway.

Many target nodes run as one pass over the disjoint union of their computation
subgraphs, so each target gets its own relevance while the cost stays bounded by the
subgraphs' size.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import operator
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn.conv import MessagePassing

from .composites import Composite, resolve
from .kernel import NonFiniteError
from .layers import find_handler, subgraph_needs, supported_types
from .layers.base import Context, LayerCall, MergedEdgesError, UnsafeCutError, pass_through, record_input
from .model_code import adds_constant, mixes_rows, op_name, unconserving
from .operators import (
    DEFAULT_MAX_MEMORY,
    GRAPH_STRUCTURES,
    EdgeOperator,
    TensorKeyed,
    graph_operator,
    sort_ints,
    summing_once,
)
from .rules import Rule
from .validation import check_budget, check_edge_index, check_finite, check_tensor, non_finite

__all__ = ["ExplainResult", "LazyRecords", "explain"]

_EDGE_KWARGS = ("edge_weight", "edge_attr", "edge_type")
DENSE_OUTPUT_BYTES = 512 * 2**20
# The fixed cost of cutting a node target's k-hop subgraph out of its graph (finding,
# ordering and laying it out), in rows (nodes + edges) of a whole-graph pass: a single
# target runs on the whole graph when that is at most this many rows more than its
# subgraph (`python benchmarks/bench_call_overhead.py` prints both paths' per-call time on
# a 700-node graph and a 30k-row binary tree; one run: a hidden-32 GCN pass 1.31 us per
# row of the whole graph, against 15.8 ms a call on the subgraph; GIN 2.06 us against
# 18.0 ms). None: always the subgraph.
WHOLE_GRAPH_ROWS: int | None = 2**13
_SUBGRAPHS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("sparse_lrp_subgraphs_only", default=False)
_NODE_KWARGS = ("batch", "pos")
# Forward kwargs that carry a heterogeneous graph's edge features, per edge type.
_HETERO_EDGE_FEATURES = ("edge_attr_dict", "edge_attr")


class LazyRecords(Mapping):
    """One layer's records (``"edge"``, ``"node"``), each laid out on first access.

    Node targets leave their per-layer records as rows of their subgraphs; placing them
    into zero-filled graph-sized tensors (an ``[E]`` and an ``[N]`` per layer) is a large part
    of a single call's cost on a large graph, and most explanations never read them. Reads,
    iteration, pickling and ``repr`` see the values.
    """

    def __init__(self, build: dict[str, Callable[[], Tensor]]) -> None:
        self._build = build
        self._values: dict[str, Tensor] = {}

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._values:
            self._values[key] = self._build[key]()
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build)

    def __len__(self) -> int:
        return len(self._build)

    def map(self, fn: Callable[[Tensor], Tensor]) -> LazyRecords:
        """The records with ``fn`` applied to each, still on access."""
        return LazyRecords({k: functools.partial(lambda k: fn(self[k]), k) for k in self._build})

    def __reduce__(self):
        return (dict, (dict(self.items()),))

    def __repr__(self) -> str:
        return repr(dict(self.items()))


@dataclass
class ExplainResult:
    """Relevance of one explanation (leading ``[T]`` dimension when several targets).

    Attributes:
        node_feat: relevance of each input feature, ``[N, F]``.
        node: relevance per node, ``node_feat`` summed over features, ``[N]``.
        edge: relevance that flowed through each edge, summed over layers, ``[E]``
            (None without ``edge_index``).
        edge_attr: relevance of the edge features ``[E, D]`` where the model uses them.
        layers: per layer path, ``{"edge": [E], "node": [N]}`` (relevance through the
            layer's edges, and reaching the layer's input); for node targets a
            read-only mapping that lays each record out when it is first read.
        output: the explained output value(s), e.g. the logit.
        target: the explained class(es).
        index: the explained rows (nodes or graphs), or None for all.
        conservation: ``{"out", "in", "absorbed", "lost"}``: relevance at the output,
            at the inputs (node and edge features), absorbed by biases and
            stabilisers, and lost where a rule could not pass it (zero activations under
            non-proportional rules). ``in + absorbed + lost == out`` up to float error.

    On a heterogeneous graph ``node_feat``, ``node`` are dicts by node type and ``edge``,
    ``edge_attr`` and each layer's ``"edge"`` record dicts by edge type.
    """

    node_feat: Tensor
    node: Tensor
    edge: Tensor | None
    output: Tensor
    target: Tensor | None
    index: Tensor | None
    edge_attr: Tensor | None = None
    layers: dict[str, Mapping[str, Tensor]] = field(default_factory=dict)
    conservation: dict[str, float] = field(default_factory=dict)


# -- model patching -----------------------------------------------------------------
def _nonlinear_free() -> tuple[type, ...]:
    """Parameter-free modules that are neither linear nor element-wise: autograd through
    them is no LRP rule (their relevance would follow gradients, unconserved)."""
    import torch_geometric.nn.aggr as aggr

    names = [
        (nn, ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm")),
        (nn, ("CosineSimilarity", "PairwiseDistance")),
        (aggr, ("MulAggregation", "PowerMeanAggregation", "StdAggregation", "VarAggregation")),
    ]
    return tuple(getattr(mod, n) for mod, group in names for n in group if hasattr(mod, n))


_NONLINEAR_FREE = _nonlinear_free()
# Normalisers a classifier may end with; anywhere else they are not explainable maps.
_OUTPUT_ONLY = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
_WATCHED = (MessagePassing, *_OUTPUT_ONLY)


def _collect(
    model: nn.Module, traversed: set | None = None, modules: list[nn.Module] | None = None
) -> list[tuple[str, nn.Module, Any]]:
    """Modules to route through handlers; errors on unsupported modules with parameters.

    ``traversed`` collects the ids of the modules whose calls are explained as they run
    (not those inside a handled module, which its handler rewrites). ``modules``: the
    model's modules, if already listed.
    """
    found: list[tuple[str, nn.Module, Any]] = []
    # Hooks on a submodule a handler only reads are refused (_check_read_only); a model
    # without any hooks, the usual case, needs no look at each handled module's subtree.
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in modules or model.modules())

    def visit(name: str, module: nn.Module) -> None:
        if traversed is not None:
            traversed.add(id(module))
        entry = find_handler(module)
        if entry is not None:
            handler, children = entry
            found.append((name, module, handler))
            called = set()
            for child in children:
                sub = getattr(module, child, None)
                if isinstance(sub, nn.Module):
                    if hooked:
                        called.update(id(m) for m in sub.modules())
                    visit(f"{name}.{child}" if name else child, sub)
            if hooked:
                _check_read_only(name, module, called)
            return
        if isinstance(module, _NONLINEAR_FREE):
            raise TypeError(
                f"module {name or '<model>'!r} of type {type(module).__module__}.{type(module).__name__} is "
                "a nonlinear map (it normalises or combines by statistics of its input) with no LRP "
                "handler: relevance through it would follow gradients and not be conserved. Replace it, "
                "or register a handler with sparse_lrp.register_handler(type, handler)."
            )
        # A message-passing layer without a handler runs as autograd computes it: exact
        # only for a parameter-free linear aggregation (LGConv, SimpleConv). With learned
        # parts (attention, edge networks) its relevance would follow gradients instead.
        learned = module.parameters(recurse=isinstance(module, MessagePassing))
        if any(True for _ in learned):
            raise TypeError(
                f"module {name or '<model>'!r} of type {type(module).__module__}.{type(module).__name__} has "
                f"parameters but no LRP handler. Supported: {', '.join(supported_types())}. "
                "Register one with sparse_lrp.register_handler(type, handler)."
            )
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return found


def _check_read_only(name: str, module: nn.Module, called: set) -> None:
    """A handler reads the weights of the submodules it does not call (GCNConv's ``lin``):
    hooks on them would not run, so the explanation would describe another model.
    Pre-hooks that only refresh the weight that is read (``torch.nn.utils.prune``,
    ``weight_norm``, ``spectral_norm``) are fine: it holds their last forward's value."""
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    refresh = (BasePruningMethod, WeightNorm, SpectralNorm)
    for sub_name, sub in module.named_modules():
        if sub is module or id(sub) in called:
            continue
        pre = [h for h in sub._forward_pre_hooks.values() if not isinstance(h, refresh)]
        if sub._forward_hooks or pre:
            path = f"{name}.{sub_name}" if name else sub_name
            raise ValueError(
                f"module {path!r} has forward hooks, but its layer's LRP handler "
                f"({type(module).__name__}) reads its weights without calling it: the hooks would not "
                "run in the explanation. Remove them while explaining, or hook the layer itself"
            )


@contextlib.contextmanager
def _patched(model: nn.Module, ctx: Context) -> Iterator[None]:
    """Route handled modules through their handlers; restore everything afterwards."""
    modules = ctx.handled if ctx.handled is not None else _collect(model, ctx.traversed, ctx.modules)
    training = [m for m in ctx.modules or model.modules() if m.training]  # usually none: skip the toggles then
    # Gradient checkpointing (PyG's DeepGCNLayer) reruns a layer's forward inside the
    # backward, outside the routing: off while explaining (it saves memory, the values
    # are the same).
    checkpointed = [m for m in ctx.modules or model.modules() if m.__dict__.get("ckpt_grad") is True]
    saved = []
    try:
        for m in checkpointed:
            m.ckpt_grad = False
        for m in training:  # the flags only: a module's own train() override must not run
            m.training = False
        routed = set()
        for name, module, handler in modules:
            if id(module) in routed:  # (a module under two names runs through its first one)
                continue
            routed.add(id(module))
            had = "forward" in module.__dict__
            original = module.__dict__.get("forward", module.forward)
            saved.append((module, had, original))
            module.forward = functools.partial(_run_handler, ctx, name, module, handler, original)
        watched = ctx.watched if ctx.watched is not None else _watched(model, modules, ctx.traversed, ctx.modules)
        for name, module, kind in watched:
            if kind == "hops":
                wrap = functools.partial(_count_hops, ctx, module)
            else:
                wrap = functools.partial(_normaliser, ctx, name, module)
            had = "forward" in module.__dict__
            original = module.__dict__.get("forward", module.forward)
            saved.append((module, had, original))
            module.forward = functools.partial(wrap, original)
        yield
    finally:
        for module, had, original in reversed(saved):
            if had:
                module.forward = original
            else:
                module.__dict__.pop("forward", None)
        for m in training:
            m.training = True
        for m in checkpointed:
            m.ckpt_grad = True


def _watched(
    model: nn.Module, handled: list, traversed: set, modules: list[nn.Module] | None = None
) -> list[tuple[str, nn.Module, str]]:
    """Modules without a handler that run as they are, watched: message passing (its calls
    count hops, ``"hops"``) and softmax-like modules explained as they run (their outputs
    must be the model's, ``"normaliser"``)."""
    routed = {id(m) for _, m, _ in handled}
    if modules is not None and all(id(m) in routed or not isinstance(m, _WATCHED) for m in modules):
        return []  # (the usual case: no names needed)
    found = []
    for name, module in model.named_modules():
        if id(module) in routed:
            continue
        if isinstance(module, MessagePassing):
            found.append((name, module, "hops"))
        elif isinstance(module, _OUTPUT_ONLY) and id(module) in traversed:
            found.append((name, module, "normaliser"))
    return found


def _normaliser(ctx: Context, name: str, module: nn.Module, original, *args, **kwargs):
    out = original(*args, **kwargs)
    if isinstance(out, Tensor) and out.requires_grad:  # (of constants: no relevance passes)
        ctx.normalised.append((name, type(module).__name__, out))
    return out


def _count_hops(ctx: Context, module: nn.Module, original, *args, **kwargs):
    # Counted once the layer has run: maps its forward issues before propagating (a
    # Linear it applies) still have its hop ahead of them.
    out = original(*args, **kwargs)
    ctx.hops_run += _layer_hops(module)
    return out


def _run_handler(ctx: Context, name: str, module: nn.Module, handler, original, *args, **kwargs):
    call = LayerCall(ctx, name, module, original)
    if ctx.on_subgraphs:
        # A graph the model built itself (to_undirected, added edges) may reach beyond
        # the subgraph, and nothing seen on the subgraph can tell: only the given one is exact.
        graph = args[1] if len(args) > 1 else kwargs.get("edge_index")
        if (
            isinstance(graph, Tensor)
            and graph.dim() == 2
            and graph.shape[0] == 2
            and not graph.is_floating_point()
            # The object itself: a view with the same storage and shape (ei[:, :K] for a K
            # past the subgraph's edges) may select edges by position, which no subgraph keeps.
            and graph is not ctx.edge_index
        ):
            raise _BeyondSubgraphError(name)
    # A built-in message-passing handler's maps have node rows (PyG's contract for x):
    # they may skip the rows that reach no target (Context.live_rows).
    nodes = int(isinstance(module, MessagePassing) and handler.__module__.startswith("sparse_lrp."))
    ctx.node_rows += nodes
    try:
        first = args[0] if args else None
        if isinstance(first, Tensor) and first.is_floating_point() and first.requires_grad and not ctx.edge_rows:
            args = (record_input(call, args[0]), *args[1:])
        before = ctx.hops_run
        ctx.in_handler += 1
        try:
            out = handler(call, *args, **kwargs)
        finally:
            ctx.in_handler -= 1
    finally:
        ctx.node_rows -= nodes
    if call.maps == 0 and not handler.__module__.startswith("sparse_lrp.") and _has_weight_matrix(module):
        raise TypeError(
            f"the handler of {name or '<model>'!r} ({type(module).__name__}) issued no LRP map "
            "(call.linear / edges / map / messages) although the layer has weight matrices: they "
            "would pass relevance as a gradient, under no rule. Rewrite them with those primitives"
        )
    if isinstance(module, MessagePassing):  # (its K, should a handler mix nodes by other maps)
        ctx.hops_run = max(ctx.hops_run, before + _layer_hops(module))
    # (a heterogeneous layer returns a dict by node type, HANConv also a pair with it)
    for value in _output_tensors(out):
        ctx.outputs.append((call.index, value))
    return out


def _output_tensors(out) -> list[Tensor]:
    """The tensors a layer returned: itself, or a dict's (in a tuple's first entry) values."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, tuple) and out and isinstance(out[0], Mapping):
        out = out[0]
    if isinstance(out, Mapping):
        return [v for v in out.values() if isinstance(v, Tensor)]
    return []


def _has_weight_matrix(module: nn.Module) -> bool:
    """A weight matrix (a parameter that mixes channels) of ``module`` outside the children
    its handler calls (explained themselves); scales and biases may act elementwise."""
    entry = find_handler(module)
    called = set()
    for child in entry[1] if entry is not None else ():
        sub = getattr(module, child, None)
        if isinstance(sub, nn.Module):
            called.update(id(p) for p in sub.parameters())
    return any(id(p) not in called and p.dim() >= 2 for p in module.parameters())


def _layer_hops(m: nn.Module) -> int:
    """Edges one call of a message-passing layer reaches across (K for K-step layers)."""
    if type(m).__name__ == "ChebConv":
        return len(m.lins) - 1
    if type(m).__name__ == "GatedGraphConv":  # (num_layers propagations)
        return int(m.num_layers)
    return int(getattr(m, "K", 1))


class _NotPerNodeError(ValueError):
    """A node-level explanation of a model whose output has no row per node."""


class _BeyondSubgraphError(Exception):
    """A layer ran on a graph the model derived itself, not on the given one."""


class _MixesNodesError(_BeyondSubgraphError):
    """The model's own code mixes node rows outside message passing (``h.mean(0)``)."""


def num_hops(model: nn.Module, modules: list[nn.Module] | None = None) -> int:
    """Message-passing hops of a model counted over its layers, each called once
    (``modules``: the model's, if already listed).

    A layer called several times (shared weights) reaches further: :func:`explain`
    counts the calls as they happen and widens the subgraphs if they need it.
    """
    return sum(_layer_hops(m) for m in modules or model.modules() if isinstance(m, MessagePassing))


# Hops counted from a model's layer calls in its last explanation (a layer called in a
# loop counts once per call), the starting receptive field of its next one.
_HOPS_RUN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _receptive_hops(model: nn.Module, hops: int | None, modules: list[nn.Module] | None = None) -> int:
    """Hops node targets' subgraphs span: ``hops`` if given, else the model's layers
    counted, widened to what its last explanation's layer calls reached."""
    return max(num_hops(model, modules) if hops is None else int(hops), _HOPS_RUN.get(model, 0))


class _MoreHopsError(Exception):
    """The layer calls reached further than the subgraphs were built for."""

    def __init__(self, hops: int) -> None:
        self.hops = hops


def _whole_graph_pays(num_nodes: int, num_edges: int, hops: int) -> bool:
    """Whether one node target costs less on the whole graph than on its k-hop subgraph.

    The subgraph's rows are estimated from the mean degree ``d``: ``1 + d + ... + d^k``
    nodes, each with about ``d`` in-edges (hubs make real subgraphs larger, so this errs
    toward the subgraph); the whole graph wins when it has at most ``WHOLE_GRAPH_ROWS``
    rows more, the cost of cutting the subgraph out.
    """
    if WHOLE_GRAPH_ROWS is None:
        return False
    rows = num_nodes + num_edges
    if rows <= WHOLE_GRAPH_ROWS:
        return True
    d = num_edges / max(num_nodes, 1)
    nodes, frontier = 1.0, 1.0
    for _ in range(hops):
        frontier *= d
        nodes += frontier
        if nodes * (1 + d) >= rows:  # (the subgraph is the graph)
            return True
    return rows <= WHOLE_GRAPH_ROWS + nodes * (1 + d)


# -- targets ------------------------------------------------------------------------
def _as_index(index, rows: int, what: str) -> tuple[Tensor | None, bool]:
    """``(index tensor or None, many)``."""
    if index is None:
        return None, False
    if isinstance(index, int):
        if not -rows <= index < rows:
            raise ValueError(f"index {index} is out of range for {rows} {what}")
        return torch.tensor([index % rows]), False
    try:
        idx = torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"index must be an int, a list or a 1-D tensor of ints, or a bool mask: {err}") from None
    if idx.dim() > 1:
        raise ValueError(f"index must be an int or 1-D, got shape {tuple(idx.shape)}")
    if idx.dtype == torch.bool and idx.numel():
        if idx.numel() != rows:
            raise ValueError(f"a bool index must have one entry per {what[:-1]} ({rows}), got {idx.numel()}")
        idx = idx.nonzero().view(-1)
    if idx.numel() == 0:  # (an empty list, or a mask selecting nothing)
        raise ValueError(f"index is empty: give at least one of the {rows} {what} to explain")
    if idx.is_floating_point() or idx.is_complex():
        raise TypeError(f"index must hold integers (or be a bool mask), got dtype {idx.dtype}")
    if idx.dim() == 0:
        return _as_index(int(idx), rows, what)
    idx = idx.long()
    if int(idx.min()) < -rows or int(idx.max()) >= rows:
        raise ValueError(f"index out of range for {rows} {what}: {idx.min().item()}..{idx.max().item()}")
    return idx % rows, True


def _seed(y: Tensor, rows: Tensor | None, target) -> tuple[Tensor, Tensor, Tensor | None, Tensor | float]:
    """Gradient seed ``c = R / y`` at the output, the explained values and classes, and the
    target relevance no seed can carry (given to outputs whose value is exactly 0)."""
    y2 = y.reshape(y.shape[0], -1)
    sel = torch.arange(y2.shape[0], device=y.device) if rows is None else rows.to(y.device)
    if isinstance(target, Tensor) and target.is_floating_point():
        check_finite("target relevance", target)
        if target.numel() % y2.shape[1]:
            raise ValueError(
                f"target relevance must have the output's shape {tuple(y.shape)} (or one row per index), "
                f"got {tuple(target.shape)}"
            )
        rel = target.to(y2).reshape(-1, y2.shape[1])
        # One row per index (also when the index lists every row, in any order), as for
        # class targets; without an index, the relevance of every output row.
        if rows is not None and rel.shape[0] == sel.numel():
            full = torch.zeros_like(y2)
            full[sel] = rel
            rel = full
        if rel.shape != y2.shape:
            raise ValueError(
                f"target relevance must have the output's shape {tuple(y.shape)}, got {tuple(target.shape)}"
            )
        mask = torch.zeros_like(y2, dtype=torch.bool)
        mask[sel] = True
        rel = torch.where(mask, rel, 0.0)
        # The backward pass carries R / y; at an output that is 0 no ratio carries R, and
        # in half precision none whose R / y exceeds the dtype (computed in float32 first).
        wide = y2.float() if y2.dtype in (torch.float16, torch.bfloat16) else y2
        zero = wide == 0
        seed = torch.where(zero, 0.0, rel.to(wide) / torch.where(zero, 1.0, wide)).to(y2.dtype)
        dropped = zero | ~torch.isfinite(seed)
        seed = seed.masked_fill(dropped, 0.0)
        return seed.reshape(y.shape), rel[sel].sum(1), None, torch.where(dropped, rel, 0.0).sum()
    if target is None:
        cls = y2[sel].argmax(1) if y2.shape[1] > 1 else torch.zeros_like(sel)
    elif isinstance(target, int):
        cls = torch.full_like(sel, target)
    else:
        t = torch.as_tensor(target, device=y.device).long().view(-1)
        if t.numel() == y2.shape[0] and (rows is None or t.numel() != sel.numel()):
            t = t[sel]
        if t.numel() == 1:
            t = t.expand(sel.numel())
        if t.numel() != sel.numel():
            raise ValueError(f"target has {t.numel()} entries for {sel.numel()} explained rows")
        cls = t
    seed = torch.zeros_like(y2)
    if y2.shape[1] == 1 and target is not None:
        # One-logit binary model: class 1 is the logit, class 0 its negation.
        if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) > 1):
            raise ValueError("a one-column (binary) output takes target classes 0 or 1")
        sign = cls.to(y2.dtype) * 2 - 1
        seed[sel, 0] = sign
        return seed.reshape(y.shape), sign * y2[sel, 0], cls, 0.0
    if target is not None and cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= y2.shape[1]):
        # (the predicted class, an argmax, is in range by construction)
        raise ValueError(f"target class out of range for an output with {y2.shape[1]} columns")
    seed[sel, cls] = 1.0
    return seed.reshape(y.shape), y2[sel, cls], cls, 0.0


# -- subgraphs ----------------------------------------------------------------------
_GRAPHS = GRAPH_STRUCTURES  # (a graph's sorted structures, shared with the layers' operators)


def _graph(edge_index: Tensor, num_nodes: int) -> EdgeOperator:
    return graph_operator(edge_index, num_nodes, num_nodes)


def _self_loops(edge_index: Tensor, num_nodes: int) -> tuple[EdgeOperator, Tensor]:
    """The graph's self-loops as an operator of their own, and their edge ids."""

    def build():
        ids = (edge_index[0] == edge_index[1]).nonzero().squeeze(1)
        return EdgeOperator(edge_index[:, ids], num_nodes, num_nodes), ids

    return _GRAPHS.get(edge_index, build, num_nodes, "self-loops")


def _merged(edge_index: Tensor, num_nodes: int, nodes: Tensor, values: list[Tensor] = ()) -> list[Tensor]:
    """What one merged edge into each of ``nodes`` stands for: its in-edges other than
    self-loops (those stay real edges), counted, then each of ``values`` (one value per
    edge of the graph) summed over them."""
    loops, loop_ids = _self_loops(edge_index, num_nodes)
    graph = _graph(edge_index, num_nodes)
    out = [graph.in_degree(nodes) - loops.in_degree(nodes)]
    if len(values):
        owner, pos = graph.incident(1, nodes)
        lo, lp = loops.incident(1, nodes)
        lp = loop_ids.index_select(0, lp)
    for v in values:
        total = v.new_zeros((nodes.numel(), *v.shape[1:])).index_add_(0, owner, v.index_select(0, pos))
        out.append(total.index_add_(0, lo, v.index_select(0, lp), alpha=-1))
    return out


# Pairs (target, node) that the breadth-first search did not number (the sources of the
# border's in-edges, the other ends of out-edges: many per kept node) are found through
# a dense table over a block of targets at a time: one gather per pair where
# `torch.searchsorted` among the union's sorted pairs takes ~20 dependent reads. Blocks
# keep the table at this many entries (int32: 64 MiB). With fewer than _SEARCH_BELOW
# pairs to find per block (small subgraphs of a large graph: many blocks, few pairs)
# filling the tables costs more than the search, which then runs instead.
_PAIR_TABLE = 2**24
_SEARCH_BELOW = 2**13


def _search(keys: Tensor, queries: Tensor) -> Tensor:
    """Positions of ``queries`` among the sorted ``keys``, -1 for those not among them."""
    at = torch.searchsorted(keys, queries).clamp(max=max(keys.numel() - 1, 0))
    return torch.where(keys.index_select(0, at) == queries, at, -1)


def _pair_rows(keys: Tensor, queries: list[Tensor], width: int, n_t: int) -> list[Tensor]:
    """Positions in ``keys`` (sorted, ``t * width + node`` with ``t < n_t``) of each of
    ``queries``' keys, -1 for keys not among them. Each query tensor must be ordered by
    ``t`` (any order within a ``t``), so that a block of targets is one slice of it."""
    block = max(1, min(n_t, _PAIR_TABLE // width))
    if sum(q.numel() for q in queries) < -(-n_t // block) * _SEARCH_BELOW:
        return [_search(keys, q) for q in queries]
    table = torch.full(
        (block * width,), -1, dtype=torch.int32 if keys.numel() < 2**31 else torch.int64, device=keys.device
    )
    out = [torch.empty_like(q) for q in queries]
    bounds = torch.arange(0, n_t + block, block, device=keys.device) * width
    k_at = torch.searchsorted(keys, bounds).tolist()
    q_at = [torch.searchsorted(q, bounds).tolist() for q in queries]  # (a binary search only needs them split by t)
    for i in range(len(k_at) - 1):
        base = bounds[i]
        k = keys[k_at[i] : k_at[i + 1]] - base
        table[k] = torch.arange(k_at[i], k_at[i + 1], device=keys.device, dtype=table.dtype)
        for q, at, o in zip(queries, q_at, out):
            o[at[i] : at[i + 1]] = table.index_select(0, q[at[i] : at[i + 1]] - base)
        table[k] = -1  # (cleared for the next block)
    return out


def _khop_union(
    edge_index: Tensor,
    num_nodes: int,
    targets: Tensor,
    hops: int,
    out_edges: bool = False,
    boundary_degrees: bool = True,
    merge: bool = False,
):
    """Disjoint union of the targets' computation subgraphs, vectorised over targets.

    Keeps every node within ``hops`` of a target and every edge into one, so that the
    nodes the prediction depends on see all of their incoming edges (complete
    aggregations and attention softmax, exact in-degrees for GCN normalisation).
    ``out_edges`` also keeps every edge that leaves a kept node, for layers normalised
    by out-degree (ChebConv's Laplacian). Without ``boundary_degrees`` (no layer
    normalises by degree) the nodes ``hops`` away keep only their features: their own
    incoming edges feed outputs nothing depends on.

    An edge from (or, with ``out_edges``, to) a node outside that set matters only as
    one count in a kept node's degree: the outside node's features reach nothing the
    targets depend on. Such endpoints become one *ghost* node per target instead of
    the (many) outside nodes, which keeps every degree exact while the union holds only
    the nodes within ``hops``. A ghost carries its target's features and receives no
    relevance; results drop it.

    With ``merge`` (layers that read degrees as sums of edge weights), the edges into a
    node ``hops`` away become ONE edge from the ghost, standing for all of them: its
    only role is that node's degree, so its multiplicity (or total weight) suffices.
    Merged edges have the edge id ``E`` (one past the graph's edges).

    Returns ``(node_t, node_v, ghost)`` per union node (target, original node, ghost
    flag), ``(edge_t, edge_e)`` per union edge (sorted by target, then edge), the
    union's ``edge_index``, the targets' rows in it, and each node's hops from its target
    (``hops + 1`` for ghosts).
    """
    device = edge_index.device
    src, dst = edge_index[0].long(), edge_index[1].long()
    targets = targets.to(device)
    n_t = targets.numel()
    t_ids = torch.arange(n_t, device=device)
    graph = _graph(edge_index, num_nodes)
    num_edges = edge_index.shape[1]
    span = num_edges + 1  # edge ids per target, with room for the merged edges' id E
    width = num_nodes + 1  # node ids per target, with room for the ghost's id N
    merging = merge and boundary_degrees
    every_in = boundary_degrees and not merge  # every kept node's in-edges, not only the inner nodes'

    # Breadth-first over pairs (target, node), keyed `t * width + node` and numbered as
    # found: the targets, then each hop's new pairs in key order. Each hop searches its
    # in-edges' sources among the (few) pairs found before it and keeps their numbers:
    # those in-edges are the union's edges into the nodes closer than `hops`, whose ends
    # then need no search among all the union's pairs.
    key = t_ids * width + targets
    parts = [key]  # the pairs first found at each hop
    known, number = key, t_ids  # the pairs found so far, sorted, and their numbers
    count = n_t
    into = []  # per hop: the in-edges' owners in its part, positions and sources' numbers
    for h in range(hops):
        base = parts[h] - parts[h] % width
        owner, pos = graph.incident(1, parts[h] - base)
        pair = base.index_select(0, owner) + src.index_select(0, pos)
        new, inv = torch.unique(pair, return_inverse=True)
        at = _search(known, new)
        num = torch.where(at >= 0, number.index_select(0, at.clamp(min=0)), -1)
        fresh = num < 0
        parts.append(new[fresh])
        num[fresh] = torch.arange(count, count + parts[-1].numel(), device=device)
        count += parts[-1].numel()
        into.append((owner, pos, pair, num.index_select(0, inv)))
        if h + 1 < hops:
            known, number = sort_ints(torch.cat(parts), n_t * width)

    # Keys with the ghost, node id num_nodes, after each target's nodes.
    sizes = [p.numel() for p in parts] + [n_t]
    node_keys, sort_pos = sort_ints(torch.cat([*parts, t_ids * width + num_nodes]), n_t * width)
    row = torch.empty_like(sort_pos)  # each pair's row in the union, by its number
    row[sort_pos] = torch.arange(sort_pos.numel(), device=device)
    part_rows = row.split(sizes)
    ghosts = part_rows[-1]
    # Hops from the node's target (ghosts stand beyond the last), in the keys' order.
    hop = torch.repeat_interleave(
        torch.arange(hops + 2, device=device), torch.tensor(sizes, device=device)
    ).index_select(0, sort_pos)

    edge_key, edge_src, edge_dst = [key[:0]], [key[:0]], [key[:0]]  # (rows in the union)
    for h, (owner, pos, pair, num) in enumerate(into):
        edge_key.append((pair // width) * span + pos)
        edge_src.append(row.index_select(0, num))
        edge_dst.append(part_rows[h].index_select(0, owner))
    lookups = []  # edges whose other end (1: source, 0: target) may be outside: (end, owner, pos, pair, rows)
    if every_in:
        base = parts[hops] - parts[hops] % width
        owner, pos = graph.incident(1, parts[hops] - base)
        lookups.append((1, owner, pos, base.index_select(0, owner) + src.index_select(0, pos), part_rows[hops]))
    if out_edges:
        for part, p_rows in zip(parts, part_rows):
            base = part - part % width
            owner, pos = graph.incident(0, part - base)
            lookups.append((0, owner, pos, base.index_select(0, owner) + dst.index_select(0, pos), p_rows))
    if merging:
        # A border node's self-loops stay real edges: layers that add "remaining"
        # self-loops (gcn_norm) must still see which nodes have one.
        loops, loop_ids = _self_loops(edge_index, num_nodes)
        border, border_rows = parts[hops], part_rows[hops]
        v = border % width
        with_loop = loops.in_degree(v).nonzero().squeeze(1)
        lo, lp = loops.incident(1, v.index_select(0, with_loop))
        lo = with_loop.index_select(0, lo)
        edge_key.append((border.index_select(0, lo) // width) * span + loop_ids.index_select(0, lp))
        edge_src.append(border_rows.index_select(0, lo))
        edge_dst.append(edge_src[-1])
        # One merged edge from the ghost into each border node with other in-edges, in
        # the border's order: the stable sort keeps it.
        at = _merged(edge_index, num_nodes, v)[0].nonzero().squeeze(1)
        m_t, m_rows = border.index_select(0, at) // width, border_rows.index_select(0, at)
        if out_edges:  # (edges reduced to unique keys: one merged edge per target, ghost to ghost)
            m_t = torch.unique_consecutive(m_t)
            m_rows = ghosts.index_select(0, m_t)
        edge_key.append(m_t * span + num_edges)
        edge_src.append(ghosts.index_select(0, m_t))
        edge_dst.append(m_rows)
    if lookups:
        kept_in = hop <= hops if every_in else hop < hops  # by row: nodes whose in-edges are kept
        found = _pair_rows(node_keys, [pair for _, _, _, pair, _ in lookups], width, n_t)
        for (end, owner, pos, pair, o_rows), at in zip(lookups, found):
            if not end:  # an edge between two kept nodes may be an in-edge kept already: keep it once
                again = (at >= 0) & kept_in.index_select(0, at.clamp(min=0))
                if merging:  # (the border's self-loops)
                    again |= src.index_select(0, pos) == dst.index_select(0, pos)
                keep = (~again).nonzero().squeeze(1)
                owner, pos, pair, at = (x.index_select(0, keep) for x in (owner, pos, pair, at))
            edge_key.append((pair // width) * span + pos)
            other = torch.where(at >= 0, at, ghosts.index_select(0, pair // width))  # outside: the ghost
            own = o_rows.index_select(0, owner)
            edge_src.append(other if end else own)
            edge_dst.append(own if end else other)
    # Sorted by (target, edge): chunks of targets are slices, results come out coalesced.
    edge_key, order = sort_ints(torch.cat(edge_key), n_t * span)
    edge_t, edge_e = edge_key // span, edge_key % span
    union_ei = edge_key.new_empty((2, order.numel()))
    torch.index_select(torch.cat(edge_src), 0, order, out=union_ei[0])
    torch.index_select(torch.cat(edge_dst), 0, order, out=union_ei[1])
    node_t, node_v = node_keys // width, node_keys % width
    ghost = node_v == num_nodes
    node_v = torch.where(ghost, targets[node_t], node_v)
    centers = part_rows[0].clone()
    return node_t, node_v, ghost, edge_t, edge_e, union_ei, centers, hop


# -- the explanation ----------------------------------------------------------------
_CHECKED = TensorKeyed(8, content=True)
_FINITE = TensorKeyed(4096)


def _validate(model, x, edge_index, kwargs) -> list[nn.Module]:
    """Checks of the inputs and the model; returns the model's modules (listed once per call)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor("x", x)
    check_finite("x", x)
    if edge_index is not None:
        # A graph explained call after call (node after node) is range-checked once.
        n = x.shape[0]
        if isinstance(edge_index, Tensor):
            _CHECKED.get(edge_index, lambda: check_edge_index(edge_index, n, n), n)
        else:
            check_edge_index(edge_index, n, n)  # (raises: not a tensor)
        if edge_index.device != x.device:
            raise ValueError(f"edge_index is on {edge_index.device} but x is on {x.device}")
    _validate_kwargs(kwargs, x)
    ew = kwargs.get("edge_weight")
    if isinstance(ew, Tensor) and isinstance(edge_index, Tensor):
        if ew.dim() != 1 or ew.shape[0] != edge_index.shape[1]:
            raise ValueError(f"edge_weight must have shape [E] = [{edge_index.shape[1]}], got {tuple(ew.shape)}")
        if ew.is_floating_point() and ew.dtype != x.dtype:
            raise TypeError(f"edge_weight has dtype {ew.dtype} but x has dtype {x.dtype}; convert one of them")
    if x.shape[0] == 0:
        raise ValueError(f"x has no rows (shape {tuple(x.shape)}): there is nothing to explain")
    modules = list(model.modules())
    _validate_model(model, x, modules)
    return modules


def _validate_kwargs(kwargs: dict, x: Tensor) -> None:
    """Forward kwargs that are tensors (or dicts of them, per node or edge type): on ``x``'s
    device, and finite where they are floating."""
    for name, value in kwargs.items():
        for k, t in value.items() if isinstance(value, Mapping) else [(None, value)]:
            what = name if k is None else f"{name}[{k!r}]"
            if isinstance(t, Tensor):
                if t.device != x.device:
                    raise ValueError(f"{what} is on {t.device} but x is on {x.device}")
                if t.is_floating_point():
                    check_finite(what, t)


def _own_tensors(modules: list[nn.Module], kind: str) -> Iterator[Tensor]:
    """The parameters (``kind="parameter"``) or buffers of ``modules``, each once, in the
    order ``model.parameters()`` / ``model.buffers()`` give them."""
    seen = set()
    for m in modules:
        for t in (m._parameters if kind == "parameter" else m._buffers).values():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                yield t


def _non_finite_weight(modules: list[nn.Module] | None) -> str | None:
    """Which of the model's parameters or buffers holds NaN/Inf, if any (``modules[0]`` is
    the model): the per-call check trusts a weight it passed until its version moves, which
    an edit through ``.data`` does not do."""
    if not modules:
        return None
    for kind, named in (("parameter", modules[0].named_parameters()), ("buffer", modules[0].named_buffers())):
        for name, t in named:
            if t.is_floating_point() and (what := non_finite(t)):
                return f"model {kind} {name!r} contains {what} values"
    return None


def _validate_model(model: nn.Module, x: Tensor, modules: list[nn.Module] | None = None) -> None:
    """The model's parameters and buffers: initialised, on ``x``'s device and dtype, and
    finite (one pass over them: this runs on every call). ``modules``: the model's, if
    already listed."""
    modules = list(model.modules()) if modules is None else modules
    first = True
    for kind in ("parameter", "buffer"):
        for t in _own_tensors(modules, kind):
            if isinstance(t, nn.parameter.UninitializedTensorMixin):
                named = model.named_parameters() if kind == "parameter" else model.named_buffers()
                name = next(n for n, u in named if u is t)
                raise ValueError(
                    f"model {kind} {name!r} is not initialised yet (a lazy layer, in_channels=-1): run the "
                    "model once on the data (under torch.no_grad()) before explaining it"
                )
            if first and kind == "parameter":
                first = False
                if t.device != x.device:
                    raise ValueError(f"model parameters are on {t.device} but x is on {x.device}")
                if t.is_floating_point() and t.dtype != x.dtype:
                    raise TypeError(
                        f"model parameters have dtype {t.dtype} but x has dtype {x.dtype}; convert one of them"
                    )
            # Weights explained call after call are checked once per version (_FINITE
            # remembers the good ones); names are looked up for an error only.
            if t.is_floating_point() and _FINITE.peek(t) is None:
                bad = non_finite(t)
                if bad:
                    named = model.named_parameters() if kind == "parameter" else model.named_buffers()
                    name = next(n for n, u in named if u is t)
                    raise ValueError(f"model {kind} {name!r} contains {bad} values; LRP needs finite inputs")
                _FINITE.get(t, lambda: True)


# Functional code a classifier may end with (log_softmax, softmax, sigmoid): the logits
# are their input. View-like steps between them and the layer are looked through.
# Element-wise functions that are not positively homogeneous: called in the model's own
# code (not as modules), autograd would carry relevance through them by their gradient,
# which does not conserve it. Found on the autograd graph by their backward nodes...
_GLUE_NODES = frozenset(
    {
        "EluBackward0", "CeluBackward0", "GeluBackward0", "SiluBackward0", "MishBackward0",
        "SoftplusBackward0", "HardtanhBackward0", "HardswishBackward0", "HardsigmoidBackward0",
        "LogSigmoidBackward0", "SoftshrinkBackward0", "TanhBackward0", "SigmoidBackward0",
        "AtanBackward0", "ErfBackward0", "SinBackward0", "CosBackward0", "ExpBackward0",
        "SqrtBackward0", "RsqrtBackward0", "LogBackward0", "Log1PBackward0", "Log2Backward0", "Log10Backward0",
        "Expm1Backward0", "ReciprocalBackward0",
    }
)  # fmt: skip
_F = torch.nn.functional
# ...and then routed through the Pass rule, as their modules are (nn.ELU, nn.Tanh...).
_GLUE_FUNCTIONS = frozenset(
    {
        _F.elu, _F.selu, _F.celu, _F.gelu, _F.silu, _F.mish, _F.softplus, _F.hardtanh, _F.relu6, _F.hardswish,
        _F.hardsigmoid, _F.logsigmoid, _F.softshrink, _F.tanh, _F.sigmoid, torch.tanh, torch.sigmoid,
        torch.selu, torch.celu, torch.special.expit, Tensor.tanh, Tensor.sigmoid,
        torch.atan, torch.erf, torch.special.erf, torch.sin, torch.cos, torch.exp, Tensor.atan, Tensor.erf,
        Tensor.sin, Tensor.cos, Tensor.exp, _F.softsign, _F.tanhshrink,
        torch.sqrt, torch.rsqrt, torch.log, torch.log1p, torch.log2, torch.log10, torch.expm1, torch.reciprocal,
        Tensor.sqrt, Tensor.rsqrt, Tensor.log, Tensor.log1p, Tensor.log2, Tensor.log10, Tensor.expm1,
        Tensor.reciprocal,
    }
)  # fmt: skip
_SIGMOIDS = frozenset({_F.sigmoid, torch.sigmoid, torch.special.expit, Tensor.sigmoid})
# Softmax-like functions whose input, when no layer returned it (pooled or summed logits),
# is found by watching the calls (a routed forward records each call's input and output).
_SOFTMAXES = frozenset(
    {_F.softmax, _F.log_softmax, torch.softmax, torch.log_softmax, Tensor.softmax, Tensor.log_softmax}
)
# Models whose forward calls such functions: later calls route them from the start.
_ROUTES_GLUE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _GlueActivations(torch.overrides.TorchFunctionMode):
    """Routes the model's own calls of :data:`_GLUE_FUNCTIONS` through the Pass rule
    (calls inside layer handlers are the handlers' business)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _GLUE_FUNCTIONS and not self.ctx.in_handler:
            if args:
                x, rest = args[0], args[1:]
            else:  # (the tensor passed by keyword: torch.tanh(input=h))
                x, rest = kwargs.get("input"), ()
                kwargs = {k: v for k, v in kwargs.items() if k != "input"}
            if isinstance(x, Tensor) and x.requires_grad and x.is_floating_point():
                out = pass_through(self.ctx, lambda t: func(t, *rest, **kwargs), x, normaliser=func in _SIGMOIDS)
                if func in _SIGMOIDS:
                    self.ctx.normaliser_inputs.append((out, x))
                return out
            return func(x, *rest, **kwargs) if args else func(input=x, **kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAXES and not self.ctx.in_handler and isinstance(out, Tensor):
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, Tensor):
                self.ctx.normaliser_inputs.append((out, x))
        return out


_NORMALISERS = ("LogSoftmaxBackward0", "SoftmaxBackward0", "SigmoidBackward0")
_VIEWS = (
    "ViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0", "SqueezeBackward1", "UnsqueezeBackward0",
    "_RecordFunctionBackward",  # (the identity that records relevance reaching a layer)
)  # fmt: skip


def _is_normaliser(fn) -> bool:
    """A softmax/log_softmax/sigmoid node (a sigmoid module's Pass node included)."""
    return fn is not None and (type(fn).__name__ in _NORMALISERS or getattr(fn, "normaliser", False) is True)


class _NoLogitsError(ValueError):
    """The model's output normalises a tensor that no layer returned (and no watched call
    of the normaliser recorded)."""


def _logits(y: Tensor, outputs: list[tuple[int, Tensor]], inputs: list[tuple[Tensor, Tensor]] = ()) -> Tensor:
    """The tensor whose values are explained: the model's output ``y`` itself, or, where
    ``y`` normalises a layer's output (softmax, log_softmax, sigmoid), that output, or the
    normaliser's recorded input (``inputs``: its calls' ``(output, input)``, from a forward
    that watched them)."""
    fn, normalised = y.grad_fn, False
    if not _is_normaliser(fn):  # (an nn.Sigmoid's output is a layer output, but no logit)
        return y
    while fn is not None:
        is_normaliser = _is_normaliser(fn)
        if is_normaliser:
            x = next((x for out, x in inputs if out.grad_fn is fn), None)
            if x is not None and not _is_normaliser(x.grad_fn):
                return x
        if not is_normaliser:
            hit = next((out for _, out in outputs if out.grad_fn is fn), None)
            if hit is not None:
                return hit
            if type(fn).__name__ not in _VIEWS:
                break
        normalised = normalised or is_normaliser
        fn = next(f for f, _ in fn.next_functions if f is not None) if fn.next_functions else None
    raise _NoLogitsError(
        "the model's output is a softmax/log_softmax/sigmoid of a tensor that could not be "
        "found (not a layer's output, nor the input of a torch softmax/log_softmax/sigmoid call): "
        "LRP explains logits, so return them (or end the model with a layer)"
    )


# Ops between the last layers and the explained output that keep them "top": sums (a
# residual), views, pooling over nodes (sum, mean, max) and the identity that records.
_TOP_GLUE = frozenset(
    {
        "AddBackward0", "ScatterAddBackward0", "IndexAddBackward0", "ScatterReduceBackward0",
        "SumBackward0", "SumBackward1", "MeanBackward0", "MeanBackward1", "DivBackward0", "MulBackward0",
        "SegmentReduceBackward0", "IndexBackward0", "CatBackward0", "StackBackward0", *_VIEWS,
    }
)  # fmt: skip


def _walk(y: Tensor, outputs: list[tuple[int, Tensor]], rows: int | None = None) -> tuple:
    """One pass over ``y``'s autograd graph for:

    * backward nodes of :data:`_GLUE_NODES` (element-wise functions the model's own code
      called, to be routed through the Pass rule);
    * the layer calls a composite's ``top`` rule takes: those whose outputs make ``y``
      through sums, views and pooling only (every summand of a residual output; the last
      conv under a global pooling). A layer output that a call inside another returned
      (GINConv's MLP) counts as the inner call's, the map that computed it;
    * with ``rows`` (the node rows of a pass on subgraphs), the model's own ops that mix
      them (:func:`~sparse_lrp.model_code.mixes_rows`);
    * ops with no conservative rule, and how many constants the code adds
      (:mod:`sparse_lrp.model_code`).

    Returns ``(glue, top calls, mixing ops, unconserving ops, constants)``.
    """
    producer: dict = {}
    for i, out in outputs:  # (inner calls return first: the first call per tensor is its own)
        producer.setdefault(out.grad_fn, i)
    glue, top, seen, stack, mixing = [], set(), set(), [(y.grad_fn, True)], []
    refused, constants = [], 0
    while stack:
        fn, near_top = stack.pop()  # near_top: reached from y through _TOP_GLUE nodes only
        if fn is None or (fn, near_top) in seen:
            continue
        seen.add((fn, near_top))
        first = (fn, not near_top) not in seen  # (the first visit of this node)
        if first and type(fn).__name__ in _GLUE_NODES:
            glue.append(type(fn).__name__)
        if first and rows is not None and mixes_rows(fn, rows):
            mixing.append(type(fn).__name__)
        if first and (op := unconserving(fn)) is not None:
            refused.append(op)
        if first and adds_constant(fn):
            constants += 1
        if near_top and fn in producer:
            top.add(producer[fn])
            near_top = False
        near_top = near_top and type(fn).__name__ in _TOP_GLUE
        stack.extend((f, near_top) for f, _ in fn.next_functions)
    return glue, frozenset(top), mixing, refused, constants


def _check_normalisers(ctx: Context, y: Tensor) -> None:
    """A softmax-like module is explainable only as the model's last step (its input is
    then explained, the logits); inside the model it would mix relevance unconserved."""
    if not ctx.normalised:
        return
    chain, fn = set(), y.grad_fn
    while fn is not None and type(fn).__name__ in _NORMALISERS + _VIEWS:
        chain.add(fn)
        fn = fn.next_functions[0][0]
    for name, kind, out in ctx.normalised:
        if out is not y and out.grad_fn not in chain:
            raise TypeError(
                f"module {name!r} ({kind}) normalises inside the "
                "model: LRP explains a softmax only as the model's last step (its input, the logits, "
                "is explained); relevance through it would not be conserved"
            )


def _mixes_rows(model: nn.Module, x: Tensor, kwargs) -> bool:
    """Whether the model's own forward, run as it is (eval mode) on ``x`` with one more
    (zero) row, mixes its rows: an op over a dimension as long as the rows, which a row
    dimension is and a hidden size merely as long as them is not, once the rows grow."""
    grown = torch.cat([x.detach(), x.new_zeros(1, *x.shape[1:])]).requires_grad_(True)
    training = [m for m in model.modules() if m.training]
    try:
        for m in training:  # (the flags only, as _patched sets them)
            m.training = False
        with torch.enable_grad():
            y = model(grown, **kwargs)
    finally:
        for m in training:
            m.training = True
    if not isinstance(y, Tensor) or y.grad_fn is None:
        return False
    seen, stack = set(), [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if mixes_rows(fn, grown.shape[0]):
            return True
        stack.extend(f for f, _ in fn.next_functions)
    return False


def _run(model, ctx: Context, x: Tensor, edge_index, kwargs, rows, target, task_level: str | None):
    """One explanation: the model's forward with its layers routed, then the backward pass
    from ``rows``' ``target``. Returns ``(node_feat, edge_attr_rel, value, cls, seed, y)``;
    the per-layer records are in ``ctx``."""
    run = _forward(model, ctx, x, edge_index, kwargs, rows, task_level)
    try:
        return _backward(ctx, run, rows, target)
    finally:
        ctx.release()


@dataclass
class _Forward:
    """What a forward pass leaves for its backward passes."""

    y: Tensor
    x_in: Tensor | dict[Any, Tensor]
    leaves: list[Tensor]
    ea: Tensor | dict[Any, Tensor] | None


def _forward(model, ctx: Context, x, edge_index, kwargs, rows, task_level: str | None) -> _Forward:
    # Contiguous, so that a layer's flattened or transposed view of the input is still the
    # input (Context.input_key): a reshape of a strided tensor would copy it. Inputs are
    # told apart by their storage there, so one tensor passed as two inputs (two node types'
    # features) becomes two: a copy for the second.
    starts: set[int] = set()

    def leaf(t: Tensor) -> Tensor:
        t = t.detach().contiguous()
        if t.numel() and t.data_ptr() in starts:
            t = t.clone()
        starts.add(t.data_ptr())
        return t.requires_grad_(True)

    hetero = isinstance(x, Mapping)  # features per node type (and edge features per edge type)
    ea_name = next((k for k in _HETERO_EDGE_FEATURES if isinstance(kwargs.get(k), Mapping)), None) if hetero else None
    if hetero:
        x_in = {k: leaf(v) for k, v in x.items()}
        ctx.inputs = {f"x[{k!r}]": v for k, v in x_in.items()}
        leaves = list(x_in.values())
        ea = None
        if ea_name is not None:
            ea = {k: leaf(v) if v.is_floating_point() else v for k, v in kwargs[ea_name].items()}
            kwargs = {**kwargs, ea_name: ea}
            ctx.inputs.update({f"edge_attr[{k!r}]": v for k, v in ea.items() if v.requires_grad})
    else:
        x_in = leaf(x)
        ctx.inputs = {"x": x_in}
        leaves = [x_in]
        ea = kwargs.get("edge_attr")
        if isinstance(ea, Tensor) and ea.is_floating_point():
            ea = leaf(ea)
            kwargs = {**kwargs, "edge_attr": ea}
            ctx.inputs["edge_attr"] = ea
        else:
            ea = None
        ctx.edge_index = edge_index
    route = _ROUTES_GLUE.get(model, False)
    hops = ctx.hops_run

    def reroute() -> bool:
        # Run the forward again with the model's own calls watched (glue functions routed
        # through the Pass rule, softmax-like calls' inputs recorded), from now on for it.
        _ROUTES_GLUE[model] = True
        ctx.outputs.clear()
        ctx.normalised.clear()
        ctx.normaliser_inputs.clear()
        ctx.hops_run = hops
        ctx.unweighted.clear()
        return True

    while True:
        glue = _GlueActivations(ctx) if route else contextlib.nullcontext()
        with _patched(model, ctx), torch.enable_grad(), glue:
            args = (x_in,) if edge_index is None else (x_in, edge_index)
            y = model(*args, **kwargs)
        if not isinstance(y, Tensor):
            raise TypeError(f"the model must return a tensor, got {type(y).__name__}")
        _check_normalisers(ctx, y)
        try:
            y = _logits(y, ctx.outputs, ctx.normaliser_inputs)
        except _NoLogitsError:
            if route:
                raise
            route = reroute()  # (logits no layer returned, pooled or summed: the normaliser's input)
            continue
        if hetero and rows is not None and rows.numel() and int(rows.max()) >= y.shape[0]:
            raise ValueError(f"index out of range for the model's {y.shape[0]} output rows: {rows.tolist()}")
        # Several samples of a plain model share one pass split by row: only exact when no
        # row reads another (which the model's code or a layer's map over rows would do).
        joint = edge_index is None and ctx.num_groups > 0 and ctx.graph_groups is None
        found, top_calls, mixing, refused, constants = _walk(
            y, ctx.outputs, x_in.shape[0] if ctx.on_subgraphs or joint else None
        )
        if refused:
            ops = sorted({op_name(m) for m in refused})
            raise TypeError(
                f"the model's forward combines activations with {ops} (a product or quotient of two "
                "activations, h * h or h / h.norm(); a power; a normalisation by their own statistics, "
                "F.layer_norm): LRP has no conservative rule for these. A normalisation is explained as "
                "a per-row scale with its statistics detached (h / h.norm(dim=-1, keepdim=True).detach(), "
                "as LRP's LN-rule takes it); element-wise activations need their module or functional "
                "form (nn.SiLU() rather than h * torch.sigmoid(h))"
            )
        ctx.constants = ctx.constants or constants > 0
        if joint and mixing and ctx.hops_run == hops and not _mixes_rows(model, x_in, kwargs):
            mixing = []  # (a dimension merely as long as the rows: a hidden size, say)
        if joint and (mixing or ctx.hops_run > hops):
            what = sorted({op_name(m) for m in mixing}) or ["a layer's map over rows (attention, an edge map)"]
            raise ValueError(
                f"the model mixes its input rows ({', '.join(what)}): several samples cannot share one pass, "
                "whose relevance is split by row. Explain them one at a time (index=i), or pass `batch` if "
                "the rows are nodes of separate graphs"
            )
        # (an output with no row per node is a graph-level model's: its pooling is no mixing
        # but the readout, and the error below says so)
        if mixing and not (task_level == "node" and y.shape[0] != x_in.shape[0]):
            raise _MixesNodesError(sorted({op_name(m) for m in mixing}))
        if not found:
            break
        if route:
            raise ValueError(
                f"the model's forward applies {sorted(set(found))} in a way that could not be routed through "
                "the Pass rule (not a torch.tanh/F.elu-style call): their gradient would carry relevance "
                "unconserved. Use the module form (nn.Tanh(), nn.ELU()...)"
            )
        route = reroute()  # (the forward called such functions itself)
    ctx.top_calls = top_calls
    if task_level == "node" and not hetero and y.shape[0] != x.shape[0]:
        where = f"a target's {x.shape[0]}-node subgraph" if ctx.on_subgraphs else f"{x.shape[0]} nodes"
        raise _NotPerNodeError(
            f"node-level task but the model returned {y.shape[0]} rows for {where}: it has no row per node"
        )
    if ctx.live is not None and ctx.hops_run > len(ctx.live) - 1:
        # More hops than the subgraphs hold (a layer called twice): whatever this pass
        # computed, even a non-finite output, comes from missing neighbours; rerun wider.
        raise _MoreHopsError(ctx.hops_run)
    return _Forward(y, x_in, leaves, ea)


def _backward(ctx: Context, run: _Forward, rows, target, retain: bool = False):
    """The backward pass from ``rows``' ``target`` (``retain``: keep the autograd graph for
    another one). Returns ``(node_feat, edge_attr_rel, value, cls, seed, y)``."""
    y, x_in, leaves, ea = run.y, run.x_in, run.leaves, run.ea
    hetero = isinstance(x_in, dict)
    with torch.enable_grad():
        seed, value, cls, dropped = _seed(y, rows, target)
        ctx.lost = ctx.lost + dropped
        if not math.isfinite(value.sum().item()) and not bool(torch.isfinite(value).all()):
            bad = _non_finite_weight(ctx.modules)
            raise ValueError(
                f"the explained output is not finite ({value.flatten()[:4].tolist()}...): "
                + (f"{bad} (written since the last call, bypassing its version counter)" if bad else "")
                + ("" if bad else "the model's forward gives NaN/Inf on this input (an overflow, or NaN weights)")
                + ", and so would its relevance"
            )
        ea_leaves = [] if ea is None else [ea] if not hetero else [v for v in ea.values() if v.requires_grad]
        try:
            grads = torch.autograd.grad(y, leaves + ea_leaves, seed, allow_unused=True, retain_graph=retain)
        except RuntimeError as err:
            if "inplace operation" not in str(err):
                raise
            raise ValueError(
                "the model changes a layer's output in place (e.g. F.relu(h, inplace=True), "
                "nn.ReLU(inplace=True) or h += ...): LRP reads every layer's output in its "
                "backward pass, so use the out-of-place form"
            ) from err

    def relevance(key: str, t: Tensor, g: Tensor | None) -> Tensor:
        return (t.detach() * g if g is not None else torch.zeros_like(t.detach())) + ctx.side.get(key, 0)

    grads = list(grads)
    if hetero:
        node_feat = {k: relevance(f"x[{k!r}]", v, grads.pop(0)) for k, v in x_in.items()}
        edge_attr_rel = None
        if ea is not None:  # (integer edge inputs, types say, take no relevance)
            edge_attr_rel = {
                k: relevance(f"edge_attr[{k!r}]", v, grads.pop(0)) for k, v in ea.items() if v.requires_grad
            }
    else:
        node_feat = relevance("x", x_in, grads[0])
        edge_attr_rel = None if ea is None else relevance("edge_attr", ea, grads[1])
    return node_feat, edge_attr_rel, value, cls, seed.detach(), y.detach()


@summing_once
def explain(
    model: nn.Module,
    x: Tensor | Mapping[str, Tensor],
    edge_index: Tensor | Mapping[tuple[str, str, str], Tensor] | None = None,
    *,
    index: int | Sequence[int] | Tensor | None = None,
    target: int | Tensor | None = None,
    composite: Composite | Rule | str | None = None,
    task_level: str | None = None,
    edges: bool = True,
    hops: int | None = None,
    strategy: str = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY,
    sparse_output: bool | None = None,
    max_union: int | None = None,
    **forward_kwargs: Any,
) -> ExplainResult:
    """Explain ``model(x, edge_index, **forward_kwargs)`` with LRP.

    Args:
        model: any module built from supported layers (see :mod:`sparse_lrp.layers`);
            its own ``forward`` code runs unchanged.
        x: node features ``[N, F]`` (or a batch ``[B, F]`` for a model without graph), or
            a dict of node types' features (a heterogeneous graph: see
            :func:`sparse_lrp.hetero.explain_hetero`, whose results are dicts by type).
        edge_index: ``[2, E]`` (source, target), or None for a model without graph; a
            dict ``{(src, rel, dst): [2, E]}`` with a dict ``x``.
        index: the output row(s) to explain: a node (node-level), a graph of the batch
            (graph-level) or a sample; a list/tensor gives a leading ``[T]`` dimension
            in every result. None explains all rows jointly.
        target: the class to explain (default: the predicted one), a class per index,
            or a float relevance tensor at the output (regression, multi-output). For a
            one-column binary output, class 1 explains the logit and class 0 its negation.
        composite: a :class:`~sparse_lrp.composites.Composite`, a single rule for
            every layer, or a preset name (``"epsilon"``, ``"zplus"``, ``"gamma"``).
            Default ``"epsilon"`` (:class:`~sparse_lrp.LRPExplainer`'s is ``"zplus"``).
        task_level: ``"node"`` or ``"graph"``. By default targets are graphs when a
            ``batch`` vector is given (and index names rows), unless the model returns
            one row per node or the index lies beyond the graphs; nodes otherwise.
        edges: record edge relevance (a little extra work per graph layer).
        hops: receptive field of node targets (default: counted from the model's
            message-passing layer calls, each call of a layer used in a loop
            included; a larger value widens it). Node targets run on their k-hop
            computation subgraphs (exact for the supported layers; a custom handler
            declares what its layer reads with ``register_handler(..., subgraph=...)``,
            and a layer that reads further than its in-edges needs ``hops`` widened),
            except a single target whose graph is at most ``WHOLE_GRAPH_ROWS`` nodes +
            edges larger than its subgraph (estimated from the mean degree), which runs
            on the whole graph (and on its subgraph should the graph hold NaN/Inf values
            beyond it).
        strategy, max_memory: passed to the edge kernel.
        sparse_output: for many node targets, return ``[T, N, ...]``/``[T, E]`` results as
            sparse COO tensors holding only each target's computation subgraph. None (the
            default) does so when the dense results would exceed 512 MiB.
        max_union: for many node targets, the most nodes + edges one pass over the union
            of their subgraphs may have (default ``UNION_ROWS``, 2^18);
            larger target sets run in chunks of targets.
        **forward_kwargs: passed to the model (``edge_weight``, ``edge_attr``,
            ``batch``...).

    Output relevance is the explained logit itself, so with LRP-0 on a bias-free ReLU
    network ``node_feat`` equals gradient × input and sums to the logit.
    """

    def flat(values):  # (tensors, and those of dicts: a heterogeneous graph's per-type inputs)
        for t in values:
            yield from flat(t.values()) if isinstance(t, Mapping) else (t,)

    if torch.is_inference_mode_enabled() or any(
        isinstance(t, Tensor) and t.is_inference() for t in flat((x, edge_index, *forward_kwargs.values()))
    ):
        # LRP runs through autograd, which inference mode and its tensors exclude.
        def normal(t):
            if isinstance(t, Mapping):
                return {k: normal(v) for k, v in t.items()}
            return t.clone() if isinstance(t, Tensor) and t.is_inference() else t

        with torch.inference_mode(False):
            return explain(
                model, normal(x), normal(edge_index), index=normal(index), target=normal(target),
                composite=composite, task_level=task_level, edges=edges, hops=hops, strategy=strategy,
                max_memory=max_memory, sparse_output=sparse_output, max_union=max_union,
                **{k: normal(v) for k, v in forward_kwargs.items()},
            )  # fmt: skip
    if isinstance(x, Mapping):  # a heterogeneous graph: features per node type
        from .hetero import explain_hetero

        # (whole-graph passes, index naming the output's rows whatever task_level says)
        given = [k for k, v in (("hops", hops), ("sparse_output", sparse_output), ("max_union", max_union)) if v]
        if given:
            raise ValueError(
                f"{', '.join(given)}: not supported on a heterogeneous graph, which is explained on the whole "
                "graph (no k-hop subgraphs)"
            )

        return explain_hetero(
            model, x, edge_index, index=index, target=target, composite=composite, edges=edges,
            strategy=strategy, max_memory=max_memory, forward_kwargs=forward_kwargs,
        )  # fmt: skip
    modules = _validate(model, x, edge_index, forward_kwargs)
    check_budget(max_memory)
    for name, value, least in (("hops", hops, 0), ("max_union", max_union, 1)):
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int (or None), got {value!r}") from None
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    ctx = Context(resolve(composite), strategy=strategy, max_memory=max_memory, want_edges=edges)
    ctx.modules = modules
    n = x.shape[0]
    batch = forward_kwargs.get("batch")
    if task_level not in (None, "node", "graph"):
        raise ValueError(f"task_level must be 'node', 'graph' or None, got {task_level!r}")
    num_graphs = int(batch.max()) + 1 if isinstance(batch, Tensor) and batch.numel() else None
    is_graph = task_level == "graph"
    # With a `batch` vector and no task_level, targets are taken as graphs; a node-level
    # model that takes `batch` shows itself by index (a node beyond the graphs) or by
    # its output (a row per node), and is then explained as one.
    guessed = task_level is None and index is not None and num_graphs is not None and num_graphs != n
    as_nodes = functools.partial(
        explain, model, x, edge_index, index=index, target=target, composite=composite, task_level="node",
        edges=edges, hops=hops, strategy=strategy, max_memory=max_memory, sparse_output=sparse_output,
        max_union=max_union, **forward_kwargs,
    )  # fmt: skip
    if guessed:
        is_graph = True
        try:
            _as_index(index, num_graphs, "graphs")
        except ValueError as beyond_graphs:
            _as_index(index, n, "nodes")  # (raises if it fits neither)
            try:
                return as_nodes()
            except _NotPerNodeError:  # a graph-level model after all: the index is the problem
                raise beyond_graphs from None
    rows_total = num_graphs if is_graph and num_graphs is not None else n
    if is_graph and batch is None and edge_index is not None:
        rows_total = 1  # a graph-level model without `batch`: the input is one graph
    try:
        rows, many = _as_index(index, rows_total, "graphs" if is_graph else "rows")
    except ValueError as err:
        if rows_total != 1 or batch is not None or edge_index is None:
            raise
        raise ValueError(
            f"{err}: graph-level targets need the `batch` vector (forward kwarg batch=...); without it the "
            "input is one graph, index 0"
        ) from None
    one_graph = None  # a graph-level model on one graph without `batch`: it is graph 0
    if is_graph and many and batch is None and edge_index is not None:
        one_graph = torch.zeros(n, dtype=torch.long, device=x.device)
    if task_level is None and edge_index is None:
        is_graph = True  # a plain model: rows are samples, explained jointly in one pass
    if many and is_graph and rows.unique().numel() != rows.numel():
        raise ValueError(
            "index repeats a graph (or sample): these targets share one joint pass, where a repeat's "
            "relevance would add up; explain the repeats in separate calls"
        )

    ctx.handled = _collect(model, ctx.traversed, modules)  # once per call: also what _patched routes
    ctx.composite.check_names([name for name, _, _ in ctx.handled])
    ctx.few_rows = rows is not None
    needs = subgraph_needs(m for _, m, _ in ctx.handled) if edge_index is not None else None
    ctx.watched = _watched(model, ctx.handled, ctx.traversed, modules)
    if any(kind == "hops" for _, _, kind in ctx.watched):
        needs = None  # message passing without a handler (LGConv): what it reads is unknown
    # A single target whose layers did not all declare what they read keeps the graph,
    # and so does one on a small graph, where cutting its subgraph out costs more than
    # the rows it saves.
    several = rows is not None and rows.numel() > 1
    small = edge_index is not None and not sparse_output and not _SUBGRAPHS_ONLY.get()
    if small:
        small = _whole_graph_pays(n, edge_index.shape[1], _receptive_hops(model, hops, modules))
    on_subgraphs = (
        rows is not None and not is_graph and edge_index is not None and (several or (needs is not None and not small))
    )
    # (whole graph for its size only: the subgraph would have served, and still can)
    by_size = small and rows is not None and not is_graph and edge_index is not None and not several
    by_size = by_size and needs is not None
    beyond = False  # the whole graph holds NaN/Inf beyond the target's subgraph
    was_grad = {p: p.requires_grad for p in _own_tensors(modules, "parameter")}
    try:
        if on_subgraphs:
            # Node targets run on their k-hop computation subgraphs: on a large graph a
            # small fraction of the full pass, and exact for the built-in layers. A single
            # target under a user's handler keeps the full graph (its layer might read
            # more than its in-edges).
            try:
                res = _explain_many_nodes(
                    model, ctx, x, edge_index, rows, target, hops, forward_kwargs, sparse_output, max_union, needs
                )
                return res if many else _only_target(res)
            except _NotPerNodeError as err:
                if task_level is not None or batch is not None:
                    raise _NotPerNodeError(f"{err}; for a graph-level model pass task_level='graph'") from None
                # One row for the whole graph and no `batch`: a graph-level model on one graph.
                return explain(
                    model, x, edge_index, index=index, target=target, composite=composite, task_level="graph",
                    edges=edges, hops=hops, strategy=strategy, max_memory=max_memory, sparse_output=sparse_output,
                    max_union=max_union, **forward_kwargs,
                )  # fmt: skip
            except _MixesNodesError as err:
                if several:
                    raise ValueError(
                        f"the model's own code mixes nodes outside message passing ({', '.join(err.args[0])} "
                        "over the node dimension, as h.mean(0) or A @ h do): a node's output reads nodes no "
                        "k-hop subgraph holds, so node targets cannot share a pass over their subgraphs. "
                        "Explain them one at a time (a single target uses the whole graph)."
                    ) from None
            except _BeyondSubgraphError as err:
                if several:
                    raise ValueError(
                        f"layer {err.args[0]!r} runs on a graph the model builds in forward (any tensor but "
                        "the given edge_index object, even a view or detach of it), not on the given "
                        "edge_index: node targets cannot run on k-hop subgraphs of it. Explain "
                        "them one at a time (a single target uses the whole graph), or build the graph "
                        "before the call and pass it as edge_index."
                    ) from None
                # (a single target runs on the whole graph below)
        level = "graph" if is_graph else task_level
        if many and (edge_index is None or batch is not None or one_graph is not None):
            # One joint pass for several samples or graphs: which rows belong to which target.
            pos = torch.full((rows_total if batch is None else num_graphs,), -1, dtype=torch.long, device=x.device)
            if one_graph is not None:
                pos = pos[:1]
            pos[rows.to(x.device)] = torch.arange(rows.numel(), device=x.device)
            if edge_index is None and batch is None:
                ctx.row_groups = pos
            else:
                ctx.row_groups, ctx.graph_groups = pos[batch if batch is not None else one_graph], pos
            ctx.num_groups = rows.numel()
        try:
            node_feat, ea_rel, value, cls, _, y = _run(model, ctx, x, edge_index, forward_kwargs, rows, target, level)
        except NonFiniteError:
            # The model's values are NaN or Inf at rows the target does not read (a log of a
            # distant node's negative feature): its subgraph explains it without them.
            if not by_size:
                raise
            beyond = True
    finally:
        ctx.release()
        for p, flag in was_grad.items():
            if p.requires_grad != flag:  # (inference-mode parameters refuse any setting)
                p.requires_grad_(flag)
    if beyond:
        token = _SUBGRAPHS_ONLY.set(True)
        try:
            return explain(
                model, x, edge_index, index=index, target=target, composite=composite, task_level=task_level,
                edges=edges, hops=hops, strategy=strategy, max_memory=max_memory, sparse_output=sparse_output,
                max_union=max_union, **forward_kwargs,
            )  # fmt: skip
        finally:
            _SUBGRAPHS_ONLY.reset(token)
    if guessed and y.shape[0] == n:
        return as_nodes()
    res = _result(ctx, node_feat, ea_rel, value, cls, rows, edge_index)
    if many and is_graph and (batch is not None or one_graph is not None):
        if batch is not None and edge_index is not None and edge_index.numel():
            # One joint pass explains several graphs only if no edge joins two of them.
            if bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
                raise ValueError(
                    "edges join nodes of different graphs of the batch: its graphs are not separate, so "
                    "one joint pass cannot tell their relevance apart; explain one graph at a time "
                    "(index=g) or check the batch vector"
                )
        res = _split_graphs(res, rows, batch if batch is not None else one_graph, edge_index, ctx.pooled_batches)
    elif many and edge_index is None:  # samples (or nodes without a graph): each its own row
        res = _split_graphs(res, rows, torch.arange(n, device=x.device), None)
    elif many:  # one node target, given as a list, on the whole graph: its [1, ...] results
        res = _with_target_dim(res)
    return res


def _per_target(res: ExplainResult, fn: Callable[[Tensor], Tensor]) -> ExplainResult:
    """``res`` with ``fn`` applied to every per-target tensor (relevance and layer records)."""

    def each(t):
        return None if t is None else fn(t)

    layers = {
        name: rec.map(fn) if isinstance(rec, LazyRecords) else {k: fn(v) for k, v in rec.items()}
        for name, rec in res.layers.items()
    }
    return dataclasses.replace(
        res, node_feat=fn(res.node_feat), node=fn(res.node), edge=each(res.edge), edge_attr=each(res.edge_attr),
        layers=layers,
    )  # fmt: skip


def _with_target_dim(res: ExplainResult) -> ExplainResult:
    """A one-target result with a leading ``[1]`` dimension (its index was a list)."""
    return _per_target(res, lambda t: t[None])


def _only_target(res: ExplainResult) -> ExplainResult:
    """A one-target result without its leading ``[T]`` dimension."""
    return _per_target(res, lambda t: t[0])


def _conservation(ctx: Context, out_value: Tensor, node_feat: Tensor, ea_rel: Tensor | None) -> dict[str, float]:
    parts = [out_value, node_feat, ea_rel, ctx.absorbed, ctx.lost]
    values = [0.0 if v is None else v for v in parts]
    at = [i for i, v in enumerate(parts) if isinstance(v, Tensor)]
    if at:  # (one host read for all; detached: a sum that still tracks gradients warns when read)
        for i, v in zip(at, torch.stack([parts[i].detach().sum() for i in at]).tolist()):
            values[i] = v
    out, feat, ea, absorbed, lost = (float(v) for v in values)
    into = feat + ea
    if ctx.constants:
        # Constants the model's code adds (h + 1.0) take their share as a bias does: what
        # reached no input and no rule's bias.
        absorbed = out - into - lost
    return {"out": out, "in": into, "absorbed": absorbed, "lost": lost}


def _result(ctx, node_feat, ea_rel, value, cls, rows, edge_index) -> ExplainResult:
    layers = {name: {k: v for k, v in rec.items()} for name, rec in ctx.records.items()}
    edge = None
    if edge_index is not None:
        edge = node_feat.new_zeros(edge_index.shape[1])
        for rec in layers.values():
            if "edge" in rec:
                edge = edge + rec["edge"]
    node_feat = node_feat.detach()
    return ExplainResult(
        node_feat=node_feat,
        node=node_feat.reshape(node_feat.shape[0], -1).sum(1),
        edge=edge,
        output=value.detach(),
        target=cls,
        index=rows,
        edge_attr=None if ea_rel is None else ea_rel.detach(),
        layers=layers,
        conservation=_conservation(ctx, value, node_feat, ea_rel),
    )


def _split_graphs(
    res: ExplainResult, rows: Tensor, batch: Tensor, edge_index: Tensor | None, pooled: Sequence[Tensor] = ()
) -> ExplainResult:
    """One joint pass explained every graph at once (graphs are disjoint); split by graph
    (``pooled``: the `batch` vectors of graphs pooling layers built, for their layers' records)."""
    rows = rows.to(batch.device)
    node_mask = batch[None, :] == rows[:, None]  # [T, N]
    pooled_masks = [b[None, :] == rows[:, None] for b in pooled]

    edge_mask = node_mask[:, edge_index[1]] if edge_index is not None else None
    graph_mask = torch.arange(int(batch.max()) + 1, device=batch.device)[None, :] == rows[:, None]  # [T, G]

    def split(t: Tensor, mask: Tensor) -> Tensor:
        return t[None] * mask.view(*mask.shape, *([1] * (t.dim() - 1)))

    def by_rows(t: Tensor) -> Tensor:
        # Layer records have one row per node (of the input's graph or a pooled one), per
        # graph (after a readout: every graph-level head) or, rarer, per edge (a map over
        # edge features in the model's own code), told apart by their count: graphs are
        # taken before edges where the counts agree.
        for mask in (node_mask, *pooled_masks, graph_mask, edge_mask):
            if mask is not None and t.shape[0] == mask.shape[1]:
                return split(t, mask)
        return t

    def by_node(t: Tensor) -> Tensor:
        return split(t, node_mask)

    def by_edge(t: Tensor) -> Tensor:
        return split(t, edge_mask)

    def by_kind(k: str, v: Tensor) -> Tensor | None:
        if k == "edge_local":  # a layer's own connections: per target already, or a joint sum
            return v if v.dim() == 2 and v.shape[0] == rows.numel() else None
        return by_edge(v) if k == "edge" else by_rows(v)

    layers = {
        name: {k: out for k, v in rec.items() if (out := by_kind(k, v)) is not None} for name, rec in res.layers.items()
    }
    return ExplainResult(
        node_feat=by_node(res.node_feat),
        node=by_node(res.node),
        edge=None if res.edge is None else by_edge(res.edge),
        output=res.output,
        target=res.target,
        index=rows,
        edge_attr=None if res.edge_attr is None else by_edge(res.edge_attr),
        layers=layers,
        conservation=res.conservation,
    )


# Rows (nodes + edges) of one pass over the union of node targets' subgraphs: passes of
# this size keep each layer's tensors small (a few MiB, near the CPU's caches), where
# graph-sized ones run slower. `python benchmarks/bench_many_targets.py
# --compare-max-union 262144 65536` prints the batched time with those budgets against
# this default: 1.02x and 1.01x of it for 1,000 targets of a 1M-edge graph, and with
# `--nodes 1000 --edges 10000` 1.09x and 1.13x (2-core CPU; 2^17 replaced 2^18).
UNION_ROWS = 2**17


def _target_chunks(union: tuple, t_count: int, budget: int):
    """Split the union of all targets' subgraphs into chunks of at most ``budget`` rows.

    The union grows with the number of targets (T subgraphs), so one pass over all of
    them could exceed memory that a single full-graph pass fits in; chunks bound every
    pass. Yields each chunk's slice of the union,
    renumbered from zero: ``(first target, count, node_t, node_v, ghost, edge_t, edge_e,
    edge_index, centers, hop)`` (targets are contiguous, nodes are sorted by target).
    """
    node_t, node_v, ghost, edge_t, edge_e, union_ei, centers, hop = union
    size = torch.bincount(node_t, minlength=t_count) + torch.bincount(edge_t, minlength=t_count)
    chunk_id = torch.div(torch.cumsum(size, 0) - size, max(budget, 1), rounding_mode="floor")
    bounds = torch.cumsum(torch.bincount(chunk_id), 0).tolist()
    lo = 0
    for hi in bounds:
        if hi == lo:
            continue
        bounds_t = torch.tensor([lo, hi], device=node_t.device)
        n_lo, n_hi = torch.searchsorted(node_t, bounds_t).tolist()
        e_lo, e_hi = torch.searchsorted(edge_t, bounds_t).tolist()
        yield (
            lo,
            hi - lo,
            node_t[n_lo:n_hi] - lo,
            node_v[n_lo:n_hi],
            ghost[n_lo:n_hi],
            edge_t[e_lo:e_hi] - lo,
            edge_e[e_lo:e_hi],
            union_ei[:, e_lo:e_hi] - n_lo,
            centers[lo:hi] - n_lo,
            hop[n_lo:n_hi],
        )
        lo = hi


def _explain_many_nodes(
    model, ctx, x, edge_index, rows, target, hops, kwargs, sparse_output, max_union=None, needs=None
) -> ExplainResult:
    """T node targets over the disjoint union of their computation subgraphs.

    One pass per chunk of targets of at most ``max_union`` rows (nodes + edges);
    results equal single-target calls.
    """
    n = x.shape[0]
    k = _receptive_hops(model, hops, ctx.modules)
    rows = rows.to(x.device)
    if isinstance(target, Tensor) and target.dim() > 0 and target.shape[0] == n and rows.numel() != n:
        # One class (or relevance row) per node: the targets' own. (With as many targets
        # as nodes the documented reading, one per index, holds.)
        target = target.to(x.device)[rows]
    budget = int(max_union) if max_union is not None else UNION_ROWS
    # Undeclared layers (None) get every degree kept. Degrees read only as weight sums
    # let the border's edges merge (fewer edges through every layer), unless a layer
    # turns out not to see the merge: then everything reruns on every edge.
    in_deg = needs is None or bool({"in_degrees", "weighted_in_degrees"} & needs)
    out_deg = needs is None or "out_degrees" in needs
    merge = needs is not None and needs & {"in_degrees", "out_degrees"} == set() and "weighted_in_degrees" in needs
    cut, pad = True, 0
    while True:
        args = (model, ctx, x, edge_index, rows, target, k, kwargs, budget)
        try:
            if merge:
                try:
                    union = _khop_union(edge_index, n, rows, k, boundary_degrees=True, merge=True)
                    return _many_nodes_pass(*args, union, sparse_output=sparse_output, cut=cut, pad=pad)
                except MergedEdgesError:
                    pass
            union = _khop_union(edge_index, n, rows, k, out_edges=out_deg, boundary_degrees=in_deg)
            return _many_nodes_pass(*args, union, sparse_output=sparse_output, cut=cut, pad=pad)
        except _MixesNodesError:
            # An op over a dimension as long as the pass's node rows: a node dimension, or
            # one that happens to be as long (a hidden size). One more (isolated, dropped)
            # row tells them apart: a node dimension grows with it.
            if pad:
                raise
            pad = 1
        except _MoreHopsError as more:  # a layer called repeatedly: rebuild the subgraphs wider
            k = _HOPS_RUN[model] = more.hops
        except UnsafeCutError:  # the model's code makes NaN of zero rows: compute every row
            cut = False


def _many_nodes_pass(
    model, ctx, x, edge_index, rows, target, k, kwargs, budget, union, sparse_output=None, cut=True, pad=0
):
    n, num_edges, t_count = x.shape[0], edge_index.shape[1], rows.numel()
    per_target_target = isinstance(target, Tensor) and target.dim() > 0 and target.shape[0] == t_count and t_count > 1
    pieces: dict[str, list] = {}  # name -> [(t_idx, idx, values, size)]
    values, classes, conservation = [], [], {"out": 0.0, "in": 0.0, "absorbed": 0.0, "lost": 0.0}
    chunks = _target_chunks(union, t_count, budget)
    for offset, count, node_t, node_v, ghost, edge_t, edge_e, union_ei, centers, hop in chunks:
        # Per-layer records are placed as node rows or edge rows by their length; an extra
        # isolated ghost node (no edges, dropped from results) breaks a tie (and `pad` more
        # tell a node dimension from one as long, see _explain_many_nodes).
        extra = pad + int(node_v.numel() + pad == edge_e.numel())
        if extra:
            node_t, node_v = (
                torch.cat([node_t, node_t[-1:].repeat(extra)]),
                torch.cat([node_v, node_v[-1:].repeat(extra)]),
            )
            ghost = torch.cat([ghost, ghost.new_ones(extra)])
            hop = torch.cat([hop, hop.new_full((extra,), k + 1)])
        # The pass runs on the nodes ordered by hops from their target, so that a layer's
        # outputs that can still reach a target are the leading rows (Context.live_rows);
        # results return to the (target, node) order below.
        order = torch.sort(hop, stable=True)[1]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        run_t, run_v = node_t.index_select(0, order), node_v.index_select(0, order)
        union_ei, centers = rank[union_ei], rank[centers]
        # Per-node rule parameters (ZBox bounds [N, F]) follow their nodes into the union.
        composite = ctx.composite.map_inputs(
            lambda t, rows=run_v: t.index_select(0, rows.to(t.device)) if t.dim() >= 2 and t.shape[0] == n else t
        )
        cctx = Context(composite, strategy=ctx.strategy, max_memory=ctx.max_memory, want_edges=ctx.want_edges)
        cctx.handled, cctx.traversed, cctx.watched = ctx.handled, ctx.traversed, ctx.watched
        cctx.modules = ctx.modules
        cctx.few_rows = cctx.on_subgraphs = True
        cctx.row_groups, cctx.num_groups = run_t, count  # (chunk-local target of each union node)
        hops_sorted = hop.index_select(0, order)
        cctx.live = torch.searchsorted(hops_sorted, torch.arange(k + 1, device=hop.device), right=True).tolist()
        cctx.cut = cut
        cctx.given_graph = (edge_index, n, kwargs.get("edge_weight"))
        cctx.union_rows = order.numel()
        merged = edge_e == num_edges  # edges standing for all edges into a border node
        is_real = None if not bool(merged.any()) else ~merged
        sub_kwargs, summed = {}, []
        for name, value in kwargs.items():
            # Edge inputs by name, else by length; a length that is both (as many edges as
            # nodes) is read as per node unless the name says edge.
            edge_named = name in _EDGE_KWARGS or name.startswith("edge_")
            if (
                isinstance(value, Tensor)
                and value.dim() > 0
                and (edge_named or (value.shape[0] == num_edges and value.shape[0] != n and name not in _NODE_KWARGS))
            ):
                sub_kwargs[name] = value.index_select(0, edge_e.clamp(max=max(num_edges - 1, 0)))
                if is_real is not None and value.is_floating_point():
                    summed.append((name, value))
            elif isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
                sub_kwargs[name] = value.index_select(0, run_v)
            else:
                sub_kwargs[name] = value
        if is_real is not None:
            # A merged edge counts the edges it stands for and carries their float values'
            # totals (degrees are sums of weights); other kinds keep an existing edge's value.
            border = run_v.index_select(0, union_ei[1][merged])
            counts, *totals = _merged(edge_index, n, border, [v for _, v in summed])
            cctx.edge_counts = torch.ones_like(edge_e)
            cctx.edge_counts[merged] = counts
            for (name, _), total in zip(summed, totals):
                sub_kwargs[name][merged] = total
                cctx.edge_inputs += (sub_kwargs[name],)
        tgt = target[offset : offset + count] if per_target_target else target
        feat_u, ea_u, value, cls, _, _ = _run(
            model, cctx, x.index_select(0, run_v), union_ei, sub_kwargs, centers, tgt, "node"
        )
        if cctx.hops_run > k:
            raise _MoreHopsError(cctx.hops_run)
        node_t, edge_t = node_t + offset, edge_t + offset
        if is_real is not None:  # merged edges are no edges of the graph: results drop them
            edge_t, edge_e = edge_t[is_real], edge_e[is_real]
        feat = feat_u.detach().index_select(0, rank)  # (back in (target, node) order)
        real = ~ghost  # ghosts stand in for outside nodes (relevance 0) and alias their target's id
        node_t_r, node_v_r, feat_r = node_t[real], node_v[real], feat[real]
        pieces.setdefault("node_feat", []).append((node_t_r, node_v_r, feat_r, n))
        pieces.setdefault("node", []).append((node_t_r, node_v_r, feat_r.flatten(1).sum(1), n))
        n_union_edges = union_ei.shape[1]

        def on_edges(v: Tensor, keep: Tensor | None = is_real) -> Tensor:
            return v if keep is None else v[keep]

        edge_u = feat.new_zeros(edge_e.numel())
        for name, rec in cctx.records.items():
            if "edge_local" in rec and rec["edge_local"].dim() == 2:  # own connections, [count, E'] per target
                pieces.setdefault(f"local:{name}", []).append((None, None, rec["edge_local"], None))
            if "edge" in rec:
                rec_e = on_edges(rec["edge"])
                pieces.setdefault(f"layer:{name}:edge", []).append((edge_t, edge_e, rec_e, num_edges))
                edge_u = edge_u + rec_e
            if "node" in rec:  # relevance reaching the layer's input: rows are nodes or edges
                r = rec["node"]
                if r.shape[0] == node_v.numel():
                    r = r.index_select(0, rank)
                    pieces.setdefault(f"layer:{name}:node", []).append((node_t_r, node_v_r, r[real], n))
                elif r.shape[0] == n_union_edges:
                    pieces.setdefault(f"layer:{name}:node", []).append((edge_t, edge_e, on_edges(r), num_edges))
        pieces.setdefault("edge", []).append((edge_t, edge_e, edge_u, num_edges))
        if ea_u is not None:
            pieces.setdefault("edge_attr", []).append((edge_t, edge_e, on_edges(ea_u.detach()), num_edges))
        for key, val in _conservation(cctx, value, feat, None if ea_u is None else ea_u.detach()).items():
            conservation[key] += val
        values.append(value.detach())
        classes.append(cls)

    # What the dense [T, size, ...] results would take: every record's rows times its width.
    row_widths = [(p[0][3], p[0][2][0].numel()) for p in pieces.values() if p[0][3] is not None and p[0][2].numel()]
    dense_bytes = t_count * x.element_size() * sum(size * width for size, width in row_widths)
    dense = not sparse_output if sparse_output is not None else dense_bytes <= DENSE_OUTPUT_BYTES

    positions: dict[tuple, Tensor] = {}  # results over the same rows share one index tensor

    def place(key: str) -> Tensor | None:
        """Union rows of every chunk -> ``[T, size, ...]`` (dense, or sparse COO)."""
        if key not in pieces:
            return None
        rows_id = tuple((id(p[0]), id(p[1])) for p in pieces[key])
        if rows_id not in positions:
            positions[rows_id] = torch.stack(
                [torch.cat([p[0] for p in pieces[key]]), torch.cat([p[1] for p in pieces[key]])]
            )
        at = positions[rows_id]
        vals = torch.cat([p[2] for p in pieces[key]])
        shape = (t_count, pieces[key][0][3], *vals.shape[1:])
        if dense:
            out = vals.new_zeros(shape)
            out[at[0], at[1]] = vals
            return out
        # Rows come sorted by (target, node or edge) from the union, without repeats.
        return torch.sparse_coo_tensor(at, vals, shape, is_coalesced=True, check_invariants=False)

    records: dict[str, dict[str, Callable[[], Tensor]]] = {}
    for key in pieces:
        if key.startswith("layer:"):
            _, name, kind = key.split(":", 2)
            records.setdefault(name, {})[kind] = functools.partial(place, key)
        elif key.startswith("local:"):
            chunks = [p[2] for p in pieces[key]]
            records.setdefault(key[len("local:") :], {})["edge_local"] = functools.partial(torch.cat, chunks)
    layers = {name: LazyRecords(build) for name, build in records.items()}
    return ExplainResult(
        node_feat=place("node_feat"),
        node=place("node"),
        edge=place("edge"),
        output=torch.cat(values),
        target=None if any(c is None for c in classes) else torch.cat(classes),
        index=rows,
        edge_attr=place("edge_attr"),
        layers=layers,
        conservation=conservation,
    )
