"""An explanation frees its autograd graph as soon as it returns (no reference cycles)."""

import gc
import weakref

import torch
from torch_geometric.nn import GCN

import sparse_lrp
from sparse_lrp.layers.base import Context


def test_layer_outputs_are_freed_without_garbage_collection(monkeypatch):
    torch.manual_seed(0)
    model = GCN(8, 16, 3, 3).eval()
    x, edge_index = torch.randn(50, 8), torch.randint(0, 50, (2, 200))
    refs = []
    release = Context.release

    def watch(self):
        refs.extend(weakref.ref(out) for _, out in self.outputs)
        release(self)

    monkeypatch.setattr(Context, "release", watch)
    gc.collect()
    gc.disable()
    try:
        sparse_lrp.explain(model, x, edge_index, index=3)
        alive = [r for r in refs if r() is not None]
    finally:
        gc.enable()
    assert refs, "the explanation recorded no layer outputs"
    assert not alive, f"{len(alive)} of {len(refs)} layer outputs outlived the explanation"


def test_transformed_weights_are_kept_once_per_layer_whatever_rule_object_asks():
    """The preset name makes a new Gamma rule per call: its weight transforms (w + γw⁺,
    w + γw⁻) must find the entries the last call kept, not add a copy of every large
    weight per call (each call held another 8 MiB for this model before)."""
    from sparse_lrp import operators

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024)).eval()
    x = torch.randn(4, 64)
    operators.clear_caches()
    sparse_lrp.explain(model, x, None, index=0, composite="gamma")
    sparse_lrp.explain(model, x, None, index=0, composite=sparse_lrp.Gamma(0.25))
    kept = len(operators._TRANSFORMS._entries)
    assert kept >= 2  # (w² of the first layer, and Gamma's transforms of the large weights)
    for _ in range(4):
        sparse_lrp.explain(model, x, None, index=0, composite="gamma")
        sparse_lrp.explain(model, x, None, index=0, composite=sparse_lrp.Gamma(0.25))
    assert len(operators._TRANSFORMS._entries) == kept
