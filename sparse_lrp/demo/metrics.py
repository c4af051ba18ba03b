"""How right an explanation is: ROC-AUC against ground truth, fidelity, summaries.

Conventions (the same for every method):

* Scores are importance *magnitudes*: ``|edge_mask|`` per edge and ``Σ_f |node_mask|``
  per node. Ground truth marks what the prediction rests on, not in which direction it
  pushes; signed methods (LRP, InputXGradient, IntegratedGradients) can give a motif edge
  negative relevance (evidence against the other classes' logits flows through it too),
  while Saliency and GNNExplainer are non-negative by construction, so ranking by
  magnitude is the only convention that treats all of them alike. It is also the
  convention of the GNN-explainer benchmarks. The CSV also reports the signed
  edge AUC (ranking by raw score) for the signed methods.
* The AUC is computed over the edges (and nodes) of the target's computation subgraph:
  the edges that carry a message to the target within as many hops as the model has
  message-passing layers (``k_hop_subgraph(..., directed=True)``). Outside it every
  method's score is zero by construction and the ground truth is meaningless.
* Fidelity uses a hard mask: the top-:data:`~sparse_lrp.demo.config.FIDELITY_TOP_K`
  edges of the computation subgraph by magnitude, with features unmasked.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor

__all__ = ["fidelity_topk", "mean_std", "median", "roc_auc", "topk_edge_mask"]


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """ROC-AUC of ``scores`` for binary ``labels`` by the rank (Mann–Whitney U) formula.

    ``AUC = (Σ rank(positives) − P(P+1)/2) / (P·N)`` with tied scores given their
    average rank, so ties count one half. This equals the area under the ROC curve with
    ties handled as sklearn's ``roc_auc_score`` does.

    Returns:
        The AUC in [0, 1], or NaN when ``labels`` has only one class.
    """
    s = scores.detach().reshape(-1).double().cpu()
    y = labels.detach().reshape(-1).cpu() > 0.5
    if s.numel() != y.numel():
        raise ValueError(f"scores has {s.numel()} entries but labels has {y.numel()}")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if not torch.isfinite(s).all():
        raise ValueError("scores must be finite")
    order = torch.argsort(s)
    sorted_s = s[order]
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each tie group's last member
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def topk_edge_mask(score: Tensor, candidates: Tensor, k: int) -> Tensor:
    """A hard ``{0, 1}`` edge mask: the ``k`` candidate edges with the largest ``|score|``.

    Ties are broken by edge order (stable), so the mask is deterministic.
    """
    mask = torch.zeros_like(score, dtype=torch.float)
    idx = candidates.nonzero().view(-1)
    if idx.numel() == 0 or k <= 0:
        return mask
    mag = score.detach().abs()[idx]
    order = torch.sort(mag, descending=True, stable=True).indices[: min(k, idx.numel())]
    mask[idx[order]] = 1.0
    return mask


def fidelity_topk(explainer, explanation, edge_mask: Tensor) -> tuple[float, float]:
    """PyG's fidelity+/− for ``explanation`` with its masks replaced by a hard edge mask.

    Fidelity+ is the fraction of predictions that change when the masked edges are
    removed (higher: the explanation is necessary); fidelity− the fraction that change
    when only they are kept (lower: it is sufficient). Features stay unmasked.
    """
    from torch_geometric.explain.metric import fidelity

    ex = explanation.clone()
    if "node_mask" in ex:
        del ex.node_mask
    ex.edge_mask = edge_mask.to(explanation.edge_index.device)
    return fidelity(explainer, ex)


def median(values: list[float]) -> float:
    """Median of the finite values (NaN if none)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else float("nan")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (std 0 for one value)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)
