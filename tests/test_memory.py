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
