"""Dense MLPs: sparse_lrp against zennit, captum and one plain autograd gradient pass."""

from __future__ import annotations

from functools import partial

import torch

from . import libs
from .common import Config, Table, compare, ratio
from .lrp import grad_x_input, has_explain, mlp_lrp
from .models import mlp

CASES = {
    "tiny": [([32, 64, 64, 10], 8)],
    "quick": [([512, 1024, 1024, 10], 64)],
    "full": [([512, 1024, 1024, 10], 64), ([784, 2048, 2048, 2048, 10], 256)],
}

COLUMNS = [
    "model",
    "batch",
    "rule",
    "lrp_ms",
    "grad_ms",
    "zennit_ms",
    "captum_ms",
    "lrp/grad",
    "zennit/lrp",
    "captum/lrp",
    "maxdiff_zennit",
    "maxdiff_captum",
    "max_abs_R",
]
RATIOS = ["lrp/grad", "zennit/lrp", "captum/lrp"]


def rules():
    """``(label, rule, first-layer rule or None)`` for every compared configuration."""
    import sparse_lrp

    return [
        ("Epsilon", sparse_lrp.Epsilon(1e-6), None),
        ("ZPlus", sparse_lrp.ZPlus(stabilizer=1e-6), None),
        ("AlphaBeta", sparse_lrp.AlphaBeta(2.0, 1.0, stabilizer=1e-6), None),
        ("Gamma", sparse_lrp.Gamma(0.25, stabilizer=1e-6), None),
        # WSquare is an input-layer rule: its relevance does not vanish with the input, and
        # the libraries differ on what crosses a dead ReLU unit; on the input layer they agree.
        ("WSquare+Epsilon", sparse_lrp.Epsilon(1e-6), sparse_lrp.WSquare(stabilizer=1e-6)),
    ]


def run(cfg: Config) -> list[Table]:
    table = Table(
        "dense",
        "Dense MLPs: time per batch of explanations (median ms) against zennit, captum and one gradient pass",
        COLUMNS,
        ratio_columns=RATIOS,
    )
    device = cfg.device
    have_zennit = libs.zennit() is not None
    have_captum = libs.captum() is not None
    if not have_zennit:
        table.note(f"zennit columns skipped: {libs.why_missing['zennit']}")
    elif libs.import_note("zennit"):
        table.note(libs.import_note("zennit"))
    if not have_captum:
        table.note(f"captum columns skipped: {libs.why_missing['captum']}")
    table.note(
        "lrp_ms: sparse_lrp "
        + ("explain(model, x, None, composite=rule)" if has_explain() else "linear_lrp layer by layer")
        + " incl. its forward; grad_ms: forward + autograd gradient x input of the explained logits; "
        "zennit_ms / captum_ms: the libraries' attribution call (composite / LRP object built once); "
        "ratios: zennit/lrp > 1 means sparse_lrp is faster."
    )
    table.note(
        "Every explanation starts from the predicted logit; inputs are uniform in [0, 1); same rule parameters "
        "in every library (stabiliser 1e-6, AlphaBeta(2, 1), Gamma(0.25)); the same rule on every Linear; "
        "ReLUs pass relevance; WSquare+Epsilon: WSquare on the input layer, Epsilon above. "
        "maxdiff_*: max |R_sparse_lrp - R_library| over the batch; max_abs_R: max |R|."
    )
    for sizes, batch in CASES[cfg.mode]:
        model = mlp(sizes, seed=cfg.seed).to(device)
        name = "-".join(map(str, sizes))
        g = torch.Generator().manual_seed(cfg.seed)
        x = torch.rand(batch, sizes[0], generator=g).to(device)
        with torch.no_grad():
            target = model(x).argmax(1)
        cfg.log(f"[dense] MLP {name}, batch {batch}")
        for rname, rule, first in rules():
            fns = {
                "lrp": partial(mlp_lrp, model, x, rule, first=first),
                "grad": partial(grad_x_input, model, x),
            }
            zen = cap = None
            cap_info = libs.captum_rule(rule) if have_captum and first is None else None
            if have_zennit:
                zen = libs.ZennitLRP(model, rule, first)
                fns["zennit"] = partial(zen, x, target)
            if cap_info is not None:
                cap = libs.CaptumLRP(model, cap_info[0])
                fns["captum"] = partial(cap, x, target)
            try:
                t = compare(fns, device=device, **cfg.timing())
                ours = mlp_lrp(model, x, rule, first=first)
                row = {
                    "model": name,
                    "batch": batch,
                    "rule": rname,
                    "lrp_ms": t["lrp"].ms,
                    "grad_ms": t["grad"].ms,
                    "lrp/grad": ratio(t["lrp"].ms, t["grad"].ms),
                    "max_abs_R": float(ours.abs().max()),
                }
                if zen is not None:
                    row["zennit_ms"] = t["zennit"].ms
                    row["zennit/lrp"] = ratio(t["zennit"].ms, t["lrp"].ms)
                    row["maxdiff_zennit"] = libs.max_abs_diff(ours, zen(x, target))
                if cap is not None:
                    row["captum_ms"] = t["captum"].ms
                    row["captum/lrp"] = ratio(t["captum"].ms, t["lrp"].ms)
                    matching = cap_info[1]
                    ref = ours if matching is rule else mlp_lrp(model, x, matching)
                    row["maxdiff_captum"] = libs.max_abs_diff(ref, cap(x, target))
                    if cap_info[2]:
                        table.note(f"{rname}: {cap_info[2]}.")
                elif have_captum:
                    table.note(f"captum has no {type(first or rule).__name__} rule ({rname} not compared).")
            finally:
                if zen is not None:
                    zen.close()
            table.add(**row)
            if rname == "Epsilon":
                table.target(
                    f"{name}: Epsilon LRP <= 1.5x one gradient pass",
                    "–" if row["lrp/grad"] is None else f"{row['lrp/grad']:.2f}x",
                    row["lrp/grad"] is not None and row["lrp/grad"] <= 1.5,
                )
            for lib in ("zennit", "captum"):
                r = row.get(f"{lib}/lrp")
                if r is not None:
                    table.target(
                        f"{name}: {rname} faster than {lib}",
                        f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower",
                        r > 1,
                    )
    return [table]
