"""The demo's benchmarks, generated offline with a fixed seed, with their ground truth.

Node classification (one graph each, PyG's generators):

* **BA-Shapes**: a Barabási–Albert graph (300 nodes, 5 edges per new node) with 80
  house motifs; 4 classes (base, and the house's top, middle, bottom).
* **Tree-Cycles**: a binary tree of depth 8 (511 nodes, undirected) with 60 6-cycles;
  2 classes (tree, cycle).
* **Tree-Grid**: the same tree with 80 3×3 grids; 2 classes (tree, grid). PyG's grid
  motif labels its nodes by role (corner, side, centre); as in the original benchmark
  the demo keeps only "in a grid or not".
* **Infection**: an Erdős–Rényi graph (500 nodes, p = 0.004) with 50 infected nodes;
  the class is the length of the shortest path from an infected node (0..3, 4 = farther).

The motif datasets have no informative features: every node gets the constant feature
vector ``ones(10)``, the benchmark's usual choice, so the model must read the structure.
Infection's features are the generator's one-hot ``[healthy, infected]``.

Graph classification (**BA-2Motif**): small Barabási–Albert trees (20 nodes) with a house
or a 5-cycle attached by one edge; the class is the motif; constant features.

Ground truth (``edge_gt`` per edge, ``node_gt`` per node) comes from the generators: the
motif edges and nodes for the motif datasets. For Infection the generator's mask marks
every edge within two hops of *any* infected node, which is not the explanation of one
node's class; the demo derives each target's own ground truth from the generated graph
and infection state instead: the edges and nodes of the shortest infection paths that
end at the target (the explanation the dataset's paper defines). Both are reported
(``edge_auc`` and ``edge_auc_generator_mask`` in the CSV).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Benchmark", "ModelSpec", "build", "infection_paths"]


@dataclass(frozen=True)
class ModelSpec:
    """The GNN trained on a benchmark.

    Attributes:
        conv: ``"graph"`` (GraphConv: sum aggregation plus a root weight), ``"gcn"`` or ``"gin"``.
        layers: message-passing layers (the computation subgraph has this many hops).
        hidden: hidden width.
        epochs: full-batch (node tasks) or mini-batch (graph tasks) training epochs.
        lr: Adam learning rate.
        pool: graph-level readout (``"add"``, ``"mean"``) or None for node tasks.
    """

    conv: str
    layers: int = 3
    hidden: int = 32
    epochs: int = 500
    lr: float = 0.005
    pool: str | None = None


@dataclass
class Benchmark:
    """One generated benchmark.

    Node tasks hold one graph in ``data`` (``x``, ``edge_index``, ``y``, ``edge_gt``,
    ``node_gt``); graph tasks hold a list of small graphs in ``graphs`` (each with ``y``
    of shape ``[1]``). ``train_idx``/``test_idx`` index nodes or graphs.
    """

    name: str
    title: str
    task: str
    model: ModelSpec
    num_features: int
    num_classes: int
    train_idx: Tensor
    test_idx: Tensor
    target_classes: tuple[int, ...]
    feature_names: list[str]
    description: str
    data: object | None = None
    graphs: list | None = None
    #: ``(target) -> (edge_gt [E], node_gt [N] or None)`` for benchmarks whose ground
    #: truth depends on the target (Infection); None uses ``data.edge_gt``/``node_gt``.
    target_truth: Callable[[int], tuple[Tensor, Tensor | None]] | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """A hash of the generated data (graph, labels, split): keys the weight cache."""
        import hashlib

        h = hashlib.sha1()
        parts = [self.data] if self.data is not None else list(self.graphs or [])
        for d in parts:
            for t in (d.x, d.edge_index, d.y):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.train_idx.cpu().numpy().tobytes())
        return h.hexdigest()[:16]


# -- generators --------------------------------------------------------------------
def _split(n: int, gen: torch.Generator, train: float = 0.8) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    cut = round(train * n)
    return perm[:cut].sort().values, perm[cut:].sort().values


def _motif_graph(graph_generator, motif: str, num_motifs: int, motif_kwargs: dict | None = None):
    from torch_geometric.data import Data
    from torch_geometric.datasets import ExplainerDataset

    ds = ExplainerDataset(
        graph_generator=graph_generator,
        motif_generator=motif,
        num_motifs=num_motifs,
        motif_generator_kwargs=motif_kwargs,
    )
    g = ds[0]
    n = g.num_nodes
    return Data(
        x=torch.ones(n, 10),
        edge_index=g.edge_index,
        y=g.y,
        edge_gt=g.edge_mask.float(),
        node_gt=g.node_mask.float(),
    )


def _node_benchmark(name, title, data, model, target_classes, description, gen, feature_names=None, **kw):
    train_idx, test_idx = _split(data.num_nodes, gen)
    return Benchmark(
        name=name,
        title=title,
        task="node",
        model=model,
        num_features=data.x.shape[1],
        num_classes=int(data.y.max()) + 1,
        train_idx=train_idx,
        test_idx=test_idx,
        target_classes=target_classes,
        feature_names=feature_names or [f"f{i}" for i in range(data.x.shape[1])],
        description=description,
        data=data,
        **kw,
    )


def ba_shapes(tiny: bool, gen: torch.Generator) -> Benchmark:
    """BA graph with house motifs (PyG ``ExplainerDataset``)."""
    from torch_geometric.datasets.graph_generator import BAGraph

    nodes, motifs = (60, 12) if tiny else (300, 80)
    data = _motif_graph(BAGraph(num_nodes=nodes, num_edges=5 if not tiny else 3), "house", motifs)
    return _node_benchmark(
        "ba_shapes",
        "BA-Shapes",
        data,
        ModelSpec("graph"),
        (1, 2, 3),
        f"BA graph ({nodes} nodes) + {motifs} houses, constant features; explain house nodes",
        gen,
    )


def tree_cycles(tiny: bool, gen: torch.Generator) -> Benchmark:
    """Binary tree with 6-cycle motifs."""
    from torch_geometric.datasets.graph_generator import TreeGraph

    depth, motifs = (5, 8) if tiny else (8, 60)
    data = _motif_graph(TreeGraph(depth=depth, undirected=True), "cycle", motifs, {"num_nodes": 6})
    data.y = (data.y > 0).long()
    return _node_benchmark(
        "tree_cycles",
        "Tree-Cycles",
        data,
        ModelSpec("graph"),
        (1,),
        f"binary tree (depth {depth}) + {motifs} 6-cycles, constant features; explain cycle nodes",
        gen,
    )


def tree_grid(tiny: bool, gen: torch.Generator) -> Benchmark:
    """Binary tree with 3×3 grid motifs (label: in a grid or not)."""
    from torch_geometric.datasets.graph_generator import TreeGraph

    depth, motifs = (5, 6) if tiny else (8, 80)
    data = _motif_graph(TreeGraph(depth=depth, undirected=True), "grid", motifs)
    data.y = (data.y > 0).long()
    return _node_benchmark(
        "tree_grid",
        "Tree-Grid",
        data,
        ModelSpec("graph"),
        (1,),
        f"binary tree (depth {depth}) + {motifs} 3x3 grids, constant features; explain grid nodes",
        gen,
    )


def infection_paths(edge_index: Tensor, infected: Tensor, target: int, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Edges and nodes on the shortest paths from any infected node to ``target``.

    Messages flow along edges (source -> target), so paths follow edge direction. An edge
    ``u -> v`` is on such a path when ``d_inf(u) + 1 + d(v -> target) == d_inf(target)``.

    Returns:
        ``(edge_mask [E], node_mask [N])`` as floats.
    """
    src, dst = edge_index[0].tolist(), edge_index[1].tolist()
    out_adj: list[list[int]] = [[] for _ in range(num_nodes)]
    in_adj: list[list[int]] = [[] for _ in range(num_nodes)]
    for s, d in zip(src, dst):
        out_adj[s].append(d)
        in_adj[d].append(s)

    def bfs(starts: list[int], adj: list[list[int]]) -> list[float]:
        dist = [float("inf")] * num_nodes
        queue = deque(starts)
        for s in starts:
            dist[s] = 0
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if dist[v] == float("inf"):
                    dist[v] = dist[u] + 1
                    queue.append(v)
        return dist

    d_inf = bfs(infected.nonzero().view(-1).tolist(), out_adj)
    d_to = bfs([target], in_adj)
    total = d_inf[target]
    edge_mask = torch.zeros(len(src))
    node_mask = torch.zeros(num_nodes)
    if total == float("inf") or total == 0:
        return edge_mask, node_mask
    for e, (s, d) in enumerate(zip(src, dst)):
        if d_inf[s] + 1 + d_to[d] == total:
            edge_mask[e] = 1.0
            node_mask[s] = node_mask[d] = 1.0
    return edge_mask, node_mask


