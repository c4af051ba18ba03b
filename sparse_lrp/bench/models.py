"""Models and data the benchmark runs on: MLPs, pruned MLPs, a GCN, a GIN, random graphs."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


def mlp(sizes: list[int], *, bias: bool = True, seed: int = 0) -> nn.Sequential:
    """``Linear-ReLU-...-Linear`` with the given layer widths (``[in, hidden..., out]``)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) * (2.0 / a) ** 0.5)
            if bias:
                lin.bias.copy_(0.1 * torch.randn(b, generator=g))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def prune(model: nn.Sequential, density: float, *, seed: int = 0) -> nn.Sequential:
    """Keep a random ``density`` fraction of every weight (the rest set to exactly zero).

    The surviving weights are rescaled by ``1/sqrt(density)`` so activations keep their
    scale through the layers. Returns a new model with dense (zero-filled) weights.
    """
    g = torch.Generator().manual_seed(seed + 1)
    sizes = [m.in_features for m in model if isinstance(m, nn.Linear)] + [model[-1].out_features]
    out = mlp(sizes, bias=model[0].bias is not None, seed=seed)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in out:
            if isinstance(m, nn.Linear):
                keep = torch.rand(m.weight.shape, generator=g) < density
                m.weight.mul_(keep / density**0.5)
    return out


def sparse_weights(model: nn.Sequential, layout: torch.layout = torch.sparse_csr) -> list[tuple[Tensor, Tensor | None]]:
    """The ``(weight, bias)`` of every Linear with the weight in a sparse layout."""
    out = []
    for m in model:
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            w = w.to_sparse_csr() if layout == torch.sparse_csr else w.to_sparse_coo().coalesce()
            out.append((w, None if m.bias is None else m.bias.detach()))
    return out


def sparse_forward(weights: list[tuple[Tensor, Tensor | None]], x: Tensor) -> Tensor:
    """Forward of a pruned MLP held as sparse weights (``x Wᵀ = (W xᵀ)ᵀ`` with a sparse W)."""
    h = x
    for i, (w, b) in enumerate(weights):
        h = (w @ h.T).T
        if b is not None:
            h = h + b
        if i < len(weights) - 1:
            h = h.relu()
    return h


# --------------------------------------------------------------------------------------
# graphs


def random_graph(num_nodes: int, num_edges: int, num_features: int, *, seed: int = 0, device="cpu"):
    """A random directed graph without self loops: ``(x [N, F], edge_index [2, E])``.

    Sources are uniform; each target is ``src + k mod N`` with ``k`` uniform in
    ``1..N-1`` (so no self loops; multi-edges can occur). Features are standard normal.
    """
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=g)
    dst = (src + torch.randint(1, max(2, num_nodes), (num_edges,), generator=g)) % num_nodes
    edge_index = torch.stack([src, dst])
    del src, dst
    x = torch.randn(num_nodes, num_features, generator=g)
    return x.to(device), edge_index.to(device)


class _ConvStack(nn.Module):
    """``self.convs`` applied in turn, ReLU between them (not after the last)."""

    convs: nn.ModuleList

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = x.relu()
        return x


class GCN(_ConvStack):
    """``layers`` GCNConv layers (PyG, edge_index path, ReLU between them)."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int = 3) -> None:
        from torch_geometric.nn import GCNConv

        super().__init__()
        dims = [in_channels] + [hidden] * (layers - 1) + [out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in itertools.pairwise(dims))


class GIN(_ConvStack):
    """``layers`` GINConv layers, each with a 2-layer MLP; ReLU between the layers."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int = 3) -> None:
        from torch_geometric.nn import GINConv

        super().__init__()
        dims = [in_channels] + [hidden] * (layers - 1) + [out_channels]
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(a, hidden), nn.ReLU(), nn.Linear(hidden, b)))
            for a, b in itertools.pairwise(dims)
        )


GRAPH_MODELS = {"GCN": GCN, "GIN": GIN}


def graph_model(name: str, in_channels: int, hidden: int, out_channels: int, *, seed: int = 0, device="cpu"):
    torch.manual_seed(seed)
    model = GRAPH_MODELS[name](in_channels, hidden, out_channels)
    return model.to(device).eval()
