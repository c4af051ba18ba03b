"""What the model's own code between layers does, read off its autograd graph.

LRP follows the layers' maps exactly and passes the code between them (sums, views,
ReLU, pooling) by the gradient of the ratio ``R / a``, which conserves relevance only
where that code is linear in the activations. These checks look at one backward node
each: whether it mixes node rows (:func:`mixes_rows`, which a k-hop subgraph cannot
hold), combines activations with no conservative rule (:func:`unconserving`), or adds
a constant (:func:`adds_constant`, a bias of the model's code). ``explain`` walks the
graph once and applies them.
"""

from __future__ import annotations

import math
import re

from torch import Tensor, nn

# Ops of the model's own code that mix rows along a tensor's first dimension: reductions
# and reorderings over it (backward nodes that save the dimension), and products that
# contract it. Over node rows (h.mean(0) added back to every node, h.flip(0), A @ h) they
# read nodes no k-hop subgraph holds.
_ALONG_DIM = frozenset(
    {
        "SumBackward1", "MeanBackward1", "AmaxBackward0", "AminBackward0", "MaxBackward0", "MinBackward0",
        "StdBackward0", "VarBackward0", "LogsumexpBackward0", "ProdBackward1", "NormBackward1",
        "CumsumBackward0", "CumprodBackward0", "SortBackward0", "TopkBackward0", "FlipBackward0",
        "RollBackward0", "SoftmaxBackward0", "LogSoftmaxBackward0", "MedianBackward1", "KthvalueBackward0",
    }
)  # fmt: skip
_ALL_DIMS = frozenset(
    {"SumBackward0", "MeanBackward0", "MaxBackward1", "MinBackward1", "ProdBackward0", "NormBackward0"}
)


# Ops of the model's own code that combine activations in no way relevance can follow
# conserved: products and quotients of two activations (h * h, h * sigmoid(h) written by
# hand, h / h.norm()), powers, and normalisations by the activations' own statistics.
_PRODUCTS = frozenset({"MulBackward0", "DivBackward0", "AddcmulBackward0", "AddcdivBackward0", "MmBackward0",
                       "BmmBackward0", "PowBackward1", "PowBackward2"})  # fmt: skip
_NORMS = frozenset({"NativeLayerNormBackward0", "NativeGroupNormBackward0", "GluBackward0"})
# A softmax inside the model (one at its end is its logits' normaliser, see _logits).
_INNER_NORMALISERS = frozenset({"SoftmaxBackward0", "LogSoftmaxBackward0"})
# ...and sums with a constant (h + 1.0, a buffer, a detached branch): a bias of the model's
# code, whose share of relevance no input receives.
_SUMS = frozenset({"AddBackward0", "SubBackward0", "RsubBackward0", "AddBackward1", "SubBackward1", "RsubBackward1"})


# Single-input reshaping nodes between a weight and the op that reads it (W.T, a view).
_RESHAPES = frozenset(
    {
        "TBackward0", "PermuteBackward0", "TransposeBackward0", "ExpandBackward0", "UnsqueezeBackward0",
        "SqueezeBackward0", "SqueezeBackward1", "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0",
        "CloneBackward0", "ToCopyBackward0", "SliceBackward0", "SelectBackward0",
    }
)  # fmt: skip


def is_weight(fn) -> bool:
    """Whether backward node ``fn`` leads, through reshapes only, to a model parameter
    (a weight the model's code applies itself: constant to the explanation)."""
    while fn is not None and type(fn).__name__ in _RESHAPES:
        fn = fn.next_functions[0][0] if fn.next_functions else None
    return type(fn).__name__ == "AccumulateGrad" and isinstance(getattr(fn, "variable", None), nn.Parameter)


def unconserving(fn) -> str | None:
    """The op of backward node ``fn`` if relevance cannot pass it conserved, else None."""
    name = type(fn).__name__
    if name in _NORMS or name in _INNER_NORMALISERS:
        return name
    if name == "NativeBatchNormBackward0":  # (batch statistics: F.batch_norm(training=True), instance_norm)
        return name if getattr(fn, "_saved_training", False) else None
    if name in _PRODUCTS:
        # (a product with a constant or a weight, h * 2 or h @ W, is linear)
        operands = [f for f, _ in fn.next_functions if f is not None and not is_weight(f)]
        return name if len(operands) >= 2 or name.startswith("Pow") else None
    if name == "PowBackward0":
        return None if float(getattr(fn, "_saved_exponent", 2.0)) == 1.0 else name
    return None


def shape_of(fn) -> tuple:
    """The shape of the tensor backward node ``fn`` produced (a leaf's own)."""
    if type(fn).__name__ == "AccumulateGrad":
        return tuple(fn.variable.shape)
    meta = getattr(fn, "_input_metadata", ())
    return tuple(meta[0].shape) if meta else ()


