"""The ``sparse-lrp`` command: ``sparse-lrp demo`` and ``sparse-lrp bench``.

Each subcommand lives in its own package and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("sparse_lrp.demo.main", "explain trained GNNs on generated ground-truth benchmarks"),
    "bench": ("sparse_lrp.bench.main", "measure speed and memory against the alternatives"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparse-lrp", description="Layer-wise Relevance Propagation for GNNs.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
