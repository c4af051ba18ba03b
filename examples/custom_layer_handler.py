"""Teach sparse_lrp a layer it does not know: register a handler.

A handler recomputes the layer's forward with the LRP primitives of ``LayerCall``
(``linear``, ``edges``, ``map``, ``passthrough``); the backward pass then follows from
the library's rules and edge kernel. Here: an edge-gated convolution

    out_j = sum_{i -> j} sigmoid(g · e_ji) * (x_i W) + b

whose gates are treated as fixed edge weights (as LRP does for attention).

Run: python examples/custom_layer_handler.py
"""

from __future__ import annotations

import torch
from torch import nn

import sparse_lrp
from sparse_lrp.layers import LayerCall


class GatedConv(nn.Module):
    """The user's own layer (not a PyG class)."""

    def __init__(self, in_channels: int, out_channels: int, edge_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels) / in_channels**0.5)
        self.gate = nn.Parameter(torch.randn(edge_dim))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, edge_index, edge_attr):
        gates = torch.sigmoid(edge_attr @ self.gate)
        h = x @ self.weight.T
        out = torch.zeros(x.shape[0], h.shape[1]).index_add_(0, edge_index[1], gates[:, None] * h[edge_index[0]])
        return out + self.bias


def gated_conv_handler(call: LayerCall, x, edge_index, edge_attr):
    """Feature mixing (a Linear), then node mixing over the edges with fixed gates."""
    m = call.module
    gates = torch.sigmoid(edge_attr @ m.gate).detach()
    h = call.linear(x, m.weight)
    return call.edges(h, edge_index, gates, bias=m.bias)


# subgraph=(): the layer reads nothing beyond its nodes' incoming edges (no degrees), so
# node targets may run on their k-hop computation subgraphs (see register_handler).
sparse_lrp.register_handler(GatedConv, gated_conv_handler, subgraph=())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = GatedConv(8, 16, edge_dim=3)
        self.conv2 = GatedConv(16, 4, edge_dim=3)

    def forward(self, x, edge_index, edge_attr):
        return self.conv2(torch.relu(self.conv1(x, edge_index, edge_attr)), edge_index, edge_attr)


def main() -> None:
    torch.manual_seed(0)
    n, e = 50, 200
    x, edge_index, edge_attr = torch.randn(n, 8), torch.randint(0, n, (2, e)), torch.randn(e, 3)
    model = Net().eval()

    res = sparse_lrp.explain(model, x, edge_index, index=7, composite=sparse_lrp.Epsilon(0), edge_attr=edge_attr)

    # With zero biases, LRP-0 equals gradient x input (gates held fixed, as in LRP).
    xg = x.clone().requires_grad_()
    out = model(xg, edge_index, edge_attr)
    (grad,) = torch.autograd.grad(out[7, res.target], xg)
    print(f"explained logit           {res.output.item():+.5f}")
    print(f"sum of feature relevance  {res.node_feat.sum().item():+.5f}")
    print(f"max |LRP-0 - grad*input|  {(res.node_feat - xg.detach() * grad).abs().max().item():.2e}")
    top = res.edge.abs().topk(5).indices
    print("most relevant edges:", [tuple(edge_index[:, i].tolist()) for i in top])


if __name__ == "__main__":
    main()
