"""The demo's loop: generate, train, explain with every method, score, report.

For each dataset and seed: generate the benchmark, train (or load) its model, pick the
targets (test nodes in a motif / on an infection path, or test graphs, that the model
classifies correctly), explain each target with every method through PyG's
``Explainer``, and score each explanation against the ground truth (see
:mod:`.metrics` for the conventions). The same targets are given to every method.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .config import FIDELITY_TOP_K, Profile
from .data import Benchmark, build
from .methods import Method, available_methods, make_explainer
from .metrics import fidelity_topk, mean_std, median, roc_auc, topk_edge_mask
from .models import Trained, train_or_load

__all__ = ["DemoConfig", "Report", "TargetRecord", "run_demo"]


@dataclass
class DemoConfig:
    """Everything one demo run needs."""

    profile: Profile
    datasets: list[str]
    out: Path
    device: torch.device
    seed: int = 0
    cache_dir: Path | None = None
    methods: list[str] | None = None
    progress: bool = True
    figures: bool = True


@dataclass
class TargetRecord:
    """The scores of one method on one explained target."""

    dataset: str
    seed: int
    method: str
    target: int
    edge_auc: float
    edge_auc_signed: float
    edge_auc_generator_mask: float
    node_auc: float
    fid_plus: float
    fid_minus: float
    seconds: float
    subgraph_edges: int
    truth_edges: int


@dataclass
class BatchRecord:
    """One batched Explainer call of an LRP method on all of a dataset's targets."""

    dataset: str
    seed: int
    method: str
    targets: int
    seconds: float
    max_abs_diff: float  # largest |batched per-target edge mask - single call's|


@dataclass
class FigureItem:
    """What the figures need of one explained target."""

    dataset: str
    title: str
    task: str
    target: int
    edge_index: Tensor  # the target's computation subgraph (original node ids)
    edge_truth: Tensor  # [E_sub]
    node_ids: Tensor  # nodes of the subgraph
    node_truth: Tensor | None  # [N_sub]
    feature_names: list[str]
    scores: dict[str, Tensor] = field(default_factory=dict)  # method -> |edge score| [E_sub]
    features: dict[str, Tensor] = field(default_factory=dict)  # method -> Σ_nodes |attr| [F]


@dataclass
class Report:
    """A demo run's results."""

    records: list[TargetRecord]
    rows: list[dict]
    models: list[dict]
    notes: list[str]
    figure_items: list[FigureItem]
    methods: list[str]
    failures: list[str]
    seconds: float = 0.0
    batches: list[BatchRecord] = field(default_factory=list)


# -- targets -------------------------------------------------------------------------
@dataclass
class Target:
    """One explained node or graph with its computation subgraph and ground truth."""

    index: int
    x: Tensor
    edge_index: Tensor
    kwargs: dict
    sub_edges: Tensor  # bool [E]: the edges scored
    sub_nodes: Tensor  # node ids scored
    edge_truth: Tensor  # [E]
    node_truth: Tensor | None  # [N]
    edge_truth_generator: Tensor | None  # [E] (Infection: the generator's own mask)


def _node_target(bench: Benchmark, t: int, device: torch.device, x: Tensor, ei: Tensor) -> Target:
    from torch_geometric.utils import k_hop_subgraph

    d = bench.data
    subset, _, _, sub_edges = k_hop_subgraph(t, bench.model.layers, d.edge_index, num_nodes=d.num_nodes, directed=True)
    if bench.target_truth is not None:
        edge_truth, node_truth = bench.target_truth(t)
        generator = d.edge_gt_generator
    else:
        edge_truth, node_truth, generator = d.edge_gt, d.node_gt, None
    return Target(t, x, ei, {"index": t}, sub_edges, subset, edge_truth, node_truth, generator)


def _graph_target(bench: Benchmark, g: int, device: torch.device) -> Target:
    d = bench.graphs[g]
    x, ei = d.x.to(device), d.edge_index.to(device)
    batch = torch.zeros(d.num_nodes, dtype=torch.long, device=device)
    return Target(
        g,
        x,
        ei,
        {"batch": batch},
        torch.ones(d.edge_index.shape[1], dtype=torch.bool),
        torch.arange(d.num_nodes),
        d.edge_gt,
        d.node_gt,
        None,
    )


def _valid(t: Target) -> bool:
    truth = t.edge_truth[t.sub_edges]
    return truth.numel() > 0 and 0 < float(truth.sum()) < truth.numel()


