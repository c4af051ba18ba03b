"""Pruned MLPs: LRP with sparse weights against the dense reference and zennit."""

from __future__ import annotations

from functools import partial

import torch

from . import libs
from .common import Config, Table, compare, ratio
from .lrp import layers_lrp, mlp_layers
from .models import mlp, prune, sparse_weights

CASES = {
    "tiny": ([64, 128, 128, 10], 4),
    "quick": ([1024, 1024, 1024, 10], 64),
    "full": ([4096, 4096, 4096, 10], 64),
}
DENSITIES = (0.5, 0.1, 0.01, 0.001)

COLUMNS = [
    "model",
    "rule",
    "density",
    "nnz",
    "sparse_ms",
    "dense_ms",
    "zennit_ms",
    "dense/sparse",
    "zennit/sparse",
    "maxdiff_dense",
    "winner",
]
RATIOS = ["dense/sparse", "zennit/sparse"]


def run(cfg: Config) -> list[Table]:
    import sparse_lrp

    sizes, batch = CASES[cfg.mode]
    name = "-".join(map(str, sizes))
    table = Table(
        "sparse",
        f"Pruned MLP {name}, batch {batch}: LRP with sparse weights against the dense reference and zennit (median ms)",
        COLUMNS,
        ratio_columns=RATIOS,
    )
    have_zennit = libs.zennit() is not None
    if not have_zennit:
        table.note(f"zennit column skipped: {libs.why_missing['zennit']}")
    table.note(
        "sparse_ms: sparse_lrp.linear_lrp per layer on CSR weights (the edge kernel over the stored "
        "connections), incl. the forward; dense_ms: the same with the pruned weights as dense tensors "
        "(the dense reference); zennit_ms: zennit on the dense-weight model. Ratios > 1: sparse is faster."
    )
    table.note(
        "Pruning keeps a random fraction of every weight matrix (rescaled by 1/sqrt(density)); the "
        "10-class top layer is pruned too."
    )
    rules = [sparse_lrp.Epsilon(1e-6)] + ([sparse_lrp.ZPlus(stabilizer=1e-6)] if cfg.mode == "full" else [])
    device = cfg.device
    base = mlp(sizes, seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(batch, sizes[0], generator=g).to(device)
    for density in DENSITIES:
        model = prune(base, density, seed=cfg.seed).to(device)
        dense_layers = mlp_layers(model)
        sparse_layers = sparse_weights(model)
        nnz = sum(int(w._nnz()) for w, _ in sparse_layers)
        with torch.no_grad():
            target = model(x).argmax(1)
        cfg.log(f"[sparse] density {density:g}, {nnz:,} non-zeros")
        for rule in rules:
            rname = type(rule).__name__
            fns = {
                "sparse": partial(layers_lrp, sparse_layers, x, rule, target),
                "dense": partial(layers_lrp, dense_layers, x, rule, target),
            }
            zen = libs.ZennitLRP(model, rule) if have_zennit else None
            if zen is not None:
                fns["zennit"] = partial(zen, x, target)
            try:
                t = compare(fns, device=device, **cfg.timing())
            finally:
                if zen is not None:
                    zen.close()
            with torch.no_grad():
                diff = libs.max_abs_diff(
                    layers_lrp(sparse_layers, x, rule, target), layers_lrp(dense_layers, x, rule, target)
                )
            speed = {k: v.ms for k, v in t.items()}
            row = {
                "model": name,
                "rule": rname,
                "density": density,
                "nnz": nnz,
                "sparse_ms": speed["sparse"],
                "dense_ms": speed["dense"],
                "zennit_ms": speed.get("zennit"),
                "dense/sparse": ratio(speed["dense"], speed["sparse"]),
                "zennit/sparse": ratio(speed.get("zennit"), speed["sparse"]),
                "maxdiff_dense": diff,
                "winner": min(speed, key=speed.get),
            }
            table.add(**row)
    wins = [r["density"] for r in table.rows if r["rule"] == "Epsilon" and (r["dense/sparse"] or 0) > 1]
    table.note(
        "Sparse weights win at densities " + ", ".join(f"{d:g}" for d in wins) + "."
        if wins
        else "Sparse weights won at no density here."
    )
    return [table]
