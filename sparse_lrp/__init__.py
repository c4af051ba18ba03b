"""sparse_lrp: Layer-wise Relevance Propagation for sparse and graph neural networks.

Relevance moves along the non-zero connections of each layer: every edge ``i -> j``
carries the message ``w_ji x_i / z_j * R_j`` (or a rule's variant of it), and the
messages sum into input relevance. Dense, sparse and graph layers share that kernel.
"""

from . import composites, reference, rules
from .backend import available_backends, get_backend, set_backend, use_backend
from .composites import Composite
from .explain import ExplainResult, explain
from .explainer import LRPExplainer
from .kernel import edge_lrp
from .layers import register_handler
from .layers.sparse import SparseLinear
from .linear import linear_lrp
from .operators import EdgeOperator, clear_caches, prepare
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, Rule, WSquare, Z, ZBox, ZPlus

__version__ = "0.1.0"

__all__ = [
    "rules",
    "composites",
    "reference",
    "Composite",
    "explain",
    "ExplainResult",
    "LRPExplainer",
    "register_handler",
    "SparseLinear",
    "edge_lrp",
    "linear_lrp",
    "prepare",
    "EdgeOperator",
    "clear_caches",
    "Rule",
    "Epsilon",
    "Z",
    "ZPlus",
    "AlphaBeta",
    "Gamma",
    "WSquare",
    "Flat",
    "ZBox",
    "Pass",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
]
