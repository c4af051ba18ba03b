"""One figure of the headline numbers: speed-ups on dense MLPs and graph scaling."""

from __future__ import annotations

from pathlib import Path

from .common import env_line


def plot(tables: list, env: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {t.name: t for t in tables}
    panels = []
    if by_name.get("dense") and by_name["dense"].rows:
        panels.append(("dense", _dense))
    if by_name.get("sparse") and by_name["sparse"].rows:
        panels.append(("sparse", _sparse))
    if by_name.get("graphs") and by_name["graphs"].rows:
        panels.append(("graphs", _graph_time))
        if any(r.get("mem_lrp_mb") is not None for r in by_name["graphs"].rows):
            panels.append(("graphs", _graph_memory))
    if by_name.get("explainers") and by_name["explainers"].rows:
        panels.append(("explainers", _explainers))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows + 0.6), squeeze=False)
    for ax, (name, draw) in zip(axes.flat, panels):
        draw(ax, by_name[name])
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("sparse_lrp benchmark — " + env_line(env), fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _dense(ax, table) -> None:
    rows = table.rows
    labels = [f"{r['rule']}\n{r['model']}" if len({x["model"] for x in rows}) > 1 else r["rule"] for r in rows]
    series = [
        ("lrp/grad", "sparse_lrp ÷ gradient"),
        ("zennit/lrp", "zennit ÷ sparse_lrp"),
        ("captum/lrp", "captum ÷ sparse_lrp"),
    ]
    width = 0.8 / len(series)
    for k, (col, label) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ax.bar(xs, [r.get(col) or float("nan") for r in rows], width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30)
    ax.set_ylabel("time ratio")
    ax.set_title("Dense MLP: time ratios", fontsize=9)
    ax.legend(fontsize=7)


def _sparse(ax, table) -> None:
    rows = [r for r in table.rows if r["rule"] == "Epsilon"]
    d = [r["density"] for r in rows]
    for col, label in (
        ("sparse_ms", "sparse weights"),
        ("dense_ms", "dense reference"),
        ("zennit_ms", "zennit (dense)"),
    ):
        ys = [r.get(col) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(d, ys, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weight density")
    ax.set_ylabel("ms per batch")
    ax.set_title("Pruned MLP: Epsilon LRP", fontsize=9)
    ax.legend(fontsize=7)


def _graph_time(ax, table) -> None:
    for model in dict.fromkeys(r["model"] for r in table.rows):
        rows = [r for r in table.rows if r["model"] == model]
        e = [r["edges"] for r in rows]
        for col, style in (("fwd_ms", ":"), ("grad_ms", "--"), ("lrp_ms", "-"), ("lrp_edges_ms", "-.")):
            ax.plot(e, [1e6 * r[col] / r["edges"] for r in rows], style, marker="o", ms=3, label=f"{model} {col[:-3]}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("edges")
    ax.set_ylabel("ns per edge")
    ax.set_title("Graphs: time per edge", fontsize=9)
    ax.legend(fontsize=6, ncol=2)


def _graph_memory(ax, table) -> None:
    for model in dict.fromkeys(r["model"] for r in table.rows):
        rows = [r for r in table.rows if r["model"] == model and r.get("mem_lrp_mb") is not None]
        e = [r["edges"] for r in rows]
        for col, style in (("mem_fwd_mb", ":"), ("mem_grad_mb", "--"), ("mem_lrp_mb", "-"), ("mem_chunked_mb", "-.")):
            ax.plot(
                e, [max(r.get(col) or 0, 1e-3) for r in rows], style, marker="o", ms=3, label=f"{model} {col[4:-3]}"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("edges")
    ax.set_ylabel("extra peak memory (MiB)")
    ax.set_title("Graphs: peak memory per call", fontsize=9)
    ax.legend(fontsize=6, ncol=2)


def _explainers(ax, table) -> None:
    rows = table.rows
    labels = [f"{r['method']} ({r['model']})" if len({x["model"] for x in rows}) > 1 else r["method"] for r in rows]
    ax.barh(range(len(rows)), [r["ms_per_explanation"] for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ms per explanation")
    ax.set_title("Against PyG explainers", fontsize=9)
    ax.invert_yaxis()
