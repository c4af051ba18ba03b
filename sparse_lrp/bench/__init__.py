"""``sparse-lrp bench``: speed and memory of sparse_lrp against what users would pick instead.

Suites (each a module with ``run(cfg) -> list[Table]``):

* ``dense``: MLPs against zennit, captum and one plain autograd gradient pass, rule by
  rule, with the attributions checked against zennit's.
* ``sparse``: pruned MLPs (sparse weights) against the dense reference and zennit.
* ``graphs``: a 3-layer GCN and GIN on generated graphs of growing size: LRP time and
  peak memory against the model's own forward and gradient x input.
* ``explainers``: per-explanation cost against PyG's GNNExplainer and Captum methods, on a
  homogeneous graph (GCN, GIN) and on a heterogeneous one (a ``to_hetero`` SAGE model).
* ``kernels``: the edge-kernel micro-benchmarks of ``benchmarks/bench_kernels.py``
  (only from a source checkout).

Every timing is a median over repeats after a warm-up, interleaved with its baseline in
the same process, so ratios stay meaningful on a busy machine; calls of a few
milliseconds repeat until each has ``--min-seconds`` of samples (quick 0.3 s, full 1 s).
"""
