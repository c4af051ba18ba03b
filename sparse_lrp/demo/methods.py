"""The explainers the demo compares, all run through PyG's :class:`~torch_geometric.explain.Explainer`.

* ``LRP-epsilon``, ``LRP-zplus``, ``LRP-gamma``: :class:`sparse_lrp.LRPExplainer` with
  the documented presets (see :mod:`sparse_lrp.composites`).
* ``Saliency``, ``InputXGradient``, ``IntegratedGradients``: PyG's ``CaptumExplainer``
  (needs ``captum``; skipped with a note when it is missing).
* ``GNNExplainer``: PyG's ``GNNExplainer`` with the profile's epoch budget.

Every explainer uses ``explanation_type="model"`` (explain the model's own prediction),
``node_mask_type="attributes"`` (one score per node and feature) and
``edge_mask_type="object"`` (one score per edge), on the model's raw logits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from .config import Profile

__all__ = ["METHOD_NAMES", "Method", "available_methods", "make_explainer"]


@dataclass(frozen=True)
class Method:
    """One explainer configuration.

    Attributes:
        name: the row label in the report.
        family: ``"LRP"`` or ``"baseline"``.
        signed: whether its masks carry a sign (the CSV then also reports a signed AUC).
        make: builds the ``ExplainerAlgorithm`` for a profile.
        needs: a module that must be importable (``"captum"``) or None.
    """

    name: str
    family: str
    signed: bool
    make: Callable[[Profile], object]
    needs: str | None = None


def _lrp(preset: str) -> Callable[[Profile], object]:
    def make(profile: Profile) -> object:
        from sparse_lrp import LRPExplainer

        return LRPExplainer(composite=preset)

    return make


def _captum(name: str, **kwargs) -> Callable[[Profile], object]:
    def make(profile: Profile) -> object:
        from torch_geometric.explain import CaptumExplainer

        extra = dict(kwargs)
        if name == "IntegratedGradients":
            extra["n_steps"] = profile.ig_steps
        return CaptumExplainer(name, **extra)

    return make


def _gnnexplainer(profile: Profile) -> object:
    from torch_geometric.explain import GNNExplainer

    return GNNExplainer(epochs=profile.gnnexplainer_epochs)


METHODS = [
    Method("LRP-epsilon", "LRP", True, _lrp("epsilon")),
    Method("LRP-zplus", "LRP", True, _lrp("zplus")),
    Method("LRP-gamma", "LRP", True, _lrp("gamma")),
    Method("Saliency", "baseline", False, _captum("Saliency"), needs="captum"),
    Method("InputXGradient", "baseline", True, _captum("InputXGradient"), needs="captum"),
    Method("IntegratedGradients", "baseline", True, _captum("IntegratedGradients"), needs="captum"),
    Method("GNNExplainer", "baseline", False, _gnnexplainer),
]
METHOD_NAMES = [m.name for m in METHODS]


def _has_lrp_explainer() -> bool:
    import sparse_lrp

    return hasattr(sparse_lrp, "LRPExplainer")


def available_methods(names: list[str] | None = None) -> tuple[list[Method], list[str]]:
    """The methods that can run here (optionally only ``names``), and notes on the rest."""
    chosen = [m for m in METHODS if names is None or m.name in names]
    out, notes = [], []
    for m in chosen:
        if m.needs and importlib.util.find_spec(m.needs) is None:
            notes.append(f"{m.name} skipped: `{m.needs}` is not installed (pip install {m.needs})")
            continue
        if m.family == "LRP" and not _has_lrp_explainer():
            notes.append(f"{m.name} skipped: this sparse_lrp has no LRPExplainer")
            continue
        out.append(m)
    return out, notes


def make_explainer(model, algorithm, task: str):
    """PyG's ``Explainer`` around ``model`` for a node- or graph-level classifier."""
    from torch_geometric.explain import Explainer

    return Explainer(
        model,
        algorithm=algorithm,
        explanation_type="model",
        node_mask_type="attributes",
        edge_mask_type="object",
        model_config=dict(mode="multiclass_classification", task_level=task, return_type="raw"),
    )
