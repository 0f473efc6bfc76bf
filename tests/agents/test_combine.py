"""Estimator specs with options and weighted sums ``A = sum_k w_k A_k``: parsing (never eval),
validation, and the sums themselves."""

from __future__ import annotations

import pytest
import torch

from marlhf.algorithms import PPOConfig
from marlhf.credit.combine import combine, parse_combination
from marlhf.credit.estimators import get_estimator
from tests.agents.turn_batches import random_rows, to_batch


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("grpo", [(1.0, "grpo")]),
        ("grpo + 0.5 * gigpo_step", [(1.0, "grpo"), (0.5, "gigpo_step")]),
        ("grpo+0.5*gigpo_step", [(1.0, "grpo"), (0.5, "gigpo_step")]),
        ("-grpo - 2 * rloo", [(-1.0, "grpo"), (-2.0, "rloo")]),
        ("rloo * 0.25 + 1e-3 * rebn:gamma=0.9", [(0.25, "rloo"), (1e-3, "rebn:gamma=0.9")]),
        (
            "gigpo:omega=-0.5;gamma=1e-2 + grpo",
            [(1.0, "gigpo:omega=-0.5;gamma=1e-2"), (1.0, "grpo")],
        ),
        (".5 * grpo", [(0.5, "grpo")]),
    ],
)
def test_parse(text: str, terms: list[tuple[float, str]]) -> None:
    assert parse_combination(text) == terms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grpo + inf * rloo", r"the weight of 'rloo' is 'inf', not a finite number"),
        ("grpo + nan * rloo", r"the weight of 'rloo' is 'nan', not a finite number"),
        ("grpo + 1e999 * rloo", r"the weight of 'rloo' is '1e999', not a finite number"),
        ("rloo * inf", r"the weight of 'rloo' is 'inf'"),
        ("grpo +", r"ends with an operator"),
        ("grpo + + rloo", r"expected an estimator name, got '\+'"),
        ("0.5 grpo", r"a weight must be followed by '\* NAME'"),
        ("grpo rloo", r"expected \+ or - after 'grpo', got 'rloo'"),
        ("grpo + __import__('os')", r"cannot read"),
        ("grpo ** 2", r"'grpo \*' must be followed by a weight"),
        ("grpo + nope", r"estimator 'nope' \(in 'nope'\) is unknown; choose one of \["),
        ("grpo + grpo", r"'grpo' appears twice"),
        ("grpo:x=1 + rloo", r"estimator 'grpo' takes no options"),
    ],
)
def test_bad_expressions_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_estimator(text)


def test_bad_weight_through_the_python_api() -> None:
    with pytest.raises(ValueError, match=r"the weight of 'rloo' is inf, not a finite number"):
        combine([(1.0, "grpo"), (float("inf"), "rloo")])
    with pytest.raises(ValueError, match=r"the weight of 'rloo' is True, not a finite number"):
        combine([(True, "rloo")])


def test_config_accepts_a_combination_and_checks_what_it_needs() -> None:
    cfg = PPOConfig(estimator="grpo + 0.5 * gigpo_step", group_size=2)
    spec = get_estimator(cfg.credit.estimator)
    assert spec.requires == {"group_ids", "turns", "turn_state_keys"}
    assert not spec.needs_critic
    assert get_estimator("rloo + 0.5 * turn_gae").needs_critic
    with pytest.raises(ValueError, match=r"needs groups: group_size=1"):
        PPOConfig(estimator="rebn + 0.5 * gigpo_step")


def test_weighted_sum_is_the_sum_of_its_terms() -> None:
    batch = to_batch(random_rows(0))
    cfg = PPOConfig(estimator="grpo", group_size=2)

    def adv(spec: str) -> torch.Tensor:
        return get_estimator(spec).fn(batch, cfg).advantages.double()

    got = adv("grpo - 0.25 * rebn:gamma=0.5 + 2 * mt_grpo_fixed")
    want = adv("grpo") - 0.25 * adv("rebn:gamma=0.5") + 2 * adv("mt_grpo_fixed")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gigpo_is_grpo_plus_omega_times_its_step_advantage() -> None:
    """GiGPO's ``A_E + omega A_S`` as a configuration: the combinator gives the same credit on
    every action token (grpo also credits environment tokens, which the loss never reads)."""
    batch = to_batch(random_rows(2, n_keys=2))
    assert batch.action_mask is not None
    cfg = PPOConfig(estimator="grpo", group_size=2)
    combined = get_estimator("grpo + 0.5 * gigpo_step").fn(batch, cfg).advantages
    gigpo = get_estimator("gigpo:omega=0.5").fn(batch, cfg).advantages
    act = batch.action_mask
    torch.testing.assert_close(combined[act], gigpo[act], atol=1e-5, rtol=1e-5)


def test_the_critic_term_gives_the_value_targets() -> None:
    batch = to_batch(random_rows(1))
    cfg = PPOConfig(estimator="grpo", group_size=2)
    alone = get_estimator("turn_gae").fn(batch, cfg)
    mixed = get_estimator("0.5 * grpo + turn_gae").fn(batch, cfg)
    assert alone.returns is not None and mixed.returns is not None
    torch.testing.assert_close(mixed.returns, alone.returns)
    assert get_estimator("grpo + rloo").fn(batch, cfg).returns is None


def test_a_spec_with_options_keeps_its_estimator_and_options() -> None:
    spec = get_estimator("gigpo:omega=0.5;gamma=0.9")
    assert spec.name == "gigpo:omega=0.5;gamma=0.9"
    assert spec.requires == get_estimator("gigpo").requires
    batch = to_batch(random_rows(3, n_keys=2))
    cfg = PPOConfig(estimator="grpo", group_size=2)
    a = spec.fn(batch, cfg).advantages
    b = get_estimator("gigpo").fn(batch, cfg).advantages
    assert not torch.allclose(a, b)  # the options reached the estimator
