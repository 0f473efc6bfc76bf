"""The per-turn audit against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from marlhf.audit.turn_audit import audit_turns, turn_values


def test_turn_values_sum_the_truth_and_average_the_estimate() -> None:
    # Row 0: turn 0 = cols 0-1, turn 1 = col 2; row 1: one turn (cols 0-2), col 3 padding.
    turn_ids = torch.tensor([[0, 0, 1, -1], [0, 0, 0, -1]])
    mask = turn_ids >= 0
    adv = torch.tensor([[1.0, 3.0, 5.0, 0.0], [2.0, 2.0, 2.0, 0.0]])
    true = torch.tensor([[0.5, 0.25, -1.0, 9.0], [0.1, 0.2, 0.3, 9.0]])
    est, tr, valid = turn_values(adv, true, turn_ids, mask, torch.tensor([2, 1]))
    assert valid.tolist() == [[True, True], [True, False]]
    assert est.tolist() == [[2.0, 5.0], [2.0, 0.0]]
    assert tr[0].tolist() == [0.75, -1.0] and tr[1, 0] == pytest.approx(0.6)


def test_audit_metrics_by_hand() -> None:
    turn_ids = torch.tensor([[0, 1], [0, 1], [0, -1]])
    mask = turn_ids >= 0
    true = torch.tensor([[1.0, -1.0], [-1.0, 2.0], [0.0, 0.0]])
    adv = torch.tensor([[2.0, -1.0], [0.0, 1.0], [1.0, 0.0]])
    out = audit_turns(adv, true, turn_ids, mask, torch.tensor([2, 2, 1]))
    t0, t1 = out["per_turn"]
    # Turn 0: est (2, 0, 1), true (1, -1, 0): error (1, 1, 1); corr 1; signs on the 2 nonzero.
    assert t0["n"] == 3 and t0["bias"] == pytest.approx(1.0) and t0["error_var"] == pytest.approx(0)
    assert t0["corr"] == pytest.approx(1.0) and t0["sign_agreement"] == 0.5
    # Turn 1: est (-1, 1), true (-1, 2): error (0, -1).
    assert t1["n"] == 2 and t1["bias"] == pytest.approx(-0.5)
    assert t1["sign_agreement"] == 1.0 and t1["corr"] == pytest.approx(1.0)
    assert out["overall"]["n"] == 5
    constant = audit_turns(torch.ones(3, 2), true, turn_ids, mask, torch.tensor([2, 2, 1]))
    assert math.isnan(constant["per_turn"][0]["corr"])


def test_pooled_rollouts_audit_as_one_batch() -> None:
    from marlhf.audit.turn_audit import audit_turn_values, stack_turn_values

    a = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([[True, True]]))
    b = (
        torch.tensor([[3.0], [0.0]]),
        torch.tensor([[2.0], [-1.0]]),
        torch.tensor([[True], [True]]),
    )
    est, true, valid = stack_turn_values([a, b])
    assert est.shape == (3, 2) and valid.tolist() == [[True, True], [True, False], [True, False]]
    pooled = audit_turn_values(est, true, valid)
    assert pooled["per_turn"][0]["n"] == 3 and pooled["per_turn"][1]["n"] == 1
    assert pooled["overall"]["bias"] == pytest.approx((0.5 + 1.0 + 1.0 + 1.0) / 4)
