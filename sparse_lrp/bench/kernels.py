"""The edge-kernel micro-benchmarks of ``benchmarks/bench_kernels.py``, as a suite.

That script lives in the source tree, not in the installed package; this suite loads it
by path when it is there (a source checkout or an editable install) and otherwise
reports itself as skipped.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from .common import Config, Table

SIZE = {"tiny": None, "quick": "small", "full": "full"}
QUICK_RULES = ("Epsilon", "ZPlus", "Gamma")  # --full runs every rule


def script_path() -> Path:
    import sparse_lrp

    return Path(sparse_lrp.__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"


def load():
    path = script_path()
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("sparse_lrp_bench_kernels", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(cfg: Config) -> list[Table]:
    table = Table("kernels", "Edge kernel (edge_lrp) micro-benchmarks", ["section", "name", "note"])
    size = SIZE[cfg.mode]
    if size is None:
        table.note("kernels suite skipped in --tiny mode (run benchmarks/bench_kernels.py directly).")
        return [table]
    module = load()
    if module is None or not callable(getattr(module, "run", None)):
        table.note(f"kernels suite skipped: {script_path()} not found (it ships with the source tree only).")
        return [table]
    kwargs = {"size": size, "repeats": cfg.n_repeats(), "device": cfg.device, "memory": cfg.memory, "log": cfg.log}
    if cfg.mode == "quick":
        kwargs["rules"] = QUICK_RULES
    accepted = inspect.signature(module.run).parameters
    rows = module.run(**{k: v for k, v in kwargs.items() if k in accepted})
    columns = list(getattr(module, "COLUMNS", ()))
    for r in rows:
        columns += [k for k in r if k not in columns]
    detail = [r for r in rows if r.get("section") != "target"]
    table = Table(
        "kernels",
        f"Edge kernel (edge_lrp) micro-benchmarks, size {size!r} (median ms; vs_a / vs_b = time over baseline "
        "(a) CSR forward / (b) scatter forward)",
        [c for c in columns if any(c in r for r in detail)],
        ratio_columns=[c for c in ("vs_a", "vs_b") if c in columns],
    )
    for r in detail:
        table.rows.append(dict(r))
    for r in rows:
        if r.get("section") == "target":
            status = str(r.get("status", ""))
            table.targets.append(
                {
                    "target": f"{r.get('name', '')}: {r.get('target', '')}",
                    "measured": str(r.get("measured", "")),
                    "status": status,
                }
            )
    note = getattr(module, "MEMORY_NOTE", None)
    if note:
        table.note(note)
    table.note(f"From {script_path().name}; see its docstring for the baselines (a)-(d).")
    return [table]
