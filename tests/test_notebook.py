"""The seed notebook (shared/seed/lrp_linear_relu_notebook.txt), reproduced by hand.

The notebook explains a bias-free linear layer followed by a ReLU. Its rules map to:

* z rule   ``R = X * ((Q / (X @ W.T + 10e-6)) @ W)``               -> ``Epsilon(1e-5)``
* z+ rule  ``R = X * ((Q / (X @ W⁺.T + 10e-6)) @ W⁺)``             -> ``ZPlus(stabilizer=1e-5)``
* w² rule  ``R = Q @ (W² / (W².sum(1) + 10e-6))``                 -> ``WSquare(stabilizer=1e-5)``

with output relevance ``Q = (Y != 0)``, ``Y = ReLU(X @ W.T)``. ``10e-6`` is ``1e-5``.
The notebook adds the stabiliser unconditionally while the library adds
``eps * sign(d)``; the two agree here because every output with ``Q = 1`` has a
positive denominator (an output with ``Q = 0`` passes nothing either way).

Every expected value below is derived by hand; the arithmetic is in the comments.
"""

from __future__ import annotations

import pytest
import torch

from sparse_lrp import Epsilon, WSquare, ZPlus, linear_lrp

E = 1e-5  # the notebook's ``10e-6``

LAYOUTS = ["dense", "coo", "csr"]
STRATEGIES = ["auto", "spmm", "scatter"]


