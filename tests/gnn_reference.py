"""Independent references for the whole-model LRP tests.

Nothing here calls ``sparse_lrp``'s kernel, layers or explain code: the rule objects
are only read for their parameters (``epsilon``, ``gamma``, ``alpha``...). Every graph
layer is written out by hand as *node mixing* (a linear map over stored connections
``src -> dst`` with weight ``w``) and *feature mixing* (a dense ``x Wᵀ``), and LRP runs
through it stage by stage with rule formulas written out densely.

A node-mixing map works per channel; its inputs are laid out *per connection*
(``x[src_e]``, one column per stored connection) so that multi-edges stay separate
connections (as they are stored) and the relevance of each input column is the
relevance through that connection. Several summands of one linear map (a root weight
beside the neighbour aggregation, APPNP's teleport term, ChebConv's recursion, GIN's
self term) are concatenated into one map with one shared denominator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_lrp import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus

DT = torch.float64

# --------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------


# Every rule, with parameters that make each differ from the others (by name, for ids).
RULES = {
    "epsilon": lambda: Epsilon(0.1),
    "zplus": lambda: ZPlus(),
    "alphabeta": lambda: AlphaBeta(2.0, 1.0),
    "gamma": lambda: Gamma(0.25),
    "wsquare": lambda: WSquare(),
    "flat": lambda: Flat(),
    "zbox": lambda: ZBox(-2.0, 3.0),
}


def assert_close(a, b, atol: float = 1e-8, rtol: float = 1e-7) -> None:
    """The GNN tests' float64 tolerance (tight: results are exact up to rounding)."""
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def assert_conserved(res, rel: float | None = None, abs: float | None = None) -> None:
    """The conservation report adds up: relevance in + absorbed + lost = out, within
    ``pytest.approx``'s ``rel``/``abs`` (one given alone is the only tolerance)."""
    import pytest

    c = res.conservation
    assert c["in"] + c["absorbed"] + c["lost"] == pytest.approx(c["out"], rel=rel, abs=abs)


def make_graph(n: int = 12, extra: int = 14, seed: int = 0) -> Tensor:
    """A small directed multigraph with every awkward case present, in shuffled order.

    * self-loops on nodes 0, 3 and 6 (at most one per node),
    * node ``n - 1`` isolated (no edge at all),
    * multi-edges: ``1 -> 2`` three times, ``4 -> 5`` twice,
    * directed edges ``2 -> 7``, ``7 -> 8``, ``8 -> 9`` without their reverse,
    * node ``n - 2`` with outgoing edges only,
    * plus ``extra`` random edges between the other nodes.
    """
    assert n >= 12
    g = torch.Generator().manual_seed(seed)
    loops = [(0, 0), (3, 3), (6, 6)]
    multi = [(1, 2), (1, 2), (1, 2), (4, 5), (4, 5)]
    directed = [(2, 7), (7, 8), (8, 9)]
    sources_only = [(n - 2, 1), (n - 2, 9)]
    pairs = [(5, 6), (6, 5), (0, 4), (4, 0), (9, 10), (10, 9)]
    edges = loops + multi + directed + sources_only + pairs
    forbidden = {(b, a) for a, b in directed} | {(a, a) for a in range(n)}
    while len(edges) < len(loops + multi + directed + sources_only + pairs) + extra:
        a, b = torch.randint(0, n - 2, (2,), generator=g).tolist()
        if (a, b) in forbidden:
            continue
        edges.append((a, b))
    ei = torch.tensor(edges, dtype=torch.long).T
    perm = torch.randperm(ei.shape[1], generator=g)
    ei = ei[:, perm].contiguous()
    check_graph(ei, n)
    return ei


def check_graph(ei: Tensor, n: int) -> None:
    """Assert the graph has self-loops, an isolated node, multi-edges and directed edges."""
    src, dst = ei.tolist()
    pairs = list(zip(src, dst))
    loops = [a for a, b in pairs if a == b]
    assert loops and len(set(loops)) == len(loops), "self-loops present, at most one per node"
    touched = set(src) | set(dst)
    assert any(v not in touched for v in range(n)), "an isolated node"
    non_loop = [p for p in pairs if p[0] != p[1]]
    assert len(set(non_loop)) < len(non_loop), "multi-edges"
    assert any((b, a) not in set(pairs) for a, b in non_loop), "directed edges"


