"""Shared pieces of the benchmark: configuration, timing, peak memory, tables, environment."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

MiB = 2**20

# --------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    """What one ``sparse-lrp bench`` run measures. ``mode`` picks the sizes (see below)."""

    mode: str = "quick"  # "tiny" (tests), "quick", "full"
    device: str = "cpu"
    suites: tuple[str, ...] = ("dense", "sparse", "graphs", "explainers")
    repeats: int | None = None  # None: the mode's default
    warmup: int = 1
    min_edges: float | None = None
    max_edges: float | None = None
    memory: bool = True
    memory_budget: int = 64 * MiB
    seed: int = 0
    out: str | None = None
    plot: bool = True
    verbose: bool = True
    max_seconds: float | None = None  # per timed method: stop repeating after this (at least 3 repeats)
    min_seconds: float | None = None  # per timed method: keep repeating until this much (None: the mode's)

    @property
    def tiny(self) -> bool:
        return self.mode == "tiny"

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def n_repeats(self) -> int:
        if self.repeats is not None:
            return max(1, int(self.repeats))
        return {"tiny": 1, "quick": 5, "full": 15}[self.mode]

    def time_cap(self) -> float:
        if self.max_seconds is not None:
            return float(self.max_seconds)
        return {"tiny": 0.5, "quick": 3.0, "full": 30.0}[self.mode]

    def time_floor(self) -> float:
        if self.min_seconds is not None:
            return float(self.min_seconds)
        return {"tiny": 0.0, "quick": 0.3, "full": 1.0}[self.mode]

    def timing(self) -> dict:
        """The keyword arguments :func:`compare` takes from this run's settings."""
        return {
            "repeats": self.n_repeats(),
            "warmup": self.warmup,
            "max_seconds": self.time_cap(),
            "min_seconds": self.time_floor(),
        }

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# timing


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ms(self) -> float:
        return 1e3 * self.median


def compare(
    fns: dict[str, Callable[[], object]],
    *,
    device: str,
    repeats: int,
    warmup: int = 1,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    max_rounds: int = 200,
) -> dict[str, Timing]:
    """Time several callables interleaved (A B C A B C ...) and return each one's timings.

    Interleaving puts every method and its baseline under the same machine load, so
    their ratio is meaningful even where the absolute times drift. The garbage collector
    is off inside each timed call (as in :mod:`timeit`). Each callable runs
    ``warmup`` times first. With ``max_seconds``, a callable stops repeating once its
    timed calls add up to that much (after at least 3 of them, or 1 if one call alone
    exceeds it), so slow baselines do not dominate a run. With ``min_seconds``, the rounds
    go on past ``repeats`` (up to ``max_rounds``) until every callable's timed calls add up
    to that much: a call of a few milliseconds gets a median of many samples, not of a
    handful that one scheduler hiccup can move.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}

    def capped(name: str) -> bool:
        n, spent = len(times[name]), sum(times[name])
        return max_seconds is not None and n > 0 and spent > max_seconds and (n >= 3 or spent > 3 * max_seconds)

    for round_ in range(max(repeats, max_rounds if min_seconds > 0 else 0)):
        if round_ >= repeats and all(capped(k) or sum(v) >= min_seconds for k, v in times.items()):
            break
        active = False
        for name, fn in fns.items():
            if capped(name):
                continue
            active = True
            sync(device)
            gc.disable()  # as timeit does: no collector pauses inside a timed call
            try:
                t0 = time.perf_counter()
                out = fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
            finally:
                gc.enable()
            del out
        if not active:
            break
    return {k: Timing(v) for k, v in times.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` when both are positive finite numbers, else None."""
    if a is None or b is None or not (a > 0 and b > 0) or math.isinf(a) or math.isinf(b):
        return None
    return a / b


# --------------------------------------------------------------------------------------
# peak memory

MEMORY_NOTE_CPU = (
    "Peak memory (CPU): the call's extra memory = the peak of the bytes torch's CPU allocator handed out "
    "during one call and had not yet freed, from the allocation and free events of "
    "torch.profiler(profile_memory=True) (checked first on an allocation of known size); it counts the "
    "call's temporaries, autograd graph and outputs, not the graph, model and inputs that existed before, "
    "nor memory outside torch tensors."
)
MEMORY_NOTE_RSS = (
    "Peak memory (CPU, resident): Linux VmHWM during one call minus VmRSS just before it (high-water mark "
    "reset through /proc/self/clear_refs, free heap returned with malloc_trim first); includes the C "
    "allocator's overhead and can miss memory the allocator reused."
)
MEMORY_NOTE_CUDA = (
    "Peak memory (CUDA): torch.cuda.max_memory_allocated during one call minus memory_allocated "
    "before it (the call's temporaries, autograd graph and outputs)."
)

_PROFILER_OK: bool | None = None


@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2: the profiler's C++ side logs a line per start and stop."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled_peak(fn: Callable[[], object]) -> tuple[int, object]:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted(
        (ev.start_ns(), ev.nbytes())
        for ev in prof.profiler.kineto_results.events()
        if ev.name() == "[memory]" and str(ev.device_type()).rsplit(".", 1)[-1].lower() == "cpu"
    )
    cur = peak = 0
    for _, nbytes in events:
        cur = max(0, cur + nbytes)  # a free of a block from before the call does not count
        peak = max(peak, cur)
    return peak, out