@torch.no_grad()
def choose_targets(bench: Benchmark, model, count: int, seed: int, device: torch.device) -> list[Target]:
    """Up to ``count`` correctly classified test targets with a non-degenerate ground truth.

    Node tasks explain test nodes of the motif (or infection-path) classes; graph tasks
    explain test graphs. The draw is random with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed + 7919)
    if bench.task == "node":
        d = bench.data
        x, ei = d.x.to(device), d.edge_index.to(device)
        pred = model(x, ei).argmax(1).cpu()
        idx = bench.test_idx
        keep = torch.isin(d.y[idx], torch.tensor(bench.target_classes)) & (pred[idx] == d.y[idx])
        cand = idx[keep]
    else:
        from torch_geometric.loader import DataLoader

        correct = []
        graphs = [bench.graphs[i] for i in bench.test_idx.tolist()]
        for b in DataLoader(graphs, batch_size=256):
            b = b.to(device)
            correct.append((model(b.x, b.edge_index, b.batch).argmax(1) == b.y).cpu())
        cand = bench.test_idx[torch.cat(correct)] if correct else bench.test_idx[:0]
    out: list[Target] = []
    for i in torch.randperm(cand.numel(), generator=gen).tolist():
        c = int(cand[i])
        t = _node_target(bench, c, device, x, ei) if bench.task == "node" else _graph_target(bench, c, device)
        if _valid(t):
            out.append(t)
        if len(out) == count:
            break
    return sorted(out, key=lambda t: t.index)


# -- explaining and scoring ----------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _score(method: Method, t: Target, edge: Tensor, node_feat: Tensor) -> dict:
    sub_e = t.sub_edges
    e = edge[sub_e]
    truth = t.edge_truth[sub_e]
    rec = {
        "edge_auc": roc_auc(e.abs(), truth),
        "edge_auc_signed": roc_auc(e, truth) if method.signed else float("nan"),
        "edge_auc_generator_mask": (
            roc_auc(e.abs(), t.edge_truth_generator[sub_e]) if t.edge_truth_generator is not None else float("nan")
        ),
        "node_auc": float("nan"),
    }
    if t.node_truth is not None:
        node_score = node_feat.abs().reshape(node_feat.shape[0], -1).sum(1)
        rec["node_auc"] = roc_auc(node_score[t.sub_nodes], t.node_truth[t.sub_nodes])
    return rec


def _explain_all(
    cfg: DemoConfig,
    bench: Benchmark,
    trained: Trained,
    targets: list[Target],
    methods: list[Method],
    seed: int,
    figure_items: dict[int, FigureItem],
    failures: list[str],
    batches: list[BatchRecord] | None = None,
) -> list[TargetRecord]:
    from tqdm.auto import tqdm

    records: list[TargetRecord] = []
    bar = tqdm(
        total=len(methods) * len(targets),
        desc=f"explain {bench.title}",
        leave=False,
        disable=not cfg.progress,
        unit="expl",
    )
    for method in methods:
        bar.set_postfix_str(method.name)
        explainer = make_explainer(trained.model, method.make(cfg.profile), bench.task)
        singles: dict[int, Tensor] = {}
        for t in targets:
            torch.manual_seed(seed * 100003 + t.index)  # GNNExplainer's random mask init
            try:
                _sync(cfg.device)
                start = time.perf_counter()
                expl = explainer(t.x, t.edge_index, **t.kwargs)
                _sync(cfg.device)
                seconds = time.perf_counter() - start
                edge = expl.edge_mask.detach().cpu()
                node_feat = expl.node_mask.detach().cpu()
                scores = _score(method, t, edge, node_feat)
                hard = topk_edge_mask(edge, t.sub_edges, FIDELITY_TOP_K)
                fid_plus, fid_minus = fidelity_topk(explainer, expl, hard)
            except Exception as err:  # keep the rest of the report; say what failed
                msg = f"{method.name} failed on {bench.title} (target {t.index}): {type(err).__name__}: {err}"
                failures.append(msg)
                bar.update(len(targets) - targets.index(t))
                break
            records.append(
                TargetRecord(
                    dataset=bench.name,
                    seed=seed,
                    method=method.name,
                    target=t.index,
                    fid_plus=fid_plus,
                    fid_minus=fid_minus,
                    seconds=seconds,
                    subgraph_edges=int(t.sub_edges.sum()),
                    truth_edges=int(t.edge_truth[t.sub_edges].sum()),
                    **scores,
                )
            )
            singles[t.index] = edge
            item = figure_items.get(t.index)
            if item is not None:
                item.scores[method.name] = edge[t.sub_edges].abs()
                item.features[method.name] = node_feat[t.sub_nodes].abs().sum(0)
            bar.update(1)
        if batches is not None and method.family == "LRP" and len(singles) == len(targets) and targets:
            try:
                seconds, masks = _explain_batched(explainer, bench.task, targets, cfg.device)
            except Exception as err:
                failures.append(f"{method.name} batched call failed on {bench.title}: {type(err).__name__}: {err}")
                continue
            diff = max(float((m - singles[t.index]).abs().max()) if m.numel() else 0.0 for t, m in zip(targets, masks))
            batches.append(BatchRecord(bench.name, seed, method.name, len(targets), seconds, diff))
    bar.close()
    return records


def _explain_batched(explainer, task: str, targets: list[Target], device: torch.device) -> tuple[float, list[Tensor]]:
    """All targets in ONE Explainer call (``index`` a tensor): its time and per-target edge masks.

    Node targets share the dataset's graph; graph targets become one mini-batch. The
    masks are laid out like the single calls' (each target's own graph for graph tasks).
    """
    if task == "node":
        x, ei, kwargs = targets[0].x, targets[0].edge_index, {}
        index = torch.tensor([t.index for t in targets], device=device)
        spans = [(0, ei.shape[1])] * len(targets)
    else:
        from torch_geometric.data import Batch, Data

        b = Batch.from_data_list([Data(x=t.x, edge_index=t.edge_index) for t in targets]).to(device)
        x, ei, kwargs = b.x, b.edge_index, {"batch": b.batch}
        index = torch.arange(len(targets), device=device)
        ends = torch.cumsum(torch.tensor([t.edge_index.shape[1] for t in targets]), 0).tolist()
        spans = list(zip([0, *ends[:-1]], ends))
    _sync(device)
    start = time.perf_counter()
    expl = explainer(x, ei, index=index, **kwargs)
    _sync(device)
    seconds = time.perf_counter() - start
    per = getattr(expl, "edge_mask_per_target", None)  # [E, T]; absent for one target
    per = expl.edge_mask[:, None] if per is None else per
    per = (per.to_dense() if per.is_sparse else per).detach().cpu()
    return seconds, [per[lo:hi, i] for i, (lo, hi) in enumerate(spans)]


def _figure_item(bench: Benchmark, t: Target) -> FigureItem:
    d = bench.data if bench.task == "node" else bench.graphs[t.index]
    return FigureItem(
        dataset=bench.name,
        title=bench.title,
        task=bench.task,
        target=t.index,
        edge_index=d.edge_index[:, t.sub_edges],
        edge_truth=t.edge_truth[t.sub_edges],
        node_ids=t.sub_nodes,
        node_truth=None if t.node_truth is None else t.node_truth[t.sub_nodes],
        feature_names=bench.feature_names,
    )


# -- aggregation ---------------------------------------------------------------------
METRICS = ("edge_auc", "node_auc", "fid_plus", "fid_minus", "edge_auc_signed", "edge_auc_generator_mask")


def aggregate(
    records: list[TargetRecord], datasets: list[str], methods: list[str], batches: list[BatchRecord] = ()
) -> list[dict]:
    """One row per dataset and method: per-seed means (median time), then mean ± std over seeds.

    ``ms_batched`` is the time per target of one batched call (LRP methods only).
    """
    rows = []
    gnnexp_ms: dict[str, float] = {}
    for ds in datasets:
        for m in methods:
            recs = [r for r in records if r.dataset == ds and r.method == m]
            if not recs:
                continue
            seeds = sorted({r.seed for r in recs})
            row: dict = {"dataset": ds, "method": m, "seeds": len(seeds), "targets": len(recs)}
            for key in METRICS:
                per_seed = []
                for s in seeds:
                    vals = [getattr(r, key) for r in recs if r.seed == s]
                    vals = [v for v in vals if math.isfinite(v)]
                    per_seed.append(sum(vals) / len(vals) if vals else float("nan"))
                row[key], row[key + "_std"] = mean_std(per_seed)
            ms = [median([r.seconds for r in recs if r.seed == s]) * 1000 for s in seeds]
            row["ms"], row["ms_std"] = mean_std(ms)
            per_batch = [b.seconds / b.targets * 1000 for b in batches if b.dataset == ds and b.method == m]
            row["ms_batched"], row["ms_batched_std"] = mean_std(per_batch)
            rows.append(row)
            if m == "GNNExplainer":
                gnnexp_ms[ds] = row["ms"]
    for row in rows:
        ref = gnnexp_ms.get(row["dataset"])
        row["speedup_vs_gnnexplainer"] = ref / row["ms"] if ref and row["ms"] > 0 else float("nan")
        batched = row["ms_batched"]
        row["speedup_batched_vs_gnnexplainer"] = ref / batched if ref and batched > 0 else float("nan")
    return rows


# -- the run -------------------------------------------------------------------------
def run_demo(cfg: DemoConfig, log=print) -> Report:
    """Run the demo as configured; returns the report (files are written by :func:`write_outputs`)."""
    with warnings.catch_warnings():
        # Known, harmless noise: Captum sets requires_grad itself; PyG's jit templates.
        warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already require gradients")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
        warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message=r"Sparse invariant checks are implicitly disabled")
        return _run_demo(cfg, log)


def _run_demo(cfg: DemoConfig, log) -> Report:
    t_start = time.perf_counter()
    methods, notes = available_methods(cfg.methods)
    if not methods:
        raise RuntimeError("no explainer can run: " + "; ".join(notes))
    records: list[TargetRecord] = []
    batches: list[BatchRecord] = []
    models: list[dict] = []
    figure_items: list[FigureItem] = []
    failures: list[str] = []
    seeds = [cfg.seed + i for i in range(cfg.profile.seeds)]
    for name in cfg.datasets:
        for s_i, seed in enumerate(seeds):
            bench = build(name, seed=seed, tiny=cfg.profile.tiny)
            trained = train_or_load(
                bench,
                seed=seed,
                device=cfg.device,
                cache_dir=cfg.cache_dir,
                max_epochs=cfg.profile.max_train_epochs,
                progress=cfg.progress,
            )
            how = "cached" if trained.cached else f"trained {trained.epochs} epochs in {trained.seconds:.1f}s"
            log(
                f"{bench.title:<12} seed {seed}: {type(trained.model).__name__}"
                f"({bench.model.conv} x{bench.model.layers}) train acc {trained.train_acc:.3f}, "
                f"test acc {trained.test_acc:.3f} ({how})"
            )
            targets = choose_targets(bench, trained.model, cfg.profile.targets, seed, cfg.device)
            models.append(
                {
                    "dataset": name,
                    "seed": seed,
                    "model": f"{type(trained.model).__name__}({bench.model.conv}x{bench.model.layers})",
                    "train_acc": trained.train_acc,
                    "test_acc": trained.test_acc,
                    "targets": len(targets),
                    "description": bench.description,
                }
            )
            if len(targets) < cfg.profile.targets:
                notes.append(
                    f"{bench.title} seed {seed}: only {len(targets)} correctly classified test targets "
                    f"(asked for {cfg.profile.targets})"
                )
            items: dict[int, FigureItem] = {}
            if cfg.figures and s_i == 0:
                for t in targets[: cfg.profile.figure_targets]:
                    items[t.index] = _figure_item(bench, t)
            records += _explain_all(cfg, bench, trained, targets, methods, seed, items, failures, batches)
            figure_items += list(items.values())
    method_names = [m.name for m in methods]
    rows = aggregate(records, cfg.datasets, method_names, batches)
    if batches:
        worst = max(b.max_abs_diff for b in batches)
        notes.append(
            f"batched LRP calls reproduce the single calls' per-target edge masks (largest |difference| {worst:.1e})"
        )
    return Report(
        records, rows, models, notes, figure_items, method_names, failures, time.perf_counter() - t_start, batches
    )


# -- output --------------------------------------------------------------------------
def _fmt(v: float, std: float | None = None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    s = f"{v:.{digits}f}"
    if std is not None and math.isfinite(std) and std > 0:
        s += f" ± {std:.{digits}f}"
    return s


def _fmt_ms(v: float, std: float | None = None) -> str:
    if not math.isfinite(v):
        return "-"
    digits = 2 if v < 10 else 1 if v < 100 else 0
    return _fmt(v, std, digits)


TITLES = {
    "ba_shapes": "BA-Shapes",
    "tree_cycles": "Tree-Cycles",
    "tree_grid": "Tree-Grid",
    "infection": "Infection",
    "ba_2motif": "BA-2Motif",
}
HEADER = [
    "dataset",
    "method",
    "edge AUC",
    "node AUC",
    "fid+",
    "fid-",
    "ms/expl",
    "x vs GNNExp",
    "batched ms/expl",
    "x batched",
]


def _fmt_x(v: float) -> str:
    return _fmt(v, None, 0 if math.isfinite(v) and v >= 10 else 1)


def table_rows(report: Report) -> list[list[str]]:
    """The report's rows as strings, in the column order of :data:`HEADER`."""
    out = []
    for r in report.rows:
        std = r["seeds"] > 1
        out.append(
            [
                TITLES.get(r["dataset"], r["dataset"]),
                r["method"],
                _fmt(r["edge_auc"], r["edge_auc_std"] if std else None),
                _fmt(r["node_auc"], r["node_auc_std"] if std else None),
                _fmt(r["fid_plus"], r["fid_plus_std"] if std else None, 2),
                _fmt(r["fid_minus"], r["fid_minus_std"] if std else None, 2),
                _fmt_ms(r["ms"], r["ms_std"] if std else None),
                _fmt_x(r["speedup_vs_gnnexplainer"]),
                _fmt_ms(r["ms_batched"], r["ms_batched_std"] if std else None),
                _fmt_x(r["speedup_batched_vs_gnnexplainer"]),
            ]
        )
    return out


