"""The ``sparse-lrp demo`` job: metrics, ground truth, weight cache, end-to-end run, CLI errors."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from sparse_lrp.cli import main as cli_main
from sparse_lrp.demo.config import DATASET_NAMES
from sparse_lrp.demo.data import build, infection_paths
from sparse_lrp.demo.methods import METHOD_NAMES
from sparse_lrp.demo.metrics import mean_std, roc_auc, topk_edge_mask
from sparse_lrp.demo.models import train_or_load


# -- ROC-AUC ---------------------------------------------------------------------------
def test_roc_auc_hand_computed():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 (pos, neg) pairs,
    # 3 are ordered correctly (0.35 < 0.4 is not) -> 3/4.
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_roc_auc_ties_count_half():
    # pos {1, 3}, neg {1, 2}: pairs (1,1) tie = 0.5, (1,2) = 0, (3,1) = 1, (3,2) = 1 -> 2.5/4.
    assert roc_auc(torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.625)
    # All scores tied: exactly random.
    assert roc_auc(torch.zeros(6), torch.tensor([1, 0, 1, 0, 0, 0])) == pytest.approx(0.5)


def test_roc_auc_extremes_and_degenerate():
    labels = torch.tensor([0, 0, 0, 1, 1])
    s = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    assert roc_auc(s, labels) == 1.0
    assert roc_auc(-s, labels) == 0.0
    assert math.isnan(roc_auc(s, torch.zeros(5)))
    assert math.isnan(roc_auc(s, torch.ones(5)))
    with pytest.raises(ValueError, match="entries"):
        roc_auc(s, torch.ones(4))


def test_roc_auc_matches_pairwise_definition():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(2, 40, (1,), generator=gen))
        s = torch.randint(0, 5, (n,), generator=gen).float()  # many ties
        y = torch.randint(0, 2, (n,), generator=gen)
        if y.sum() in (0, n):
            continue
        pos, neg = s[y == 1], s[y == 0]
        d = pos[:, None] - neg[None, :]
        expected = float((d > 0).double().mean() + 0.5 * (d == 0).double().mean())
        assert roc_auc(s, y) == pytest.approx(expected)


def test_topk_edge_mask_only_candidates():
    score = torch.tensor([5.0, -9.0, 1.0, 3.0, 8.0])
    cand = torch.tensor([True, True, True, True, False])
    assert topk_edge_mask(score, cand, 2).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert topk_edge_mask(score, cand, 10).sum() == 4


def test_mean_std():
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


# -- ground truth ----------------------------------------------------------------------
def test_infection_paths_marks_shortest_paths_only():
    # 0 infected; 0->1->2->3 and a detour 0->4->5->3; 1->4 extra edge; 3 at distance 3.
    pairs = [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 3), (1, 4), (6, 3)]
    edge_index = torch.tensor(pairs).t()
    infected = torch.tensor([True, False, False, False, False, False, False])
    edges, nodes = infection_paths(edge_index, infected, 3, 7)
    on_path = {pairs[i] for i in edges.nonzero().view(-1).tolist()}
    assert on_path == {(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 3)}
    assert nodes.tolist() == [1, 1, 1, 1, 1, 1, 0]
    # An infected node's own explanation has no path; an unreachable one neither.
    assert infection_paths(edge_index, infected, 0, 7)[0].sum() == 0
    assert infection_paths(edge_index, infected, 6, 7)[0].sum() == 0


def test_generators_deterministic_and_masks_consistent():
    for name in DATASET_NAMES:
        a, b = build(name, seed=3, tiny=True), build(name, seed=3, tiny=True)
        assert a.fingerprint() == b.fingerprint(), name
        parts = [a.data] if a.data is not None else a.graphs[:3]
        for d in parts:
            assert d.edge_gt.shape == (d.edge_index.shape[1],)
            assert 0 < float(d.edge_gt.sum()) < d.edge_gt.numel()
    assert build("ba_shapes", seed=3, tiny=True).fingerprint() != build("ba_shapes", seed=4, tiny=True).fingerprint()


def test_tree_cycles_tree_is_undirected():
    d = build("tree_cycles", seed=0, tiny=True).data
    fwd = set(map(tuple, d.edge_index.t().tolist()))
    assert all((b, a) in fwd for a, b in fwd)


# -- training and the weight cache -----------------------------------------------------
def test_weights_cached_and_loaded_weights_only(tmp_path):
    bench = build("tree_cycles", seed=0, tiny=True)
    first = train_or_load(bench, seed=0, device=torch.device("cpu"), cache_dir=tmp_path, max_epochs=20, progress=False)
    assert not first.cached and first.path.exists()
    blob = torch.load(first.path, weights_only=True)
    assert set(blob) >= {"state_dict", "train_acc", "test_acc"}
    again = train_or_load(bench, seed=0, device=torch.device("cpu"), cache_dir=tmp_path, max_epochs=20, progress=False)
    assert again.cached and again.test_acc == first.test_acc
    for p, q in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)
    # Another epoch budget is another model: no stale cache hit.
    other = train_or_load(bench, seed=0, device=torch.device("cpu"), cache_dir=tmp_path, max_epochs=10, progress=False)
    assert not other.cached


# -- end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = cli_main(["demo", "--smoke", "--out", str(out), "--no-progress"])
    return code, out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_demo_end_to_end(smoke_run):
    code, out = smoke_run
    assert code == 0
    rows = _rows(out / "results.csv")
    assert {(r["dataset"], r["method"]) for r in rows} == {(d, m) for d in DATASET_NAMES for m in METHOD_NAMES}
    for r in rows:
        for key in ("edge_auc", "node_auc", "fid_plus", "fid_minus"):
            v = float(r[key])
            assert math.isnan(v) or 0.0 <= v <= 1.0, (r["dataset"], r["method"], key, v)
        assert not math.isnan(float(r["edge_auc"])), (r["dataset"], r["method"])
        assert float(r["ms"]) > 0
    # BA-Shapes is the easy one: LRP (and the gradient) find the houses well above chance.
    ba = {r["method"]: float(r["edge_auc"]) for r in rows if r["dataset"] == "ba_shapes"}
    for m in ("LRP-epsilon", "LRP-zplus", "LRP-gamma", "Saliency"):
        assert ba[m] > 0.6, (m, ba[m])
    # LRP rows also time one batched call over all targets; baselines have none.
    for r in rows:
        batched = float(r["ms_batched"])
        if r["method"].startswith("LRP"):
            assert batched > 0 and float(r["speedup_batched_vs_gnnexplainer"]) > 0, (r["dataset"], r["method"])
        else:
            assert math.isnan(batched), (r["dataset"], r["method"])
    md = (out / "results.md").read_text()
    assert "| BA-Shapes | LRP-zplus |" in md and "Tree-Grid" in md
    # ... and its per-target masks are the single calls' (the note reports the largest gap).
    note = next(line for line in md.splitlines() if "batched LRP calls reproduce" in line)
    assert float(note.rsplit(" ", 1)[1].rstrip(")")) < 1e-4, note
    assert len(_rows(out / "per_target.csv")) >= len(rows)


def test_demo_figures_written(smoke_run):
    _, out = smoke_run
    figures = out / "figures"
    assert (figures / "summary.png").stat().st_size > 10_000
    for name in DATASET_NAMES:
        pngs = list(figures.glob(f"{name}_*.png"))
        assert pngs and all(p.stat().st_size > 10_000 for p in pngs), name
    assert any((out / "weights").glob("*.pt"))


# -- command-line errors ---------------------------------------------------------------
def test_unknown_dataset(tmp_path, capsys):
    assert cli_main(["demo", "--datasets", "ba_shapes,cora", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset(s) cora" in err and "ba_shapes" in err


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli_main(["demo", "--out", str(blocker / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root ignores permissions")
def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli_main(["demo", "--out", str(ro)]) == 2
        assert "cannot write to output folder" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(
    ("device", "message"),
    [("banana", "invalid --device 'banana'"), ("cuda:99", "cuda:99"), ("xla", "unsupported device type")],
)
def test_bad_device(tmp_path, capsys, device, message):
    if device == "xla":
        try:
            torch.device("xla")
        except RuntimeError:
            pytest.skip("this torch does not parse 'xla'")
    assert cli_main(["demo", "--device", device, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bad_counts(tmp_path, capsys):
    assert cli_main(["demo", "--targets", "0", "--out", str(tmp_path)]) == 2
    assert "--targets must be at least 1" in capsys.readouterr().err


def test_console_script_error_exit_code(tmp_path):
    """The installed entry point (``python -m sparse_lrp.cli``) exits non-zero with one readable line."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_lrp.cli", "demo", "--datasets", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("sparse-lrp demo: error: unknown dataset(s) nope")
    assert "Traceback" not in proc.stderr


def test_empty_lists_are_usage_errors(tmp_path, capsys):
    for flag in ("--datasets", "--methods"):
        assert cli_main(["demo", flag, "", "--out", str(tmp_path)]) == 2
        assert f"{flag} is empty" in capsys.readouterr().err