_GATHERS = frozenset({"IndexBackward0"})  # (rows picked by an index: h[perm], ctx[batch])
_SCATTERS = frozenset({"IndexAddBackward0", "ScatterAddBackward0", "ScatterReduceBackward0", "IndexReduceBackward0"})


def mixes_rows(fn, rows: int) -> bool:
    """Whether backward node ``fn`` mixes the rows of a tensor with ``rows`` rows, a
    pass's node rows: a reduction or reordering over a dimension that long (see
    :data:`_ALONG_DIM`), a product contracting it, a gather of rows, or a scatter of them
    into fewer rows."""
    name = type(fn).__name__
    operands = [f for f, _ in fn.next_functions if f is not None]
    if name in ("MmBackward0", "BmmBackward0", "SparseAddmmBackward0"):
        if any(is_weight(f) for f in operands):  # (h @ W: a weight is no node tensor)
            return False
        if name == "MmBackward0":
            a, b = getattr(fn, "_saved_self_sym_sizes", ()), getattr(fn, "_saved_mat2_sym_sizes", ())
        elif name == "BmmBackward0":
            # (a factor without grad is saved, one with grad shows on its own node)
            nexts = [f for f, _ in fn.next_functions]
            a, b = (
                tuple(t.shape) if isinstance(t := getattr(fn, key, None), Tensor) else shape_of(f) if f else ()
                for key, f in zip(("_saved_self", "_saved_mat2"), nexts)
            )
        else:  # (torch.sparse.mm(A, h): A's columns are h's rows)
            a, b = getattr(getattr(fn, "_saved_mat1", None), "shape", ()), getattr(fn, "_saved_mat2_sym_sizes", ())
        return len(a) >= 2 and len(b) >= 2 and a[-1] == rows and b[-2] == rows
    if name in _GATHERS:
        indices = getattr(fn, "_saved_indices", ())
        source = getattr(fn, "_saved_self_sym_sizes", ())
        out = shape_of(fn)
        picks_rows = bool(indices) and indices[0] is not None
        return picks_rows and ((len(source) > 0 and source[0] == rows) or (len(out) > 0 and out[0] == rows))
    if name == "SelectBackward0":  # (one node's row read by all: h + h[0])
        source = getattr(fn, "_saved_self_sym_sizes", ())
        dim = int(getattr(fn, "_saved_dim", 1))
        return len(source) > 1 and dim % len(source) == 0 and source[0] == rows
    if name in _SCATTERS:
        # Node rows summed into fewer rows (a pooled context): message passing sums edge
        # rows into node rows instead, and a pass's edges never number its nodes.
        dim = getattr(fn, "_saved_dim", 0)
        source = shape_of(operands[-1]) if operands else ()
        out = shape_of(fn)
        return int(dim) == 0 and len(source) > 0 and source[0] == rows and len(out) > 0 and out[0] != rows
    if name not in _ALONG_DIM and name not in _ALL_DIMS:
        return False
    sizes = getattr(fn, "_saved_self_sym_sizes", None)
    if sizes is None:
        saved = getattr(fn, "_saved_self", None)
        sizes = saved.shape if isinstance(saved, Tensor) else None
    if sizes is None:  # (a shape-keeping op: its output's shape is its input's)
        meta = getattr(fn, "_input_metadata", ())
        sizes = meta[0].shape if meta else None
    if not sizes:
        return False
    if name in _ALL_DIMS:  # (over every element: node rows among them, also flattened)
        return rows in sizes or math.prod(sizes) % rows == 0
    dims = getattr(fn, "_saved_dim", getattr(fn, "_saved_dims", None))
    if dims is None:
        return False
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    # (some nodes save a negative dim as its unsigned 64-bit pattern: -1 as 2^64 - 1)
    dims = [int(d) - 2**64 if int(d) >= 2**63 else int(d) for d in dims]
    if not dims:  # (dim=() reduces all)
        return rows in sizes or math.prod(sizes) % rows == 0
    # Over any dimension as long as the node rows (h.T.mean(1) reads them too).
    return any(sizes[d % len(sizes)] == rows for d in dims)


def adds_constant(fn) -> bool:
    """Whether backward node ``fn`` adds a constant to an activation (a Python number, a
    tensor without grad, or a weight): a bias of the model's own code."""
    if type(fn).__name__ not in _SUMS:
        return False
    nexts = [f for f, _ in fn.next_functions]
    return type(fn).__name__.endswith("1") or any(f is None or is_weight(f) for f in nexts)


_OP_NAMES = {"mm": "matmul", "bmm": "matmul", "sparseaddmm": "sparse matmul", "nativelayernorm": "layer_norm",
             "nativegroupnorm": "group_norm", "nativebatchnorm": "batch_norm"}  # fmt: skip


def op_name(node_name: str) -> str:
    """A backward node's op as the user wrote it: ``MeanBackward1`` -> ``mean``."""
    name = re.sub(r"Backward\d*$", "", node_name).lower()
    return _OP_NAMES.get(name, name)
