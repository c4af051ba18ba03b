"""``sparse-lrp bench``: run the benchmark suites, print tables, write CSV, Markdown and a plot.

Kept cheap to import: the suites (and torch) load only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

from ..usage import UsageError, check_device, check_out

SUITES = ("dense", "sparse", "graphs", "explainers", "kernels")
DEFAULT_SUITES = ("dense", "sparse", "graphs", "explainers", "kernels")
DEFAULT_OUT = "sparse_lrp_out/bench"
QUIET_WARNINGS = (
    r"Input Tensor \d+ did not already require gradients",  # captum, every call (hetero: one per node type)
    "Sparse CSR tensor support is in beta",  # torch, once
)


def _count(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e6, got {text!r}") from err
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from err
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _suites(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))  # (each once, in order)
    if names == ("all",):
        return SUITES
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown suites {unknown}; choose from {', '.join(SUITES)} or 'all'")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="a few minutes (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="larger models and graphs")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="seconds; a smoke test")
    parser.set_defaults(mode="quick")
    parser.add_argument(
        "--suites",
        type=_suites,
        default=DEFAULT_SUITES,
        help=f"comma-separated subset of {','.join(SUITES)} (or 'all'; default: all)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--min-edges", type=_count, default=None, help="smallest graph of the graphs suite (1e4)")
    parser.add_argument(
        "--max-edges", type=_count, default=None, help="largest graph of the graphs suite (quick 1e6, full 1e7)"
    )
    parser.add_argument("--repeats", type=_at_least(1), default=None, help="timed repeats per measurement (median)")
    parser.add_argument("--warmup", type=_at_least(0), default=None, help="untimed calls before timing (1; --tiny 0)")
    parser.add_argument(
        "--max-seconds", type=_seconds, default=None, help="stop repeating a method after this much time (>= 3 repeats)"
    )
    parser.add_argument(
        "--min-seconds",
        type=_seconds,
        default=None,
        help="repeat a method until this much time is timed (quick 0.3, full 1; up to 200 rounds)",
    )
    parser.add_argument("--memory-budget", type=_count, default=64, help="MiB for the edge-chunked path (64)")
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    parser.add_argument("--threads", type=_at_least(1), default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for CSV, Markdown, JSON and plot ({DEFAULT_OUT})")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def config_from_args(args: argparse.Namespace):
    import torch

    from .common import Config, MiB

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sparse-lrp bench: --device cuda but torch sees no CUDA device")

    return Config(
        mode=args.mode,
        device=device,
        suites=tuple(args.suites),
        repeats=args.repeats,
        warmup=(0 if args.mode == "tiny" else 1) if args.warmup is None else max(0, args.warmup),
        min_edges=args.min_edges,
        max_edges=args.max_edges,
        memory=not args.no_memory,
        memory_budget=int(args.memory_budget * MiB),
        seed=args.seed,
        out=args.out,
        plot=not args.no_plot,
        verbose=not args.quiet,
        max_seconds=args.max_seconds,
        min_seconds=args.min_seconds,
    )


def run_suites(cfg) -> tuple[list, list[str]]:
    """Run ``cfg.suites``; return the tables and the errors (a failing suite does not stop the rest)."""
    import importlib

    from .common import render

    tables, errors = [], []
    for name in cfg.suites:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"sparse_lrp.bench.{name}")
            with warnings.catch_warnings():
                for message in QUIET_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
                got = module.run(cfg)
        except Exception as err:
            errors.append(f"suite {name} failed: {type(err).__name__}: {err}")
            traceback.print_exc()
            continue
        cfg.log(f"[{name}] done in {time.perf_counter() - t0:.0f} s")
        for table in got:
            tables.append(table)
            print(render(table) + "\n", flush=True)
    return tables, errors


def write_outputs(cfg, tables: list, env: dict, errors: list[str], seconds: float) -> dict:
    """CSV per table, ``bench.md`` (all tables), ``results.json`` and ``bench.png``; returns the paths."""
    from pathlib import Path

    from .common import env_line, render, save_json, write_csv

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table in tables:
        p = out / f"{table.name}.csv"
        write_csv(table, p, env)
        paths[table.name] = p
    md = [
        "## sparse_lrp benchmark",
        "",
        f"`sparse-lrp bench --{cfg.mode}` on {cfg.device}, {seconds:.0f} s. {env_line(env)}.",
        "",
    ]
    if env.get("warning"):
        md += [f"**Warning:** {env['warning']}.", ""]
    for table in tables:
        md += [render(table, markdown=True), ""]
    if errors:
        md += ["**Errors**", ""] + [f"- {e}" for e in errors] + [""]
    (out / "bench.md").write_text("\n".join(md))
    paths["markdown"] = out / "bench.md"
    save_json(
        {"env": env, "mode": cfg.mode, "seconds": seconds, "errors": errors, "tables": [t.to_dict() for t in tables]},
        out / "results.json",
    )
    paths["json"] = out / "results.json"
    if cfg.plot:
        try:
            from .plot import plot

            p = plot(tables, env, out / "bench.png")
            if p is not None:
                paths["plot"] = p
        except ImportError as err:
            print(f"no plot: {err} (install matplotlib)", file=sys.stderr)
    return paths


def busy_warning(env: dict) -> str | None:
    """A warning when other processes already keep the CPU cores busy (timings get noisy)."""
    load, cores = env.get("load_avg_1m"), env.get("cores") or 1
    if env.get("gpu") or load is None or load < 0.75 * cores:
        return None
    return (
        f"the machine is busy (load average {load:g} on {cores} cores): timings are noisy, and OpenMP threads "
        "that wait for each other slow down badly; run when it is idle, or with --threads 1"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from .common import env_line, environment

    try:
        if args.device != "auto":
            check_device(args.device)
        if args.min_edges is not None and args.max_edges is not None and args.min_edges > args.max_edges:
            raise UsageError(f"--min-edges {args.min_edges:g} is above --max-edges {args.max_edges:g}")
        check_out(Path(args.out).expanduser())
    except UsageError as err:
        print(f"sparse-lrp bench: error: {err}", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        env = environment(cfg.device)
        print(f"sparse-lrp bench --{cfg.mode}: suites {', '.join(cfg.suites)} on {cfg.device}")
        print(env_line(env), flush=True)
        busy = busy_warning(env)
        if busy:
            env["warning"] = busy
            print("WARNING: " + busy, flush=True)
        print(flush=True)
        t0 = time.perf_counter()
        tables, errors = run_suites(cfg)
        seconds = time.perf_counter() - t0
        paths = write_outputs(cfg, tables, env, errors, seconds)
    finally:
        torch.set_num_threads(previous_threads)
    print(f"finished in {seconds:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0
