"""The machinery every layer handler uses: LRP through autograd.

During an explanation each supported module runs its forward through a *handler*: a
short function that rewrites the layer as linear maps (:meth:`LayerCall.linear`,
:meth:`LayerCall.edges`, :meth:`LayerCall.map`) and element-wise activations
(:meth:`LayerCall.passthrough`), glued by ordinary tensor code.

Every primitive is a ``torch.autograd.Function`` whose backward runs the LRP kernel.
What flows backwards through autograd is the *relevance ratio* ``c = R / a`` at each
activation ``a``, so ``R = a * c`` anywhere. That choice makes the glue between layers
correct without handlers of its own:

* a sum (residual ``h + conv(h)``, sum/mean pooling, a multi-use tensor) passes the
  same ``c`` to each summand, so relevance splits in proportion to the summands;
* ReLU, LeakyReLU, max pooling and other positively homogeneous maps pass ``c`` with
  their gradient, which keeps ``R`` unchanged (the Pass rule);
* indexing, reshapes and concatenation move ``c`` with the values.

A rule whose relevance is not proportional to its input (WSquare, Flat, ZBox) cannot be
written as ``x * c`` where ``x = 0``; where such a rule reads the model's own input, its
relevance goes to a side channel instead, exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..composites import Composite
from ..kernel import HALF_DTYPES, Branch, _resolve_strategy, propagate_branches, widen
from ..operators import (
    DEFAULT_MAX_MEMORY,
    DenseOperator,
    EdgeOperator,
    RowwiseOperator,
    graph_operator,
    has_nonzero,
    loop_index,
    nonzero_rows,
    rowdot,
)
from ..rules import Rule, broadcast_param

__all__ = ["Context", "LayerCall", "MapBranch", "MergedEdgesError", "pass_through"]


def _ratio(r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(r / x, lost)``: the ratio that carries ``r`` on as ``x * ratio``, and the part of ``r``
    it cannot carry, summed: where ``x == 0`` (non-proportional rules and activations give
    such inputs relevance) or where ``r / x`` overflows (``|x|`` tiny against ``|r|``).
    The ratio is 0 there."""
    q = r / x
    bad = ~torch.isfinite(q)
    return q.masked_fill_(bad, 0.0), torch.where(bad, r, 0.0).sum()


