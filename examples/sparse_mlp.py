"""LRP on a pruned MLP whose weights are sparse COO tensors, layer by layer.

A small MLP is trained on synthetic data, pruned to 10% of its weights (by magnitude)
and fine-tuned with the pruning mask held fixed. Its weights are then stored as sparse
COO tensors, and ``sparse_lrp.linear_lrp`` explains it one layer at a time, walking
backwards from the explained logit. The cost of each layer's step scales with its
non-zeros, not with ``in × out``.

Checks printed at the end:

* conservation: output relevance = input relevance + what the biases (and the rules'
  stabilisers) absorbed, summed over layers;
* agreement: the same pass with the dense (zero-filled) weights gives the same
  relevance, and so do the rules evaluated literally by the dense reference
  (``sparse_lrp.reference.linear_lrp``, what to check your own results against) and
  the whole-model API ``sparse_lrp.explain`` on the dense ``nn.Sequential``.

Run: python examples/sparse_mlp.py
(``SPARSE_LRP_EXAMPLES_SMALL=1`` runs it on a tiny model in seconds, as the tests do.)
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

import sparse_lrp
from sparse_lrp import Epsilon, Rule, ZPlus

SMALL = os.environ.get("SPARSE_LRP_EXAMPLES_SMALL") == "1"


def prune_(model: nn.Sequential, density: float) -> list[Tensor]:
    """Keep the largest-magnitude ``density`` fraction of each weight; return the masks."""
    masks = []
    for m in model:
        if isinstance(m, nn.Linear):
            k = max(1, int(density * m.weight.numel()))
            threshold = m.weight.detach().abs().flatten().kthvalue(m.weight.numel() - k + 1).values
            mask = (m.weight.detach().abs() >= threshold).float()
            m.weight.data.mul_(mask)
            masks.append(mask)
    return masks


def train(model: nn.Sequential, x: Tensor, y: Tensor, epochs: int, masks: list[Tensor] | None = None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for _ in range(epochs):
        opt.zero_grad()
        cross_entropy(model(x), y).backward()
        opt.step()
        if masks is not None:  # keep pruned weights at exactly zero
            with torch.no_grad():
                for m, mask in zip(linears, masks):
                    m.weight.mul_(mask)


def lrp_layer_by_layer(
    layers: list[tuple[Tensor, Tensor]],
    x: Tensor,
    target: Tensor,
    rules: list[Rule],
    linear_lrp: Callable = sparse_lrp.linear_lrp,
) -> tuple[Tensor, Tensor, float]:
    """Explain ``Linear-ReLU-...-Linear`` given as ``(weight, bias)`` pairs (dense or sparse).

    Returns the input relevance ``[B, in]``, the explained logits ``[B]`` and the total
    relevance absorbed by biases and stabilisers. ``linear_lrp``: the library's, or its
    dense reference twin ``sparse_lrp.reference.linear_lrp``.
    """
    # Forward, keeping each layer's input. A sparse weight multiplies as W @ xᵀ.
    inputs, h = [], x
    for i, (w, b) in enumerate(layers):
        inputs.append(h)
        h = (w @ h.T).T + b
        if i < len(layers) - 1:
            h = h.relu()
    logits = h
    # Backward: the explained relevance is the target logit itself.
    relevance = torch.zeros_like(logits)
    rows = torch.arange(len(target))
    relevance[rows, target] = logits[rows, target]
    absorbed = 0.0
    for (w, b), a, rule in zip(reversed(layers), reversed(inputs), reversed(rules)):
        # ReLU passes relevance through unchanged, so each step is one linear map.
        relevance, lost = linear_lrp(a, w, relevance, rule, bias=b, return_absorbed=True)
        absorbed += float(lost.sum())
    return relevance, logits[rows, target], absorbed


def main() -> None:
    torch.manual_seed(0)
    sizes = [32, 64, 64, 4] if SMALL else [128, 512, 512, 10]
    n = 256 if SMALL else 1024
    teacher = torch.randn(sizes[0], sizes[-1])
    x = torch.randn(n, sizes[0])
    y = (x @ teacher).argmax(1)

    layers_ = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers_.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers_.append(nn.ReLU())
    model = nn.Sequential(*layers_)
    train(model, x, y, epochs=100)
    masks = prune_(model, density=0.1)
    train(model, x, y, epochs=50, masks=masks)
    model.eval()
    print(f"pruned MLP {sizes}, 10% of weights kept; accuracy {float((model(x).argmax(1) == y).float().mean()):.3f}")

    linears = [m for m in model if isinstance(m, nn.Linear)]
    dense = [(m.weight.detach(), m.bias.detach()) for m in linears]
    sparse = [(w.to_sparse_coo().coalesce(), b) for w, b in dense]
    print("non-zeros per layer:", [int(w._nnz()) for w, _ in sparse])

    # z+ in the hidden layers, epsilon on the top layer (a common composite for ReLU nets).
    rules: list[Rule] = [ZPlus()] * (len(linears) - 1) + [Epsilon(1e-6)]
    batch = x[:64]
    target = model(batch).argmax(1).detach()

    lrp_layer_by_layer(sparse, batch, target, rules)  # warm-up, so the timings below are steady
    start = time.perf_counter()
    r_sparse, logit, absorbed = lrp_layer_by_layer(sparse, batch, target, rules)
    t_sparse = time.perf_counter() - start
    start = time.perf_counter()
    r_dense, _, _ = lrp_layer_by_layer(dense, batch, target, rules)
    t_dense = time.perf_counter() - start

    total_out, total_in = float(logit.sum()), float(r_sparse.sum())
    gap = abs(total_out - total_in - absorbed)
    print(f"conservation: out {total_out:.4f} = in {total_in:.4f} + absorbed {absorbed:.4f} (gap {gap:.1e})")
    diff = float((r_sparse - r_dense).abs().max())
    timing = f"{t_sparse * 1e3:.1f} ms sparse, {t_dense * 1e3:.1f} ms dense"
    print(f"sparse vs dense weights: max |difference| {diff:.1e} ({timing})")
    r_ref, _, _ = lrp_layer_by_layer(dense, batch, target, rules, sparse_lrp.reference.linear_lrp)
    ref_diff = float((r_sparse - r_ref).abs().max())
    print(f"sparse vs the dense reference (rules written out): max |difference| {ref_diff:.1e}")

    # The whole-model API on the dense nn.Sequential, with the same rule per layer.
    composite = sparse_lrp.Composite(ZPlus(), top=Epsilon(1e-6))
    res = sparse_lrp.explain(model, batch, target=target, composite=composite)
    print(f"layer by layer vs sparse_lrp.explain: max |difference| {float((r_sparse - res.node_feat).abs().max()):.1e}")

    assert abs(total_out - total_in - absorbed) < 1e-3 * max(1.0, abs(total_out)), "relevance not conserved"
    assert torch.allclose(r_sparse, r_dense, atol=1e-4, rtol=1e-4), "sparse and dense weights disagree"
    assert torch.allclose(r_sparse, r_ref, atol=1e-4, rtol=1e-4), "sparse weights and the dense reference disagree"
    assert torch.allclose(r_sparse, res.node_feat, atol=1e-4, rtol=1e-4), "layer by layer and explain() disagree"


if __name__ == "__main__":
    main()
