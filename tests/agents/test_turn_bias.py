"""The bias of turn-level estimators, measured against the exact truth of a small tool-use MDP
where the policy decides how many turns to take (:mod:`marlhf.audit.turn_exact`).

(a) verl#7244: per-turn-index normalisation (MT-GRPO as published) subtracts a baseline whose
number of terms is set by the row's own decision to take another turn. The issue states the
closed form: the bias equals the accumulated intermediate-reward group mean, a hidden
``-E[R_intermediate]`` on every "take another turn" decision. Its derivation is not in the text
the search tool returns (only the issue's summary), so it is derived here for this MDP: with the
group normalisation centring only (std off), ``lam = 1`` and groups large enough that the group
means are the population means ``mu_j``, the aggregated turn-``k`` advantage of a row with
``n`` turns is ``(O - E[O]) + sum_{j=k}^{n-2} (r_j - mu_j)`` (the paper's own-turn form keeps
``j = k`` only; with one deterministic reward per turn index both have the bias below); its
conditional mean given ``(s, a)`` is
``Q(s, a) - E[O] - B(s, a)`` with ``B(s, answer) = 0`` and ``B(s, tool) = M(s) = E[sum_{j=k}^{n-2}
mu_j | s, tool]``. For ``P(tool | s) = sigmoid(theta_s)`` the expected gradient is therefore the
true one plus ``-P(s) p_s (1 - p_s) M(s)``. The corrected form (returns-to-go normalised over
the rows that *reached* the turn) is unbiased: its baseline does not depend on the action.

(b) Potential-based shaping with ``gamma = 1`` (Ng et al. 1999) leaves the true advantages and
the ranking of policies unchanged; normalisations that act on single turn rewards (IGPO's
group normalisation of every turn reward, per-turn-index normalisation) break that; those that
act on returns (none, GRPO's group baseline, ReBN's batch normalisation) keep it.
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import pytest

from marlhf.audit.turn_exact import (
    State,
    ToolMDP,
    cosine,
    enumerate_trajectories,
    exact_update_table,
    expected_gradient,
    objective,
    quadrature_batch,
    relative_variance,
    true_gradient,
    turn_advantages,
    values,
    with_logits,
)


def two_turn(p: F = F(1, 4), c: F = F(1, 2)) -> ToolMDP:
    """verl#7244's setting at its smallest: answer now, or call a tool (reward ``c``) and answer
    next turn with better odds."""
    return ToolMDP(2, [c], F(1, 2), [F(1, 2), F(3, 4), F(1)], {(0, 0): p})


def three_turn() -> ToolMDP:
    return ToolMDP(
        3,
        [F(1, 2), F(-1, 4)],
        F(1, 2),
        [F(1, 4), F(3, 4), F(1)],
        {(0, 0): F(1, 2), (1, 0): F(3, 4), (1, 1): F(1, 4)},
    )


def intermediate_means(m: ToolMDP) -> dict[int, float]:
    """``mu_j``: the mean intermediate reward at turn index ``j`` over the trajectories that have
    an intermediate turn ``j`` (what the published normaliser subtracts, in the large-group
    limit)."""
    num: dict[int, float] = {}
    den: dict[int, float] = {}
    for tr in enumerate_trajectories(m):
        for j in range(len(tr.rewards) - 1):
            num[j] = num.get(j, 0.0) + float(tr.prob) * float(tr.rewards[j])
            den[j] = den.get(j, 0.0) + float(tr.prob)
    return {j: num[j] / den[j] for j in num}


def closed_form_bias(m: ToolMDP) -> dict[State, float]:
    """``-P(s) p (1 - p) M(s)``, with ``M(s) = mu_k + E[sum of later mu_j | s, tool]``."""
    mu = intermediate_means(m)
    hit = float(m.hit)

    def later(s: State) -> float:  # E[sum_{j=k}^{n-2} mu_j | s], under the policy
        p = float(m.p_tool(s))
        return p * tool_branch(s) if p else 0.0

    def tool_branch(s: State) -> float:  # M(s)
        k, h = s
        return mu[k] + hit * later((k + 1, h + 1)) + (1 - hit) * later((k + 1, h))

    reach: dict[State, float] = {}
    for tr in enumerate_trajectories(m):
        for s in tr.states:
            reach[s] = reach.get(s, 0.0) + float(tr.prob)
    out = {}
    for s in m.decision_states():
        p = float(m.p_tool(s))
        out[s] = -reach.get(s, 0.0) * p * (1 - p) * tool_branch(s)
    return out


#: The published form (each intermediate turn its own normalised reward, as the paper) and the
#: aggregated one (later intermediate turns summed in, verifiers PR#1554, what verl#7244
#: analyses): with one deterministic tool reward per turn index their bias is the same.
PUBLISHED = ["mt_grpo:std=false", "mt_grpo:std=false;accumulate=true"]


@pytest.mark.parametrize("spec", PUBLISHED)
@pytest.mark.parametrize(("p", "c"), [(F(1, 4), F(1, 2)), (F(1, 2), F(-1, 4)), (F(3, 4), F(1))])
def test_two_turn_per_index_bias_is_minus_the_intermediate_mean(spec: str, p: F, c: F) -> None:
    m = two_turn(p, c)
    quad = quadrature_batch(m)
    truth = true_gradient(m)
    published = expected_gradient(m, quad, turn_advantages(spec, quad))
    s = (0, 0)
    want = -float(p * (1 - p) * c)  # the hidden -E[R_intermediate] on "take another turn"
    assert abs((published[s] - truth[s]) - want) < 1e-3
    assert abs(want) > 0.04  # a bias the test can see
    fixed = expected_gradient(m, quad, turn_advantages("mt_grpo_fixed:std=false", quad))
    assert abs(fixed[s] - truth[s]) < 1e-6


@pytest.mark.parametrize("spec", PUBLISHED)
def test_three_turn_per_index_bias_matches_the_closed_form_and_the_fix_is_unbiased(
    spec: str,
) -> None:
    m = three_turn()
    quad = quadrature_batch(m)
    truth = true_gradient(m)
    published = expected_gradient(m, quad, turn_advantages(spec, quad))
    fixed = expected_gradient(m, quad, turn_advantages("mt_grpo_fixed:std=false", quad))
    bias = closed_form_bias(m)
    for s in m.decision_states():
        assert abs((published[s] - truth[s]) - bias[s]) < 1e-3, s
        assert abs(fixed[s] - truth[s]) < 1e-6, s
    assert max(abs(b) for b in bias.values()) > 0.02


def test_the_published_bias_can_flip_the_update() -> None:
    """A tool call that costs more (reward -1/4) than it helps the answer (+1/8): the truth says
    answer at once; the published estimator cancels the cost (its hidden ``-E[R_intermediate]``
    is a +1/4 bonus for taking another turn) and says call the tool."""
    m = two_turn(F(1, 2), F(-1, 4))
    quad = quadrature_batch(m)
    truth = true_gradient(m)[(0, 0)]
    published = expected_gradient(m, quad, turn_advantages("mt_grpo:std=false", quad))[(0, 0)]
    fixed = expected_gradient(m, quad, turn_advantages("mt_grpo_fixed:std=false", quad))[(0, 0)]
    assert published > 0 > truth
    assert fixed == pytest.approx(truth, abs=1e-9)


@pytest.mark.parametrize(
    "spec",
    [
        "turn_gae:lambda_turn=0",
        "turn_gae:lambda_turn=1",
        "turn_gae:lambda_turn=0.5",
        "turn_mc",
        "rebn:gamma=1",
    ],
)
def test_value_based_turn_estimators_are_unbiased_with_true_values(spec: str) -> None:
    """Critic or Monte-Carlo values equal to the true ``V`` at turn starts: GAE over turns is
    unbiased for any lambda; ReBN's normalisation only rescales (same direction)."""
    m = three_turn()
    quad = quadrature_batch(m)
    truth = true_gradient(m)
    got = expected_gradient(m, quad, turn_advantages(spec, quad))
    if spec.startswith("rebn"):
        scale = got[(0, 0)] / truth[(0, 0)]
        assert scale > 0
        for s in truth:  # the truth's central differences are good to ~1e-9
            assert got[s] == pytest.approx(scale * truth[s], abs=1e-7)
    else:
        for s in truth:
            assert got[s] == pytest.approx(truth[s], abs=1e-9)