def profiler_memory_works() -> bool:
    """Calibrate once: an allocation of known size must show up with exactly that size."""
    global _PROFILER_OK
    if _PROFILER_OK is None:
        nbytes = 3 * MiB + 4096
        try:
            peak, _ = _profiled_peak(lambda: torch.empty(nbytes // 4))
            _PROFILER_OK = peak == nbytes
        except Exception:
            _PROFILER_OK = False
    return _PROFILER_OK


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_memory_works() -> bool:
    return _status_kib("VmHWM") is not None and _reset_hwm()


def memory_method(device: str) -> str | None:
    """How :func:`peak_memory` measures on ``device``: "cuda", "profiler", "rss" or None."""
    if torch.device(device).type == "cuda":
        return "cuda"
    if profiler_memory_works():
        return "profiler"
    return "rss" if rss_memory_works() else None


def memory_note(device: str) -> str | None:
    return {"cuda": MEMORY_NOTE_CUDA, "profiler": MEMORY_NOTE_CPU, "rss": MEMORY_NOTE_RSS}.get(memory_method(device))


def peak_memory(fn: Callable[[], object], device: str) -> float | None:
    """Extra peak memory of one call of ``fn`` in MiB (see :func:`memory_note`), or None."""
    gc.collect(1)  # young garbage only: a full collection takes a second with torch_geometric loaded
    method = memory_method(device)
    if method == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return (peak - before) / MiB
    if method == "profiler":
        peak, out = _profiled_peak(fn)
        del out
        return peak / MiB
    if method == "rss":
        _malloc_trim()
        _reset_hwm()
        before = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
        if before is not None and peak is not None:
            return max(0, peak - before) / 1024
    return None


# --------------------------------------------------------------------------------------
# tables


@dataclass
class Table:
    """One result table: ``columns`` in display order, ``rows`` as dicts, free-text notes.

    ``ratio_columns`` name the columns holding ratios (positive finite numbers, or None
    where a comparison was skipped); ``units`` give a column's unit for display.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ratio_columns: list[str] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)  # {"target", "measured", "status"}

    def add(self, **row) -> dict:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"table {self.name!r} has no columns {sorted(unknown)}")
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def target(self, what: str, measured: str, ok: bool | None) -> None:
        status = "n/a" if ok is None else ("PASS" if ok else "MISS")
        self.targets.append({"target": what, "measured": measured, "status": status})

    def to_dict(self) -> dict:
        return asdict(self)


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.2f}"
        return f"{v:.1e}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def grid(header: list[str], cells: list[list[str]], markdown: bool) -> str:
    """A plain-text (aligned) or Markdown table of string cells."""
    if markdown:
        esc = [[c.replace("|", "\\|") for c in row] for row in [header, *cells]]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def render(table: Table, markdown: bool = False) -> str:
    cells = [[fmt(r.get(c)) for c in table.columns] for r in table.rows]
    parts = [("### " if markdown else "== ") + table.title + ("" if markdown else " =="), ""]
    parts.append(grid(table.columns, cells, markdown))
    if table.targets:
        parts += ["", "Targets:" if not markdown else "**Targets**", ""]
        tcells = [[t["target"], t["measured"], t["status"]] for t in table.targets]
        parts.append(grid(["target", "measured", "status"], tcells, markdown))
    if table.notes:
        parts.append("")
        parts += [("- " if markdown else "* ") + n for n in table.notes]
    return "\n".join(parts)


def write_csv(table: Table, path: Path, env: dict) -> None:
    """The table as CSV; leading ``#`` lines name the machine and versions."""
    with open(path, "w", newline="") as fh:
        fh.write(f"# {table.title}\n# {env_line(env)}\n")
        writer = csv.DictWriter(fh, fieldnames=table.columns, extrasaction="ignore")
        writer.writeheader()
        for row in table.rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in table.columns})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


# --------------------------------------------------------------------------------------
# environment


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    import sparse_lrp

    env = {
        "device": str(device),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": _version("torch_geometric") or _version("torch-geometric"),
        "sparse_lrp": sparse_lrp.__version__,
        "scatter_backend": sparse_lrp.get_backend(),
        "zennit": _version("zennit"),
        "captum": _version("captum"),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    if hasattr(os, "getloadavg"):
        env["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return env


def machine(env: dict) -> str:
    if env.get("gpu"):
        return f"{env['gpu']} (CUDA {env.get('cuda')}), host CPU {env['cpu']}"
    return f"{env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads"


def env_line(env: dict) -> str:
    libs = ", ".join(
        f"{k} {env[k]}" for k in ("sparse_lrp", "torch", "torch_geometric", "zennit", "captum", "python") if env.get(k)
    )
    return f"machine: {machine(env)}; {libs}; scatter backend {env.get('scatter_backend')}"


def save_json(obj, path: Path) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