def header_lines(cfg: DemoConfig, report: Report) -> list[str]:
    """What the numbers mean: the run's settings and the metric conventions."""
    p = cfg.profile
    lines = [
        f"mode {p.name}: {p.targets} targets per dataset and seed, {p.seeds} seed(s) from {cfg.seed}"
        + (" (mean ± std over seeds)" if p.seeds > 1 else "")
        + f"; GNNExplainer {p.gnnexplainer_epochs} epochs; IntegratedGradients {p.ig_steps} steps; "
        f"device {cfg.device}, {torch.get_num_threads()} thread(s)",
        "edge/node AUC: ROC-AUC of |score| against the ground truth over the target's computation subgraph "
        "(higher is better; 0.5 = random)",
        f"fid+/fid-: PyG fidelity with the top-{FIDELITY_TOP_K} edges as a hard mask "
        "(fid+ higher and fid- lower is better)",
        "ms/expl: median wall-clock time of one Explainer call; x vs GNNExp: GNNExplainer's median time / this one's",
        "batched ms/expl (LRP): ONE Explainer call on all targets (index=tensor, per-target masks attached), "
        "divided by the number of targets; x batched: GNNExplainer's median time per call / that",
        "results.csv also has edge_auc_signed (signed methods ranked by raw score) and, for Infection, "
        "edge_auc_generator_mask (against the generator's global mask instead of the target's infection paths)",
    ]
    if p.tiny:
        lines.insert(0, "SMOKE RUN: tiny datasets and few epochs; the numbers are not meaningful")
    return lines


