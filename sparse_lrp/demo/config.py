"""Run profiles of the demo (``--quick``, ``--full``, ``--smoke``) and its constants.

Kept free of heavy imports: the command line reads it to build its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["PROFILES", "DATASET_NAMES", "Profile", "FIDELITY_TOP_K"]

#: Datasets in report order (``--datasets`` takes these names).
DATASET_NAMES = ("ba_shapes", "tree_cycles", "tree_grid", "infection", "ba_2motif")

#: Fidelity uses a hard mask: the top-k edges of the target's computation subgraph by
#: importance magnitude. One k for every dataset and method (never tuned per dataset).
FIDELITY_TOP_K = 10


@dataclass(frozen=True)
class Profile:
    """How much work one run does.

    Attributes:
        name: ``"quick"``, ``"full"`` or ``"smoke"``.
        tiny: generate tiny datasets and train few epochs (tests; numbers are not meaningful).
        targets: explained test nodes (or graphs) per dataset and seed.
        seeds: how many seeds (``seed, seed+1, ...``); each regenerates the data, retrains
            the model and redraws the targets. Several give mean ± std.
        gnnexplainer_epochs: optimisation steps of GNNExplainer per explanation.
        ig_steps: integration steps of IntegratedGradients.
        figure_targets: explained targets drawn per dataset (first seed).
        max_train_epochs: cap on each dataset's training epochs (None: the dataset's own).
    """

    name: str
    tiny: bool
    targets: int
    seeds: int
    gnnexplainer_epochs: int
    ig_steps: int
    figure_targets: int
    max_train_epochs: int | None = None

    def with_overrides(self, *, targets: int | None = None, seeds: int | None = None) -> Profile:
        """A copy with the given fields replaced (None keeps the profile's value)."""
        return replace(
            self,
            targets=self.targets if targets is None else targets,
            seeds=self.seeds if seeds is None else seeds,
        )


PROFILES = {
    # Quick: finishes in about two minutes on two CPU cores, training included.
    "quick": Profile("quick", tiny=False, targets=10, seeds=1, gnnexplainer_epochs=100, ig_steps=50, figure_targets=1),
    # Full: the benchmark's usual budget (GNNExplainer's paper default of 300 epochs).
    "full": Profile("full", tiny=False, targets=50, seeds=3, gnnexplainer_epochs=300, ig_steps=50, figure_targets=3),
    # Smoke: tiny graphs, few epochs; exercises every code path in seconds (tests).
    "smoke": Profile(
        "smoke",
        tiny=True,
        targets=3,
        seeds=1,
        gnnexplainer_epochs=20,
        ig_steps=8,
        figure_targets=1,
        max_train_epochs=150,
    ),
}