def typed_edges(n_src: int, n_dst: int, count: int, g: torch.Generator) -> Tensor:
    """``count`` random edges from ``n_src`` source to ``n_dst`` target nodes (an edge type of
    a heterogeneous graph; repeats are multi-edges)."""
    return torch.stack([torch.randint(0, n_src, (count,), generator=g), torch.randint(0, n_dst, (count,), generator=g)])


def make_batch(sizes=(6, 7, 5), seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(edge_index, batch)`` of a mini-batch of small random graphs.

    Each graph has random edges, a self-loop on its node 0 and a double edge ``1 -> 2``.
    """
    g = torch.Generator().manual_seed(seed)
    eis, batch, off = [], [], 0
    for k, s in enumerate(sizes):
        e = torch.randint(0, s, (2, 2 * s), generator=g)
        e = e[:, e[0] != e[1]]
        e = torch.cat([e, torch.tensor([[0, 1, 1], [0, 2, 2]])], 1)
        eis.append(e + off)
        batch += [k] * s
        off += s
    return torch.cat(eis, 1), torch.tensor(batch)


# --------------------------------------------------------------------------------------
# Rules, written out densely from their formulas
# --------------------------------------------------------------------------------------


def _p(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _n(t: Tensor) -> Tensor:
    return t.clamp(max=0)


def stab(d: Tensor, eps: float) -> Tensor:
    """``d + eps * sign(d)``, ``sign(0) = +1``."""
    return d + eps * torch.where(d >= 0, 1.0, -1.0).to(d)


def rule_groups(rule, x: Tensor, W: Tensor, b: Tensor, mask: Tensor):
    """``[(coef, contributions [B, out, in], bias share [B, out], where [B, out])]``."""
    B, n_out = x.shape[0], W.shape[0]
    xi, w = x[:, None, :], W[None, :, :]
    xp, xn, wp, wn = _p(xi), _n(xi), _p(w), _n(w)
    m = mask[None].to(x.dtype)
    everywhere = torch.ones(B, n_out, dtype=torch.bool)
    if isinstance(rule, Epsilon):
        return [(1.0, xi * w, b, everywhere)]
    if isinstance(rule, ZPlus):
        return [(1.0, xp * wp + xn * wn, _p(b), everywhere)]
    if isinstance(rule, AlphaBeta):
        return [
            (rule.alpha, xp * wp + xn * wn, _p(b), everywhere),
            (-rule.beta, xp * wn + xn * wp, _n(b), everywhere),
        ]
    if isinstance(rule, Gamma):
        g = rule.gamma
        z = x @ W.T + b
        return [
            (1.0, xp * (w + g * wp) + xn * (w + g * wn), b + g * _p(b), z >= 0),
            (1.0, xp * (w + g * wn) + xn * (w + g * wp), b + g * _n(b), z < 0),
        ]
    if isinstance(rule, WSquare):
        return [(1.0, (w * w * m).expand(B, -1, -1), b * b, everywhere)]
    if isinstance(rule, Flat):
        return [(1.0, m.expand(B, -1, -1), torch.zeros_like(b), everywhere)]
    if isinstance(rule, ZBox):
        low, high = float(rule.low), float(rule.high)
        return [(1.0, xi * w - low * wp - high * wn, b, everywhere)]
    raise AssertionError(f"no reference for {rule!r}")


def dense_rule_lrp(x: Tensor, W: Tensor, R: Tensor, rule, bias: Tensor | None = None, mask: Tensor | None = None):
    """LRP through ``z = x Wᵀ + b`` with ``rule``: ``(R_in [B, in], absorbed [B, out])``.

    ``x [B, in]``, ``W [out, in]``, ``R [B, out]``, ``bias`` broadcastable to ``[B, out]``,
    ``mask [out, in]`` the stored connections (Flat's count, WSquare's support).
    """
    B, n_out = x.shape[0], W.shape[0]
    b = x.new_zeros(B, n_out) if bias is None else torch.broadcast_to(bias, (B, n_out)).to(x)
    if mask is None:
        mask = torch.ones(W.shape, dtype=torch.bool)
    r_in = torch.zeros_like(x)
    flowed = torch.zeros_like(R)
    for coef, c, share, where in rule_groups(rule, x, W, b, mask):
        d = stab(c.sum(-1) + share, rule.stabilizer)
        s = torch.where(d == 0, 0.0, R / torch.where(d == 0, 1.0, d)) * where.to(x.dtype) * coef
        r_in = r_in + (c * s[..., None]).sum(1)
        flowed = flowed + s * c.sum(-1)
    return r_in, R - flowed


# --------------------------------------------------------------------------------------
# Linear maps: dense feature mixing and node mixing over connections
# --------------------------------------------------------------------------------------


@dataclass
class Conn:
    """Connections ``src -> dst`` with weights ``w`` reading input ``x [N_in, C]``.

    ``ids``: the model edge each connection belongs to (``-1``: none, e.g. an added self-loop).
    """

    src: Tensor
    dst: Tensor
    w: Tensor
    x: Tensor
    ids: Tensor | None = None


def loops(n: int, weight: float | Tensor, x: Tensor) -> Conn:
    ar = torch.arange(n)
    return Conn(ar, ar, torch.as_tensor(weight, dtype=x.dtype).expand(n).clone(), x, None)


def edge_forward(branches: list[Conn], n_out: int, bias: Tensor | None = None) -> Tensor:
    """``z_j = sum_b sum_{e: dst=j} w_e x_b[src_e] (+ bias)``, computed with plain scatter."""
    C = branches[0].x.shape[1]
    z = branches[0].x.new_zeros(n_out, C)
    for b in branches:
        z = z.index_add(0, b.dst, b.w[:, None] * b.x[b.src])
    if bias is not None:
        z = z + bias
    return z


def edge_lrp(branches: list[Conn], R: Tensor, rule, n_out: int, bias: Tensor | None = None):
    """LRP through one node-mixing map (branches share the denominator).

    Returns ``[(R_in_b [N_in_b, C], R_conn_b [E_b])]``: node relevance and relevance through
    each connection (summed over channels).
    """
    X = torch.cat([b.x[b.src] for b in branches], 0)  # [E_tot, C]
    dst = torch.cat([b.dst for b in branches])
    w = torch.cat([b.w for b in branches])
    cols = torch.arange(X.shape[0])
    W = X.new_zeros(n_out, X.shape[0])
    W[dst, cols] = w
    mask = torch.zeros(n_out, X.shape[0], dtype=torch.bool)
    mask[dst, cols] = True
    bt = None if bias is None else torch.broadcast_to(bias, R.shape).T
    r_cols, _ = dense_rule_lrp(X.T, W, R.T, rule, bt, mask)  # [C, E_tot]
    out, start = [], 0
    for b in branches:
        r = r_cols[:, start : start + b.src.numel()].T  # [E_b, C]
        start += b.src.numel()
        out.append((torch.zeros_like(b.x).index_add(0, b.src, r), r.sum(1)))
    return out


def dense_lrp(pairs: list[tuple[Tensor, Tensor]], R: Tensor, rule, bias: Tensor | None = None) -> list[Tensor]:
    """LRP through ``z = sum_b x_b W_bᵀ + bias`` as one map: ``[R_x_b]``."""
    X = torch.cat([x for x, _ in pairs], 1)
    W = torch.cat([w for _, w in pairs], 1)
    r, _ = dense_rule_lrp(X, W, R, rule, bias)
    return list(torch.split(r, [x.shape[1] for x, _ in pairs], 1))


def to_model_edges(values: Tensor, ids: Tensor | None, num_edges: int) -> Tensor:
    """Sum connection values onto the model's edges (connections with id ``-1`` are dropped)."""
    out = values.new_zeros(num_edges)
    if ids is None:
        return out
    keep = ids >= 0
    return out.index_add(0, ids[keep], values[keep])


# --------------------------------------------------------------------------------------
# Graph normalisations, written out
# --------------------------------------------------------------------------------------


def gcn_connections(ei: Tensor, n: int, edge_weight=None, improved=False, add_self_loops=True, dtype=DT):
    """GCN's ``D^-1/2 (A + I) D^-1/2`` connections ``(src, dst, w, ids)``.

    Self-loops as PyG adds them: existing ones keep their weight and stay the model's
    edge; nodes without one get a new loop (weight 1, or 2 when ``improved``; PyG's
    ``gcn_norm`` only applies ``improved`` when edge weights are given).
    """
    improved = improved and edge_weight is not None
    src, dst = ei
    w = torch.ones(ei.shape[1], dtype=dtype) if edge_weight is None else edge_weight.to(dtype)
    ids = torch.arange(ei.shape[1])
    if add_self_loops:
        loop = src == dst
        loop_w = torch.full((n,), 2.0 if improved else 1.0, dtype=dtype)
        loop_ids = torch.full((n,), -1)
        loop_w[src[loop]] = w[loop]
        loop_ids[src[loop]] = ids[loop]
        ar = torch.arange(n)
        src, dst = torch.cat([src[~loop], ar]), torch.cat([dst[~loop], ar])
        w, ids = torch.cat([w[~loop], loop_w]), torch.cat([ids[~loop], loop_ids])
    deg = torch.zeros(n, dtype=dtype).index_add(0, dst, w)
    dinv = deg.pow(-0.5)
    dinv[torch.isinf(dinv)] = 0
    return src, dst, dinv[src] * w * dinv[dst], ids


def cheb_connections(ei: Tensor, n: int, dtype=DT):
    """ChebConv's scaled Laplacian ``2 L / lambda_max - I`` (sym, lambda_max = 2 max weight).

    The input's self-loops are ignored by the layer; the diagonal is a connection of its
    own, not the model's self-loop edge (id ``-1``).
    """
    keep = ei[0] != ei[1]
    src, dst = ei[:, keep]
    ids = keep.nonzero().view(-1)
    w = torch.ones(src.numel(), dtype=dtype)
    deg = torch.zeros(n, dtype=dtype).index_add(0, src, w)
    dinv = deg.pow(-0.5)
    dinv[torch.isinf(dinv)] = 0
    w = -dinv[src] * w * dinv[dst]
    ar = torch.arange(n)
    src, dst = torch.cat([src, ar]), torch.cat([dst, ar])
    w = torch.cat([w, torch.ones(n, dtype=dtype)])
    ids = torch.cat([ids, torch.full((n,), -1)])
    w = 2.0 * w / (2.0 * w.max())
    w[src == dst] -= 1
    return src, dst, w, ids


# --------------------------------------------------------------------------------------
# Layers: forward + LRP written out (R: relevance at the layer's output)
# --------------------------------------------------------------------------------------


@dataclass
class Ref:
    out: Tensor  # the layer's forward output, recomputed (checked against the module)
    x: Tensor  # relevance of the input features
    edge: Tensor  # relevance through each model edge
    edge_attr: Tensor | None = None


def _w(lin) -> Tensor:
    return lin.weight.detach()


def _b(lin) -> Tensor | None:
    return None if getattr(lin, "bias", None) is None else lin.bias.detach()


def _lin(x: Tensor, lin) -> Tensor:
    y = x @ _w(lin).T
    return y if _b(lin) is None else y + _b(lin)


def _mask_zero_output(R: Tensor, out: Tensor) -> Tensor:
    """Relevance only lives where the output is non-zero (it is carried as R / output)."""
    return torch.where(out == 0, 0.0, R)


def carry(r: Tensor, a: Tensor) -> Tensor:
    """Relevance reaching an intermediate activation ``a``, as the library carries it.

    Relevance travels between layers as the ratio ``R / a``; where ``a`` is exactly zero a
    non-proportional rule's (Flat, WSquare, ZBox) relevance cannot be carried and is
    reported as ``lost``. Proportional rules give such entries no relevance anyway.
    """
    return torch.where(a == 0, 0.0, r)


def ref_gcn(m, x, ei, R, rule, edge_weight=None) -> Ref:
    n, E = x.shape[0], ei.shape[1]
    if m.normalize:
        src, dst, w, ids = gcn_connections(ei, n, edge_weight, m.improved, m.add_self_loops, x.dtype)
    else:
        src, dst = ei
        w = torch.ones(E, dtype=x.dtype) if edge_weight is None else edge_weight
        ids = torch.arange(E)
    h = x @ _w(m.lin).T
    bias = None if m.bias is None else m.bias.detach()
    conn = Conn(src, dst, w, h, ids)
    out = edge_forward([conn], n, bias)
    R = _mask_zero_output(R, out)
    ((r_h, r_e),) = edge_lrp([conn], R, rule, n, bias)
    (r_x,) = dense_lrp([(x, _w(m.lin))], carry(r_h, h), rule)
    return Ref(out, r_x, to_model_edges(r_e, ids, E))


def _mean_weights(ei: Tensor, n: int, w: Tensor) -> Tensor:
    count = torch.zeros(n, dtype=w.dtype).index_add(0, ei[1], torch.ones_like(w)).clamp(min=1)
    return w / count[ei[1]]


def _neigh_root(m, x, ei, R, rule, w, lin_neigh, lin_root) -> Ref:
    n, E = x.shape[0], ei.shape[1]
    conn = Conn(ei[0], ei[1], w, x, torch.arange(E))
    a = edge_forward([conn], n)
    pairs = [(a, _w(lin_neigh))] + ([(x, _w(lin_root))] if lin_root is not None else [])
    bias = _b(lin_neigh)
    if lin_root is not None and _b(lin_root) is not None:
        bias = _b(lin_root) if bias is None else bias + _b(lin_root)
    out = sum(p @ wt.T for p, wt in pairs) + (0 if bias is None else bias)
    R = _mask_zero_output(R, out)
    rs = dense_lrp(pairs, R, rule, bias)
    ((r_x, r_e),) = edge_lrp([conn], carry(rs[0], a), rule, n)
    if lin_root is not None:
        r_x = r_x + rs[1]
    return Ref(out, r_x, r_e)


def ref_graph_conv(m, x, ei, R, rule, edge_weight=None) -> Ref:
    w = torch.ones(ei.shape[1], dtype=x.dtype) if edge_weight is None else edge_weight
    if m.aggr == "mean":
        w = _mean_weights(ei, x.shape[0], w)
    else:
        assert m.aggr in ("add", "sum")
    return _neigh_root(m, x, ei, R, rule, w, m.lin_rel, m.lin_root)


def ref_sage(m, x, ei, R, rule) -> Ref:
    assert m.aggr == "mean" and not m.project and not m.normalize
    w = _mean_weights(ei, x.shape[0], torch.ones(ei.shape[1], dtype=x.dtype))
    return _neigh_root(m, x, ei, R, rule, w, m.lin_l, m.lin_r if m.root_weight else None)


def ref_gin(m, x, ei, R, rule) -> Ref:
    """GINConv whose ``nn`` is one Linear: ``out = lin((1 + eps) x_i + sum_j x_j)``."""
    n, E = x.shape[0], ei.shape[1]
    lin = m.nn
    branches = [Conn(ei[0], ei[1], torch.ones(E, dtype=x.dtype), x, torch.arange(E)), loops(n, 1 + float(m.eps), x)]
    a = edge_forward(branches, n)
    out = _lin(a, lin)
    R = _mask_zero_output(R, out)
    (r_a,) = dense_lrp([(a, _w(lin))], R, rule, _b(lin))
    (r_x1, r_e), (r_x2, _) = edge_lrp(branches, carry(r_a, a), rule, n)
    return Ref(out, r_x1 + r_x2, r_e)


def ref_gine(m, x, ei, ea, R, rule) -> Ref:
    """GINEConv with Linear ``nn`` and edge ``lin``: messages ``relu(x_j + lin(e_ji))``."""
    n, E = x.shape[0], ei.shape[1]
    src, dst = ei
    le = _lin(ea, m.lin)
    u = x[src] + le
    msg = u.clamp(min=0)
    branches = [Conn(torch.arange(E), dst, torch.ones(E, dtype=x.dtype), msg, None), loops(n, 1 + float(m.eps), x)]
    a = edge_forward(branches, n)
    out = _lin(a, m.nn)
    R = _mask_zero_output(R, out)
    (r_a,) = dense_lrp([(a, _w(m.nn))], R, rule, _b(m.nn))
    (r_msg, _), (r_self, _) = edge_lrp(branches, carry(r_a, a), rule, n)
    # The ReLU passes relevance unchanged where it is active; the sum splits it in proportion.
    r_u = torch.where(msg == 0, 0.0, r_msg)
    c = torch.where(u == 0, 0.0, r_u / torch.where(u == 0, 1.0, u))
    r_x = r_self.index_add(0, src, x[src] * c)
    (r_ea,) = dense_lrp([(ea, _w(m.lin))], le * c, rule, _b(m.lin))
    return Ref(out, r_x, r_msg.sum(1), r_ea)


def gcn_norm_for(m, ei, n, dtype, add_self_loops):
    return gcn_connections(ei, n, None, False, add_self_loops, dtype)


def ref_sg(m, x, ei, R, rule) -> Ref:
    n, E = x.shape[0], ei.shape[1]
    src, dst, w, ids = gcn_norm_for(m, ei, n, x.dtype, m.add_self_loops)
    hs = [x]
    for _ in range(m.K):
        hs.append(edge_forward([Conn(src, dst, w, hs[-1])], n))
    out = _lin(hs[-1], m.lin)
    R = _mask_zero_output(R, out)
    (r,) = dense_lrp([(hs[-1], _w(m.lin))], R, rule, _b(m.lin))
    edge = x.new_zeros(E)
    for k in range(m.K, 0, -1):
        ((r, r_e),) = edge_lrp([Conn(src, dst, w, hs[k - 1], ids)], carry(r, hs[k]), rule, n)
        edge = edge + to_model_edges(r_e, ids, E)
    return Ref(out, r, edge)


def ref_tag(m, x, ei, R, rule) -> Ref:
    n, E = x.shape[0], ei.shape[1]
    assert m.normalize
    src, dst, w, ids = gcn_norm_for(m, ei, n, x.dtype, False)
    hs = [x]
    for _ in range(m.K):
        hs.append(edge_forward([Conn(src, dst, w, hs[-1])], n))
    pairs = [(h, _w(lin)) for h, lin in zip(hs, m.lins)]
    bias = None if m.bias is None else m.bias.detach()
    for lin in m.lins:
        if _b(lin) is not None:
            bias = _b(lin) if bias is None else bias + _b(lin)
    out = sum(h @ wt.T for h, wt in pairs) + (0 if bias is None else bias)
    R = _mask_zero_output(R, out)
    rs = dense_lrp(pairs, R, rule, bias)
    edge = x.new_zeros(E)
    for k in range(m.K, 0, -1):
        ((r_prev, r_e),) = edge_lrp([Conn(src, dst, w, hs[k - 1], ids)], carry(rs[k], hs[k]), rule, n)
        rs[k - 1] = rs[k - 1] + r_prev
        edge = edge + to_model_edges(r_e, ids, E)
    return Ref(out, rs[0], edge)


def ref_appnp(m, x, ei, R, rule) -> Ref:
    n, E = x.shape[0], ei.shape[1]
    src, dst, w, ids = gcn_norm_for(m, ei, n, x.dtype, m.add_self_loops)
    a = m.alpha

    def branches(h):
        return [Conn(src, dst, (1 - a) * w, h, ids), loops(n, a, x)]

    hs = [x]
    for _ in range(m.K):
        hs.append(edge_forward(branches(hs[-1]), n))
    out = hs[-1]
    r = _mask_zero_output(R, out)
    r_x = torch.zeros_like(x)
    edge = x.new_zeros(E)
    for k in range(m.K, 0, -1):
        (r, r_e), (r_tele, _) = edge_lrp(branches(hs[k - 1]), carry(r, hs[k]), rule, n)
        r_x = r_x + r_tele
        edge = edge + to_model_edges(r_e, ids, E)
    return Ref(out, r_x + r, edge)


def ref_cheb(m, x, ei, R, rule) -> Ref:
    n, E = x.shape[0], ei.shape[1]
    assert m.normalization == "sym"
    src, dst, w, ids = cheb_connections(ei, n, x.dtype)
    K = len(m.lins)
    ts = [x]
    if K > 1:
        ts.append(edge_forward([Conn(src, dst, w, x)], n))
    for _ in range(2, K):
        ts.append(edge_forward([Conn(src, dst, 2 * w, ts[-1]), loops(n, -1.0, ts[-2])], n))
    pairs = [(t, _w(lin)) for t, lin in zip(ts, m.lins)]
    bias = None if m.bias is None else m.bias.detach()
    out = sum(t @ wt.T for t, wt in pairs) + (0 if bias is None else bias)
    R = _mask_zero_output(R, out)
    rs = dense_lrp(pairs, R, rule, bias)
    edge = x.new_zeros(E)
    for k in range(K - 1, 1, -1):
        branches = [Conn(src, dst, 2 * w, ts[k - 1], ids), loops(n, -1.0, ts[k - 2])]
        (r1, r_e), (r0, _) = edge_lrp(branches, carry(rs[k], ts[k]), rule, n)
        rs[k - 1] = rs[k - 1] + r1
        rs[k - 2] = rs[k - 2] + r0
        edge = edge + to_model_edges(r_e, ids, E)
    if K > 1:
        ((r0, r_e),) = edge_lrp([Conn(src, dst, w, x, ids)], carry(rs[1], ts[1]), rule, n)
        rs[0] = rs[0] + r0
        edge = edge + to_model_edges(r_e, ids, E)
    return Ref(out, rs[0], edge)


def gat_attention(m, x, ei, edge_attr=None):
    """The layer's own attention ``(ei', alpha [E', H])`` and each edge's model id.

    GAT layers drop the input's self-loops and append one new loop per node, so model
    ids are the kept (non-loop) edges in order, and ``-1`` for the new loops.
    """
    with torch.no_grad():
        kw = {} if edge_attr is None else {"edge_attr": edge_attr}
        _, (ei_a, alpha) = m(x, ei, return_attention_weights=True, **kw)
    keep = ei[0] != ei[1]
    if m.add_self_loops:
        n = x.shape[0]
        expect = torch.cat([ei[:, keep], torch.arange(n).expand(2, n)], 1)
        ids = torch.cat([keep.nonzero().view(-1), torch.full((n,), -1)])
    else:
        expect, ids = ei, torch.arange(ei.shape[1])
    assert torch.equal(ei_a, expect), "the reference's view of GAT's self-loop handling is wrong"
    return ei_a, alpha.detach(), ids


def _gat_lin(m):
    return m.lin if hasattr(m, "lin") and m.lin is not None else m.lin_l


def ref_gat(m, x, ei, R, rule, edge_attr=None) -> Ref:
    """GATConv / GATv2Conv with the forward's attention kept fixed, head by head."""
    n, E = x.shape[0], ei.shape[1]
    H, C = m.heads, m.out_channels
    assert getattr(m, "res", None) is None
    ei_a, alpha, ids = gat_attention(m, x, ei, edge_attr)
    lin = _gat_lin(m)
    h = _lin(x, lin).view(n, H, C)
    bias = None if m.bias is None else m.bias.detach()
    if not m.concat:
        assert bias is None, "reference covers concat=False without bias"
    conns = [Conn(ei_a[0], ei_a[1], alpha[:, k], h[:, k], ids) for k in range(H)]
    bk = [None if bias is None else bias.view(H, C)[k] for k in range(H)]
    zs = [edge_forward([c], n, b) for c, b in zip(conns, bk)]
    if m.concat:
        out = torch.cat(zs, 1)
        R = _mask_zero_output(R, out)
        r_heads = list(R.view(n, H, C).unbind(1))
    else:
        out = torch.stack(zs, 1).mean(1)
        R = _mask_zero_output(R, out)
        ratio = torch.where(out == 0, 0.0, R / torch.where(out == 0, 1.0, out))
        r_heads = [z / H * ratio for z in zs]  # a mean splits relevance in proportion
    r_h = []
    edge = x.new_zeros(E)
    for c, b, r in zip(conns, bk, r_heads):
        ((rh, r_e),) = edge_lrp([c], r, rule, n, b)
        r_h.append(rh)
        edge = edge + to_model_edges(r_e, ids, E)
    r_h = carry(torch.stack(r_h, 1), h).reshape(n, H * C)
    (r_x,) = dense_lrp([(x, _w(lin))], r_h, rule, _b(lin))
    return Ref(out, r_x, edge)


def gat_dense(m, x, ei_a, alpha):
    """GAT(v2) layer as dense adjacency per head with fixed attention (differentiable in x)."""
    n = x.shape[0]
    H, C = m.heads, m.out_channels
    h = _lin_grad(x, _gat_lin(m)).view(n, H, C)
    outs = []
    for k in range(H):
        A = x.new_zeros(n, n).index_put((ei_a[1], ei_a[0]), alpha[:, k], accumulate=True)
        if m.aggr == "mean":  # each target's sum over its in-edges, divided by their number
            A = A / torch.bincount(ei_a[1], minlength=n).clamp(min=1).to(A)[:, None]
        outs.append(A @ h[:, k])
    out = torch.cat(outs, 1) if m.concat else torch.stack(outs, 1).mean(1)
    return out if m.bias is None else out + m.bias


def _lin_grad(x, lin):
    y = x @ lin.weight.T
    return y if getattr(lin, "bias", None) is None else y + lin.bias


def lrp_explainer(model, task_level="node", return_type="raw", composite="zplus", node_mask_type="attributes"):
    """PyG's ``Explainer`` around ``sparse_lrp.LRPExplainer`` (a model's multiclass
    explanation with edge masks), as the Explainer tests build it."""
    from torch_geometric.explain import Explainer

    import sparse_lrp

    return Explainer(
        model,
        algorithm=sparse_lrp.LRPExplainer(composite=composite),
        explanation_type="model",
        node_mask_type=node_mask_type,
        edge_mask_type="object",
        model_config=dict(mode="multiclass_classification", task_level=task_level, return_type=return_type),
    )


def grad_x_input(fn, *inputs: Tensor) -> tuple[Tensor, ...]:
    """Gradient × input of the scalar ``fn(*inputs)`` for each input."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, allow_unused=True)
    return tuple(t.detach() * (torch.zeros_like(t) if g is None else g) for t, g in zip(leaves, grads))


def zero_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Set every ``bias`` parameter to zero (a bias-free model where a layer always has one)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] == "bias":
                p.zero_()
    return model


def randomise(module: torch.nn.Module, seed: int = 3, scale: float = 0.7) -> torch.nn.Module:
    """Give every parameter (biases included) random non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def drop_graph(holder: list, entries: dict) -> tuple[bool, int, int]:
    """Drop the only reference to the graph in ``holder`` and collect: ``(freed, cache
    entries before, after)`` for a cache's ``entries`` (a graph the caller drops must be
    freed, its cached structures with it)."""
    import gc
    import weakref

    alive, before = weakref.ref(holder[0]), len(entries)
    holder.clear()
    gc.collect()
    return alive() is None, before, len(entries)
