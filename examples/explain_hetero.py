"""Explain a heterogeneous GNN (``to_hetero``) with LRP through PyG's ``Explainer``.

A generated bibliography: papers cite papers, authors write papers. A paper's class is
whether one of its authors is senior (author feature 0 is 1): the ground truth of a
paper's explanation is its ``writes`` edges from senior authors. A two-layer SAGE model,
made heterogeneous by ``to_hetero``, is trained on it; ``LRPExplainer`` then explains a few
papers and returns PyG's ``HeteroExplanation``: masks per node type and per edge type.

Run: python examples/explain_hetero.py
(``SPARSE_LRP_EXAMPLES_SMALL=1`` runs it on a smaller graph, as the tests do.)
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch_geometric.explain import Explainer
from torch_geometric.nn import SAGEConv, to_hetero

import sparse_lrp

SMALL = os.environ.get("SPARSE_LRP_EXAMPLES_SMALL") == "1"
WRITES, CITES = ("author", "writes", "paper"), ("paper", "cites", "paper")
REV = ("paper", "rev_writes", "author")


class GNN(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.conv1 = SAGEConv((-1, -1), hidden, aggr="sum")
        self.conv2 = SAGEConv((-1, -1), hidden, aggr="sum")
        self.head = nn.Linear(hidden, 2)

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index).relu()
        x = self.conv2(x, edge_index).relu()
        return self.head(x)


class PaperLogits(nn.Module):
    """The explained tensor: the papers' logits (PyG's Explainer explains one tensor)."""

    def __init__(self, metadata) -> None:
        super().__init__()
        self.gnn = to_hetero(GNN(32), metadata, aggr="sum")

    def forward(self, x_dict, edge_index_dict):
        return self.gnn(x_dict, edge_index_dict)["paper"]


def bibliography(papers: int, authors: int, g: torch.Generator):
    senior = (torch.rand(authors, generator=g) < 0.15).float()
    x_author = torch.cat([senior[:, None], torch.rand(authors, 3, generator=g)], 1)
    x_paper = torch.rand(papers, 4, generator=g)
    per_paper = 3
    writes = torch.stack(
        [torch.randint(0, authors, (papers * per_paper,), generator=g), torch.arange(papers).repeat(per_paper)]
    )
    cites = torch.randint(0, papers, (2, papers * 3), generator=g)
    y = (torch.zeros(papers).index_add_(0, writes[1], senior[writes[0]]) > 0).long()  # (any senior author)
    x = {"paper": x_paper, "author": x_author}
    edge_index = {WRITES: writes, CITES: cites, REV: writes.flip(0)}
    return x, edge_index, y


def main() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, edge_index, y = bibliography(200 if SMALL else 1000, 100 if SMALL else 400, g)
    model = PaperLogits((list(x), list(edge_index)))
    with torch.no_grad():
        model(x, edge_index)  # (lazy layers take their sizes from the data)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60 if SMALL else 200):
        opt.zero_grad()
        cross_entropy(model(x, edge_index), y).backward()
        opt.step()
    model.eval()
    acc = float((model(x, edge_index).argmax(1) == y).float().mean())
    print(f"training accuracy {acc:.3f} ({int(y.sum())} of {y.numel()} papers have a senior author)")

    explainer = Explainer(
        model,
        algorithm=sparse_lrp.LRPExplainer(composite="epsilon"),
        explanation_type="model",
        node_mask_type="attributes",
        edge_mask_type="object",
        model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"),
    )
    senior = x["author"][:, 0] > 0
    hits = total = 0
    for paper in (y == 1).nonzero().view(-1)[:5].tolist():
        explanation = explainer(x, edge_index, index=paper)  # a HeteroExplanation
        mask = explanation[WRITES].edge_mask  # relevance of every author -> paper edge
        mine = (edge_index[WRITES][1] == paper).nonzero().view(-1)
        best = mine[mask[mine].argmax()]
        hits += bool(senior[edge_index[WRITES][0, best]])
        total += 1
        print(
            f"paper {paper}: authors {edge_index[WRITES][0, mine].tolist()}, their edges' relevance "
            f"{[round(float(v), 3) for v in mask[mine]]}, most relevant author senior: "
            f"{bool(senior[edge_index[WRITES][0, best]])}"
        )
    print(f"the most relevant writes edge comes from a senior author for {hits} of {total} papers")
    res = sparse_lrp.explain(model, x, edge_index, index=paper, composite="epsilon")
    c = res.conservation
    print(
        f"conservation for paper {paper}: logit {c['out']:.4f} = inputs {c['in']:.4f} "
        f"(papers {float(res.node['paper'].sum()):.4f}, authors {float(res.node['author'].sum()):.4f}) "
        f"+ absorbed by biases {c['absorbed']:.4f}"
    )


if __name__ == "__main__":
    main()