def as_layout(W: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "coo":
        return W.to_sparse_coo()
    if layout == "csr":
        return W.to_sparse_csr()
    return W


def assert_hand_values(actual: torch.Tensor, expected, dtype=torch.float64):
    expected = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape
    assert actual.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# First example: W = [[1, 1, 0], [0, 1, 2]], x = [1, 1, 1], Q = [1, 1]
#   y = W x = [1 + 1, 1 + 2] = [2, 3]
#   R_i = x_i * sum_j W_ji Q_j / y_j
# --------------------------------------------------------------------------------------

W1 = [[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]
X1 = [[1.0, 1.0, 1.0]]  # the notebook's column vector as a batch of one
Q1 = [[1.0, 1.0]]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_first_example_z_rule_no_stabilizer(layout, strategy, backend):
    """Cell 16: ``R = x * (W.T @ (Q / (W @ x)))`` without a stabiliser (Epsilon(0))."""
    W = as_layout(torch.tensor(W1, dtype=torch.float64), layout)
    x, Q = torch.tensor(X1, dtype=torch.float64), torch.tensor(Q1, dtype=torch.float64)
    R = linear_lrp(x, W, Q, Epsilon(0.0), strategy=strategy)
    # R_0 = 1 * (1/2)             = 1/2
    # R_1 = 1 * (1/2 + 1/3)       = 5/6
    # R_2 = 1 * (2/3)             = 2/3      (sum 2 = sum Q: conserved)
    assert_hand_values(R, [[1 / 2, 1 / 2 + 1 / 3, 2 / 3]])
    assert float(R.sum()) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_first_example_all_three_rules_with_notebook_stabilizer(layout, strategy, backend):
    W = as_layout(torch.tensor(W1, dtype=torch.float64), layout)
    x, Q = torch.tensor(X1, dtype=torch.float64), torch.tensor(Q1, dtype=torch.float64)
    # z rule: denominators y + e = [2 + e, 3 + e]
    #   R = [1/(2+e), 1/(2+e) + 1/(3+e), 2/(3+e)]
    z = [[1 / (2 + E), 1 / (2 + E) + 1 / (3 + E), 2 / (3 + E)]]
    assert_hand_values(linear_lrp(x, W, Q, Epsilon(E), strategy=strategy), z)
    # z+ rule: W >= 0 so W⁺ = W and x >= 0: identical to the z rule
    assert_hand_values(linear_lrp(x, W, Q, ZPlus(stabilizer=E), strategy=strategy), z)
    # w² rule: rows of W² = [1, 1, 0] (sum 2) and [0, 1, 4] (sum 5)
    #   R = Q @ [[1, 1, 0]/(2+e), [0, 1, 4]/(5+e)] = [1/(2+e), 1/(2+e) + 1/(5+e), 4/(5+e)]
    w2 = [[1 / (2 + E), 1 / (2 + E) + 1 / (5 + E), 4 / (5 + E)]]
    assert_hand_values(linear_lrp(x, W, Q, WSquare(stabilizer=E), strategy=strategy), w2)


# --------------------------------------------------------------------------------------
# Batch example (cells 18-24)
#   W = [[-1, 1, 0], [0, 1, 2]], b = 0
#   z_0 = -x_0 + x_1,  z_1 = x_1 + 2 x_2,  Y = ReLU(z),  Q = (Y != 0)
#
#   row  X          z          Q
#   0    [1, 1, 1]  [ 0, 3]    [0, 1]
#   1    [1, 2, 3]  [ 1, 8]    [1, 1]
#   2    [0, 3, 2]  [ 3, 7]    [1, 1]
#   3    [3, 0, 2]  [-3, 4]    [0, 1]
#   4    [1, 2, 0]  [ 1, 2]    [1, 1]
#   5    [1, 0, 0]  [-1, 0]    [0, 0]
#   6    [0, 0, 1]  [ 0, 2]    [0, 1]
# --------------------------------------------------------------------------------------

W_BATCH = [[-1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]
X_BATCH = [
    [1.0, 1.0, 1.0],
    [1.0, 2.0, 3.0],
    [0.0, 3.0, 2.0],
    [3.0, 0.0, 2.0],
    [1.0, 2.0, 0.0],
    [1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0],
]
Q_BATCH = [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]

# z rule, R_i = x_i * sum_j W_ji Q_j / (z_j + e):
Z_RULE = [
    # row 0: only j=1 (z=3): [1*0, 1*1/(3+e), 1*2/(3+e)]
    [0.0, 1 / (3 + E), 2 / (3 + E)],
    # row 1: j=0 (z=1, W_0=[-1,1,0]), j=1 (z=8, W_1=[0,1,2]):
    #   [1*(-1/(1+e)), 2*(1/(1+e) + 1/(8+e)), 3*(2/(8+e))]
    [-1 / (1 + E), 2 / (1 + E) + 2 / (8 + E), 6 / (8 + E)],
    # row 2: j=0 (z=3), j=1 (z=7): [0*..., 3*(1/(3+e) + 1/(7+e)), 2*(2/(7+e))]
    [0.0, 3 / (3 + E) + 3 / (7 + E), 4 / (7 + E)],
    # row 3: only j=1 (z=4): [3*0, 0*..., 2*2/(4+e)]
    [0.0, 0.0, 4 / (4 + E)],
    # row 4: j=0 (z=1), j=1 (z=2): [1*(-1/(1+e)), 2*(1/(1+e) + 1/(2+e)), 0*...]
    [-1 / (1 + E), 2 / (1 + E) + 2 / (2 + E), 0.0],
    # row 5: Q = 0 -> nothing
    [0.0, 0.0, 0.0],
    # row 6: only j=1 (z=2): [0, 0, 1*2/(2+e)]
    [0.0, 0.0, 2 / (2 + E)],
]

# z+ rule: W⁺ = [[0, 1, 0], [0, 1, 2]], z⁺_0 = x_1, z⁺_1 = x_1 + 2 x_2 (X >= 0),
# R_i = x_i * sum_j W⁺_ji Q_j / (z⁺_j + e):
Z_PLUS = [
    # row 0: j=1 (z⁺=3): [0, 1/(3+e), 2/(3+e)]
    [0.0, 1 / (3 + E), 2 / (3 + E)],
    # row 1: j=0 (z⁺=2), j=1 (z⁺=8): [0, 2*(1/(2+e) + 1/(8+e)), 3*2/(8+e)]
    [0.0, 2 / (2 + E) + 2 / (8 + E), 6 / (8 + E)],
    # row 2: j=0 (z⁺=3), j=1 (z⁺=7): [0, 3*(1/(3+e) + 1/(7+e)), 2*2/(7+e)]
    [0.0, 3 / (3 + E) + 3 / (7 + E), 4 / (7 + E)],
    # row 3: j=1 (z⁺=4): [0, 0, 2*2/(4+e)]
    [0.0, 0.0, 4 / (4 + E)],
    # row 4: j=0 (z⁺=2), j=1 (z⁺=2): [0, 2*(1/(2+e) + 1/(2+e)), 0]
    [0.0, 4 / (2 + E), 0.0],
    # row 5: Q = 0
    [0.0, 0.0, 0.0],
    # row 6: j=1 (z⁺=2): [0, 0, 1*2/(2+e)]
    [0.0, 0.0, 2 / (2 + E)],
]

# w² rule: W² = [[1, 1, 0], [0, 1, 4]], row sums 2 and 5, so the normalised matrix is
#   N = [[1/(2+e), 1/(2+e), 0], [0, 1/(5+e), 4/(5+e)]] and R = Q @ N:
ONLY_J1 = [0.0, 1 / (5 + E), 4 / (5 + E)]  # Q = [0, 1]: row 1 of N
BOTH = [1 / (2 + E), 1 / (2 + E) + 1 / (5 + E), 4 / (5 + E)]  # Q = [1, 1]: N_0 + N_1
W_SQUARE = [ONLY_J1, BOTH, BOTH, ONLY_J1, BOTH, [0.0, 0.0, 0.0], ONLY_J1]


def batch(dtype=torch.float64):
    W = torch.tensor(W_BATCH, dtype=dtype)
    X = torch.tensor(X_BATCH, dtype=dtype)
    Y = (X @ W.T).clamp(min=0)
    Q = torch.ones_like(Y) * (Y != 0).to(dtype)
    return W, X, Q


def test_batch_q_matches_the_hand_table():
    W, X, Q = batch()
    torch.testing.assert_close(
        X @ W.T, torch.tensor([[0, 3], [1, 8], [3, 7], [-3, 4], [1, 2], [-1, 0], [0, 2.0]]).double()
    )
    torch.testing.assert_close(Q, torch.tensor(Q_BATCH, dtype=torch.float64))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_z_rule(layout, strategy, backend):
    W, X, Q = batch()
    R = linear_lrp(X, as_layout(W, layout), Q, Epsilon(E), strategy=strategy)
    assert_hand_values(R, Z_RULE)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_z_plus_rule(layout, strategy, backend):
    W, X, Q = batch()
    R = linear_lrp(X, as_layout(W, layout), Q, ZPlus(stabilizer=E), strategy=strategy)
    assert_hand_values(R, Z_PLUS)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_w_square_rule(layout, strategy, backend):
    W, X, Q = batch()
    R = linear_lrp(X, as_layout(W, layout), Q, WSquare(stabilizer=E), strategy=strategy)
    assert_hand_values(R, W_SQUARE)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_float32(layout, backend):
    """The notebook itself computes in float32."""
    W, X, Q = batch(torch.float32)
    Ws = as_layout(W, layout)
    assert_hand_values(linear_lrp(X, Ws, Q, Epsilon(E)), Z_RULE, torch.float32)
    assert_hand_values(linear_lrp(X, Ws, Q, ZPlus(stabilizer=E)), Z_PLUS, torch.float32)
    assert_hand_values(linear_lrp(X, Ws, Q, WSquare(stabilizer=E)), W_SQUARE, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_against_notebook_one_liners(layout, backend):
    """Second check on all rows: the notebook's own vectorised formulas (cells 20, 22, 24)."""
    W, X, Q = batch()
    Ws = as_layout(W, layout)
    z_nb = X * ((Q / (X @ W.t() + 10e-6)) @ W)
    zp_nb = X * ((Q / (X @ W.clamp(min=0).t() + 10e-6)) @ W.clamp(min=0))
    w2_nb = Q @ (W.pow(2) / (W.pow(2).sum(dim=1, keepdim=True) + 10e-6))
    # the hand tables agree with the notebook's formulas ...
    torch.testing.assert_close(z_nb, torch.tensor(Z_RULE, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(zp_nb, torch.tensor(Z_PLUS, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w2_nb, torch.tensor(W_SQUARE, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # ... and so does the library
    for strategy in STRATEGIES:
        torch.testing.assert_close(linear_lrp(X, Ws, Q, Epsilon(E), strategy=strategy), z_nb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            linear_lrp(X, Ws, Q, ZPlus(stabilizer=E), strategy=strategy), zp_nb, rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(
            linear_lrp(X, Ws, Q, WSquare(stabilizer=E), strategy=strategy), w2_nb, rtol=1e-12, atol=1e-12
        )


def test_batch_relevance_is_conserved_up_to_the_stabiliser(backend):
    """Each row's relevance sum equals its number of active outputs (sum Q), up to the
    share the stabiliser absorbs (``e / (z + e)`` per output)."""
    W, X, Q = batch()
    R, absorbed = linear_lrp(X, W.to_sparse_csr(), Q, Epsilon(E), return_absorbed=True)
    torch.testing.assert_close(R.sum(1) + absorbed.sum(1), Q.sum(1), rtol=1e-12, atol=1e-12)
    # row 1: z = [1, 8] -> absorbed e/(1+e) + e/(8+e)
    torch.testing.assert_close(absorbed[1], torch.tensor([E / (1 + E), E / (8 + E)], dtype=torch.float64))
