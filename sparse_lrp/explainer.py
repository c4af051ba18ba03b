"""LRP as a PyG explainer algorithm: ``Explainer(model, algorithm=LRPExplainer(), ...)``."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.explain import Explanation
from torch_geometric.explain.algorithm import ExplainerAlgorithm
from torch_geometric.explain.config import ExplanationType, MaskType, ModelMode, ModelTaskLevel

from .composites import Composite
from .explain import explain
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
    negated when it is 0). For several indices, ``node_mask``/``edge_mask`` are the sums
    over targets (PyG's joint convention) and the per-target masks are attached as
    ``node_mask_per_target [T, ...]`` and ``edge_mask_per_target [T, E]``.

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
        if isinstance(x, dict):
            raise ValueError("LRPExplainer does not support heterogeneous graphs yet")
        cfg = self.model_config
        task = "graph" if cfg.task_level == ModelTaskLevel.graph else "node"
        tgt = target
        if cfg.mode == ModelMode.regression and isinstance(tgt, Tensor):
            # The target (the prediction, or the phenomenon's values) is the relevance at
            # the output: every output explained by its own value.
            tgt = tgt.to(x.dtype).reshape(tgt.shape[0], -1)
        if isinstance(tgt, Tensor) and tgt.dim() > 0 and index is not None:
            # PyG hands one target per output row; explain takes one per index.
            idx = torch.as_tensor(index, device=tgt.device)
            tgt = tgt[idx.nonzero().view(-1) if idx.dtype == torch.bool else idx]
        res = explain(
            model,
            x,
            edge_index,
            index=index,
            target=tgt,
            composite=self.composite,
            task_level=task,
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
            per_node = res.node_feat
            if self.explainer_config.node_mask_type == MaskType.object:
                per_node = res.node.unsqueeze(-1)
            elif self.explainer_config.node_mask_type == MaskType.common_attributes:
                per_node = res.node_feat.to_dense().sum(1, keepdim=True)
            explanation.node_mask_per_target = per_node
            if self._wants_edges() and res.edge is not None:
                explanation.edge_mask_per_target = res.edge
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


def _sum_targets(t: Tensor) -> Tensor:
    """PyG's joint mask: the sum over targets (results may be sparse for many targets)."""
    if t.is_sparse:
        return torch.sparse.sum(t, dim=0).to_dense()
    return t.sum(0)