def test_gae_over_turns_with_true_values_and_lambda_zero_is_the_true_advantage_in_mean() -> None:
    m = three_turn()
    quad = quadrature_batch(m)
    v, q = values(m)
    adv = turn_advantages("turn_gae:lambda_turn=0", quad)
    sums: dict[tuple[State, str], float] = {}
    counts: dict[tuple[State, str], int] = {}
    for tr, a in zip(quad.owners, adv, strict=True):
        for s, act, x in zip(tr.states, tr.actions, a, strict=True):
            sums[(s, act)] = sums.get((s, act), 0.0) + x
            counts[(s, act)] = counts.get((s, act), 0) + 1
    for key, total in sums.items():
        assert total / counts[key] == pytest.approx(q[key] - v[key[0]], abs=1e-9)


# ------------------------------------------------------------------------------ (b) shaping
def phi(s: State) -> float:
    """A potential that likes tool answers: log p(gold | s) rising with the hits."""
    return [-2.0, -0.5, -0.1][s[1]] - 0.3 * s[0]


def test_potential_shaping_leaves_true_advantages_and_policy_ranking_unchanged() -> None:
    base = three_turn()
    grid = [-1.5, 0.0, 1.5]
    policies = [
        with_logits(base, {(0, 0): a, (1, 0): b, (1, 1): c})
        for a in grid
        for b in grid
        for c in grid
    ]
    plain = [objective(m) for m in policies]
    shaped = [objective(m, phi) for m in policies]
    for j, js in zip(plain, shaped, strict=True):
        assert js == pytest.approx(j - phi((0, 0)), abs=1e-12)  # J' = J - Phi(s0)
    pairs = [(i, j) for i in range(len(plain)) for j in range(len(plain))]
    for i, j in pairs:  # every strict preference between two policies is kept
        if plain[i] - plain[j] > 1e-9:
            assert shaped[i] - shaped[j] > 1e-9
    # IGPO's convention (no shaping on the final turn) adds E[Phi(s_{n-1})]: rankings change.
    igpo = [objective(m, phi, terminal="last") for m in policies]
    assert any(plain[i] > plain[j] and igpo[i] < igpo[j] for i, j in pairs)
    # The true advantages, from the shaped rewards by their own recursion: unchanged.
    for m in policies:
        v, q = values(m)
        vs, qs = values(m, phi)
        for (s, a), qa in q.items():
            assert qs[(s, a)] - vs[s] == pytest.approx(qa - v[s], abs=1e-12)