def _narrow(ctx: Context, ratio: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """A float32 ratio in a half ``dtype``; where it overflows, the relevance ``x * ratio``
    it would carry is reported lost (and where ``x == 0`` there is none to carry)."""
    out = ratio.to(dtype)
    bad = ~torch.isfinite(out)
    ctx.lost = ctx.lost + torch.where(bad & (x != 0), x * ratio, 0.0).sum()
    return out.masked_fill_(bad, 0.0)


def _padded(t: Tensor, rows: int) -> Tensor:
    """``t`` followed by zero rows up to ``rows`` rows."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _live_only(t: Tensor, rows: int | None) -> Tensor:
    """``t`` with its rows from ``rows`` on set to 0 (rows no target reaches, whose values
    the model's code may have made anything: a norm of a zero row is NaN)."""
    return t if rows is None or rows >= t.shape[0] else _padded(t[:rows], t.shape[0])


def _read_by_live(branch, x: Tensor, reach: int | None, keep: int) -> Tensor:
    """``x`` with only the rows that the first ``keep`` outputs read (others 0): the leading
    ``reach`` rows of node inputs, or the rows an edge map's edges into those outputs read
    (per-edge messages, whose rows are no nodes)."""
    if reach is not None or not isinstance(branch.op, EdgeOperator) or branch.op.is_diagonal:
        return _live_only(x, reach if reach is not None else keep if x.shape[0] == branch.op.num_out else None)
    read = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    read[branch.op.src[branch.op.dst < keep]] = True
    return torch.where(read.view(-1, *[1] * (x.dim() - 1)), x, 0.0)


def _live_weights(branch, keep: int):
    """``branch`` with the weights of edges into rows from ``keep`` on set to 0 (weights
    computed from those rows' values, as attention is, may be anything)."""
    op = branch.op
    if not isinstance(op, EdgeOperator):
        return branch
    if op.is_diagonal:  # (edge i is i -> i: the weights are per row)
        return dataclasses.replace(branch, weight=_live_only(branch.weight, keep))
    return dataclasses.replace(branch, weight=torch.where(op.dst < keep, branch.weight, 0.0))


def _match_edges(ref: Tensor, edges: Tensor) -> Tensor:
    """For each edge of ``edges``, the position of the same (source, target) edge in
    ``ref``, the k-th copy of a multi-edge matched to the k-th (``-1``: none left)."""
    if edges.shape[1] == 0 or ref.shape[1] == 0:
        return torch.full((edges.shape[1],), -1, dtype=torch.long, device=edges.device)
    width = int(max(ref.max(), edges.max())) + 1

    def ranked(ei: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        key, order = torch.sort(ei[0].long() * width + ei[1].long(), stable=True)
        copy = torch.arange(key.numel(), device=key.device) - torch.searchsorted(key, key)  # k-th copy
        return key, copy, order

    r_key, r_copy, r_order = ranked(ref)
    e_key, e_copy, e_order = ranked(edges)
    copies = int(max(r_copy.max(), e_copy.max())) + 1
    r_full, e_full = r_key * copies + r_copy, e_key * copies + e_copy  # (r_full stays sorted)
    at = torch.searchsorted(r_full, e_full).clamp(max=r_full.numel() - 1)
    found = torch.where(r_full[at] == e_full, r_order[at], -1)
    return torch.empty_like(found).index_copy_(0, e_order, found)


def _derived_key(edge_index: Tensor) -> tuple:
    """The key of a graph declared with :meth:`Context.derived_edges` (by storage, shape, strides)."""
    return ("derived_edges", edge_index.data_ptr(), tuple(edge_index.shape), edge_index.stride())


def _is_same_graph(edge_index: Tensor, ref: Tensor) -> bool:
    return edge_index is ref or (edge_index.numel() > 0 and same_tensor(edge_index, ref))


def same_tensor(a: Tensor, b: Tensor) -> bool:
    """The same values: one storage, shape and strides (an alias passed through unchanged)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


class InputView(NamedTuple):
    """A model input as a map reads it: ``of(input)`` is the map's layout, ``back``
    returns a tensor in that layout to the input's shape."""

    name: str
    of: Callable[[Tensor], Tensor]
    back: Callable[[Tensor], Tensor]
    same: bool = False


def _input_views(name: str, inp: Tensor) -> list[InputView]:
    """The layouts in which a layer may read a model input without copying it."""
    views = [InputView(name, lambda t: t, lambda r: r, same=True)]
    if inp.dim() == 2:
        views.append(InputView(name, lambda t: t.T, lambda r: r.T))
    elif inp.dim() > 2 and inp.is_contiguous():
        shape, width = inp.shape, inp.shape[-1]
        views.append(InputView(name, lambda t: t.reshape(-1, width), lambda r: r.reshape(shape)))
        views.append(InputView(name, lambda t: t.reshape(-1, width).T, lambda r: r.T.reshape(shape)))
    return views


@dataclass
class Context:
    """State of one explanation: rules, caches, and what the backward pass records."""

    composite: Composite
    strategy: str = "auto"
    max_memory: int = DEFAULT_MAX_MEMORY
    want_edges: bool = True
    inputs: dict[str, Tensor] = field(default_factory=dict)  # model inputs by key ("x", "edge_attr")
    edge_index: Tensor | None = None  # the model's edge_index: per-layer edges map onto it
    # A heterogeneous graph's edge types: (edge type, its edge_index, its first position)
    # in one numbering of all types' edges, which per-layer edges map onto instead.
    edge_types: list[tuple[Any, Tensor, int]] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    side: dict[str, Tensor] = field(default_factory=dict)
    # The side channel's share per (layer name, model input): what a layer's per-node
    # record of that input adds (the ratio flowing back through the input carries none of it).
    side_by_layer: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    absorbed: float | Tensor = 0.0  # sums over layers (0-d tensors once a layer added to them)
    lost: float | Tensor = 0.0
    outputs: list[tuple[int, Tensor]] = field(default_factory=list)
    _operators: dict[tuple, EdgeOperator] = field(default_factory=dict)
    _memo: dict[tuple, Any] = field(default_factory=dict)
    _calls: int = 0
    handled: list | None = None  # (name, module, handler) to route, once found for the model
    few_rows: bool = False  # some outputs explained, not all: maps may cut to active rows
    on_subgraphs: bool = False  # running on node targets' k-hop subgraphs, not the graph
    # On a subgraph whose border edges were merged: each edge's multiplicity (1, or how
    # many edges a merged one stands for), and the edge inputs whose values were summed.
    edge_counts: Tensor | None = None
    edge_inputs: tuple[Tensor, ...] = ()
    hops_run: int = 0  # message-passing hops of the layer calls made so far
    normalised: list = field(default_factory=list)  # (name, type, output) of softmax-like modules
    normaliser_inputs: list = field(default_factory=list)  # (output, input) of watched softmax/sigmoid calls
    traversed: set = field(default_factory=set)  # ids of modules explained as they run (not in a handler)
    watched: list | None = None  # (name, module, kind) run as they are but watched (explain._watched)
    modules: list | None = None  # the model's modules, listed once per call
    # On node targets' subgraphs: the model's whole graph (edge_index, nodes, edge_weight).
    given_graph: tuple | None = None
    in_handler: int = 0  # depth of handler calls running (their own element-wise calls are theirs)
    # Autograd nodes no feature map precedes (LayerCall.map: a composite's `first` rule).
    unweighted: set = field(default_factory=set)
    top_calls: frozenset = frozenset()  # the layer calls whose outputs make the explained output
    # Several targets in one pass: the target (0..T-1, or -1) of each row of the model's
    # input (samples, nodes), and of each graph for graph-level models. Maps whose
    # channels are those rows (SparseLinear) then report connection relevance per target.
    row_groups: Tensor | None = None
    graph_groups: Tensor | None = None
    num_groups: int = 0
    # The graph of each node of the graphs pooling layers built (their `batch`): per-layer
    # records over those nodes are split by graph as records over the input's nodes are.
    pooled_batches: list = field(default_factory=list)
    # Node targets' subgraph union with its nodes ordered by hops from their target:
    # ``live[r]`` rows lie within ``r`` hops (r = 0..k), of ``union_rows`` in all.
    live: list[int] | None = None
    union_rows: int = 0
    node_rows: int = 0  # built-in message-passing handlers running: their maps' rows are nodes
    edge_rows: int = 0  # model code running over edge rows (LayerCall.over_edges): no per-node records
    cut: bool = True  # whether maps may skip rows that reach no target
    cut_made: bool = False  # some map did
    constants: bool = False  # the model's own code adds constants (their relevance: absorbed)

    def live_rows(self, rows: int, further: int = 0) -> int | None:
        """How many leading rows of a node-level map output (or, ``further=1``, of a
        node-mixing map's input) can still reach a target; None: all of them, or rows
        that are not known to be the union's nodes.

        A layer's output at a node more hops from every target than message-passing
        hops remain after it reaches no target, so no relevance returns to it either:
        its value is never needed. The hops left are counted from the maps run so far,
        which cannot undercount what follows (a later layer runs later). Only maps of
        the built-in message-passing handlers are cut: their rows are nodes by PyG's
        contract, where a row count alone could be edges that happen to be as many."""
        live = self.live
        if live is None or not self.cut or not self.node_rows or rows != self.union_rows:
            return None
        left = len(live) - 1 - self.hops_run
        if left < 0:  # more hops ran than the subgraphs hold: the pass reruns wider
            return None
        left += further
        if left >= len(live) or live[left] >= rows:
            return None
        self.cut_made = True
        return live[left]

    def release(self) -> None:
        """Drop what the forward pass cached (layer outputs, operators, normalisations).

        Layer outputs reference the autograd graph, whose nodes reference this context:
        clearing breaks that cycle so the graph's memory is freed at once.
        """
        self.outputs.clear()
        self.normalised.clear()
        self.normaliser_inputs.clear()
        self._operators.clear()
        self._memo.clear()
        self.inputs.clear()
        self.unweighted.clear()
        self.side_by_layer.clear()

    def follows_feature_map(self, tensors: list[Tensor]) -> bool:
        """Whether a feature map (a layer's weights, not node mixing) computed part of any
        of ``tensors``: their autograd history is searched once per explanation (nodes
        found free of one are remembered)."""
        stack, seen = [t.grad_fn for t in tensors if t.grad_fn is not None], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen or fn in self.unweighted:
                continue
            if getattr(fn, "feature_map", False):
                return True
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
        self.unweighted |= seen
        return False

    def operator(self, edge_index: Tensor, num_in: int, num_out: int) -> EdgeOperator:
        """One prepared operator per graph structure, shared by all layers of a pass."""
        key = (edge_index.data_ptr(), tuple(edge_index.shape), edge_index.stride(), num_in, num_out)
        op = self._operators.get(key)
        if op is None or (op.edge_index is not edge_index and not torch.equal(op.edge_index, edge_index)):
            op = self._operators[key] = graph_operator(edge_index, num_in, num_out, within_call=True)
        return op

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Compute once per explanation: graph normalisations shared by all layers.

        Tensors in ``key`` are identified by storage, shape and strides.
        """
        norm = tuple((k.data_ptr(), tuple(k.shape), k.stride()) if isinstance(k, Tensor) else k for k in key)
        if norm not in self._memo:
            self._memo[norm] = (key, compute())  # keep the keyed tensors alive with the value
        return self._memo[norm][1]

    def input_key(self, t: Tensor) -> InputView | None:
        """Which model input ``t`` is, if any, and in which layout: the input itself (same
        storage, shape and strides), its transpose (a sparse layer's channel-major view of
        a 2-D input), or its rows flattened (``[B, S, F]`` read as ``[B * S, F]``), possibly
        transposed too."""
        for key, inp in self.inputs.items():
            if t.data_ptr() != inp.data_ptr():  # (every such layout starts where the input does)
                continue
            for view in _input_views(key, inp):
                if same_tensor(t, view.of(inp)):
                    return view
        return None

    def is_given(self, edge_index: Tensor) -> bool:
        """Whether ``edge_index`` is the model's own edge_index (not one derived from it:
        an empty one has no storage to tell, so only the object itself counts), or one
        edge type's of a heterogeneous graph."""
        if self.edge_types is not None:
            return self._edge_type(edge_index) is not None
        ref = self.edge_index
        return ref is not None and _is_same_graph(edge_index, ref)

    def _edge_type(self, edge_index: Tensor) -> tuple[Any, Tensor, int] | None:
        return next((t for t in self.edge_types if _is_same_graph(edge_index, t[1])), None)

    def num_edges(self) -> int:
        """The model's edges (all edge types' of a heterogeneous graph)."""
        if self.edge_types is not None:
            return sum(t[1].shape[1] for t in self.edge_types)
        return self.edge_index.shape[1]

    def edge_ids(self, edge_index: Tensor) -> Tensor | None:
        """Positions of ``edge_index``'s edges in the model's edge_index (``-1`` where it
        has no such edge). A graph the model derived itself (self-loops added, edges
        filtered) is matched edge by edge: the k-th copy of an edge to the k-th. On a
        heterogeneous graph an edge type's edges take their positions in the numbering
        of all types' edges; a graph derived from one is not matched (its relevance is
        reported as the layer's own, ``edge_local``). A graph declared with
        :meth:`derived_edges` takes the positions declared."""
        derived = self._memo.get(_derived_key(edge_index))
        if derived is not None:
            return derived[1]
        if self.edge_types is not None:
            found = self._edge_type(edge_index)
            if found is None:
                return None
            _, ei, start = found
            # (keyed by the count too: an edge type without edges starts where the next one does)
            key = ("type_ids", start, ei.shape[1])
            return self.memo(key, lambda: torch.arange(start, start + ei.shape[1], device=ei.device))
        ref = self.edge_index
        if ref is None:
            return None
        if self.is_given(edge_index):
            if "given_ids" not in self._memo:
                self._memo["given_ids"] = torch.arange(ref.shape[1], device=ref.device)
            return self._memo["given_ids"]
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point():
            return None
        return self.memo(("edge_ids", edge_index), lambda: _match_edges(ref, edge_index))

    def derived_edges(self, edge_index: Tensor, ids: Tensor | None) -> None:
        """Declare that ``edge_index``, a graph a layer built with its nodes renumbered (a
        pooling layer's kept edges between its kept nodes), holds the model's edges at
        positions ``ids`` (``-1``: none; None: not the model's, reported as ``edge_local``).
        :meth:`edge_ids` of it (or of an alias: same storage, shape and strides) returns
        ``ids`` for the rest of the explanation: matching its (source, target) pairs
        against the model's edge_index would find other edges, its node numbers being no
        longer the model's."""
        self._memo[_derived_key(edge_index)] = (edge_index, ids)  # (holding it: its storage is not reused)

    def record_edges(self, name: str, ids: Tensor | None, values: Tensor) -> None:
        rec = self.records.setdefault(name, {})
        if ids is None:
            rec["edge_local"] = values if "edge_local" not in rec else rec["edge_local"] + values
            return
        num_edges = self.num_edges()
        if ids is self._memo.get("given_ids"):  # (the model's own edges, in order)
            full = values
        else:
            # Edges the model added (ids -1: self-loops) land in one slot past the end,
            # dropped: cheaper than selecting the others by a mask.
            slot = self.memo(("slot", ids, num_edges), lambda: torch.where(ids >= 0, ids, num_edges))
            full = values.new_zeros(num_edges + 1).index_add_(0, slot, values)[:num_edges]
        rec["edge"] = full if "edge" not in rec else rec["edge"] + full

    def record_local_per_target(self, name: str, values: Tensor) -> None:
        """Add per-target relevance ``[T, E]`` through a layer's own connections."""
        rec = self.records.setdefault(name, {})
        rec["edge_local"] = values if "edge_local" not in rec else rec["edge_local"] + values

    def channel_groups(self, channels: int) -> Tensor | None:
        """The target of each of ``channels`` channels taken as the rows of the model's
        input (or its graphs) in order, batch-first (``[B, S, F]`` inputs: ``S`` channels per
        row), when several targets share the pass and the count allows it. The caller
        checks that no relevance sits outside the targets' channels."""
        for groups in (self.row_groups, self.graph_groups):
            if groups is not None and groups.numel() and channels % groups.numel() == 0:
                return groups.repeat_interleave(channels // groups.numel())
        return None

    def record_node(
        self, name: str, x: Tensor, ratio: Tensor, keep: int | None = None, side: Tensor | None = None
    ) -> None:
        """Add the relevance ``x * ratio`` reaching a layer's input (and ``side``, relevance
        its maps handed to the model's input directly), summed per row (only the leading
        ``keep`` rows can hold any, if given). Called in the backward pass, where nothing is
        tracked (no detach needed)."""
        if keep is not None:
            node = _padded(rowdot(x[:keep].flatten(1), ratio[:keep].flatten(1)), x.shape[0])
        elif x.dim() == 2:
            node = rowdot(x, ratio)
        elif x.dim() > 2:
            node = rowdot(x.flatten(1), ratio.flatten(1))
        else:
            node = x * ratio
        if side is not None:
            node = node + (side.flatten(1).sum(1) if side.dim() > 1 else side)
        rec = self.records.setdefault(name, {})
        rec["node"] = node if "node" not in rec else rec["node"] + node


class UnsafeCutError(Exception):
    """A map read non-finite values where cut rows hold zeros (the model's own code made
    them so, as a row norm of a zero row does): the pass reruns without cutting."""


class MergedEdgesError(Exception):
    """A layer read degrees of a subgraph with merged border edges in a way that does not
    see the merge (another edge_index, computed weights): rerun on every edge."""


@dataclass
class MapBranch:
    """One summand ``op(weight) x`` of a linear map, and how to report its relevance.

    ``edge_ids`` maps the operator's edges onto the model's edges (``-1`` for edges the
    layer added, such as self-loops); ``rows_are_edges`` marks an input whose rows are
    per-edge messages, so its relevance is edge relevance.
    """

    op: EdgeOperator | DenseOperator
    weight: Tensor
    x: Tensor
    edge_ids: Tensor | None = None
    record_edges: bool = False
    rows_are_edges: bool = False
    channels_are_rows: bool = False  # x is [in, rows]: its channels are the model's rows


# Below this many output rows, or above this share of them carrying relevance, the
# kernel runs on the whole map (restricting costs a few gathers and small sorts).
RESTRICT_MIN_ROWS = 2048
RESTRICT_MAX_SHARE = 0.25


class _Restricted:
    """A linear map cut down to the output rows that carry relevance.

    A node target's relevance reaches only its receptive field, which shrinks layer by
    layer towards the target: most rows of a graph layer's output (of a subgraph
    union's, even more) carry none. Those rows and every connection into them contribute
    nothing to any rule's result, so the kernel runs on the sub-map from the inputs
    those connections read into the active rows, and the results are scattered back:
    exact, at a cost proportional to the active part.
    """

    def __init__(self, rows: Tensor, branches: list[MapBranch], xs: list[Tensor], prefix: bool = False) -> None:
        self.rows = rows
        self.prefix = prefix  # rows are 0..len-1: slices, not gathers
        self.parts = []  # (kernel branch, input rows it reads, positions of its edges)
        for b, x in zip(branches, xs):
            if isinstance(b.op, DenseOperator):  # row b of the output reads row b of x only
                w = self.rows_of(b.weight, b.weight.shape[0]) if isinstance(b.op, RowwiseOperator) else b.weight
                self.parts.append((Branch(b.op, self.rows_of(x, x.shape[0]), w), rows, None))
                continue
            local, positions = b.op.incident(1, rows)
            if b.op.is_diagonal:  # self-loops: row i reads input i, and stays a row scaling
                inputs, src = rows, local
            else:
                inputs, src = torch.unique(b.op.src.index_select(0, positions), return_inverse=True)
            op = EdgeOperator(torch.stack([src, local]), inputs.numel(), rows.numel())
            if b.op.is_diagonal:
                op.identity_pattern()
            self.parts.append(
                (Branch(op, x.index_select(0, inputs), b.weight.index_select(0, positions)), inputs, positions)
            )

    @staticmethod
    def pays(n: int, active: int) -> bool:
        return n >= RESTRICT_MIN_ROWS and 0 < active <= RESTRICT_MAX_SHARE * n

    @classmethod
    def find(cls, ratio: Tensor, branches: list[MapBranch], xs: list[Tensor], rule: Rule) -> _Restricted | None:
        if ratio.dim() != 2 or ratio.shape[0] < RESTRICT_MIN_ROWS or rule.per_row_inputs:
            return None
        rows = nonzero_rows(ratio)
        return cls(rows, branches, xs) if cls.pays(ratio.shape[0], rows.numel()) else None

    def rows_of(self, t: Tensor | None, n: int) -> Tensor | None:
        """``t`` at the active rows if it has one row per output (a bias may broadcast)."""
        if t is None or t.dim() < 2 or t.shape[0] != n:
            return t
        return t[: self.rows.numel()] if self.prefix else t.index_select(0, self.rows)

    def expand(self, results: list[tuple[Tensor, Tensor | None]], branches, xs) -> list[tuple[Tensor, Tensor | None]]:
        out = []
        for (r_in, edge), (_, inputs, positions), b, x in zip(results, self.parts, branches, xs):
            full = r_in.new_zeros(x.shape).index_copy_(0, inputs, r_in)
            if edge is not None and isinstance(b.op, RowwiseOperator):  # (per row, as the weight)
                edge = edge.new_zeros(b.weight.shape).index_copy_(0, inputs, edge)
            if edge is not None and positions is not None:
                edge = edge.new_zeros(b.op.num_edges).index_copy_(0, positions, edge)
            out.append((full, edge))
        return out


class _MapFunction(torch.autograd.Function):
    """Forward: ``z = sum_b op_b(w_b) x_b + bias``. Backward: the LRP kernel."""

    @staticmethod
    def forward(fctx, call: LayerCall, spec: tuple, *xs: Tensor) -> Tensor:
        branches, bias, _ = spec
        strategy = _resolve_strategy(call.ctx.strategy, xs[0])  # (no CSR products in half precision)
        first_op = branches[0].op
        rows = first_op.num_out if isinstance(first_op, EdgeOperator) else xs[0].shape[0]
        keep = None if any(b.channels_are_rows for b in branches) else call.ctx.live_rows(rows)
        # Input rows that can still reach a target (node mixing reads one hop further):
        # the backward reads no other (the model's code may leave any value there).
        reach = None
        if keep is not None:
            # (per-edge messages are no node rows, however many they are: the rows their
            # edges into the live outputs read are found from the edges)
            reach = [
                None
                if b.rows_are_edges
                else call.ctx.live_rows(x.shape[0], further=1)
                if isinstance(b.op, EdgeOperator) and not b.op.is_diagonal
                else keep
                for b, x in zip(branches, xs)
            ]
        z = None
        for b, x in zip(branches, xs):
            how = strategy if isinstance(b.op, EdgeOperator) else "dense"
            if keep is None:
                part = b.op.forward(b.weight, x, how, DEFAULT_MAX_MEMORY)
            elif isinstance(b.op, EdgeOperator):
                part = b.op.forward_rows(b.weight, x, keep, how, DEFAULT_MAX_MEMORY)
            else:  # (a dense map is row by row)
                part = b.op.forward(b.weight, x[:keep], how, DEFAULT_MAX_MEMORY)
            z = part if z is None else z + part
        if bias is not None:
            z = z + (bias[:keep] if keep is not None and bias.dim() == 2 and bias.shape[0] == rows else bias)
        if keep is not None:  # rows that reach no target: zeros, never read for relevance
            z = _padded(z, rows)
        elif call.ctx.cut_made and not bool(torch.isfinite(z).all()):
            # An uncut map over rows a cut left as zeros, which the model's code turned into
            # NaN or Inf: its backward would read them.
            raise UnsafeCutError(call.name)
        fctx.call, fctx.spec, fctx.keep, fctx.reach = call, spec, keep, reach
        fctx.feature_map = any(_is_feature_map(b) for b in branches)  # (read by Context.follows_feature_map)
        fctx.save_for_backward(z, *xs)
        return z

    @staticmethod
    def backward(fctx, grad: Tensor):
        z, *xs = fctx.saved_tensors
        call: LayerCall = fctx.call
        branches, bias, first = fctx.spec
        ctx = call.ctx
        keys = [ctx.input_key(x) for x in xs]
        # `first` takes feature maps that read the model's input (or the forward's first
        # feature map), not node mixing: a propagation's weights are the graph's, not a
        # transformation of the input features.
        reads_input = first or any(k is not None and _is_feature_map(b) for b, k in zip(branches, keys))
        rule = call.rule(reads_input=reads_input)
        view = next((k for k in keys if k is not None and not k.same), None)
        if view is not None:
            # The model's input reaches this map in another layout ([F, B], or [B * S, F]):
            # input-shaped rule parameters (ZBox bounds) broadcast against the input itself,
            # then take the map's layout.
            model_input = ctx.inputs[view.name]
            rule = rule.map_inputs(lambda t: view.of(broadcast_param(t, model_input)))
        dtype = z.dtype
        half = dtype in HALF_DTYPES
        if half:  # computed in float32 (see kernel.widen), handed back narrowed
            z, grad, bias = widen(z), widen(grad), widen(bias)
            xs = [widen(x) for x in xs]
            branches = [dataclasses.replace(b, weight=widen(b.weight)) for b in branches]
        keep = fctx.keep
        if keep is None and ctx.cut_made and not bool(torch.isfinite(grad).all()):
            # An uncut map (rows per node and head, say) after a cut: the model's code made
            # NaN of rows the cut left as zeros, and its gradient carries it back to rows no
            # target reaches (at rows that reach one, every value and ratio is finite).
            grad = torch.where(torch.isfinite(grad), grad, 0.0)
        r_out = z * grad if keep is None else None  # (else over the live rows only, below)
        want_edge = ctx.want_edges and any(b.record_edges for b in branches)
        # A proportional rule hands back the ratio R_in / x itself: what flows on.
        ratio = rule.proportional
        groups = None
        if want_edge and len(branches) == 1 and branches[0].channels_are_rows and ctx.num_groups:
            groups = ctx.channel_groups(xs[0].shape[1])
        if groups is not None and has_nonzero(r_out[:, groups < 0]):  # (keep is None with groups)
            groups = None  # relevance where no target's rows are: the rows are not in order
        if groups is not None:
            # Several targets' rows are this map's channels: each channel is its own column of
            # the rule, so the kernel runs per target's channels to split connection relevance.
            results, absorbed, per_target = _by_target(ctx, branches[0], xs[0], r_out, z, bias, rule, groups, ratio)
            ctx.absorbed = ctx.absorbed + absorbed
            ctx.record_local_per_target(call.name, per_target.to(dtype))
            return (None, None, *_flowing_on(ctx, branches, xs, keys, results, ratio, dtype, record=False))
        # Relevance reaches the rows that can still reach a target (the leading `keep`
        # rows of a subgraph union), or else the ratio flowing in marks them.
        n = z.shape[0]
        if keep is not None and not rule.per_row_inputs and _Restricted.pays(n, keep):
            sub = _Restricted(torch.arange(keep, device=z.device), branches, xs, prefix=True)
        else:
            if keep is not None:  # (over the live rows' values only, and their edges' weights)
                grad = _live_only(grad, keep)
                xs = [_read_by_live(b, x, r, keep) for b, x, r in zip(branches, xs, fctx.reach)]
                branches = [_live_weights(b, keep) for b in branches]
            sub = _Restricted.find(grad, branches, xs, rule) if ctx.few_rows else None
        if r_out is None:
            r_out = z * grad if sub is None else sub.rows_of(z, n) * sub.rows_of(grad, n)
        elif sub is not None:
            r_out = sub.rows_of(r_out, n)
        results, absorbed = propagate_branches(
            [Branch(b.op, x, b.weight) for b, x in zip(branches, xs)] if sub is None else [p[0] for p in sub.parts],
            r_out,
            rule,
            bias=bias if sub is None else sub.rows_of(bias, n),
            z=z if sub is None else sub.rows_of(z, n),
            strategy=ctx.strategy,
            want_edge=want_edge,
            want_absorbed="total",
            max_memory=ctx.max_memory,
            ratio=ratio,
            keep_wide=True,  # results come back in float64 where R / d overflowed: narrowed below
        )
        if sub is not None:
            results = sub.expand(results, branches, xs)
        ctx.absorbed = ctx.absorbed + absorbed  # a tensor: read once at the end, no sync per layer
        return (None, None, *_flowing_on(ctx, branches, xs, keys, results, ratio, dtype, name=call.name))


def _flowing_on(ctx, branches, xs, keys, results, ratio, dtype, name=None, record=True) -> list[Tensor]:
    """What flows on from a map's inputs (ratios, or zeros where a side channel took the
    relevance), recording edge relevance on the way unless ``record`` is False."""
    grads = []
    for b, x, key, (r_in, edge) in zip(branches, xs, keys, results):
        if record and b.record_edges and edge is not None:
            ctx.record_edges(name, b.edge_ids, edge.to(dtype))
        if record and b.rows_are_edges and ctx.want_edges:
            flat = r_in.flatten(1)  # (also with zero rows, where reshape(0, -1) fails)
            # (messages no relevance reached may hold anything: a row the cut left as zeros
            # that the model's code made NaN, so they take no part in the sum)
            rows = rowdot(torch.where(flat != 0, x.flatten(1).to(flat.dtype), 0.0), flat) if ratio else flat.sum(1)
            ctx.record_edges(name, b.edge_ids, rows.to(dtype))
        narrow = r_in.dtype != dtype  # half precision, or a float64 recomputation
        if ratio:
            grads.append(_narrow(ctx, r_in, x, dtype) if narrow else r_in)
            continue
        if key is not None:
            # Exact side channel for input-independent rules on the model's input.
            back = key.back(r_in).to(dtype)
            ctx.side[key.name] = ctx.side.get(key.name, 0) + back
            if name is not None:
                by = (name, key.name)
                ctx.side_by_layer[by] = ctx.side_by_layer.get(by, 0) + back
            grads.append(torch.zeros(x.shape, dtype=dtype, device=x.device))
            continue
        ratio_in, lost = _ratio(r_in, x.to(r_in.dtype))
        ctx.lost = ctx.lost + lost
        grads.append(_narrow(ctx, ratio_in, x, dtype) if narrow else ratio_in)
    return grads


def _by_target(ctx, branch, x, r_out, z, bias, rule, groups, ratio):
    """Connection relevance per target of a one-branch map whose channels are the targets'
    rows: ``([(R_in, None)], absorbed, per-target connection relevance [T, E])``.

    Channels are columns of the rule on their own, so the kernel runs over a block-diagonal
    copy of the map, one block per target holding that target's channels (:func:`_blocks`),
    and each block's connection relevance is its target's. Targets of similar size share a
    pass (within 2x), which bounds the zero channels that pad a block to the widest.
    """
    counts = torch.bincount(groups[groups >= 0], minlength=ctx.num_groups)
    size_class = torch.ceil(torch.log2(counts.clamp(min=1).to(torch.float64))).long()
    per_target = x.new_zeros(ctx.num_groups, branch.op.num_edges)
    r_in, absorbed = torch.zeros_like(x), 0.0
    for size in torch.unique(size_class[counts > 0]).tolist():
        targets = ((size_class == size) & (counts > 0)).nonzero().view(-1)
        local = torch.full((ctx.num_groups,), -1, dtype=torch.long, device=x.device)
        local[targets] = torch.arange(targets.numel(), device=x.device)
        r_part, ab, edge = _blocks(
            ctx,
            branch,
            x,
            r_out,
            z,
            bias,
            rule,
            local[groups.clamp(min=0)].masked_fill(groups < 0, -1),
            targets.numel(),
            ratio,
        )
        r_in = r_in.to(r_part.dtype) + r_part
        per_target[targets] = edge.to(per_target.dtype)
        absorbed = absorbed + ab
    return [(r_in, None)], absorbed, per_target


def _blocks(ctx, branch, x, r_out, z, bias, rule, groups, t_count, ratio):
    """The kernel once over ``t_count`` blocks, block ``t`` the map over the channels with
    ``groups == t`` (padded with zero channels to the widest): ``(R_in, absorbed, [T, E])``."""
    (n_in, channels), op = x.shape, branch.op
    ch = (groups >= 0).nonzero().view(-1)
    g, order = torch.sort(groups[ch], stable=True)
    ch = ch[order]
    counts = torch.bincount(g, minlength=t_count)
    width = int(counts.max())
    slot = torch.arange(ch.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[g]

    def block(t: Tensor) -> Tensor:  # [rows, C] -> [T * rows, width]
        out = t.new_zeros(t_count, t.shape[0], width)
        out[g, :, slot] = t[:, ch].T
        return out.reshape(-1, width)

    offsets = torch.arange(t_count, device=x.device)[:, None]
    edges = torch.stack([(offsets * op.num_in + op.src).reshape(-1), (offsets * op.num_out + op.dst).reshape(-1)])

    def repeated(crow: Tensor, col: Tensor, perm: Tensor, cols: int) -> tuple[Tensor, Tensor, Tensor]:
        # The map's CSR structure once per block, shifted: no sort of the T-fold edges.
        e = op.num_edges
        starts = (crow[:-1][None] + offsets * e).reshape(-1)
        return (
            torch.cat([starts, crow.new_full((1,), t_count * e)]),
            (col[None] + offsets * cols).reshape(-1),
            (perm[None] + offsets * e).reshape(-1),
        )

    store = {"dst": repeated(*op._csr_by_dst(), op.num_in), "src": repeated(*op._csr_by_src(), op.num_out)}
    blocks = EdgeOperator(edges, t_count * op.num_in, t_count * op.num_out, store=store)
    if bias is not None:
        bias = block(bias) if bias.dim() == 2 and bias.shape[1] == channels else bias.repeat(t_count, 1)

    def param(p: Tensor) -> Tensor:  # (input-shaped rule parameters, ZBox bounds, follow their channels)
        if p.shape == x.shape:
            return block(p)
        return p.repeat(t_count, 1) if p.dim() == 2 and p.shape == (n_in, 1) else p

    (res,), absorbed = propagate_branches(
        [Branch(blocks, block(x), branch.weight.repeat(t_count))],
        block(r_out),
        rule.map_inputs(param),
        bias=bias,
        z=block(z),
        strategy=ctx.strategy,
        want_edge=True,
        want_absorbed="total",
        max_memory=ctx.max_memory,
        ratio=ratio,
        keep_wide=True,
    )
    r_in = res[0].new_zeros(x.shape)
    r_in[:, ch] = res[0].view(t_count, n_in, width)[g, :, slot].T
    return r_in, absorbed, res[1].view(t_count, op.num_edges)


def _flattened(extra: list[MapBranch] | None, bias: Tensor | None, num_out: int, lead: tuple) -> tuple:
    """A node map's ``extra`` branches and ``bias`` with their trailing dimensions ``lead``
    (heads, channels) flattened into the map's channels."""
    flat = [dataclasses.replace(b, x=b.x.reshape(b.x.shape[0], math.prod(b.x.shape[1:]))) for b in extra or []]
    if bias is not None and not (len(lead) == 1 and bias.dim() <= 1):
        # (a [C] bias broadcasts as it is: an expanded [N, C] copy would cost every later use)
        bias = torch.broadcast_to(bias, (num_out, *lead)).reshape(num_out, math.prod(lead))  # (no -1: zero rows)
    return flat, bias


# Aggregations that are weighted sums over in-edges (LayerCall.edges runs them as one edge
# map), and those that select one message per output channel (torch's scatter_reduce names).
_SUM_KINDS = ("add", "sum", "mean")
_EXTREMES = {"max": "amax", "min": "amin"}


def aggregation_kind(agg: nn.Module) -> str:
    """A PyG ``Aggregation`` object by name (``"add"``, ``"mean"``, ``"max"``, ``"multi"``...)."""
    kind = type(agg).__name__.replace("Aggregation", "").lower()
    return "add" if kind == "sum" else kind


def aggr_name(module: nn.Module) -> str:
    """A message-passing layer's aggregation by name (``"add"``, ``"mean"``, ``"max"``, ``"multi"``...)."""
    # PyG resolves aggr (a name, an Aggregation object, a list) into aggr_module.
    agg = getattr(module, "aggr_module", None)
    return str(getattr(module, "aggr", "add")) if agg is None else aggregation_kind(agg)


def softmax_weights(name: str, agg: nn.Module, msg: Tensor, index: Tensor, num_out: int, ptr=None, dim=0) -> Tensor:
    """The weights ``SoftmaxAggregation`` ``agg`` gives each row's channels within its group
    (a message's target, a node's graph): ``softmax(t · msg)``, as constants."""
    from torch_geometric.utils import softmax

    if msg.dim() != 2:
        raise ValueError(f"{name}: softmax aggregation is supported on [rows, C] inputs")
    with torch.no_grad():
        t = agg.t if not isinstance(agg.t, Tensor) else agg.t.detach().view(-1, agg.channels)
        return softmax(msg.detach() * t, index, ptr, num_out, dim)


def _is_feature_map(b: MapBranch) -> bool:
    """A map over features (dense weight, a weight per row, SparseLinear), not node mixing over edges."""
    return not isinstance(b.op, EdgeOperator) or b.channels_are_rows


class _SelectFunction(torch.autograd.Function):
    """Forward: a max/min aggregation as the selection it computes, ``y_jc = sum_e s_ec m_ec``
    over the in-edges ``e`` of ``j``, the winners' shares ``s`` fixed (1, or ``1/k`` for ``k``
    tied winners; 0 for the others). Backward: each output channel's relevance to its
    winners by their shares (winner-take-all: ratio ``s c_y``, what autograd's gradient of
    the max is), whatever the layer's rule: a selection has no weights for a rule to weigh,
    and a losing message is no connection that a rule could give a share (WSquare, Flat).
    The messages are its inputs, so their relevance is the edge relevance."""

    @staticmethod
    def forward(fctx, call, msg: Tensor, share: Tensor, dst: Tensor, num_out: int, edge_ids) -> Tensor:
        fctx.call, fctx.edge_ids = call, edge_ids
        fctx.save_for_backward(msg, share, dst)
        return msg.new_zeros(num_out, *msg.shape[1:]).scatter_add_(0, dst, msg * share)

    @staticmethod
    def backward(fctx, grad: Tensor):
        msg, share, dst = fctx.saved_tensors
        ratio = share * grad.gather(0, dst)
        ctx = fctx.call.ctx
        if ctx.want_edges:  # (a message no relevance reached may hold anything: no part in the sum)
            rel = rowdot(torch.where(ratio != 0, msg, 0.0).flatten(1), ratio.flatten(1))
            ctx.record_edges(fctx.call.name, fctx.edge_ids, rel)
        return None, ratio, None, None, None, None


class _PassFunction(torch.autograd.Function):
    """Forward: an element-wise ``y = fn(x)``. Backward: ``R_x = R_y`` (ratio ``c_y y / x``).

    ``normaliser`` marks a sigmoid: as a model's last step its input, the logit, is
    what is explained (the node's ``normaliser`` attribute tells the output search).
    """

    @staticmethod
    def forward(fctx, call, fn: Callable[[Tensor], Tensor], x: Tensor, normaliser: bool = False) -> Tensor:
        y = fn(x)
        fctx.call, fctx.normaliser = call, normaliser
        fctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(fctx, grad: Tensor):
        x, y = fctx.saved_tensors
        ratio, lost = _ratio(y * grad, x)
        ctx = fctx.call.ctx
        ctx.lost = ctx.lost + lost
        return None, None, ratio, None


def pass_through(ctx: Context, fn: Callable[[Tensor], Tensor], x: Tensor, normaliser: bool = False) -> Tensor:
    """``fn(x)`` for an element-wise ``fn`` under the Pass rule, outside any layer (the
    model's own glue code calling ``torch.tanh``, ``F.elu``...)."""
    return _PassFunction.apply(_Glue(ctx), fn, x, normaliser)


@dataclass
class _Glue:
    """What a Pass node outside a layer call needs: the explanation's context."""

    ctx: Context


class _RecordFunction(torch.autograd.Function):
    """Identity that records the relevance ``x * c`` reaching a layer's input."""

    @staticmethod
    def forward(fctx, call: LayerCall, x: Tensor) -> Tensor:
        fctx.call = call
        fctx.keep = call.ctx.live_rows(x.shape[0]) if x.dim() >= 2 else None  # (rows relevance can reach)
        # The model's input itself: the layer's maps may hand its relevance over on the side
        # channel (input-independent rules), which the record then adds.
        name = next((k for k, inp in call.ctx.inputs.items() if inp is x), None)  # (no views: a cheap test)
        fctx.side_key = None if name is None else (call.name, name)
        fctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(fctx, grad: Tensor):
        (x,) = fctx.saved_tensors
        ctx = fctx.call.ctx
        side = ctx.side_by_layer.pop(fctx.side_key, None) if fctx.side_key is not None else None
        ctx.record_node(fctx.call.name, x, grad, fctx.keep, side)
        return None, grad


def record_input(call: LayerCall, x: Tensor) -> Tensor:
    return _RecordFunction.apply(call, x)


class LayerCall:
    """One call of one module during an explanation: what a handler works with."""

    def __init__(self, ctx: Context, name: str, module: nn.Module, original: Callable) -> None:
        self.ctx = ctx
        self.name = name
        self.module = module
        self.original = original  # the module's own forward, for what a handler reuses as is
        ctx._calls += 1
        self.index = ctx._calls
        self.maps = 0  # linear maps issued: a layer with weights must use at least one

    def _hop(self) -> None:
        # Each node-mixing map reaches one edge further: a layer's hops are counted as its
        # handler runs (K-step layers: K maps), built-in and user layers alike.
        self.ctx.hops_run += 1

    def whole_graph_only(self, reads: str, remedy: str) -> None:
        """Refuse node targets' k-hop subgraphs for a layer that ``reads`` a quantity of the
        whole graph (its ``subgraph=`` needs function returns None for it, so a single
        target keeps the whole graph already; batched targets cannot)."""
        if self.ctx.on_subgraphs:
            raise ValueError(
                f"layer {self.name or '<model>'!r} ({type(self.module).__name__}) {reads}, which node "
                "targets' k-hop subgraphs do not have: batched node targets cannot be explained "
                f"exactly. Explain one target at a time (index=i uses the whole graph), or {remedy}."
            )

    def rule(self, reads_input: bool = False) -> Rule:
        return self.ctx.composite.rule(
            self.name, self.module, reads_input=reads_input, is_top=self.index in self.ctx.top_calls
        )

    def degree_weights(self, edge_index: Tensor, edge_weight: Tensor | None) -> Tensor | None:
        """The edge weights a degree normalisation must sum (``weighted_in_degrees``).

        ``edge_weight`` itself, except on a node target's subgraph whose border edges were
        merged (each merged edge stands for all edges into one border node, and carries
        their count, or their total weight when the model passes ``edge_weight``).
        """
        counts = self.ctx.edge_counts
        if counts is None:
            return edge_weight
        if not self.ctx.is_given(edge_index) or (
            edge_weight is not None and not any(same_tensor(edge_weight, t) for t in self.ctx.edge_inputs)
        ):
            raise MergedEdgesError(self.name)
        return counts.to(self.ctx.inputs["x"].dtype) if edge_weight is None else edge_weight

    # -- primitives -------------------------------------------------------------------
    def map(self, branches: list[MapBranch], bias: Tensor | None = None) -> Tensor:
        """``sum_b op_b(w_b) x_b + bias`` as one linear map under this layer's rule."""
        # The inputs travel through apply() (autograd saves and frees them); the spec keeps
        # only operators and weights, so nothing outlives the backward pass through it.
        if any(not _is_feature_map(b) and not b.op.is_diagonal for b in branches):
            self._hop()  # node mixing over edges (a self-loop branch alone reaches no further)
        self.maps += 1
        # A feature map (a dense or sparse weight, not node mixing) that no other precedes
        # takes a composite's `first` rule also where its input is not the model's own:
        # GIN's MLP after the aggregation, features sliced or cast before the first layer,
        # the first layer of each edge type of a heterogeneous model.
        first = (
            self.ctx.composite.first is not None
            and any(_is_feature_map(b) for b in branches)
            and not self.ctx.follows_feature_map([b.x for b in branches])
        )
        spec = (
            tuple(
                MapBranch(b.op, b.weight, None, b.edge_ids, b.record_edges, b.rows_are_edges, b.channels_are_rows)
                for b in branches
            ),
            None if bias is None else bias.detach(),
            first,
        )
        return _MapFunction.apply(self, spec, *[b.x for b in branches])

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``x Wᵀ + b`` over the last dimension of ``x`` (any leading shape)."""
        w = weight.detach()
        op = DenseOperator(w, source=weight)
        if x.dim() == 2:  # (a reshape to the same shape would still add an autograd node)
            return self.map([MapBranch(op, w, x)], bias)
        out = self.map([MapBranch(op, w, x.reshape(-1, x.shape[-1]))], bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def edges(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        bias: Tensor | None = None,
        edge_ids: Tensor | None = None,
        num_out: int | None = None,
        extra: list[MapBranch] | None = None,
    ) -> Tensor:
        """Node mixing ``z_j = sum_{i->j} w_e x_i (+ extra branches) + b`` over ``edge_index``.

        ``edge_ids`` maps the edges onto the model's edge_index (default: found by
        identity, else the layer's edges are reported on their own).
        """
        num_out = x.shape[0] if num_out is None else num_out
        op = self.ctx.operator(edge_index, x.shape[0], num_out)
        w = x.new_ones(edge_index.shape[1]) if edge_weight is None else edge_weight.detach()
        ids = edge_ids if edge_ids is not None else self.ctx.edge_ids(edge_index)
        lead = x.shape[1:]
        x2 = x.reshape(x.shape[0], math.prod(lead))  # (also with no rows, where -1 is unknown)
        extra, bias = _flattened(extra, bias, num_out, lead)
        return self.map([MapBranch(op, w, x2, edge_ids=ids, record_edges=True), *extra], bias).reshape(num_out, *lead)

    def aggregate(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None, **edges) -> Tensor:
        """A message-passing layer's propagation: :meth:`edges` (``bias``, ``edge_ids``,
        ``num_out``, ``extra`` as there) under the layer's own aggregation: a sum with the
        weights of :meth:`aggr_weights`, or the others of :meth:`reduce_messages`."""
        kind = aggr_name(self.module)
        if kind in _SUM_KINDS:
            num_out = edges.get("num_out")
            w = self.aggr_weights(edge_index, edge_weight, x.shape[0] if num_out is None else num_out, x)
            return self.edges(x, edge_index, w, **edges)
        if kind == "multi" and x.dim() > 2:  # (PyG concatenates along the last dimension only)
            raise ValueError(f"{self.name}: several aggregations are supported on [N, C] inputs")
        num_out = edges.get("num_out")
        num_out = x.shape[0] if num_out is None else num_out  # (0 target nodes is a count too)
        lead = x.shape[1:]
        ids = edges.get("edge_ids")
        ids = ids if ids is not None else self.ctx.edge_ids(edge_index)
        rows = torch.stack([torch.arange(edge_index.shape[1], device=x.device), edge_index[1]])
        msg = x.reshape(x.shape[0], math.prod(lead)).index_select(0, edge_index[0])
        extra, bias = _flattened(edges.get("extra"), edges.get("bias"), num_out, lead)
        out = self.reduce_messages(msg, rows, num_out, ids, extra, bias, edge_weight)
        return out.reshape(num_out, *lead[:-1], out.shape[-1])  # (several aggregations: channels concatenated)

    def reduce_messages(
        self,
        msg: Tensor,
        rows: Tensor,
        num_out: int,
        edge_ids: Tensor | None,
        extra: list[MapBranch] | None = None,
        bias: Tensor | None = None,
        weight: Tensor | None = None,
        aggregation: nn.Module | None = None,
    ) -> Tensor:
        """:meth:`messages` (each scaled by ``weight [E]``) under the layer's aggregation
        (or ``aggregation``, a PyG ``Aggregation`` the layer wraps, as PNA's scalers do).

        ``add``/``mean`` sum them with :meth:`aggr_weights`. ``softmax`` (DeeperGCN's
        ``SoftmaxAggregation``) is a sum weighted by ``softmax_j(t · msg)`` per target and
        channel: those weights are held fixed, as attention is. ``max``/``min`` are explained
        as what they compute: each output channel *is* the winning message's channel, so
        it passes all its relevance to that message, as autograd's gradient does (ties
        share it equally; winner-take-all, as LRP treats max pooling), under every rule
        (:class:`_SelectFunction`: a losing message is no connection). The selection is a
        constant of the forward pass, and the winners' sum is the layer's output exactly;
        what the layer sums with it (``extra``, ``bias``) is a map under its rule.
        Several aggregations (``MultiAggregation``, mode ``"cat"``) are each of these, their
        outputs concatenated: one map per aggregation, all reading the same messages.
        """
        agg = aggregation if aggregation is not None else getattr(self.module, "aggr_module", None)
        kind = aggregation_kind(agg) if agg is not None else aggr_name(self.module)
        if kind == "multi":
            if agg.mode != "cat" or extra or bias is not None:
                raise ValueError(
                    f"{self.name or '<model>'} ({type(self.module).__name__}): several aggregations are supported "
                    f"concatenated (mode='cat', got {agg.mode!r}), with nothing else summed into them"
                )
            parts = [
                self.reduce_messages(msg, rows, num_out, edge_ids, weight=weight, aggregation=a) for a in agg.aggrs
            ]
            return torch.cat(parts, dim=-1)
        if kind not in _EXTREMES and kind != "softmax":
            w = self.aggr_weights(rows, weight, num_out, msg, kind=kind)
            return self.messages(msg, rows, num_out, edge_ids, extra, bias, w)
        if weight is not None:  # (the layer weighs its messages, then aggregates them)
            msg = msg * weight.detach().reshape(-1, *[1] * (msg.dim() - 1))
        if kind == "softmax":
            msg = msg * softmax_weights(self.name, agg, msg, rows[1], num_out)
            return self.messages(msg, rows, num_out, edge_ids, extra, bias)
        with torch.no_grad():
            dst = rows[1].reshape(-1, *[1] * (msg.dim() - 1)).expand_as(msg)
            best = msg.new_zeros(num_out, *msg.shape[1:]).scatter_reduce(
                0, dst, msg, _EXTREMES[kind], include_self=False
            )
            won = (msg == best.gather(0, dst)).to(msg.dtype)
            share = won / torch.zeros_like(best).scatter_add_(0, dst, won).gather(0, dst)
        self._hop()
        self.maps += 1
        out = _SelectFunction.apply(self, msg, share, dst, num_out, edge_ids)
        if not extra and bias is None:
            return out
        # (what is summed with the selection, a root term or a bias, under the layer's rule)
        return self.map([self.self_loops(out, 1.0), *(extra or [])], bias)

    def aggr_weights(
        self, edge_index: Tensor, weight: Tensor | None, num_out: int, like: Tensor, kind: str | None = None
    ) -> Tensor | None:
        """Edge weights under which the layer's aggregation (or ``kind``) is a plain sum
        over in-edges.

        ``add``/``sum`` keep ``weight``; ``mean`` divides it by each target's number of
        in-edges (complete for every node a target depends on, on k-hop subgraphs too;
        computed once per graph and explanation). Other aggregations are no sums: refused
        here (:meth:`reduce_messages` takes max/min/softmax and several at once).
        """
        aggr = aggr_name(self.module) if kind is None else kind
        if aggr in ("add", "sum"):
            return weight

        def mean() -> Tensor:
            count = torch.bincount(edge_index[1], minlength=num_out).clamp(min=1).to(like.dtype)
            w = like.new_ones(edge_index.shape[1]) if weight is None else weight.detach()
            return w / count.index_select(0, edge_index[1])

        if aggr == "mean":
            return self.ctx.memo(("mean", edge_index, weight, num_out, like.dtype), mean)
        if aggr == "multi":  # (named as the layer was given it)
            aggr = getattr(self.module, "aggr", aggr)
        raise ValueError(
            f"{self.name or '<model>'} ({type(self.module).__name__}): aggr={aggr!r} is not supported: LRP "
            "needs the aggregation to be a linear map (add/sum/mean) or a selection or fixed weighting "
            "(max/min/softmax, not inside APPNP's or ChebConv's propagation)"
        )

    def root(self, x: Tensor, weight: Tensor) -> MapBranch:
        """A root term ``x Wᵀ`` to sum into node mixing (``extra=`` of :meth:`edges`,
        :meth:`aggregate`, :meth:`messages`): the feature map is a map of its own, and its
        output joins the mixing as a self-loop. So a composite's ``first`` rule takes the
        root weights where they read the model's input, and never the mixing over edges
        (one map holding both would take one rule for both)."""
        return self.self_loops(self.linear(x, weight), 1.0)

    def dense_branch(self, x: Tensor, weight: Tensor) -> MapBranch:
        """A branch ``x Wᵀ`` (rows of ``x`` are samples/nodes) to combine in :meth:`map`."""
        w = weight.detach()
        return MapBranch(DenseOperator(w, source=weight), w, x)

    def rowwise(self, x: Tensor, weight: Tensor) -> Tensor:
        """``z[r] = x[r] W[r]`` with a matrix per row, ``weight [R, in, out]`` (NNConv's
        per-edge ``Θ(e)``): a feature map under the layer's rule, ``weight`` held at its
        value (no relevance reaches what computed it). Rows that are edges run under
        :meth:`over_edges`."""
        w = weight.detach()
        return self.map([MapBranch(RowwiseOperator(w), w, x)])

    def messages(
        self,
        msg: Tensor,
        rows: Tensor,
        num_out: int,
        edge_ids: Tensor | None,
        extra: list[MapBranch] | None = None,
        bias: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> Tensor:
        """Sum per-edge messages ``msg [E, C]`` into their targets (``rows[1]``), each
        scaled by ``weight [E]`` if given.

        The messages are the inputs of this map, so their relevance is edge relevance.
        """
        op = EdgeOperator(rows, msg.shape[0], num_out)
        w = msg.new_ones(msg.shape[0]) if weight is None else weight.detach()
        branches = [MapBranch(op, w, msg, edge_ids=edge_ids, rows_are_edges=True)]
        return self.map(branches + list(extra or []), bias)

    def self_loops(self, x: Tensor, weight: float | Tensor) -> MapBranch:
        """A branch ``weight * x_i -> i`` (a root/self term) to pass as ``extra``."""
        n = x.shape[0]
        loop = loop_index(n, x.device)
        w = torch.as_tensor(weight, dtype=x.dtype, device=x.device).expand(n).contiguous()
        return MapBranch(self.ctx.operator(loop, n, n).identity_pattern(), w, x)

    @contextlib.contextmanager
    def over_edges(self) -> Iterator[None]:
        """Run model code whose rows are edges, not nodes (EdgeConv's MLP on its messages):
        its maps must not take a row count as the union's nodes and cut them, and the layers
        in it record no per-node relevance (their rows are no nodes)."""
        rows, self.ctx.node_rows = self.ctx.node_rows, 0
        self.ctx.edge_rows += 1
        try:
            yield
        finally:
            self.ctx.node_rows = rows
            self.ctx.edge_rows -= 1

    def passthrough(self, fn: Callable[[Tensor], Tensor], x: Tensor, normaliser: bool = False) -> Tensor:
        """An element-wise ``fn(x)`` under the Pass rule (``normaliser``: a sigmoid, whose
        input is explained when it is the model's last step)."""
        return _PassFunction.apply(self, fn, x, normaliser)
