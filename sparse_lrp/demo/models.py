"""The demo's GNNs, their seeded training, and the weight cache.

Trained weights are cached as ``<cache>/<dataset>-seed<seed>-<key>.pt`` (``torch.save``
of a plain state dict plus accuracies; loaded with ``weights_only=True``). The key hashes
the model settings, the epoch budget and a fingerprint of the generated data, so a
change to any of them trains afresh instead of loading stale weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from .data import Benchmark, ModelSpec

BATCH = 32

__all__ = ["GraphGNN", "NodeGNN", "Trained", "make_model", "train_or_load"]


def _conv(kind: str, a: int, b: int) -> nn.Module:
    from torch_geometric.nn import GCNConv, GINConv, GraphConv

    if kind == "graph":
        return GraphConv(a, b)
    if kind == "gcn":
        return GCNConv(a, b)
    if kind == "gin":
        return GINConv(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b)))
    raise ValueError(f"unknown conv {kind!r}")


class NodeGNN(nn.Module):
    """``layers`` message-passing layers with ReLU, then a linear classifier per node."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, layers: int = 3, conv: str = "graph") -> None:
        super().__init__()
        self.convs = nn.ModuleList([_conv(conv, in_channels if i == 0 else hidden, hidden) for i in range(layers)])
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Class logits ``[N, C]``."""
        for conv in self.convs:
            x = conv(x, edge_index).relu()
        return self.head(x)


class GraphGNN(nn.Module):
    """Message-passing layers, a global pooling readout, and a linear classifier."""

    def __init__(
        self, in_channels: int, hidden: int, num_classes: int, layers: int = 3, conv: str = "gin", pool: str = "add"
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_conv(conv, in_channels if i == 0 else hidden, hidden) for i in range(layers)])
        self.head = nn.Linear(hidden, num_classes)
        self.pool = pool

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        """Class logits ``[B, C]`` (one row per graph of ``batch``)."""
        from torch_geometric.nn import global_add_pool, global_mean_pool

        for conv in self.convs:
            x = conv(x, edge_index).relu()
        pool = global_add_pool if self.pool == "add" else global_mean_pool
        return self.head(pool(x, batch))


def make_model(bench: Benchmark) -> nn.Module:
    """A freshly initialised model for ``bench`` (seed torch before calling)."""
    spec = bench.model
    if bench.task == "graph":
        return GraphGNN(bench.num_features, spec.hidden, bench.num_classes, spec.layers, spec.conv, spec.pool or "add")
    return NodeGNN(bench.num_features, spec.hidden, bench.num_classes, spec.layers, spec.conv)


@dataclass
class Trained:
    """A trained model with its accuracies and where it came from."""

    model: nn.Module
    train_acc: float
    test_acc: float
    epochs: int
    seconds: float
    cached: bool
    path: Path | None


def _epochs(spec: ModelSpec, max_epochs: int | None) -> int:
    return spec.epochs if max_epochs is None else min(spec.epochs, max_epochs)


def cache_path(cache_dir: Path, bench: Benchmark, seed: int, epochs: int) -> Path:
    """Where the weights of ``bench`` trained with ``seed`` and ``epochs`` live."""
    import torch_geometric

    key = json.dumps(
        {
            "spec": asdict(bench.model),
            "epochs": epochs,
            "data": bench.fingerprint(),
            "task": bench.task,
            "pyg": torch_geometric.__version__,
        },
        sort_keys=True,
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir / f"{bench.name}-seed{seed}-{digest}.pt"


@torch.no_grad()
def accuracy(model: nn.Module, bench: Benchmark, idx: Tensor, device: torch.device) -> float:
    """Accuracy of ``model`` on the nodes (or graphs) ``idx``."""
    model.eval()
    if bench.task == "node":
        d = bench.data
        pred = model(d.x.to(device), d.edge_index.to(device)).argmax(1).cpu()
        return float((pred[idx] == d.y[idx]).float().mean()) if idx.numel() else float("nan")
    from torch_geometric.loader import DataLoader

    graphs = [bench.graphs[i] for i in idx.tolist()]
    correct = 0
    for b in DataLoader(graphs, batch_size=128):
        b = b.to(device)
        correct += int((model(b.x, b.edge_index, b.batch).argmax(1) == b.y).sum())
    return correct / max(1, len(graphs))


def _train(model: nn.Module, bench: Benchmark, epochs: int, seed: int, device: torch.device, progress: bool) -> None:
    from tqdm.auto import tqdm

    spec = bench.model
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=5e-4)
    bar = tqdm(range(epochs), desc=f"train {bench.title}", leave=False, disable=not progress, unit="ep")
    model.train()
    if bench.task == "node":
        d = bench.data
        x, ei, y = d.x.to(device), d.edge_index.to(device), d.y.to(device)
        tr = bench.train_idx.to(device)
        for _ in bar:
            opt.zero_grad()
            loss = F.cross_entropy(model(x, ei)[tr], y[tr])
            loss.backward()
            opt.step()
        return
    from torch_geometric.loader import DataLoader

    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        [bench.graphs[i] for i in bench.train_idx.tolist()], batch_size=BATCH, shuffle=True, generator=gen
    )
    for _ in bar:
        for b in loader:
            b = b.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(b.x, b.edge_index, b.batch), b.y)
            loss.backward()
            opt.step()


def train_or_load(
    bench: Benchmark,
    *,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    max_epochs: int | None = None,
    progress: bool = True,
) -> Trained:
    """Train ``bench``'s model with ``seed`` (or load it from ``cache_dir``), in eval mode."""
    epochs = _epochs(bench.model, max_epochs)
    torch.manual_seed(seed)
    model = make_model(bench).to(device)
    path = cache_path(cache_dir, bench, seed, epochs) if cache_dir is not None else None
    start = time.perf_counter()
    cached = False
    if path is not None and path.exists():
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(blob["state_dict"])
            cached = True
        except Exception as err:  # a corrupt or foreign file: retrain and overwrite it
            print(f"warning: ignoring unreadable cached weights {path} ({err}); retraining")
    if not cached:
        _train(model, bench, epochs, seed, device, progress)
    model.eval()
    train_acc = accuracy(model, bench, bench.train_idx, device)
    test_acc = accuracy(model, bench, bench.test_idx, device)
    if path is not None and not cached:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "epochs": epochs, "train_acc": train_acc, "test_acc": test_acc}, path)
    return Trained(model, train_acc, test_acc, epochs, time.perf_counter() - start, cached, path)