@pytest.mark.parametrize(
    ("normalize", "keeps"),
    [
        ("none", True),
        ("group_returns", True),
        ("batch_returns", True),
        ("group_rewards", False),
        ("index_rewards", False),
    ],
)
def test_which_normalisations_keep_the_shaped_update(normalize: str, keeps: bool) -> None:
    """Expected update with Phi-shaped rewards vs without, per normalisation (gamma 1)."""
    m = three_turn()
    plain_quad, shaped_quad = quadrature_batch(m), quadrature_batch(m, phi)
    spec = f"turn_potential:normalize={normalize}"
    # Phi = 0 everywhere is no shaping: the same estimator on the raw turn rewards.
    plain = expected_gradient(m, plain_quad, turn_advantages(spec, plain_quad))
    shaped = expected_gradient(m, shaped_quad, turn_advantages(spec, shaped_quad))
    if keeps:
        assert cosine(plain, shaped) == pytest.approx(1.0, abs=1e-9)
        assert cosine(true_gradient(m), shaped) == pytest.approx(1.0, abs=1e-6)
    else:
        assert cosine(plain, shaped) < 0.99


def test_exact_update_table_reports_the_published_bias() -> None:
    specs = ["mt_grpo:std=false", "mt_grpo_fixed:std=false"]
    table = exact_update_table(two_turn(F(1, 2), F(-1, 4)), specs)
    assert table["mt_grpo:std=false"]["sign_agreement"] == 0.0
    assert table["mt_grpo_fixed:std=false"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert table["mt_grpo_fixed:std=false"]["sign_agreement"] == 1.0
    assert all(math.isfinite(row["relative_variance"]) for row in table.values())


def test_relative_variance_is_the_noise_of_one_episode_over_the_signal() -> None:
    rows = [{(0, 0): 1.0, (1, 0): 0.0}, {(0, 0): 3.0, (1, 0): 0.0}]
    # mean (2, 0): signal 4; deviations (-1, 0) and (1, 0): noise 1.
    assert relative_variance(rows) == pytest.approx(0.25)
    assert relative_variance([{(0, 0): 2.0}] * 3) == 0.0
    # True Monte-Carlo values at turn starts (lambda 0) are less noisy than the return with a
    # group baseline, on the same episodes.
    m = three_turn()
    table = exact_update_table(m, ["turn_mc", "rloo"])
    assert table["turn_mc"]["relative_variance"] < table["rloo"]["relative_variance"]
