"""``sparse-lrp bench`` in its tiny mode: tables, files and ratios (no timing assertions)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest
import torch

from sparse_lrp.bench import dense, explainers, graphs, libs, main, sparse
from sparse_lrp.bench.common import Config, compare, read_csv

EXPECTED_COLUMNS = {
    "dense": dense.COLUMNS,
    "sparse": sparse.COLUMNS,
    "graphs": graphs.COLUMNS,
    "explainers": explainers.COLUMNS,
    "explainers_hetero": explainers.COLUMNS,
}
# Ratios that exist whatever optional libraries are installed.
ALWAYS = {
    "dense": ["lrp/grad"],
    "sparse": ["dense/sparse"],
    "graphs": ["lrp/fwd", "lrp/grad", "lrp_edges/fwd"],
    "explainers": ["method/lrp"],
    "explainers_hetero": ["method/lrp"],
}


def _positive_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_ratios(table: dict) -> None:
    assert table["rows"], f"{table['name']}: no rows"
    for row in table["rows"]:
        for col in table["ratio_columns"]:
            v = row.get(col)
            if col in ALWAYS.get(table["name"], []):
                assert _positive_finite(v), f"{table['name']}.{col} = {v!r} in {row}"
            else:
                assert v is None or _positive_finite(v), f"{table['name']}.{col} = {v!r} in {row}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    args = parser.parse_args(["--tiny", "--suites", "all", "--threads", "1", "--quiet", "--out", str(out)])
    rc = main.run(args)
    assert torch.get_num_threads() == threads  # restored
    return rc, out


def test_tiny_bench_writes_tables_and_files(tiny_run):
    rc, out = tiny_run
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    tables = {t["name"]: t for t in results["tables"]}
    assert set(EXPECTED_COLUMNS) <= set(tables)
    for name, columns in EXPECTED_COLUMNS.items():
        assert tables[name]["columns"] == list(columns)
        _check_ratios(tables[name])
        rows = read_csv(out / f"{name}.csv")
        assert rows and list(rows[0]) == list(columns)
        for row in rows:
            for col in tables[name]["ratio_columns"]:
                if row[col] != "":
                    assert math.isfinite(float(row[col])) and float(row[col]) > 0
    md = (out / "bench.md").read_text()
    assert "machine:" in md and "torch" in md and "| model |" in md
    assert (out / "dense.csv").read_text().startswith("# ")  # machine and versions lead every CSV
    env = results["env"]
    assert env["torch"] and env["cpu"]
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").stat().st_size > 0


def test_tiny_bench_attributions_match_zennit(tiny_run):
    if libs.zennit() is None:
        pytest.skip("zennit not installed")
    _, out = tiny_run
    table = next(t for t in json.loads((out / "results.json").read_text())["tables"] if t["name"] == "dense")
    for row in table["rows"]:
        assert row["maxdiff_zennit"] <= 1e-4 * max(1.0, row["max_abs_R"]), row


def test_graph_targets_and_memory_reported(tiny_run):
    _, out = tiny_run
    table = next(t for t in json.loads((out / "results.json").read_text())["tables"] if t["name"] == "graphs")
    assert {r["model"] for r in table["rows"]} == {"GCN", "GIN"}
    assert all(t["status"] in ("PASS", "MISS", "n/a") for t in table["targets"])
    if sys.platform.startswith("linux"):
        for row in table["rows"]:
            for col in ("mem_fwd_mb", "mem_grad_mb", "mem_lrp_mb", "mem_chunked_mb"):
                assert row[col] is None or row[col] >= 0


def test_missing_libraries_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(libs, "zennit", lambda: None)
    monkeypatch.setattr(libs, "captum", lambda: None)
    monkeypatch.setitem(libs.why_missing, "zennit", "zennit not available (test)")
    monkeypatch.setitem(libs.why_missing, "captum", "captum not available (test)")
    cfg = Config(mode="tiny", warmup=0, verbose=False)
    (table,) = dense.run(cfg)
    assert table.columns == dense.COLUMNS
    assert all(r.get("zennit_ms") is None and r.get("captum_ms") is None for r in table.rows)
    assert any("zennit columns skipped" in n for n in table.notes)
    assert any("captum columns skipped" in n for n in table.notes)
    _check_ratios(table.to_dict())
    expl, hetero = explainers.run(cfg)
    for t in (expl, hetero):
        assert not any("Captum" in r["method"] for r in t.rows)
        assert any("Captum rows skipped" in n for n in t.notes)
        _check_ratios(t.to_dict())


def test_hetero_explainers_table_compares_every_method(tiny_run):
    """The heterogeneous table: sparse_lrp (direct, batched, through PyG's Explainer) against
    GNNExplainer and, with captum, Saliency and IntegratedGradients, on one to_hetero model."""
    _, out = tiny_run
    table = next(
        t for t in json.loads((out / "results.json").read_text())["tables"] if t["name"] == "explainers_hetero"
    )
    methods = {r["method"] for r in table["rows"]}
    assert {"sparse_lrp", "sparse_lrp batched", "LRPExplainer (PyG)"} <= methods
    assert any(m.startswith("GNNExplainer") for m in methods)
    if libs.captum() is not None:
        assert {"Captum Saliency", "Captum IntegratedGradients"} <= methods
    assert {r["model"] for r in table["rows"]} == {explainers.HETERO_MODEL}
    assert all(_positive_finite(r["ms_per_explanation"]) for r in table["rows"])
    assert next(r for r in table["rows"] if r["method"] == "sparse_lrp")["method/lrp"] == 1.0
    assert [t["status"] for t in table["targets"]] == ["n/a"]  # (tiny: GNNExplainer runs 10 epochs)


def test_peak_memory_sees_torch_allocations():
    from sparse_lrp.bench.common import MiB, memory_method, peak_memory

    if memory_method("cpu") is None:
        pytest.skip("no memory measurement on this platform")
    mem = peak_memory(lambda: torch.ones(4 * MiB // 4), "cpu")
    assert mem is not None and 3.9 <= mem <= 8.5


def test_edge_sizes_and_arguments():
    assert graphs.edge_sizes(Config(mode="quick")) == [10_000, 100_000, 1_000_000]
    assert graphs.edge_sizes(Config(mode="quick", max_edges=1e8))[-1] == 100_000_000
    assert graphs.edge_sizes(Config(mode="full", min_edges=1e5, max_edges=3e6)) == [100_000, 1_000_000, 3_000_000]
    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--suites", "graphs", "--max-edges", "1e8", "--full"])
    cfg = main.config_from_args(args)
    assert (cfg.mode, cfg.suites, cfg.max_edges, cfg.device) == ("full", ("graphs",), 1e8, "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--suites", "nope"])


def test_main_module_is_cheap_to_import():
    code = (
        "import sys, sparse_lrp.bench.main as m; "
        "heavy = [n for n in ('zennit', 'captum', 'matplotlib', 'sparse_lrp.bench.dense', 'sparse_lrp.bench.graphs') "
        "if n in sys.modules]; print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["GCN", "GIN"])
def test_explain_matches_the_layerwise_helper(name):
    # The suites call sparse_lrp.explain; the helper is an independent layer-by-layer
    # implementation (edge_lrp + linear_lrp) of the same LRP for the benchmark's models.
    import sparse_lrp
    from sparse_lrp.bench import lrp

    if not lrp.has_explain():
        pytest.skip("sparse_lrp.explain not available")
    model, x, edge_index = graphs.setup(name, 600, "cpu")
    rule = sparse_lrp.Epsilon(1e-6)
    for index in (None, 7):
        got = lrp.graph_lrp(model, x, edge_index, rule, index=index, edges=True)
        with torch.no_grad():
            ref = lrp._graph_lrp_layers(
                model, x, edge_index, rule, None if index is None else torch.tensor([index]), True, None, None
            )
        node_feat = got.node_feat.reshape(ref.node_feat.shape)
        torch.testing.assert_close(node_feat, ref.node_feat, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.edge.reshape(ref.edge.shape), ref.edge, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_suite_on_cuda():
    cfg = Config(mode="tiny", device="cuda", warmup=0, verbose=False)
    (table,) = graphs.run(cfg)
    _check_ratios(table.to_dict())
    assert all(r["mem_lrp_mb"] is not None for r in table.rows)


def test_compare_repeats_fast_calls_until_min_seconds_and_stays_interleaved():
    """Calls too quick for a stable median are repeated, all in the same rounds."""
    import time

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1
        time.sleep(0.001)

    def slow():
        calls["slow"] += 1
        time.sleep(0.002)

    t = compare({"fast": fast, "slow": slow}, device="cpu", repeats=2, warmup=1, min_seconds=0.02, max_rounds=500)
    # warm-up once each, then whole rounds: both ran equally often
    assert calls["fast"] == calls["slow"] == len(t["fast"].times) + 1 == len(t["slow"].times) + 1
    assert sum(t["fast"].times) >= 0.02  # the floor was reached by both...
    assert 2 <= len(t["fast"].times) < 500  # ...well before the round cap
    # without a floor: exactly `repeats` rounds
    t = compare({"fast": fast}, device="cpu", repeats=3, warmup=0)
    assert len(t["fast"].times) == 3


def test_compare_stops_at_max_rounds_and_leaves_capped_calls_alone():
    import time

    t = compare({"fast": lambda: None}, device="cpu", repeats=1, warmup=0, min_seconds=10.0, max_rounds=7)
    assert len(t["fast"].times) == 7  # the floor is out of reach: the round cap ends it
    t = compare(
        {"fast": lambda: None, "slow": lambda: time.sleep(0.01)},
        device="cpu",
        repeats=1,
        warmup=0,
        max_seconds=0.025,
        min_seconds=0.05,
        max_rounds=50,
    )
    # "slow" is over its time cap after 3 calls (>= 0.03 s); "fast" alone runs on to the round cap
    assert len(t["slow"].times) == 3 and len(t["fast"].times) == 50


def test_primitives_benchmark_prints_every_primitive_with_a_positive_ratio(capsys):
    """benchmarks/bench_primitives.py (the figures behind the operators' helpers) runs."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_primitives.py"
    spec = importlib.util.spec_from_file_location("bench_primitives", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    primitives = ("sort_ints", "has_nonzero", "rowdot", "nonzero_rows")
    rows = [line for line in lines if line.startswith(primitives)]
    assert {line.split(" vs ")[0] for line in rows} == set(primitives)
    assert len(rows) == sum(1 for _ in mod.cases(torch.Generator().manual_seed(0)))
    for line in rows:
        ratio = float(line.split()[-1].rstrip("x"))
        assert ratio > 0 and math.isfinite(ratio)


def test_bench_usage_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    """A bad device, an unwritable --out and counts below their minimum are refused up
    front (they ended in tracebacks, or were accepted)."""
    from sparse_lrp.cli import main as cli_main

    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv, message in (
        (["--device", "nope"], "invalid --device"),
        (["--out", str(blocker / "sub")], "cannot write to output folder"),
        (["--min-edges", "5e3", "--max-edges", "1e3"], "--min-edges 5000 is above --max-edges 1000"),
    ):
        assert cli_main(["bench", "--tiny", "--suites", "dense", "--no-plot", *argv]) == 2
        assert message in capsys.readouterr().err
    for argv in (
        ["--threads", "0"],
        ["--repeats", "-2"],
        ["--warmup", "-1"],
        ["--max-seconds", "nan"],
        ["--min-seconds", "-5"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["bench", "--tiny", "--out", str(tmp_path), *argv])
        assert exit_info.value.code == 2


def test_graph_sizes_follow_one_given_bound_and_suites_run_once():
    from sparse_lrp.bench.graphs import edge_sizes
    from sparse_lrp.bench.main import _suites

    def sizes(mode, lo=None, hi=None):
        return edge_sizes(Config(mode=mode, min_edges=lo, max_edges=hi))

    assert sizes("quick", hi=5000) == [5000]  # below the default smallest: that size alone
    assert sizes("tiny", lo=5000) == [5000]
    assert sizes("tiny", lo=2000, hi=2000) == [2000]
    assert sizes("quick", lo=1e4, hi=1e6) == [10_000, 100_000, 1_000_000]
    assert _suites("dense,dense,graphs") == ("dense", "graphs")


def test_call_overhead_benchmark_prints_both_paths_with_positive_figures():
    """benchmarks/bench_call_overhead.py (the figures behind WHOLE_GRAPH_ROWS) runs."""
    import pathlib
    import subprocess
    import sys

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_call_overhead.py"
    proc = subprocess.run(
        [sys.executable, str(path), "--calls", "2", "--tree-nodes", "300"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ")]
    first = [r for r in rows if r[0].strip().startswith(("forward", "sparse_lrp"))]
    assert len(first) == 5 and any("k-hop subgraph" in r[0] for r in first)
    for r in first:
        ms, ratio, ops = float(r[1]), float(r[2].strip().rstrip("x")), int(r[3])
        assert ms > 0 and ratio > 0 and ops > 0
    tree = [r for r in rows if r[0].strip() in ("GCN", "GIN")]
    assert len(tree) == 2
    for r in tree:
        assert float(r[1]) > 0 and float(r[2]) > 0 and float(r[3]) > 0
        assert r[4].strip().endswith(("(whole)", "(subgraph)"))
