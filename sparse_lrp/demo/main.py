"""``sparse-lrp demo``: the command line of the demo.

Importing this module is cheap (the ``sparse-lrp`` command imports it for every
subcommand): torch, PyG, matplotlib and captum are imported inside :func:`run`.

Outputs under ``--out`` (default ``sparse_lrp_out/``): ``results.csv``, ``results.md``,
``per_target.csv``, ``figures/*.png``; trained weights are cached in ``<out>/weights/``
(``--cache-dir`` to move them, ``--no-cache`` to retrain), so a rerun skips training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..usage import UsageError, check_device, check_out
from .config import DATASET_NAMES, PROFILES

__all__ = ["DemoError", "add_arguments", "run"]


DemoError = UsageError  # (the demo's name for it)


def _dataset_list(text: str) -> list[str]:
    return [p.strip() for p in text.replace(",", " ").split() if p.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help=f"the default: {PROFILES['quick'].targets} targets per dataset, one seed, "
        f"GNNExplainer {PROFILES['quick'].gnnexplainer_epochs} epochs (about two minutes on two cores)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help=f"{PROFILES['full'].targets} targets, {PROFILES['full'].seeds} seeds (mean ± std), "
        f"GNNExplainer {PROFILES['full'].gnnexplainer_epochs} epochs",
    )
    mode.add_argument(
        "--smoke",
        dest="mode",
        action="store_const",
        const="smoke",
        help="tiny datasets and few epochs: checks that everything runs (numbers not meaningful)",
    )
    parser.set_defaults(mode="quick")
    parser.add_argument(
        "--datasets",
        type=_dataset_list,
        default=None,
        metavar="NAMES",
        help=f"comma-separated subset of: {', '.join(DATASET_NAMES)} (default: all)",
    )
    parser.add_argument("--out", default="sparse_lrp_out", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    parser.add_argument("--targets", type=int, default=None, metavar="N", help="targets per dataset (overrides mode)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="number of seeds (overrides mode)")
    parser.add_argument(
        "--methods",
        type=_dataset_list,
        default=None,
        metavar="NAMES",
        help="comma-separated subset of the explainers (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: %(default)s; the graphs are small, more threads only add contention)",
    )
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="trained-weight cache (default: OUT/weights)")
    parser.add_argument("--no-cache", action="store_true", help="always train, never read or write cached weights")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _validate(args: argparse.Namespace):
    from .methods import METHOD_NAMES

    for flag in ("datasets", "methods"):
        if getattr(args, flag) == []:
            raise DemoError(f"--{flag} is empty: name at least one (or leave the option out for all)")
    datasets = args.datasets or list(DATASET_NAMES)
    unknown = [d for d in datasets if d not in DATASET_NAMES]
    if unknown:
        raise DemoError(f"unknown dataset(s) {', '.join(unknown)}; choose from: {', '.join(DATASET_NAMES)}")
    if args.methods is not None:
        bad = [m for m in args.methods if m not in METHOD_NAMES]
        if bad:
            raise DemoError(f"unknown method(s) {', '.join(bad)}; choose from: {', '.join(METHOD_NAMES)}")
    for flag in ("targets", "seeds", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise DemoError(f"--{flag} must be at least 1, got {value}")
    out = Path(args.out).expanduser()
    check_out(out)
    device = check_device(args.device)
    cache = None
    if not args.no_cache:
        cache = Path(args.cache_dir).expanduser() if args.cache_dir else out / "weights"
        check_out(cache)
    return list(dict.fromkeys(datasets)), out, device, cache


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code (0 ok, 1 an explainer failed, 2 bad request)."""
    try:
        datasets, out, device, cache = _validate(args)
    except DemoError as err:
        print(f"sparse-lrp demo: error: {err}", file=sys.stderr)
        return 2

    import torch

    from .runner import DemoConfig, format_table, header_lines, run_demo, table_rows, write_outputs

    profile = PROFILES[args.mode].with_overrides(targets=args.targets, seeds=args.seeds)
    cfg = DemoConfig(
        profile=profile,
        datasets=datasets,
        out=out,
        device=device,
        seed=args.seed,
        cache_dir=cache,
        methods=args.methods,
        progress=not args.no_progress,
        figures=not args.no_figures,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        print(f"sparse-lrp demo ({profile.name}): datasets {', '.join(datasets)}; output in {out}/", flush=True)
        report = run_demo(cfg)
        paths = write_outputs(cfg, report)
        figures = []
        if cfg.figures:
            try:
                from .figures import write_figures
            except ImportError as err:
                report.notes.append(f"figures skipped: {err} (pip install matplotlib networkx)")
            else:
                figures = write_figures(cfg, report)
        print()
        for line in header_lines(cfg, report):
            print(line)
        print()
        print(format_table(table_rows(report)))
        for note in report.notes:
            print(f"note: {note}")
        for failure in report.failures:
            print(f"error: {failure}", file=sys.stderr)
        print()
        print(f"wrote {paths['csv']}, {paths['markdown']}, {paths['per_target']}")
        if figures:
            print(f"wrote {len(figures)} figures to {figures[0].parent}/")
        print(f"total time {time.perf_counter() - start:.1f}s")
    except KeyboardInterrupt:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        print(f"sparse-lrp demo: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
    return 1 if report.failures else 0
