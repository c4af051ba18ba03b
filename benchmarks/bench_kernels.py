#!/usr/bin/env python
"""Speed and memory of ``sparse_lrp.edge_lrp`` against plain-torch baselines.

The case is a random sparse operator ``z = W x + b`` with ``N_in = N_out = N`` nodes,
``E`` edges (uniform random source and target, so multi-edges occur) and ``C``
channels, float32. ``x`` and ``W``'s values are standard normal (mixed signs, so every
term of ZPlus/AlphaBeta/Gamma is live), the bias is ``[N, 1]`` and the relevance is
``z * U(0, 1)`` with ``z = W x + b`` (relevance follows the output, as in a real
backward pass, which keeps ``R / z`` well conditioned for the cross-checks).

Every edge_lrp variant is timed against baselines measured in the same process:

    (a) one forward of the operator as a CSR sparse matmul, the CSR already built;
    (b) a scatter forward: ``zeros(N, C).index_add_(0, dst, x[src] * w[:, None])``;
    (c) autograd gradient x input through that scatter forward;
    (d) dense LRP-epsilon ``x * (Wᵀ @ (R / stab(W @ x + b)))`` at a size where a dense
        ``W`` fits (``--size full``: 20k x 20k at 1% density, 1.6 GB).

Each timing is the median of ``--repeats`` calls after one warm-up call. The baselines
are timed at the start and again at the end, and ratios use their pooled median; the
edge-relevance cost is the median of paired differences (with and without, alternated).
The machine may be shared, so compare ratios, not absolute times, across runs; on an
oversubscribed CPU use ``--threads 1`` (each parallel region otherwise waits for all its
threads to be scheduled, and the timings measure the scheduler).

Memory: the extra memory of a ``"scatter"`` call is read from the allocation and free
events that ``torch.profiler(profile_memory=True)`` records for torch's CPU and CUDA
allocators (``tracemalloc`` cannot see torch tensors); see ``MEMORY_NOTE``.

Usage::

    python benchmarks/bench_kernels.py --size small             # about a minute, CI sanity
    python benchmarks/bench_kernels.py --size full --repeats 3  # the spec case
    python benchmarks/bench_kernels.py --rules Epsilon ZPlus --markdown out.md --csv out.csv

The logic is the function :func:`run` (returns a list of row dicts); :func:`format_report`
renders them. Both depend only on torch and sparse_lrp, so the file can move into the
package (``sparse-lrp bench``) as it is.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

try:
    import sparse_lrp
except ImportError:  # run from a checkout without installing: the repository root is one up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import sparse_lrp
from sparse_lrp import AlphaBeta, Epsilon, Flat, Gamma, WSquare, Z, ZBox, ZPlus, edge_lrp, prepare
from sparse_lrp.bench.common import grid
from sparse_lrp.operators import DEFAULT_MAX_MEMORY

SIZES = {
    # n nodes (in = out), e edges, c channels; the dense comparison at dense_n x dense_n.
    "small": {"n": 10_000, "e": 100_000, "c": 64, "dense_n": 2_000, "dense_density": 0.01},
    "full": {"n": 100_000, "e": 1_000_000, "c": 64, "dense_n": 20_000, "dense_density": 0.01},
}
RULES = ("Epsilon", "Z", "ZPlus", "AlphaBeta", "Gamma", "WSquare", "Flat", "ZBox")
MiB = 2**20

COLUMNS = ("section", "name", "rule", "strategy", "operator", "median_ms", "min_ms", "vs_a", "vs_b", "note")
TARGET_COLUMNS = ("name", "measured", "target", "status", "note")


def make_rule(name: str, x: torch.Tensor):
    """The rule called ``name`` with default parameters (ZBox bounded by ``x``'s range)."""
    if name == "ZBox":
        return ZBox(float(x.min()), float(x.max()))
    rules = {"Epsilon": Epsilon, "Z": Z, "ZPlus": ZPlus, "AlphaBeta": AlphaBeta}
    rules.update({"Gamma": Gamma, "WSquare": WSquare, "Flat": Flat})
    return rules[name]()


def uses_z(rule) -> bool:
    """Rules for which a known forward output saves work (plain denominator or output sign)."""
    return rule.needs_output_sign or any(g.plain for g in rule.groups)


def make_case(n: int, e: int, c: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n, (e,), generator=g)
    case = {
        "n": n,
        "e": e,
        "c": c,
        "edge_index": torch.stack([src, dst]).to(device),
        "w": torch.randn(e, generator=g).to(device),
        "x": torch.randn(n, c, generator=g).to(device),
        "bias": torch.randn(n, 1, generator=g).to(device),
    }
    case["src"], case["dst"] = case["edge_index"][0], case["edge_index"][1]
    case["op"] = prepare(case["edge_index"], n, n)
    case["z"] = case["op"].csr(case["w"]) @ case["x"] + case["bias"]
    # Relevance proportional to the output, as in a backward pass (R = z * u, u in [0, 1)):
    # keeps R / z well conditioned, so the spmm / scatter / dense results can be compared.
    case["relevance"] = case["z"] * torch.rand(n, c, generator=g).to(device)
    return case


# -- timing ---------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object], device: str) -> float:
    t0 = time.perf_counter()
    res = fn()
    _sync(device)
    elapsed = time.perf_counter() - t0
    del res
    return elapsed


def bench(fn: Callable[[], object], repeats: int, device: str) -> tuple[list[float], object]:
    """(seconds of ``repeats`` timed calls, the warm-up call's result)."""
    out = fn()  # warm-up
    _sync(device)
    return [_time_once(fn, device) for _ in range(max(1, repeats))], out


def bench_pair(fn0, fn1, repeats: int, device: str) -> tuple[list[float], list[float], object]:
    """Time two variants alternately (each warmed up): seconds of each, and ``fn0``'s warm-up result.

    Alternating keeps load changes on a shared machine from landing on one variant only,
    so the per-pair differences ``t1 - t0`` measure what ``fn1`` adds.
    """
    out = fn0()
    fn1()
    _sync(device)
    t0s, t1s = [], []
    for _ in range(max(1, repeats)):
        t0s.append(_time_once(fn0, device))
        t1s.append(_time_once(fn1, device))
    return t0s, t1s, out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


# -- memory ---------------------------------------------------------------------------
def profile_allocations(fn: Callable[[], object], device: str) -> tuple[list[tuple[int, int]], object]:
    """Run ``fn`` under ``torch.profiler`` with ``profile_memory=True``.

    Returns the allocator's events on ``device`` as ``(time_ns, bytes)`` in time order
    (bytes < 0 for a free) and ``fn``'s result. torch's CPU allocator and CUDA caching
    allocator report every allocation and free to the profiler, so this sees torch
    tensors on CPU too (``tracemalloc`` does not). The flat event list is used because
    the profiler's event tree leaves out CUDA frees.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    dev_type = torch.device(device).type
    with profile(activities=activities, profile_memory=True) as prof:
        out = fn()
        _sync(device)
    events = [
        (ev.start_ns(), ev.nbytes())
        for ev in prof.profiler.kineto_results.events()
        if ev.name() == "[memory]" and str(ev.device_type()).rsplit(".", 1)[-1].lower() == dev_type
    ]
    events.sort(key=lambda ev: ev[0])
    return events, out


def peak_live(events: list[tuple[int, int]], classify: Callable[[int], str] = lambda size: "all") -> dict:
    """Peak bytes live (allocated since the start and not yet freed), in all and per size class.

    ``classify`` maps a block's size to a class; a free is booked to the class of its
    size. Totals never go below zero, so frees of blocks that existed before the start
    don't count: the figures are the extra memory the call needed on top of what already
    existed (its outputs included). Returns ``{"peak": bytes, "at_peak": {class: bytes},
    "count_at_peak": {class: blocks}, "max": {class: the class's own peak bytes}}``.
    """
    cur = 0
    per: dict[str, int] = {}
    cnt: dict[str, int] = {}
    res: dict = {"peak": 0, "at_peak": {}, "count_at_peak": {}, "max": {}}
    for _, nbytes in events:
        cls = classify(abs(nbytes))
        if nbytes < 0 and per.get(cls, 0) < -nbytes:
            continue  # a block from before the start
        sign = 1 if nbytes > 0 else -1
        cur += nbytes
        per[cls] = per.get(cls, 0) + nbytes
        cnt[cls] = cnt.get(cls, 0) + sign
        res["max"][cls] = max(res["max"].get(cls, 0), per[cls])
        if cur > res["peak"]:
            res.update(peak=cur, at_peak=dict(per), count_at_peak=dict(cnt))
    return res


def memory_profiler_works(device: str) -> bool:
    """Calibrate: an allocation of known size must show up with that size (CUDA rounds to 512 bytes)."""
    nbytes = 3 * MiB + 4096
    try:
        events, _ = profile_allocations(lambda: torch.empty(nbytes // 4, device=device), device)
    except Exception:
        return False
    return peak_live(events)["peak"] == nbytes


def scatter_memory(case: dict, rule, max_memory: int, want_edge: bool, device: str) -> dict:
    """Peak extra memory of one ``strategy="scatter"`` call, split by what the blocks are."""
    n, e, c = case["n"], case["e"], case["c"]
    isz = case["x"].element_size()

    def call():
        return edge_lrp(
            case["x"],
            case["edge_index"],
            case["w"],
            case["relevance"],
            rule,
            bias=case["bias"],
            strategy="scatter",
            max_memory=max_memory,
            return_edge_relevance=want_edge,
        )

    call()  # warm-up outside the profile (lazy inits)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    events, out = profile_allocations(call, device)
    del out

    def sizes(*nbytes: int) -> set[int]:  # the CUDA caching allocator rounds blocks up to 512 bytes
        return {b for nb in nbytes for b in (nb, -(-nb // 512) * 512)}

    node_sizes = sizes(n * c * isz, n * c)  # [N, C] values and [N, C] bool masks
    edge_sizes = sizes(e * isz, e * 8, e * 4, e)  # [E] weight transforms, edge relevance, indices, masks

    def classify(size: int) -> str:
        if size in node_sizes:
            return "node"
        if size in edge_sizes:
            return "edge_vec"
        return "chunk" if size >= 4096 else "small"

    p = peak_live(events, classify)
    res = {
        "peak": p["peak"],
        "node": p["at_peak"].get("node", 0),
        "n_node": p["count_at_peak"].get("node", 0),
        "edge_vec": p["at_peak"].get("edge_vec", 0),
        "chunk_at_peak": p["at_peak"].get("chunk", 0),
        "chunk": p["max"].get("chunk", 0),
        "full_messages": e * c * isz,
        "budget": max_memory,
    }
    if device.startswith("cuda"):
        res["cuda_max_allocated"] = torch.cuda.max_memory_allocated() - base
    return res


# -- the benchmark --------------------------------------------------------------------
def _row(section: str, name: str, **kw) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row.update(section=section, name=name, **kw)
    return row


def _target(name: str, measured: str, target: str, ok: bool, note: str = "", value: float | None = None) -> dict:
    row = _row("target", name, note=note)
    row.update(measured=measured, target=target, status="PASS" if ok else "MISS", value=value)
    return row


def run(
    size: str = "small",
    repeats: int = 5,
    device: str = "cpu",
    rules: tuple[str, ...] | list[str] | None = None,
    dense: bool = True,
    memory: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run the benchmark; return rows (``section`` = baseline / edge_lrp / dense / memory / target).

    Timing rows carry ``median_ms``, ``min_ms`` and ``vs_a`` / ``vs_b`` (median over the
    median of baseline (a) / (b)); target rows carry ``measured``, ``target``, ``status``
    (PASS / MISS) and the numeric ``value``.
    """
    spec = SIZES[size]
    rules = tuple(rules) if rules else RULES
    unknown = set(rules) - set(RULES)
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; choose from {RULES}")
    say = log or (lambda msg: None)
    rows: list[dict] = []
    n, e, c = spec["n"], spec["e"], spec["c"]
    say(f"case: N_in = N_out = {n:,}, E = {e:,}, C = {c}, float32, {device}")
    case = make_case(n, e, c, device)
    x, ei, w, R, b, op, src, dst = (case[k] for k in ("x", "edge_index", "w", "relevance", "bias", "op", "src", "dst"))

    # -- baselines (timed at the start and again at the end; ratios use the pooled median) --
    csr = op.csr(w)

    def scatter_forward():
        return torch.zeros(n, c, device=device).index_add_(0, dst, x[src] * w[:, None])

    def grad_x_input():
        xg = x.detach().requires_grad_()
        out = torch.zeros(n, c, device=device).index_add(0, dst, xg[src] * w[:, None])
        (out * R).sum().backward()
        return (xg * xg.grad).detach()

    baselines = {
        "a": ("(a) CSR forward W @ x, CSR prebuilt", lambda: csr @ x),
        "b": ("(b) index_add forward", scatter_forward),
        "c": ("(c) autograd grad x input via index_add", grad_x_input),
        "p": ("prepare(): both CSR index structures", lambda: prepare(ei, n, n)),
    }
    base_times: dict[str, list[list[float]]] = {k: [] for k in baselines}

    def time_baselines(when: str) -> None:
        for key, (name, fn) in baselines.items():
            times, _ = bench(fn, repeats, device)
            base_times[key].append(times)
            say(f"  {name} ({when}): {statistics.median(times) * 1e3:.1f} ms")

    time_baselines("start")
    t_a = statistics.median(base_times["a"][0])
    t_b = statistics.median(base_times["b"][0])

    # -- edge_lrp per rule and variant ---------------------------------------------------
    measured: dict[tuple, list[float]] = {}
    edge_added: dict[str, list[float]] = {}
    edge_rows: list[dict] = []

    def call_for(rule, strategy, operator, with_z=False, edge=False):
        target = op if operator == "prepared" else ei
        kwargs = {"bias": b, "strategy": strategy, "return_edge_relevance": edge}
        if with_z:
            kwargs["z"] = case["z"]
        return lambda: edge_lrp(x, target, w, R, rule, **kwargs)

    def record(rule_name, strategy, operator, times, with_z=False, edge=False, note=""):
        measured[(rule_name, strategy, operator, with_z, edge)] = times
        label = strategy + ("(spmm)" if strategy == "auto" and x.dtype in (torch.float32, torch.float64) else "")
        extras = "".join(f", {s}" for s, on in (("z given", with_z), ("+ edge relevance", edge)) if on)
        row = _row(
            "edge_lrp",
            f"{rule_name} {label} {operator}{extras}",
            rule=rule_name,
            strategy=strategy,
            operator=operator + extras,
            median_ms=statistics.median(times) * 1e3,
            min_ms=min(times) * 1e3,
            note=note,
        )
        rows.append(row)
        edge_rows.append(row)
        say(f"  {row['name']}: {row['median_ms']:.1f} ms")

    for rule_name in rules:
        rule = make_rule(rule_name, x)
        # Prepared spmm with and without edge relevance, alternated: the difference is what
        # return_edge_relevance=True adds.
        t0s, t1s, ref = bench_pair(
            call_for(rule, "spmm", "prepared"), call_for(rule, "spmm", "prepared", edge=True), repeats, device
        )
        edge_added[rule_name] = [t1 - t0 for t0, t1 in zip(t0s, t1s)]
        record(rule_name, "spmm", "prepared", t0s)
        record(rule_name, "spmm", "prepared", t1s, edge=True)
        times, _ = bench(call_for(rule, "auto", "plain"), repeats, device)
        record(rule_name, "auto", "plain", times)
        times, out = bench(call_for(rule, "scatter", "plain"), repeats, device)
        record(rule_name, "scatter", "plain", times, note=f"rel. diff vs spmm {rel_err(out, ref):.1e}")
        if uses_z(rule):
            for strategy, operator in (("spmm", "prepared"), ("auto", "plain"), ("scatter", "plain")):
                times, _ = bench(call_for(rule, strategy, operator, with_z=True), repeats, device)
                record(rule_name, strategy, operator, times, with_z=True)
        del ref, out

    # -- dense reference ------------------------------------------------------------------
    dense_result = None
    if dense:
        dn = spec["dense_n"]
        de = int(dn * dn * spec["dense_density"])
        say(f"dense reference: {dn:,} x {dn:,} at {spec['dense_density']:.0%} density (E = {de:,}), C = {c}")
        dcase = make_case(dn, de, c, device, seed=1)
        W = torch.zeros(dn, dn, device=device)
        W.index_put_((dcase["dst"], dcase["src"]), dcase["w"], accumulate=True)  # multi-edges sum, as in W x
        eps = Epsilon().epsilon
        dx, dR, dbias = dcase["x"], dcase["relevance"], dcase["bias"]

        def dense_lrp():
            z = W @ dx + dbias
            return dx * (W.T @ (dR / (z + torch.where(z >= 0, eps, -eps))))

        times, ref = bench(dense_lrp, repeats, device)
        t_d = statistics.median(times)
        gb = W.numel() * W.element_size() / 1e9
        rows.append(
            _row(
                "dense",
                f"(d) dense LRP-epsilon, W [{dn}, {dn}] ({gb:.2f} GB), E = {de:,}",
                rule="Epsilon",
                median_ms=t_d * 1e3,
                min_ms=min(times) * 1e3,
            )
        )
        say(f"  (d) {t_d * 1e3:.1f} ms")
        del W
        for operator in ("plain", "prepared"):
            target = dcase["op"] if operator == "prepared" else dcase["edge_index"]
            times, out = bench(
                lambda target=target: edge_lrp(dx, target, dcase["w"], dR, Epsilon(), bias=dbias, strategy="auto"),
                repeats,
                device,
            )
            t = statistics.median(times)
            rows.append(
                _row(
                    "dense",
                    f"edge_lrp Epsilon auto(spmm) {operator}, same operator",
                    rule="Epsilon",
                    strategy="auto",
                    operator=operator,
                    median_ms=t * 1e3,
                    min_ms=min(times) * 1e3,
                    note=f"{t_d / t:.1f}x faster than (d); rel. diff vs dense {rel_err(out, ref):.1e}",
                )
            )
            say(f"  sparse {operator}: {t * 1e3:.1f} ms ({t_d / t:.1f}x faster)")
            if operator == "plain":
                dense_result = (t_d, t)
        del dcase, ref, out

    # -- scatter memory -------------------------------------------------------------------
    mem_results = []
    if memory:
        if not memory_profiler_works(device):
            say("memory: torch.profiler did not report a calibration allocation exactly; skipped")
        else:
            full = e * c * x.element_size()
            mem_rules = [r for r in ("Epsilon", "AlphaBeta") if r in rules] or [rules[0]]
            for rule_name in mem_rules:
                for budget in (DEFAULT_MAX_MEMORY, max(1, full // 8)):
                    for want_edge in (False, True):
                        m = scatter_memory(case, make_rule(rule_name, x), budget, want_edge, device)
                        name = (
                            f"{rule_name} scatter, max_memory={budget / MiB:.1f} MiB"
                            f"{', + edge relevance' if want_edge else ''}"
                        )
                        note = (
                            f"peak extra {m['peak'] / MiB:.1f} MiB = {m['n_node']} [N,C] tensors "
                            f"{m['node'] / MiB:.1f} + [E] vectors {m['edge_vec'] / MiB:.1f} + edge chunks "
                            f"{m['chunk_at_peak'] / MiB:.1f} (+ small); edge chunks at most {m['chunk'] / MiB:.1f} "
                            f"MiB; all [E,C] messages at once would be {m['full_messages'] / MiB:.1f} MiB"
                        )
                        if "cuda_max_allocated" in m:
                            note += f"; cuda max_memory_allocated delta {m['cuda_max_allocated'] / MiB:.1f} MiB"
                        row = _row("memory", name, rule=rule_name, strategy="scatter", note=note)
                        row.update(peak_mib=m["peak"] / MiB, chunk_mib=m["chunk"] / MiB, budget_mib=budget / MiB)
                        rows.append(row)
                        mem_results.append((name, m))
                        say(f"  memory {name}: {note}")

    # -- baselines again; pooled medians for the ratios -------------------------------------
    time_baselines("end")
    pooled = {}
    for key, (name, _) in baselines.items():
        start, end = base_times[key]
        times = start + end
        pooled[key] = statistics.median(times)
        rows.insert(
            len([r for r in rows if r["section"] == "baseline"]),
            _row(
                "baseline",
                name,
                median_ms=pooled[key] * 1e3,
                min_ms=min(times) * 1e3,
                note=f"median at start {statistics.median(start) * 1e3:.1f}, at end {statistics.median(end) * 1e3:.1f}",
            ),
        )
    t_a, t_b, t_c = pooled["a"], pooled["b"], pooled["c"]
    for r in rows:
        if r["section"] in ("baseline", "edge_lrp"):
            r["vs_a"], r["vs_b"] = r["median_ms"] / (t_a * 1e3), r["median_ms"] / (t_b * 1e3)

    # -- targets --------------------------------------------------------------------------
    def med(key):
        return statistics.median(measured[key])

    def ratio_target(name, t, ref, ref_name, limit, note=""):
        ratio = t / ref
        rows.append(_target(name, f"{ratio:.2f}x {ref_name}", f"<= {limit}x {ref_name}", ratio <= limit, note, ratio))

    for rule_name, limit in (("Epsilon", 1.5), ("Z", 1.5), ("ZPlus", 3), ("AlphaBeta", 3), ("Gamma", 3)):
        if rule_name in rules:
            ratio_target(
                f'"spmm" {rule_name}, operator prepared',
                med((rule_name, "spmm", "prepared", False, False)),
                t_a,
                "(a)",
                limit,
            )
    if "Epsilon" in rules:
        t = med(("Epsilon", "auto", "plain", False, False))
        ratio_target('"auto" Epsilon, plain edge_index, everything included', t, t_b, "(b)", 0.5)
    for (rule_name, strategy, _operator, with_z, _edge), times in measured.items():
        if strategy == "scatter":
            extra = ", z given" if with_z else ""
            ratio_target(f'"scatter" {rule_name}, plain edge_index{extra}', statistics.median(times), t_b, "(b)", 2)
    node_rule = "Epsilon" if "Epsilon" in rules else rules[0]
    t = med((node_rule, "auto", "plain", False, False))
    rows.append(
        _target(
            f"node relevance: {node_rule} auto, plain edge_index, vs (c)",
            f"{t_c / t:.1f}x faster",
            ">= 10x faster than (c)",
            t_c / t >= 10,
            value=t_c / t,
        )
    )
    for rule_name in rules:
        ratio_target(
            f"return_edge_relevance=True adds, {rule_name} spmm prepared",
            statistics.median(edge_added[rule_name]),
            t_a,
            "(a)",
            1.5,
            note="median of paired differences",
        )
    if dense_result is not None:
        t_d, t = dense_result
        rows.append(
            _target(
                "sparse at 1% density (Epsilon auto, plain edge_index) vs (d)",
                f"{t_d / t:.1f}x faster",
                ">= 20x faster than (d)",
                t_d / t >= 20,
                value=t_d / t,
            )
        )
    for name, m in mem_results:
        rows.append(
            _target(
                f'"scatter" peak memory: {name}',
                f"{m['chunk'] / MiB:.1f} MiB edge-chunk temporaries",
                f"<= {m['budget'] / MiB:.1f} MiB (max_memory)",
                m["chunk"] <= m["budget"],
                note=f"peak extra {m['peak'] / MiB:.1f} MiB in all ({m['n_node']} [N,C] tensors at the peak)",
                value=m["chunk"] / MiB,
            )
        )
    return rows


# -- reporting ------------------------------------------------------------------------
def machine_info(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sparse_lrp": sparse_lrp.__version__,
        "scatter_backend": sparse_lrp.get_backend(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def _table(rows: list[dict], columns: tuple[str, ...], markdown: bool) -> str:
    return grid(list(columns), [[_fmt(r.get(k)) for k in columns] for r in rows], markdown)


MEMORY_NOTE = (
    "Memory: 'peak extra' = the peak of the bytes torch's allocator handed out during one call and had not "
    "yet freed (blocks that existed before the call are not counted; the call's outputs are), from the "
    "allocation and free events (signed bytes) that torch.profiler(profile_memory=True) records for torch's CPU "
    "and CUDA allocators; a calibration allocation of known size is checked first (tracemalloc cannot see "
    "torch's allocations). Blocks are classified by size: exactly N*C*4 (or N*C bool) bytes = [N,C] node "
    "tensors (outputs, denominators, x+/x-, masks), E*4/E*8/E bytes = [E] per-edge vectors (weight "
    "transforms, edge relevance), other blocks >= 4 KiB = edge-chunk temporaries ([chunk,C] gathers and "
    "messages). max_memory budgets only the edge-chunk temporaries; the target compares their own peak "
    "(over the whole call) with it."
)


def format_report(rows: list[dict], info: dict, markdown: bool = False) -> str:
    head = ", ".join(f"{k}={v}" for k, v in info.items())
    detail = [r for r in rows if r["section"] != "target"]
    targets = [r for r in rows if r["section"] == "target"]
    title = "## " if markdown else ""
    parts = [
        f"{title}sparse_lrp kernel benchmark",
        head,
        "",
        f"{title}Timings (median ms; vs_a / vs_b = time over baseline (a) / (b))",
        _table(detail, COLUMNS, markdown),
        "",
        f"{title}Targets",
        _table(targets, TARGET_COLUMNS, markdown),
        "",
        MEMORY_NOTE,
    ]
    return "\n".join(parts)


def write_csv(rows: list[dict], path: str) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def profile_top(size: str, device: str, rules: tuple[str, ...] = ("Epsilon", "ZPlus"), top: int = 12) -> str:
    """torch.profiler tables (self time) of one prepared ``"spmm"`` call per rule."""
    from torch.profiler import ProfilerActivity, profile

    spec = SIZES[size]
    case = make_case(spec["n"], spec["e"], spec["c"], device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    out = []
    for rule_name in rules:
        rule = make_rule(rule_name, case["x"])

        def call(rule=rule):
            return edge_lrp(
                case["x"], case["op"], case["w"], case["relevance"], rule, bias=case["bias"], strategy="spmm"
            )

        call()
        with profile(activities=activities) as prof:
            call()
            _sync(device)
        sort = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        out.append(f"{rule_name} spmm prepared:\n" + prof.key_averages().table(sort_by=sort, row_limit=top))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=None, help="subset of rules")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference (d)")
    parser.add_argument("--no-memory", action="store_true", help="skip the scatter memory measurement")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    parser.add_argument("--csv", metavar="PATH", help="write all rows as CSV")
    parser.add_argument("--markdown", metavar="PATH", help="write the report as markdown")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    info.update(size=args.size, repeats=args.repeats, device=args.device)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if log:
        log(", ".join(f"{k}={v}" for k, v in info.items()))
    load = info.get("load_avg_1m", 0)
    if args.device == "cpu" and torch.get_num_threads() > 1 and load >= (os.cpu_count() or 1):
        # On an oversubscribed CPU each parallel region waits for all its threads to be
        # scheduled (milliseconds per op): timings then measure the scheduler, not the kernel.
        print(
            f"warning: load average {load} >= {os.cpu_count()} CPUs with {torch.get_num_threads()} torch threads; "
            "timings will be dominated by thread scheduling, consider --threads 1",
            file=sys.stderr,
        )
    rows = run(
        size=args.size,
        repeats=args.repeats,
        device=args.device,
        rules=args.rules,
        dense=not args.no_dense,
        memory=not args.no_memory,
        log=log,
    )
    print(format_report(rows, info))
    if args.profile:
        print()
        print(profile_top(args.size, args.device))
    if args.csv:
        write_csv(rows, args.csv)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(format_report(rows, info, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