def format_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    """A plain-text table with aligned columns (a rule between datasets)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            out.append("")
        out.append(line(r if r[0] != prev else ["", *r[1:]]))
        prev = r[0]
    return "\n".join(out)


def format_markdown(cfg: DemoConfig, report: Report) -> str:
    """The report as Markdown: settings, model accuracies, the table, notes."""
    lines = ["# sparse-lrp demo results", ""]
    lines += [f"- {h}" for h in header_lines(cfg, report)]
    lines += [
        "",
        "## Models",
        "",
        "| dataset | seed | model | train acc | test acc | targets | data |",
        "|---" * 7 + "|",
    ]
    for m in report.models:
        lines.append(
            f"| {TITLES.get(m['dataset'], m['dataset'])} | {m['seed']} | {m['model']} | {m['train_acc']:.3f} "
            f"| {m['test_acc']:.3f} | {m['targets']} | {m['description']} |"
        )
    lines += [
        "",
        "## Explanations",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|---|---" + "|--:" * (len(HEADER) - 2) + "|",
    ]
    for r in table_rows(report):
        lines.append("| " + " | ".join(r) + " |")
    if report.notes or report.failures:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes + report.failures]
    return "\n".join(lines) + "\n"


def write_outputs(cfg: DemoConfig, report: Report) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``per_target.csv`` under ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": cfg.out / "results.csv",
        "markdown": cfg.out / "results.md",
        "per_target": cfg.out / "per_target.csv",
    }
    keys = ["dataset", "method", "seeds", "targets"]
    for k in (*METRICS, "ms", "ms_batched"):
        keys += [k, k + "_std"]
    keys += ["speedup_vs_gnnexplainer", "speedup_batched_vs_gnnexplainer"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in report.rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with open(paths["per_target"], "w", newline="") as f:
        fields = list(asdict(report.records[0]).keys()) if report.records else ["dataset"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for rec in report.records:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(rec).items()})
    paths["markdown"].write_text(format_markdown(cfg, report))
    return paths