def infection(tiny: bool, gen: torch.Generator) -> Benchmark:
    """Erdős–Rényi graph with infected nodes; class = distance to the infection."""
    from torch_geometric.data import Data
    from torch_geometric.datasets import InfectionDataset
    from torch_geometric.datasets.graph_generator import ERGraph

    nodes, p, infected = (120, 0.02, 12) if tiny else (500, 0.004, 50)
    max_path = 3
    g = InfectionDataset(ERGraph(num_nodes=nodes, edge_prob=p), num_infected_nodes=infected, max_path_length=max_path)[
        0
    ]
    data = Data(x=g.x, edge_index=g.edge_index, y=g.y, edge_gt_generator=g.edge_mask.float())
    data.edge_gt = data.edge_gt_generator
    data.node_gt = None
    inf_mask = g.x[:, 1] > 0

    def truth(target: int) -> tuple[Tensor, Tensor]:
        return infection_paths(data.edge_index, inf_mask, target, data.num_nodes)

    return _node_benchmark(
        "infection",
        "Infection",
        data,
        ModelSpec("graph"),
        tuple(range(1, max_path + 1)),
        f"ER graph ({nodes} nodes, p={p}), {infected} infected; class = hops to infection; explain 1..{max_path}",
        gen,
        feature_names=["healthy", "infected"],
        target_truth=truth,
    )


