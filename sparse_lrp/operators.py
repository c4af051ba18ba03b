"""The linear operators the LRP kernel runs on.

Each operator is a linear map ``z = W x`` (``x [N_in, C] -> z [N_out, C]``, channels in
the second dimension) and offers the three primitives every rule needs, for a weight
transformed by a rule term (``g(w)``, applied to stored values only):

* ``forward(gw, f)``: ``g(W) f``, the denominators;
* ``backward(gw, f, s)``: ``g(W)ᵀ s``, the factor that multiplies ``f`` in the input
  relevance of one term (the kernel multiplies, so that terms sharing an input
  transform multiply once), and with ``want_edge`` the per-connection relevance
  ``g(w_ji) * sum_c f_ic s_jc``;
* ``transform(fn)``: the stored weights mapped by ``fn``.

:class:`EdgeOperator` is a sparse operator given as an edge list; it runs either as
sparse (CSR) matrix products or as explicit edge messages with ``scatter_add``.
:class:`DenseOperator` is a dense matrix, used by ``linear_lrp`` for dense weights;
:class:`RowwiseOperator` a dense matrix per row (per-edge weights, NNConv's ``Θ(e)``).
"""

from __future__ import annotations

import contextvars
import functools
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from .backend import scatter_add
from .rules import _ident

__all__ = [
    "EdgeOperator",
    "DenseOperator",
    "DiagonalOperator",
    "RowwiseOperator",
    "TensorKeyed",
    "has_nonzero",
    "nonzero_rows",
    "prepare",
    "rowdot",
    "sort_ints",
]

DEFAULT_MAX_MEMORY = 256 * 2**20

# torch's CPU sort of integers takes a radix sort only from 2^15 elements on; shorter
# inputs get a comparison sort, slower per element, so keys a little short of 2^15 take
# longer than 2^15 keys. Keys in that gap are padded up to the radix length
# (`python benchmarks/bench_primitives.py` prints both sorts across the gap).
_RADIX_MIN = 2**15
_PAD_FROM = 10_000
# rowdot's batched product pays from this many elements on (see rowdot).
_ROWDOT_BMM_FROM = 2**21
# A tensor's content key is read in chunks of this many values (see _content).
_CONTENT_CHUNK = 2**22


_CSR_NOTICED = False  # torch gave its once-per-process CSR notices (see _csr_tensor)


