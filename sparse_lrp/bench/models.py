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


# --------------------------------------------------------------------------------------
# heterogeneous graphs

WRITES, CITES, REV_WRITES = (
    ("author", "writes", "paper"),
    ("paper", "cites", "paper"),
    ("paper", "rev_writes", "author"),
)


def hetero_graph(papers: int, authors: int, num_edges: int, features=(32, 16), *, seed: int = 0, device="cpu"):
    """A generated bibliography: ``(x_dict, edge_index_dict)``.

    Node types ``paper`` and ``author`` (``features`` input features each, standard
    normal); edge types ``writes`` (author -> paper, uniform ends), ``cites`` (paper ->
    paper, no self loops, as :func:`random_graph`) and ``rev_writes`` (the writes edges
    reversed, so authors' representations are updated too): 40% / 20% / 40% of
    ``num_edges``.
    """
    g = torch.Generator().manual_seed(seed)
    n_writes = int(0.4 * num_edges)
    n_cites = num_edges - 2 * n_writes
    writes = torch.stack(
        [torch.randint(0, authors, (n_writes,), generator=g), torch.randint(0, papers, (n_writes,), generator=g)]
    )
    src = torch.randint(0, papers, (n_cites,), generator=g)
    dst = (src + torch.randint(1, max(2, papers), (n_cites,), generator=g)) % papers
    x = {
        "paper": torch.randn(papers, features[0], generator=g).to(device),
        "author": torch.randn(authors, features[1], generator=g).to(device),
    }
    # (flip copies: every edge type keeps its own tensor, as sparse_lrp requires)
    edge_index = {
        WRITES: writes.to(device),
        CITES: torch.stack([src, dst]).to(device),
        REV_WRITES: writes.flip(0).to(device),
    }
    return x, edge_index


class _SAGE(nn.Module):
    """Two SAGEConv layers (lazy sizes, sum aggregation) and a Linear head; ``to_hetero`` turns it heterogeneous."""

    def __init__(self, hidden: int, out_channels: int) -> None:
        from torch_geometric.nn import SAGEConv

        super().__init__()
        self.conv1 = SAGEConv((-1, -1), hidden, aggr="sum")
        self.conv2 = SAGEConv((-1, -1), hidden, aggr="sum")
        self.head = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # (to_hetero reads these argument names)
        x = self.conv1(x, edge_index).relu()
        x = self.conv2(x, edge_index).relu()
        return self.head(x)


class HeteroLogits(nn.Module):
    """A ``to_hetero`` model returning one node type's logits (PyG's Explainer explains one tensor)."""

    def __init__(self, metadata, hidden: int, out_channels: int, node_type: str = "paper") -> None:
        from torch_geometric.nn import to_hetero

        super().__init__()
        self.node_type = node_type
        self.gnn = to_hetero(_SAGE(hidden, out_channels), metadata, aggr="sum")

    def forward(self, x_dict, edge_index_dict) -> Tensor:
        return self.gnn(x_dict, edge_index_dict)[self.node_type]


def hetero_model(x_dict, edge_index_dict, hidden: int, out_channels: int, *, seed: int = 0, device="cpu"):
    """A seeded, untrained :class:`HeteroLogits` for the papers; one forward sets its lazy sizes."""
    torch.manual_seed(seed)
    model = HeteroLogits((list(x_dict), list(edge_index_dict)), hidden, out_channels)
    with torch.no_grad():  # (on CPU copies: lazy parameters take their sizes, and values, there)
        model({k: v.cpu() for k, v in x_dict.items()}, {k: v.cpu() for k, v in edge_index_dict.items()})
    return model.to(device).eval()
