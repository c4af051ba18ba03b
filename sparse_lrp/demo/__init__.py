"""``sparse-lrp demo``: explain trained GNNs on generated ground-truth benchmarks.

The demo generates the classic explainability benchmarks offline (BA-Shapes, Tree-Cycles,
Tree-Grid, Infection, BA-2Motif), trains a small GNN on each, explains test nodes or
graphs with sparse_lrp's presets and with PyG's explainers (Saliency, InputXGradient,
IntegratedGradients through Captum, GNNExplainer) through the same
:class:`torch_geometric.explain.Explainer` API, and reports how well each explanation
recovers the known ground truth (edge/node ROC-AUC), its fidelity and its cost, as a
table (text, CSV, Markdown) and as figures.

Modules: :mod:`.data` (the generators), :mod:`.models` (models, training, weight cache),
:mod:`.methods` (the explainers), :mod:`.metrics` (ROC-AUC, fidelity), :mod:`.runner`
(the loop and the report), :mod:`.figures` and :mod:`.main` (the command line). Only
:mod:`.main` is imported by the ``sparse-lrp`` command before ``demo`` is chosen; it
imports nothing heavy.
"""
