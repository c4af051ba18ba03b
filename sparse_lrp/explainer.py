"""LRP as a PyG explainer algorithm: ``Explainer(model, algorithm=LRPExplainer(), ...)``."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.explain import Explanation, HeteroExplanation
from torch_geometric.explain.algorithm import ExplainerAlgorithm
from torch_geometric.explain.config import ExplanationType, MaskType, ModelMode, ModelTaskLevel

from .composites import Composite
from .explain import _as_index, explain
from .rules import Rule

__all__ = ["LRPExplainer"]


class LRPExplainer(ExplainerAlgorithm):
    """Layer-wise Relevance Propagation for :class:`torch_geometric.explain.Explainer`.

    Masks hold signed relevance: ``node_mask`` per feature (``attributes``), per node
    (``object``) or per feature summed over nodes (``common_attributes``), and
    ``edge_mask`` the relevance through each edge summed over layers. Relevance outside
    the explained output's computation subgraph is zero by construction.

    The explained quantity is the logit: with ``return_type`` ``"log_probs"`` or
    ``"probs"`` the output of the model's last layer, before the (log-)softmax, is
    explained. For binary classification with one output, the logit is explained with
    the sign of the target class (evidence for class 1 is positive when the target is 1,
    negated when it is 0). Binary targets are class labels also when stored as floats
    (``0.``/``1.``, as BCE-trained data holds them): they are rounded to ``0``/``1``. In
    regression mode a float target is the relevance at the output.

    For several indices, ``node_mask``/``edge_mask`` are the sums over the ``T`` targets
    (PyG's joint convention) and the per-target masks are attached with the node or edge
    axis first, where PyG looks for it (``get_explanation_subgraph()`` slices them along
    with ``node_mask``/``edge_mask``): ``node_mask_per_target`` ``[N, T, F]``
    (``attributes``), ``[N, T, 1]`` (``object``) or ``[1, T, F]`` (``common_attributes``,
    not per node: like ``node_mask`` itself, PyG takes it for a node attribute only on a
    one-node graph), and ``edge_mask_per_target`` ``[E, T]``; each is absent when its mask
    type is None. They may be sparse COO tensors (for many node targets, see
    :func:`sparse_lrp.explain`'s ``sparse_output``), which PyG's subgraph methods cannot
    index: ``.to_dense()`` them first (or pass ``sparse_output=False``). PyG's ``threshold_config`` applies to
    ``node_mask``/``edge_mask`` only: the per-target masks keep the raw relevance.

    On a heterogeneous graph (``x`` and ``edge_index`` dicts) it returns PyG's
    :class:`~torch_geometric.explain.HeteroExplanation`, with these masks per node type
    and per edge type.

    Args:
        composite: a :class:`~sparse_lrp.composites.Composite`, one rule, or a preset
            name (``"epsilon"``, ``"zplus"``, ``"gamma"``).
        **explain_kwargs: passed to :func:`sparse_lrp.explain` (``strategy``, ``hops``...).
    """

    def __init__(self, composite: Composite | Rule | str | None = "zplus", **explain_kwargs: Any) -> None:
        super().__init__()
        options = [
            name
            for name, p in inspect.signature(explain).parameters.items()
            if p.kind == p.KEYWORD_ONLY and name not in ("index", "target", "composite", "task_level", "edges")
        ]
        unknown = sorted(set(explain_kwargs) - set(options))
        if unknown:
            raise TypeError(f"LRPExplainer got unknown option(s) {unknown}; explain options: {options}")
        self.composite = composite
        self.explain_kwargs = explain_kwargs

    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        edge_index: Tensor,
        *,
        target: Tensor,
        index: int | Tensor | None = None,
        **kwargs: Any,
    ) -> Explanation:
        cfg = self.model_config
        hetero = isinstance(x, dict)  # (features per node type: masks per node and edge type)
        graph_level = cfg.task_level == ModelTaskLevel.graph
        tgt = target
        if cfg.mode == ModelMode.binary_classification and isinstance(tgt, Tensor) and tgt.is_floating_point():
            # Class labels stored as floats (0./1.): a float target would be taken as
            # relevance at the output, so they become the classes they name.
            if not bool(torch.isfinite(tgt).all()):
                raise ValueError("binary classification targets must be finite class labels 0 or 1")
            tgt = tgt.round().long()
        if cfg.mode == ModelMode.regression and isinstance(tgt, Tensor):
            # The target (the prediction, or the phenomenon's values) is the relevance at
            # the output: every output explained by its own value.
            dtype = next(iter(x.values())).dtype if hetero else x.dtype
            tgt = tgt.to(dtype).reshape(tgt.shape[0], -1)
        if cfg.mode == ModelMode.binary_classification and isinstance(tgt, Tensor) and not hetero:
            rows = x.shape[0] if not graph_level else None
            if rows and tgt.dim() == 1 and tgt.shape[0] > rows and tgt.shape[0] % rows == 0:
                raise ValueError(
                    f"binary_classification takes one logit per output row, but the targets number "
                    f"{tgt.shape[0]} for {rows} nodes (PyG flattens a [N, {tgt.shape[0] // rows}] output): for a "
                    "model with a logit per class use mode='multiclass_classification'"
                )
        if isinstance(tgt, Tensor) and tgt.dim() > 0 and index is not None:
            # PyG hands one target per output row; explain takes one per index.
            tgt = tgt[_rows(index, x, tgt, graph_level, kwargs)]
        if hetero:
            return self._hetero(model, x, edge_index, tgt, index, graph_level, kwargs)
        res = explain(
            model,
            x,
            edge_index,
            index=index,
            target=tgt,
            composite=self.composite,
            task_level="graph" if graph_level else "node",
            edges=self.explainer_config.edge_mask_type is not None,
            **self.explain_kwargs,
            **kwargs,
        )
        many = res.node_feat.dim() == x.dim() + 1
        node_feat = _sum_targets(res.node_feat) if many else res.node_feat
        edge = None if res.edge is None else (_sum_targets(res.edge) if many else res.edge)
        node_mask = self._node_mask(node_feat)
        explanation = Explanation(node_mask=node_mask, edge_mask=edge if self._wants_edges() else None)
        if many and res.node_feat.shape[0] > 1:  # (one target: the joint masks are its own)
            # Node/edge axis first: PyG tells node and edge attributes by dim 0.
            kind = self.explainer_config.node_mask_type
            if kind == MaskType.attributes:
                explanation.node_mask_per_target = _targets_second(res.node_feat)
            elif kind == MaskType.object:
                explanation.node_mask_per_target = _targets_second(res.node.unsqueeze(-1))
            elif kind == MaskType.common_attributes:
                feat = res.node_feat
                per = torch.sparse.sum(feat, dim=1).to_dense() if feat.is_sparse else feat.sum(1)
                explanation.node_mask_per_target = per.unsqueeze(0)  # [1, T, F]
            if self._wants_edges() and res.edge is not None:
                explanation.edge_mask_per_target = _targets_second(res.edge)
        return explanation

    def _hetero(self, model, x, edge_index, tgt, index, graph_level, kwargs) -> HeteroExplanation:
        """Masks per node type and per edge type (several indices: summed, per-target masks
        attached per type as on a homogeneous graph)."""
        res = explain(
            model, x, edge_index, index=index, target=tgt, composite=self.composite,
            task_level="graph" if graph_level else "node", edges=self._wants_edges(), **self.explain_kwargs, **kwargs,
        )  # fmt: skip
        first = next(iter(x))
        many = res.node_feat[first].dim() == x[first].dim() + 1
        explanation = HeteroExplanation()
        node_mask = {k: self._node_mask(_sum_targets(v) if many else v) for k, v in res.node_feat.items()}
        if self.explainer_config.node_mask_type is not None:
            explanation.set_value_dict("node_mask", node_mask)
        if self._wants_edges() and res.edge is not None:
            explanation.set_value_dict("edge_mask", {k: _sum_targets(v) if many else v for k, v in res.edge.items()})
        if many and res.output.numel() > 1:
            kind = self.explainer_config.node_mask_type
            if kind == MaskType.attributes:
                per = {k: _targets_second(v) for k, v in res.node_feat.items()}
            elif kind == MaskType.object:
                per = {k: _targets_second(v.unsqueeze(-1)) for k, v in res.node.items()}
            else:
                per = {k: v.sum(1).unsqueeze(0) for k, v in res.node_feat.items()} if kind is not None else None
            if per is not None:
                explanation.set_value_dict("node_mask_per_target", per)
            if self._wants_edges() and res.edge is not None:
                explanation.set_value_dict("edge_mask_per_target", {k: _targets_second(v) for k, v in res.edge.items()})
        return explanation

    def _wants_edges(self) -> bool:
        return self.explainer_config.edge_mask_type == MaskType.object

    def _node_mask(self, node_feat: Tensor) -> Tensor | None:
        kind = self.explainer_config.node_mask_type
        if kind is None:
            return None
        if kind == MaskType.attributes:
            return node_feat
        if kind == MaskType.object:
            return node_feat.sum(-1, keepdim=True)
        return node_feat.sum(0, keepdim=True)  # common_attributes

    def supports(self) -> bool:
        cfg = self.explainer_config
        if cfg.explanation_type not in (ExplanationType.model, ExplanationType.phenomenon):
            return False
        if cfg.edge_mask_type not in (None, MaskType.object):
            return False
        if cfg.node_mask_type not in (None, MaskType.attributes, MaskType.object, MaskType.common_attributes):
            return False
        return self.model_config.task_level in (ModelTaskLevel.node, ModelTaskLevel.graph)


def _rows(index: Any, x: Tensor, target: Tensor, graph_level: bool, kwargs: dict[str, Any]) -> Tensor:
    """The rows of PyG's per-output ``target`` that ``index`` explains, checked first
    (with :func:`sparse_lrp.explain`'s own messages) so that a bad index is named as such."""
    batch = kwargs.get("batch")
    if isinstance(x, dict):  # (a heterogeneous model's output rows: one node type's, or graphs)
        rows, what = target.shape[0], "graphs" if graph_level else "output rows"
    elif not graph_level:
        rows, what = x.shape[0], "nodes"
    elif isinstance(batch, Tensor) and batch.numel():
        rows, what = int(batch.max()) + 1, "graphs"
    else:
        rows, what = target.shape[0], "graphs"
    idx, _ = _as_index(index, rows, what)
    if target.shape[0] != rows:
        raise ValueError(
            f"target has {target.shape[0]} rows for {rows} {what}: give one target per output row "
            "(as PyG's Explainer does); index picks the explained ones"
        )
    return idx.to(target.device)


def _targets_second(t: Tensor) -> Tensor:
    """``[T, M, ...]`` -> ``[M, T, ...]``: the node or edge axis first (sparse: coalesced)."""
    t = t.transpose(0, 1)
    return t.coalesce() if t.is_sparse else t


def _sum_targets(t: Tensor) -> Tensor:
    """PyG's joint mask: the sum over targets (results may be sparse for many targets)."""
    if t.is_sparse:
        return torch.sparse.sum(t, dim=0).to_dense()
    return t.sum(0)