def _csr_tensor(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor over structures built here (valid by construction: no invariant checks)."""
    global _CSR_NOTICED
    if _CSR_NOTICED:  # (a warnings context per product costs more than a small product)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    with warnings.catch_warnings():
        # torch notes once per process that its CSR support is in beta (and, in some
        # versions, that we skip its invariant checks): an internal structure of ours,
        # not the user's choice, so the notices would only puzzle them. Silenced here
        # only: the user's own warning filters stay as they were.
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled", UserWarning)
        out = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    _CSR_NOTICED = True
    return out


def sort_ints(key: Tensor, bound: int) -> tuple[Tensor, Tensor]:
    """Stable sort of integer ``key [n]`` with values in ``[0, bound)``: ``(values, order)``."""
    n = key.numel()
    if key.device.type == "cpu" and _PAD_FROM <= n < _RADIX_MIN:
        # Padding with `bound` (past every key) sorts after all real keys; a small pad
        # value also keeps the radix passes few (their number follows the largest key).
        padded = torch.cat([key, key.new_full((_RADIX_MIN - n,), bound)])
        values, order = torch.sort(padded, stable=True)
        return values[:n], order[:n]
    return torch.sort(key, stable=True)


def has_nonzero(t: Tensor) -> bool:
    """Whether ``t`` has an entry other than zero (NaN counts as one)."""
    if t.numel() == 0:
        return False
    # A min/max reduction instead of `any`, which is slower on float CPU tensors
    # (`python benchmarks/bench_primitives.py` prints both).
    lo, hi = torch.aminmax(t)
    return bool((lo != 0) | (hi != 0))


def nonzero_rows(t: Tensor) -> Tensor:
    """Indices of the rows of ``t [N, C]`` with an entry other than zero (-0.0 is zero)."""
    return ((t.amax(1) > 0) | (t.amin(1) < 0)).nonzero().squeeze(1)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_c a[i, c] * b[i, c]`` for every row of ``[N, C]`` tensors."""
    if a.numel() >= _ROWDOT_BMM_FROM:
        # One small product per row (a batched matmul) instead of vecdot's full [N, C]
        # product temporary: slower for small inputs, faster from about this size on
        # (`python benchmarks/bench_primitives.py` prints both around it).
        return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(a.shape[0])
    return torch.linalg.vecdot(a, b)


def _chunk_size(num_edges: int, channels: int, itemsize: int, max_memory: int, temporaries: int) -> int:
    per_edge = max(1, channels * itemsize * temporaries)
    return max(1, min(num_edges, int(max_memory) // per_edge))


def _storage(t: Tensor) -> tuple:
    """Where ``t``'s values live and how they are laid out (changes with ``t.data = ...``)."""
    if t.layout == torch.sparse_coo:
        parts = (t._indices(), t._values())
    elif t.layout == torch.sparse_csr:
        parts = (t.crow_indices(), t.col_indices(), t.values())
    elif t.layout != torch.strided:
        return (t.layout, t.device, t.dtype, tuple(t.shape))
    else:
        return (t.data_ptr(), t.stride(), tuple(t.shape), t.dtype)
    # A sparse tensor moved by ``module.to(...)`` keeps its identity and version.
    return (t.layout, tuple(t.shape), t.dtype, *(p.data_ptr() for p in parts), *(p.shape[-1] for p in parts))


_PRIME = 2**31 - 1
# Pseudo-random weights of a chunk's positions, per dtype and device (see _content).
_POSITION_WEIGHTS: dict[tuple, Tensor] = {}


def _position_weights(n: int, like: Tensor) -> Tensor:
    """Weights of the first ``n`` positions of a chunk: pseudo-random integers below 2^31
    (a Lehmer step, squared so that they are no linear function of the position), as
    ``like``'s dtype (floats: scaled into [0, 1)). Made once per dtype and device."""
    key = (like.dtype, like.device)
    w = _POSITION_WEIGHTS.get(key)
    if w is None or w.numel() < n:
        size = min(max(n, 2 * (0 if w is None else w.numel()), 1024), _CONTENT_CHUNK)
        h = (torch.arange(1, size + 1, dtype=torch.int64, device=like.device) * 48271) % _PRIME
        h = (h * h) % _PRIME  # (products stay below 2^62: no overflow)
        w = h if not like.is_floating_point() else (h.to(torch.float64) / _PRIME).to(like.dtype)
        _POSITION_WEIGHTS[key] = w
    return w[:n]


def _content(t: Tensor) -> tuple:
    """One host read of ``t``'s (a sparse tensor's stored) values: their sum, a sum weighted
    by pseudo-random weights per position, which changes when values trade places or move
    in any pattern a linear weighting would miss (an undirected edge_index's rows swapped,
    +1/-2/+1 at equal spacings), and for floats also their sum of squares; a sparse
    tensor's indices count too (the structure)."""
    if t.layout == torch.sparse_coo:
        return (*_content(t._indices()), *_content(t._values()))
    if t.layout == torch.sparse_csr:
        return (*_content(t.crow_indices()), *_content(t.col_indices()), *_content(t.values()))
    if t.layout != torch.strided:
        return ()
    t = t.detach()
    flat = t.reshape(-1)
    if not t.is_floating_point():
        flat = flat.long()  # (integer sums wrap alike in any order and chunking: the key is exact)
    elif t.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    # In chunks (one chunk-sized temporary at most), each chunk's weights scaled by a
    # number of its own, so that chunks are told apart too.
    weighted = None
    for a in range(0, flat.numel(), _CONTENT_CHUNK):
        part = flat[a : a + _CONTENT_CHUNK]
        w = _position_weights(part.numel(), part)
        dot = (part * w).sum() if not part.is_floating_point() else torch.dot(part, w)
        if a:
            dot = dot * ((a // _CONTENT_CHUNK * 40692) % _PRIME + 1)
        weighted = dot if weighted is None else weighted + dot
    sums = [flat.sum(), flat.new_zeros(()) if weighted is None else weighted]
    if flat.is_floating_point():
        # (in its own dtype: a float64 accumulation of float32 costs 10x; dot needs no temporary)
        sums.append(torch.dot(flat, flat))
    return tuple(torch.stack(sums).tolist())


# Within one explanation (:func:`summing_once`), each tensor's content is read once,
# however many caches look it up: a large graph's edge_index costs a pass per read.
_SUMS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("sparse_lrp_sums", default=None)


def summing_once(fn: Callable) -> Callable:
    """Run ``fn`` with each tensor's content read at most once by the caches (per
    tensor state; the tensors are held until ``fn`` returns, so no id is reused)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _SUMS.get() is not None:  # (already inside one)
            return fn(*args, **kwargs)
        token = _SUMS.set({})
        try:
            return fn(*args, **kwargs)
        finally:
            _SUMS.reset(token)

    return wrapper


_MISS = object()
# Tensors the library built and keeps to itself (a normalised graph held in a cache): no
# user code edits them, so the caches keyed by them skip the content read.
# (by id, held weakly: a WeakSet would compare tensors with ==)
_OWNED: dict[int, weakref.ref] = {}


def owned(t: Tensor) -> Tensor:
    """Declare ``t`` the library's own (see :data:`_OWNED`); returns it."""
    key = id(t)

    def forget(ref: weakref.ref) -> None:
        if _OWNED.get(key) is ref:
            del _OWNED[key]

    _OWNED[key] = weakref.ref(t, forget)
    return t


def _is_owned(t: Tensor) -> bool:
    ref = _OWNED.get(id(t))
    return ref is not None and ref() is t


_LOOPS: dict[tuple, Tensor] = {}


def loop_index(n: int, device: torch.device) -> Tensor:
    """``[[0..n-1], [0..n-1]]`` (one self-loop per node), one tensor per size and device kept
    between calls and marked the library's own: operators over it find their graph-cache
    entry instead of reading a new tensor's content each call."""
    key = (n, str(device))
    loop = _LOOPS.get(key)
    if loop is None:
        if len(_LOOPS) >= 16:
            _LOOPS.clear()
        loop = _LOOPS[key] = owned(torch.arange(n, device=device).expand(2, n))
    return loop


_CACHES: weakref.WeakSet = weakref.WeakSet()  # every TensorKeyed cache (clear_caches)


def clear_caches() -> None:
    """Forget every value derived from a graph or weight: sorted graph structures,
    normalised graphs, transformed weights, checks passed. The next call pays them again
    (a first call's cost, as a benchmark of one-off explanations wants), and their memory
    is freed now rather than with the tensors they came from."""
    for cache in list(_CACHES):
        cache.clear()
    _LOOPS.clear()


class TensorKeyed:
    """Values derived from a tensor, reused while it lives and until it changes.

    Keyed by the tensor's identity, in-place ``_version`` and storage, and held by weak
    reference: a graph or weight explained call after call pays its sorts once, and a
    freed, modified or re-pointed tensor (``t.data = ...``), or another tensor that now
    sits at a freed one's address, is never served stale values. Inference tensors have
    no version counter: they are not cached. With ``content``, the key also holds the sum
    of the values (and of their squares, for floats), which sees edits that bypass the
    version counter (through ``t.data[...] = ...`` or a NumPy view, as pruning code does)
    except permutations, at one host read per lookup.
    """

    def __init__(self, limit: int, content: bool = False) -> None:
        self.limit = limit
        self.content = content
        self._entries: dict[tuple, tuple[weakref.ref, tuple, object]] = {}
        _CACHES.add(self)

    def clear(self) -> None:
        self._entries.clear()

    def _state(self, t: Tensor) -> tuple:
        state = (t._version, *_storage(t))
        if not self.content or _is_owned(t):
            return state
        memo = _SUMS.get()
        if memo is None:
            return (*state, *_content(t))
        hit = memo.get((id(t), state))
        if hit is None:
            hit = memo[(id(t), state)] = (t, _content(t))
        return (*state, *hit[1])

    def _lookup(self, t: Tensor, extra: tuple):
        if t.is_inference():
            return _MISS
        key = (id(t), *extra)
        hit = self._entries.get(key)
        if hit is not None and hit[0]() is t and hit[1] == self._state(t):
            # (most recently used last: the entry evicted when full is the stalest, so a
            # graph explained call after call outlives the graphs layers derive per call)
            self._entries[key] = self._entries.pop(key)
            return hit[2]
        return _MISS

    def peek(self, t: Tensor, *extra):
        """The cached value for ``t`` (and ``extra``), or None."""
        hit = self._lookup(t, extra)
        return None if hit is _MISS else hit

    def get(self, t: Tensor, build, *extra):
        if t.is_inference():
            return build()
        hit = self._lookup(t, extra)
        if hit is not _MISS:  # (a cached None is a hit: a check that passed returns None)
            return hit
        for k in [k for k, v in self._entries.items() if v[0]() is None]:
            del self._entries[k]
        value = build()
        key = (id(t), *extra)
        self._entries.pop(key, None)
        if len(self._entries) >= self.limit:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (weakref.ref(t, functools.partial(self._drop, key)), self._state(t), value)
        return value

    def _drop(self, key: tuple, ref: weakref.ref) -> None:
        # The tensor was freed: its values go with it (unless a newer entry took the key).
        entry = self._entries.get(key)
        if entry is not None and entry[0] is ref:
            del self._entries[key]


# Each graph's CSR structures (its edges grouped by target and by source), kept while
# the graph lives: explaining node after node on one graph (as PyG's Explainer does)
# sorts its edges once. The entries hold the structures only (new tensors), so a graph
# the caller drops is freed, and its entry with it.
GRAPH_STRUCTURES = TensorKeyed(8, content=True)


def graph_operator(edge_index: Tensor, num_in: int, num_out: int, within_call: bool = False) -> EdgeOperator:
    """An :class:`EdgeOperator` over ``edge_index`` sharing its graph's cached structures
    (``within_call``: used within one explanation only, see :class:`EdgeOperator`)."""
    store = GRAPH_STRUCTURES.get(edge_index, dict, num_in, num_out)
    return EdgeOperator(edge_index, num_in, num_out, store=store, within_call=within_call)


class EdgeOperator:
    """A sparse operator ``z_j = sum_{e=(i->j)} w_e x_i`` given by ``edge_index [2, E]``.

    Row 0 of ``edge_index`` is the input (source) index ``i``, row 1 the output
    (target) index ``j`` (PyG's source-to-target convention). Each edge is its own
    connection: multi-edges stay separate messages.

    The CSR index structures for ``W`` and ``Wᵀ`` are built lazily on first use and then
    reused, so preparing an operator once (:func:`prepare`) and passing it to
    :func:`~sparse_lrp.edge_lrp` for many layers or targets pays the sort only once.
    """

    def __init__(
        self, edge_index: Tensor, num_in: int, num_out: int, store: dict | None = None, within_call: bool = False
    ) -> None:
        # `store` keeps the built CSR structures for other operators over the same graph;
        # they are new tensors, so a cache holding it does not hold the graph alive.
        # An operator prepared by a user may see a weight again after an edit that bypasses
        # its version counter (`w.data[...] = ...`): its caches then check the content too.
        # One used `within_call` (an explanation's) sees its weights for that call only.
        self._store = store if store is not None else {}
        self.edge_index = edge_index
        self.src = edge_index[0]
        self.dst = edge_index[1]
        self.num_in = int(num_in)
        self.num_out = int(num_out)
        self.num_edges = int(edge_index.shape[1])
        self._by_dst: tuple[Tensor, Tensor, Tensor] | None = None
        self._by_src: tuple[Tensor, Tensor, Tensor] | None = None
        self._perm = TensorKeyed(1, content=not within_call)  # the last weight seen, in both CSR orders
        # (bounded: weights change per layer, attention, or call)
        self._fused = TensorKeyed(4, content=not within_call)
        self._diagonal = False  # edge e is e -> e (identity_pattern): products are row scalings
        self._prefix_edges: dict[int, int] = {}  # edges into the first `rows` outputs, by rows
        self._ones: dict[torch.dtype, Tensor] = {}  # the pattern's values for sampled products
        self._version = edge_index._version if not edge_index.is_inference() else None

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def edited(self) -> bool:
        """Whether ``edge_index`` was changed in place since this operator was made (its
        version counter moved; an edit through ``.data`` does not move it)."""
        return self._version is not None and self.edge_index._version != self._version

    # -- CSR structures -------------------------------------------------------------
    @staticmethod
    def _csr_index(rows: Tensor, cols: Tensor, num_rows: int, num_cols: int) -> tuple[Tensor, Tensor, Tensor]:
        # A stable sort keeps duplicates (multi-edges) in input order. On CPU, sort by row
        # only: MKL's products need rows grouped, not columns ordered within a row, and
        # a stable radix sort on a narrow int32 row key needs fewer passes than one on a
        # (row, col) key. cuSPARSE assumes canonical CSR, so CUDA gets the full key.
        if rows.device.type == "cpu":
            key, bound = (rows.to(torch.int32) if num_rows < 2**31 else rows), num_rows
        else:
            key, bound = rows.to(torch.int64) * num_cols + cols.to(torch.int64), num_rows * num_cols
        # Edges often come grouped already (a coalesced edge_index by source, edges gathered
        # per node): one comparison pass then replaces the sort.
        if key.numel() < 2 or bool((key[1:] >= key[:-1]).all()):
            perm = torch.arange(key.numel(), device=key.device)
        else:
            perm = sort_ints(key, bound)[1]
        counts = torch.bincount(rows, minlength=num_rows)
        crow = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(counts, 0, out=crow[1:])
        return crow, cols.index_select(0, perm).to(torch.int64), perm

    def permuted(self, weight: Tensor, end: int) -> Tensor:
        """``weight`` in CSR order of ``W`` (``end=1``: grouped by target) or of ``Wᵀ``
        (``end=0``: by source); each order cached for the last weight seen, once used."""
        orders = self._perm.get(weight, dict)
        if end not in orders:
            orders[end] = weight.index_select(0, (self._csr_by_dst() if end == 1 else self._csr_by_src())[2])
        return orders[end]

    def grouped(self, end: int) -> tuple[Tensor, Tensor]:
        """``(start, order)``: edges ordered by their source (``end=0``) or target (1)
        node, and where each node's run begins (``start [N + 1]``): the CSR structure."""
        crow, _, perm = self._csr_by_src() if end == 0 else self._csr_by_dst()
        return crow, perm

    def in_degree(self, nodes: Tensor) -> Tensor:
        """How many edges end at each of ``nodes``."""
        start = self.grouped(1)[0]
        return start.index_select(0, nodes + 1) - start.index_select(0, nodes)

    def incident(self, end: int, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """The edges whose source (``end=0``) or target (1) is one of ``nodes``.

        Returns ``(owner, positions)``: for each such edge, which entry of ``nodes`` it
        belongs to and its position in ``edge_index``, grouped by entry in CSR order.
        """
        start, order = self.grouped(end)
        first = start.index_select(0, nodes)
        counts = start.index_select(0, nodes + 1) - first
        owner = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts)
        # Each edge's offset inside its node's run: its rank minus where the run starts.
        offset = torch.arange(owner.numel(), device=nodes.device) - (torch.cumsum(counts, 0) - counts).index_select(
            0, owner
        )
        return owner, order.index_select(0, first.index_select(0, owner) + offset)

    @property
    def is_diagonal(self) -> bool:
        """Declared ``i -> i`` in order (:meth:`identity_pattern`)."""
        return self._diagonal

    def identity_pattern(self) -> EdgeOperator:
        """Declare the edges to be ``i -> i`` in order: their CSR needs no sort."""
        if self._by_dst is None:
            ids = torch.arange(self.num_in, device=self.device)
            self._by_dst = self._by_src = (torch.arange(self.num_in + 1, device=self.device), ids, ids)
        self._diagonal = True
        return self

    def build(self) -> EdgeOperator:
        """Build both CSR index structures now (otherwise built on first use)."""
        self._csr_by_dst()
        self._csr_by_src()
        return self

    def _csr_by_dst(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._by_dst is None:
            if "dst" not in self._store:
                self._store["dst"] = self._csr_index(self.dst, self.src, self.num_out, self.num_in)
            self._by_dst = self._store["dst"]
        return self._by_dst

    def _csr_by_src(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._by_src is None:
            if "src" not in self._store:
                self._store["src"] = self._csr_index(self.src, self.dst, self.num_in, self.num_out)
            self._by_src = self._store["src"]
        return self._by_src

    def csr(self, values: Tensor | EdgeValues) -> Tensor:
        """``W`` as a ``[N_out, N_in]`` CSR tensor with per-edge ``values [E]``."""
        crow, col, perm = self._csr_by_dst()
        vals = values.by_dst if isinstance(values, EdgeValues) else values.index_select(0, perm)
        return _csr_tensor(crow, col, vals, (self.num_out, self.num_in))

    def csr_t(self, values: Tensor | EdgeValues) -> Tensor:
        """``Wᵀ`` as a ``[N_in, N_out]`` CSR tensor with per-edge ``values [E]``."""
        crow, col, perm = self._csr_by_src()
        vals = values.by_src if isinstance(values, EdgeValues) else values.index_select(0, perm)
        return _csr_tensor(crow, col, vals, (self.num_in, self.num_out))

    # -- primitives -----------------------------------------------------------------
    def transform(self, weight: Tensor, fn) -> EdgeValues:
        return EdgeValues(self, weight, fn)

    def forward_rows(self, gw: EdgeValues | Tensor, f: Tensor, rows: int, strategy: str, max_memory: int) -> Tensor:
        """The first ``rows`` outputs of :meth:`forward`, from the edges into them only."""
        w = gw.edge if isinstance(gw, EdgeValues) else gw
        if self._diagonal:
            return f[:rows] * w[:rows, None]
        if strategy != "spmm":
            return self.forward(gw, f, strategy, max_memory)[:rows]
        crow, col, perm = self._csr_by_dst()  # (rows in order: a prefix of rows is a prefix of edges)
        nnz = self._prefix_edges.get(rows)
        if nnz is None:  # (one host read per prefix: every layer of a pass cuts at the same few)
            nnz = self._prefix_edges[rows] = int(crow[rows])
        vals = gw.by_dst[:nnz] if isinstance(gw, EdgeValues) else w.index_select(0, perm[:nnz])
        return _csr_tensor(crow[: rows + 1], col[:nnz], vals, (rows, self.num_in)) @ f

    def forward(self, gw: EdgeValues | Tensor, f: Tensor, strategy: str, max_memory: int) -> Tensor:
        if self._diagonal:  # a self-loop term: scaling rows beats any sparse product
            return f * (gw.edge if isinstance(gw, EdgeValues) else gw)[:, None]
        if strategy == "spmm":
            return self.csr(gw) @ f
        out = f.new_zeros(self.num_out, f.shape[1])
        w = gw.edge if isinstance(gw, EdgeValues) else gw
        step = _chunk_size(self.num_edges, f.shape[1], f.element_size(), max_memory, 2)
        for a in range(0, self.num_edges, step):
            msg = f.index_select(0, self.src[a : a + step])
            msg *= w[a : a + step, None]
            scatter_add(msg, self.dst[a : a + step], self.num_out, out=out)
            del msg  # free before the next chunk allocates: at most 2 chunk tensors live
        return out

    def forward_t(self, w: Tensor, s: Tensor, max_memory: int) -> Tensor:
        """``Wᵀ s`` as edge messages ``w_e s_j`` summed into the inputs, in edge chunks."""
        out = s.new_zeros(self.num_in, s.shape[1])
        step = _chunk_size(self.num_edges, s.shape[1], s.element_size(), max_memory, 2)
        for a in range(0, self.num_edges, step):
            msg = s.index_select(0, self.dst[a : a + step])
            msg *= w[a : a + step, None]
            scatter_add(msg, self.src[a : a + step], self.num_in, out=out)
            del msg
        return out

    def backward(
        self, gw: EdgeValues, f: Tensor, s: Tensor, strategy: str, want_edge: bool, max_memory: int
    ) -> tuple[Tensor, Tensor | None]:
        if self._diagonal:
            w = gw.edge
            return s * w[:, None], (w * rowdot(f, s) if want_edge else None)
        if strategy == "spmm":
            return self.csr_t(gw) @ s, (gw.edge * self.sampled_dot(f, s, max_memory) if want_edge else None)
        # The literal message-passing view: message_e = f(x_i) g(w_e) s_j on every edge.
        # f(x_i) is constant over the edges that leave i, so the node part sums
        # g(w_e) s_j alone; the edge part multiplies the same chunk by f(x_i) afterwards.
        w = gw.edge
        if not want_edge:
            return self.forward_t(w, s, max_memory), None
        c = s.new_zeros(self.num_in, s.shape[1])
        edge = w.new_zeros(self.num_edges)
        step = _chunk_size(self.num_edges, s.shape[1], s.element_size(), max_memory, 3)
        for a in range(0, self.num_edges, step):
            src = self.src[a : a + step]
            msg = s.index_select(0, self.dst[a : a + step])
            msg *= w[a : a + step, None]
            scatter_add(msg, src, self.num_in, out=c)
            msg *= f.index_select(0, src)
            torch.sum(msg, 1, out=edge[a : a + step])
            del msg  # free before the next chunk allocates: at most 3 chunk tensors live
        return c, edge

    def sampled_dot(self, f: Tensor, s: Tensor, max_memory: int = DEFAULT_MAX_MEMORY) -> Tensor:
        """:meth:`edge_dot` as a sampled dense-dense product (SDDMM) on the CSR pattern."""
        crow, col, perm = self._csr_by_dst()
        ones = self._ones.get(f.dtype)
        if ones is None:  # (every layer over this operator samples the same pattern)
            ones = self._ones[f.dtype] = f.new_ones(self.num_edges)
        pattern = _csr_tensor(crow, col, ones, (self.num_out, self.num_in))
        try:
            vals = torch.sparse.sampled_addmm(pattern, s, f.T, beta=0.0).values()
        except (RuntimeError, NotImplementedError):  # dtype/device without an SDDMM kernel
            return self.edge_dot(f, s, max_memory)
        out = torch.empty_like(vals)
        out.index_copy_(0, perm, vals)
        return out

    def edge_dot(self, f: Tensor, s: Tensor, max_memory: int = DEFAULT_MAX_MEMORY) -> Tensor:
        """``sum_c f[src_e, c] * s[dst_e, c]`` for every edge, in edge chunks (never ``[E, C]``)."""
        out = f.new_empty(self.num_edges)
        step = _chunk_size(self.num_edges, f.shape[1], f.element_size(), max_memory, 2)
        for a in range(0, self.num_edges, step):
            prod = f.index_select(0, self.src[a : a + step])
            prod *= s.index_select(0, self.dst[a : a + step])
            torch.sum(prod, 1, out=out[a : a + step])
            del prod
        return out


class FusedTerms:
    """Several terms ``f_k(x) g_k(w)`` whose weights never share an edge, as ONE product.

    ``w⁺`` and ``w⁻`` (ZPlus, AlphaBeta) split the edges between them, so
    ``sum_k g_k(W) f_k = [g_1(W) | g_2(W)] [f_1; f_2]``: one sparse matrix with E stored
    entries over the stacked inputs, instead of K products over E entries each. Edge
    ``e`` of term ``t_e`` becomes column ``src + t_e N_in``. The structures are derived
    from the operator's CSR without sorting and cached per operator, weight and terms.
    """

    def __init__(self, op: EdgeOperator, fs: list[Tensor], values: list[EdgeValues]) -> None:
        self.op, self.fs, self.k = op, fs, len(fs)
        fns = tuple(v.fn for v in values)
        cached = op._fused.get(values[0].weight, lambda: self._structure(op, [v.edge for v in values]), fns)
        self.fwd, self.bwd, self.values, self.term = cached

    @functools.cached_property
    def stacked(self) -> Tensor:
        """The inputs stacked ``[f_1; f_2; ...]``: built when a forward or edge product needs it."""
        return torch.cat(self.fs)

    @staticmethod
    def applies(op: EdgeOperator, values: list[EdgeValues]) -> bool:
        """Whether the terms' weights split the edges (checked once per weight)."""
        w = values[0].weight
        if any(v.weight is not w for v in values):
            return False
        if op._fused.peek(w, tuple(v.fn for v in values)) is not None:
            return True
        support = sum((v.edge != 0).to(torch.int8) for v in values)
        return bool((support <= 1).all())

    @staticmethod
    def _structure(op: EdgeOperator, vals: list[Tensor]):
        k_terms, n_in = len(vals), op.num_in
        term = torch.zeros(op.num_edges, dtype=torch.int64, device=vals[0].device)
        for k in range(1, k_terms):
            term[vals[k] != 0] = k
        values = torch.stack(vals).sum(0)
        # W: rows stay, columns shift by term; keep columns sorted within rows by placing
        # earlier terms' entries first (a counting step per term instead of a sort).
        crow, col, perm = op._csr_by_dst()
        t = term.index_select(0, perm)
        row = torch.repeat_interleave(torch.arange(op.num_out, device=crow.device), crow[1:] - crow[:-1])
        slot = crow[row].clone()
        for k in range(k_terms):
            mask = t == k
            before = torch.cat([crow.new_zeros(1), torch.cumsum(mask, 0)])
            at_start = before[crow[:-1]]
            count = before[crow[1:]] - at_start
            slot += torch.where(mask, before[:-1] - at_start[row], torch.where(t > k, count[row], 0))
        perm_f = torch.empty_like(perm)
        perm_f[slot] = perm
        col_f = torch.empty_like(col)
        col_f[slot] = col + n_in * t
        fwd = (crow, col_f, perm_f, values.index_select(0, perm_f))
        # Wᵀ: rows src + t N_in; a stable partition of the Wᵀ order by term keeps them sorted.
        _, _, perm_t = op._csr_by_src()
        t = term.index_select(0, perm_t)
        order = torch.cat([perm_t[t == k] for k in range(k_terms)])
        counts = torch.bincount(
            op.src.index_select(0, order) + n_in * term.index_select(0, order), minlength=k_terms * n_in
        )
        crow_t = torch.zeros(k_terms * n_in + 1, dtype=torch.int64, device=crow.device)
        torch.cumsum(counts, 0, out=crow_t[1:])
        bwd = (crow_t, op.dst.index_select(0, order).to(torch.int64), values.index_select(0, order))
        return fwd, bwd, values, term

    def forward(self) -> Tensor:
        op = self.op
        crow, col, _, vals = self.fwd
        a = _csr_tensor(crow, col, vals, (op.num_out, self.k * op.num_in))
        return a @ self.stacked

    def backward(self, s: Tensor, want_edge: bool) -> tuple[list[Tensor], Tensor | None]:
        """``[g_k(W)ᵀ s for each term k]`` (from one product) and the edge relevance."""
        op, n_in = self.op, self.op.num_in
        crow_t, col_t, vals_t = self.bwd
        at = _csr_tensor(crow_t, col_t, vals_t, (self.k * n_in, op.num_out))
        out = at @ s
        parts = [out[k * n_in : (k + 1) * n_in] for k in range(self.k)]
        edge = None
        if want_edge:
            crow, col, perm, _ = self.fwd
            pattern = _csr_tensor(crow, col, s.new_ones(op.num_edges), (op.num_out, self.k * n_in))
            try:
                vals = torch.sparse.sampled_addmm(pattern, s, self.stacked.T, beta=0.0).values()
                edge = torch.empty_like(vals)
                edge.index_copy_(0, perm, vals)
            except (RuntimeError, NotImplementedError):
                edge = sum(op.edge_dot(f, s) * (self.term == k) for k, f in enumerate(self.fs))
            edge = edge * self.values
        return parts, edge


class EdgeValues:
    """A rule's transform ``g(w)`` of an operator's edge weights, in the orders it is used.

    Element-wise transforms commute with permutations, so the weights are put in CSR
    order once per operator and weight tensor, and each term transforms those directly.
    """

    def __init__(self, op: EdgeOperator, weight: Tensor, fn) -> None:
        self.op, self.weight, self.fn = op, weight, fn

    @functools.cached_property
    def edge(self) -> Tensor:
        return self.fn(self.weight)

    @property
    def by_dst(self) -> Tensor:
        return self.fn(self.op.permuted(self.weight, 1))

    @property
    def by_src(self) -> Tensor:
        return self.fn(self.op.permuted(self.weight, 0))


# Transformed layer weights, weakly keyed by the parameter (a weight per entry: bounded).
_TRANSFORMS = TensorKeyed(32, content=True)
# Below this size a transform (one to three element-wise ops) is redone: the cache's own
# look-up reads the weight's content (two reductions and a host read), as many operations,
# whose fixed cost per operation dominates small tensors.
_TRANSFORMS_FROM = 2**16


class DenseOperator:
    """A dense ``W [out, in]`` applied to rows: ``z = x Wᵀ`` for ``x [B, in]``.

    Row layout (samples in rows, as ``torch.nn.Linear``), so ``x``, ``relevance`` and a
    ZBox bound keep the user's layout; the primitives mirror :class:`EdgeOperator`'s.
    """

    def __init__(self, weight: Tensor, source: Tensor | None = None) -> None:
        self.weight = weight
        self.source = source
        self.num_out, self.num_in = weight.shape

    def transform(self, weight: Tensor, fn) -> Tensor:
        """``fn(weight)``; a layer's own weight (``source``, its parameter) keeps its
        transforms (w⁺, w + γw⁺, ...) until it changes, so explaining call after call
        pays them once."""
        if fn is _ident:  # (Epsilon's weights as they are: nothing to keep)
            return weight
        if self.source is None or weight is not self.weight or weight.numel() < _TRANSFORMS_FROM:
            return fn(weight)
        src = self.source
        return _TRANSFORMS.get(src, lambda: fn(weight), fn)

    def forward(self, gw: Tensor, f: Tensor, strategy: str, max_memory: int) -> Tensor:
        return f @ gw.T

    def backward(
        self, gw: Tensor, f: Tensor, s: Tensor, strategy: str, want_edge: bool, max_memory: int
    ) -> tuple[Tensor, Tensor | None]:
        # Connection relevance of a dense map is the full [out, in] matrix, summed over rows.
        return s @ gw, (gw * (s.T @ f) if want_edge else None)


class DiagonalOperator(DenseOperator):
    """A per-channel scaling ``z = x * w`` for ``w [C]`` (eval-mode batch norm): the
    dense map ``diag(w)`` with its ``C`` stored connections only (``C`` products per row
    where ``diag(w)`` costs ``C²``; Flat counts one connection per output)."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.source = None
        self.num_out = self.num_in = weight.shape[0]

    def forward(self, gw: Tensor, f: Tensor, strategy: str, max_memory: int) -> Tensor:
        return f * gw

    def backward(
        self, gw: Tensor, f: Tensor, s: Tensor, strategy: str, want_edge: bool, max_memory: int
    ) -> tuple[Tensor, Tensor | None]:
        return s * gw, (gw * torch.linalg.vecdot(s.T, f.T) if want_edge else None)


class RowwiseOperator(DenseOperator):
    """One dense map per row: ``z[r] = x[r] W[r]`` for ``W [R, in, out]`` (NNConv's per-edge
    ``Θ(e)``, held at its forward value). Row ``r`` of the output reads row ``r`` of the
    input only, through its own matrix: a feature map, as :class:`DenseOperator` (whose
    primitives these mirror row by row), never node mixing. Its connection relevance is
    per row, ``[R, in, out]`` like the weight."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.source = None  # (computed per call: no transforms to keep)
        self.num_in, self.num_out = weight.shape[1:]

    def forward(self, gw: Tensor, f: Tensor, strategy: str, max_memory: int) -> Tensor:
        # (f may be the leading rows only, as a map cut to its live rows reads them)
        return torch.bmm(f.unsqueeze(1), gw[: f.shape[0]]).squeeze(1)

    def backward(
        self, gw: Tensor, f: Tensor, s: Tensor, strategy: str, want_edge: bool, max_memory: int
    ) -> tuple[Tensor, Tensor | None]:
        c = torch.bmm(gw, s.unsqueeze(2)).squeeze(2)
        return c, (gw * f.unsqueeze(2) * s.unsqueeze(1) if want_edge else None)


def prepare(edge_index: Tensor, num_in: int | None = None, num_out: int | None = None) -> EdgeOperator:
    """Prepare an edge list once for repeated :func:`~sparse_lrp.edge_lrp` calls.

    Builds the CSR index structures of ``W`` and ``Wᵀ`` (a sort and a count, the
    expensive part of a sparse product on an unsorted ``edge_index``). Edge weights are
    not part of the operator, so one prepared graph serves every layer and rule.

    Args:
        edge_index: ``[2, E]`` integer tensor, row 0 the inputs, row 1 the outputs.
        num_in: number of inputs; defaults to ``edge_index.max() + 1`` (a graph's nodes).
        num_out: number of outputs; defaults to ``num_in`` (square, as for a graph).
    """
    from .validation import check_edge_index

    if num_in is None:
        num_in = int(edge_index.max()) + 1 if edge_index.numel() else 0
    if num_out is None:
        num_out = num_in
    check_edge_index(edge_index, num_in, num_out)
    return EdgeOperator(edge_index, num_in, num_out).build()