_HOUSE = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4)]
_CYCLE = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]


def _ba_tree(n: int, gen: torch.Generator) -> list[tuple[int, int]]:
    """A Barabási–Albert tree: each new node links to one node chosen by degree."""
    edges = [(0, 1)]
    degree = [1, 1]
    for v in range(2, n):
        w = torch.tensor(degree, dtype=torch.float)
        u = int(torch.multinomial(w, 1, generator=gen))
        edges.append((u, v))
        degree[u] += 1
        degree.append(1)
    return edges


def ba_2motif(tiny: bool, gen: torch.Generator) -> Benchmark:
    """BA-2Motif: 20-node BA trees with a house (class 0) or a 5-cycle (class 1)."""
    from torch_geometric.data import Data

    num_graphs, base = (48, 12) if tiny else (200, 20)
    graphs = []
    for i in range(num_graphs):
        label = i % 2
        und = _ba_tree(base, gen)
        motif = _HOUSE if label == 0 else _CYCLE
        und_gt = [0.0] * len(und)
        und += [(base + a, base + b) for a, b in motif]
        und_gt += [1.0] * len(motif)
        anchor = int(torch.randint(0, base, (1,), generator=gen))
        und.append((anchor, base + int(torch.randint(0, 5, (1,), generator=gen))))
        und_gt.append(0.0)
        pairs = [(a, b) for a, b in und] + [(b, a) for a, b in und]
        edge_index = torch.tensor(pairs, dtype=torch.long).t().contiguous()
        n = base + 5
        node_gt = torch.zeros(n)
        node_gt[base:] = 1.0
        graphs.append(
            Data(
                x=torch.ones(n, 10),
                edge_index=edge_index,
                y=torch.tensor([label]),
                edge_gt=torch.tensor(und_gt + und_gt),
                node_gt=node_gt,
            )
        )
    train_idx, test_idx = _split(num_graphs, gen)
    return Benchmark(
        name="ba_2motif",
        title="BA-2Motif",
        task="graph",
        model=ModelSpec("graph", layers=3, hidden=32, epochs=60, lr=0.005, pool="add"),
        num_features=10,
        num_classes=2,
        train_idx=train_idx,
        test_idx=test_idx,
        target_classes=(0, 1),
        feature_names=[f"f{i}" for i in range(10)],
        description=f"{num_graphs} BA trees ({base} nodes) + house or 5-cycle, constant features; explain test graphs",
        graphs=graphs,
    )


BUILDERS: dict[str, Callable[[bool, torch.Generator], Benchmark]] = {
    "ba_shapes": ba_shapes,
    "tree_cycles": tree_cycles,
    "tree_grid": tree_grid,
    "infection": infection,
    "ba_2motif": ba_2motif,
}


def build(name: str, *, seed: int, tiny: bool = False) -> Benchmark:
    """Generate benchmark ``name`` with ``seed`` (deterministic for a given torch/PyG).

    PyG's generators draw from torch's global generator and, for Barabási–Albert graphs,
    from NumPy's global one; both are seeded here (NumPy's state is restored afterwards).
    The split and the hand-made graphs use a private generator.
    """
    import numpy as np

    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(BUILDERS)}")
    np_state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        return BUILDERS[name](tiny, gen)
    finally:
        np.random.set_state(np_state)
