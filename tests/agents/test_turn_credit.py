"""Turn-level estimators against per-sample float64 references written from each paper's
formula (plain Python loops over one row at a time), on random ragged batches with several
turns, environment tokens between turns and padding."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

import pytest
import torch

from marlhf.algorithms import PPOConfig
from marlhf.credit.estimators import EstimatorBatch, check_estimate, get_estimator
from marlhf.credit.turn_credit import TurnInputError
from tests.agents.turn_batches import Row, per_token, random_rows, to_batch

EPS = 1e-6
SEEDS = [0, 1, 2, 3]


def run(spec: str, batch: EstimatorBatch) -> Any:
    est = get_estimator(spec)
    out = est.fn(batch, PPOConfig(estimator="grpo", group_size=2))
    check_estimate(spec, out, batch)
    return out


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


def discounted(xs: list[float], gamma: float) -> list[float]:
    """``sum_{l >= k} gamma**(j - k) x_l`` for every k, by the definition."""
    return [sum(gamma ** (j - k) * xs[j] for j in range(k, len(xs))) for k in range(len(xs))]


def zscore(x: float, pool: list[float], std: bool = True) -> float:
    if len(pool) < 2:
        return 0.0 if std or len(pool) == 1 else x
    m = statistics.fmean(pool)
    return (x - m) / (statistics.stdev(pool) + EPS) if std else x - m


# ------------------------------------------------------------------------------ two-level GAE
def ref_turn_gae(
    rows: list[Row], gamma: float, lam: float
) -> tuple[list[list[float]], list[list[float]]]:
    advs, rets = [], []
    for r in rows:
        n = r.num_turns
        rew = r.turn_rewards()
        v = [r.value[r.start(k)] for k in range(n)] + [0.0]
        delta = [rew[k] + gamma * v[k + 1] - v[k] for k in range(n)]
        a = [sum((gamma * lam) ** (j - k) * delta[j] for j in range(k, n)) for k in range(n)]
        advs.append(a)
        rets.append([a[k] + v[k] for k in range(n)])
    return advs, rets


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (0.8, 1.0), (1.0, 0.0)])
def test_turn_gae_uniform_matches_reference(seed: int, gamma: float, lam: float) -> None:
    rows = random_rows(seed)
    batch = to_batch(rows)
    out = run(f"turn_gae:gamma_turn={gamma};lambda_turn={lam}", batch)
    advs, rets = ref_turn_gae(rows, gamma, lam)
    width = batch.mask.shape[1]
    close(out.advantages, per_token(rows, advs, width))
    close(out.returns, per_token(rows, rets, width))


def ref_inner_gae(r: Row, gt: float, lt: float, gk: float, lk: float) -> dict[int, float]:
    """Token GAE inside turns, turn discounting across them; the direct sum, not a recursion."""
    pos = [p for p, a in enumerate(r.action) if a]
    last_of_turn = {max(p for p in pos if r.turn[p] == k) for k in range(r.num_turns)}
    rew = []
    for p in pos:
        x = r.reward[p]
        if p in last_of_turn:  # the turn's env-token rewards (0 here) join its last action
            x += sum(
                r.reward[q]
                for q in range(len(r.turn))
                if r.turn[q] == r.turn[p] and not r.action[q]
            )
        rew.append(x)
    v = [r.value[p] for p in pos] + [0.0]
    g = [gk if p in last_of_turn else gt for p in pos]
    gl = [gk * lk if p in last_of_turn else gt * lt for p in pos]
    delta = [rew[j] + g[j] * v[j + 1] - v[j] for j in range(len(pos))]
    out = {}
    for j, p in enumerate(pos):
        total, factor = 0.0, 1.0
        for m in range(j, len(pos)):
            total += factor * delta[m]
            factor *= gl[m]
        out[p] = total
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("gt", "lt", "gk", "lk"), [(1.0, 1.0, 1.0, 1.0), (1.0, 0.9, 0.9, 0.5), (0.95, 0.0, 0.8, 1.0)]
)
def test_turn_gae_inner_matches_reference(
    seed: int, gt: float, lt: float, gk: float, lk: float
) -> None:
    rows = random_rows(seed)
    batch = to_batch(rows)
    spec = f"turn_gae:inner=gae;gamma_token={gt};lambda_token={lt};gamma_turn={gk};lambda_turn={lk}"
    out = run(spec, batch)
    want = torch.zeros(batch.mask.shape, dtype=torch.float64)
    rets = torch.zeros(batch.mask.shape, dtype=torch.float64)
    for i, r in enumerate(rows):
        for p, a in ref_inner_gae(r, gt, lt, gk, lk).items():
            want[i, p] = a
            rets[i, p] = a + r.value[p]
    close(out.advantages, want)
    close(out.returns, rets)


def test_inner_gae_with_all_ones_is_the_monte_carlo_return_minus_the_value() -> None:
    rows = random_rows(7)
    batch = to_batch(rows)
    out = run("turn_gae:inner=gae;lambda_turn=1.0", batch)
    for i, r in enumerate(rows):
        for p, a in enumerate(r.action):
            if a:
                to_go = sum(r.reward[p:])
                assert float(out.advantages[i, p]) == pytest.approx(to_go - r.value[p], abs=1e-5)


# ------------------------------------------------------------------------------ GiGPO
def ref_gigpo(rows: list[Row], omega: float, gamma: float, std: bool) -> list[list[float]]:
    """arXiv 2505.10978: A = A^E + omega A^S, A^S over anchor groups (singletons 0)."""
    totals = [sum(r.turn_rewards()) for r in rows]
    rets = [discounted(r.turn_rewards(), gamma) for r in rows]
    anchors: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r, ret in zip(rows, rets, strict=True):
        for k in range(r.num_turns):
            anchors[(r.group, r.keys[k])].append(ret[k])
    out = []
    for i, r in enumerate(rows):
        group = [totals[j] for j, s in enumerate(rows) if s.group == r.group]
        a_e = zscore(totals[i], group, std)
        row = []
        for k in range(r.num_turns):
            pool = anchors[(r.group, r.keys[k])]
            a_s = 0.0 if len(pool) == 1 else zscore(rets[i][k], pool, std)
            row.append(a_e + omega * a_s)
        out.append(row)
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("omega", "gamma", "std"), [(1.0, 0.95, True), (0.5, 1.0, False), (2.0, 0.7, True)]
)
def test_gigpo_matches_reference(seed: int, omega: float, gamma: float, std: bool) -> None:
    rows = random_rows(seed, n_keys=2)
    batch = to_batch(rows)
    out = run(f"gigpo:omega={omega};gamma={gamma};std={str(std).lower()}", batch)
    close(out.advantages, per_token(rows, ref_gigpo(rows, omega, gamma, std), batch.mask.shape[1]))
    # The step part alone (omega 1, the episode part subtracted).
    step = run(f"gigpo_step:gamma={gamma};std={str(std).lower()}", batch)
    episode = per_token(rows, ref_gigpo(rows, 0.0, gamma, std), batch.mask.shape[1])
    close(
        step.advantages,
        per_token(rows, ref_gigpo(rows, 1.0, gamma, std), batch.mask.shape[1]) - episode,
    )


def test_gigpo_singleton_anchor_groups_get_no_step_advantage() -> None:
    rows = random_rows(3, n_keys=1000)  # keys almost never repeat past turn 0
    batch = to_batch(rows)
    step = run("gigpo_step", batch).advantages
    for i, r in enumerate(rows):
        for k in range(1, r.num_turns):
            same = [
                (j, m)
                for j, s in enumerate(rows)
                for m in range(s.num_turns)
                if s.group == r.group and s.keys[m] == r.keys[k]
            ]
            if len(same) == 1:
                assert float(step[i, r.start(k)]) == 0.0


# ------------------------------------------------------------------------------ MT-GRPO
def ref_mt_grpo(
    rows: list[Row], lam: float, std: bool, fixed: bool, accumulate: bool = False
) -> list[list[float]]:
    """arXiv 2505.11821 generalised to n turns (published: own turn, or accumulated), and the
    corrected form."""
    outcome = [r.turn_rewards()[-1] for r in rows]
    out = []
    for i, r in enumerate(rows):
        group = [j for j, s in enumerate(rows) if s.group == r.group]
        a_o = zscore(outcome[i], [outcome[j] for j in group], std)
        n = r.num_turns
        row = []
        for k in range(n):
            if not fixed:
                if k == n - 1:  # the final turn: the outcome advantage alone
                    row.append(a_o)
                    continue
                total = 0.0
                for m in range(k, n - 1 if accumulate else k + 1):
                    pool = [rows[j].turn_rewards()[m] for j in group if rows[j].num_turns - 1 > m]
                    total += zscore(r.turn_rewards()[m], pool, std)
                row.append(total + lam * a_o)
            else:

                def to_go(s: Row, kk: int) -> float:
                    return sum(s.turn_rewards()[kk : s.num_turns - 1])

                pool = [to_go(rows[j], k) for j in group if rows[j].num_turns > k]
                row.append(zscore(to_go(r, k), pool, std) + lam * a_o)
        out.append(row)
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("lam", "std"), [(1.0, True), (1.0, False), (0.5, True)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_mt_grpo_published_matches_reference(
    seed: int, lam: float, std: bool, accumulate: bool
) -> None:
    rows = random_rows(seed, group_size=6)
    batch = to_batch(rows)
    spec = f"mt_grpo:lam={lam};std={str(std).lower()};accumulate={str(accumulate).lower()}"
    out = run(spec, batch)
    want = ref_mt_grpo(rows, lam, std, fixed=False, accumulate=accumulate)
    close(out.advantages, per_token(rows, want, batch.mask.shape[1]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("lam", "std"), [(1.0, True), (1.0, False), (0.5, True)])
def test_mt_grpo_fixed_matches_reference(seed: int, lam: float, std: bool) -> None:
    rows = random_rows(seed, group_size=6)
    batch = to_batch(rows)
    out = run(f"mt_grpo_fixed:lam={lam};std={str(std).lower()}", batch)
    want = ref_mt_grpo(rows, lam, std, fixed=True)
    close(out.advantages, per_token(rows, want, batch.mask.shape[1]))


def test_mt_grpo_fixed_refuses_accumulate() -> None:
    with pytest.raises(ValueError, match=r"accumulate applies to mt_grpo only"):
        run("mt_grpo_fixed:accumulate=true", to_batch(random_rows(0)))


# ------------------------------------------------------------------------------ ReBN, MC
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.9, 1.0, 0.5])
def test_rebn_matches_reference(seed: int, gamma: float) -> None:
    rows = random_rows(seed)
    batch = to_batch(rows)
    out = run(f"rebn:gamma={gamma}", batch)
    rets = [discounted(r.turn_rewards(), gamma) for r in rows]
    pool = [x for ret in rets for x in ret]  # every turn of the batch, once
    want = [
        [(x - statistics.fmean(pool)) / (statistics.stdev(pool) + EPS) for x in ret] for ret in rets
    ]
    close(out.advantages, per_token(rows, want, batch.mask.shape[1]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.0), (0.9, 0.5)])
def test_turn_mc_matches_reference(seed: int, gamma: float, lam: float) -> None:
    rows = random_rows(seed)
    batch = to_batch(rows)
    out = run(f"turn_mc:gamma={gamma};lam={lam}", batch)
    want = []
    for r in rows:
        rew, v = r.turn_rewards(), [*r.mc, 0.0]
        delta = [rew[k] + gamma * v[k + 1] - v[k] for k in range(r.num_turns)]
        want.append(
            [
                sum((gamma * lam) ** (j - k) * delta[j] for j in range(k, r.num_turns))
                for k in range(r.num_turns)
            ]
        )
    close(out.advantages, per_token(rows, want, batch.mask.shape[1]))


# ------------------------------------------------------------------------------ potentials
def ref_potential(
    rows: list[Row], gamma: float, terminal: str, normalize: str
) -> list[list[float]]:
    shaped = []
    for r in rows:
        n, phi = r.num_turns, [*r.potential, 0.0]
        rew = r.turn_rewards()
        s = [rew[k] + gamma * phi[k + 1] - phi[k] for k in range(n)]
        if terminal == "last":
            s[-1] = rew[-1]
        shaped.append(s)
    if normalize == "none":
        return [discounted(s, gamma) for s in shaped]
    if normalize == "batch_returns":
        rets = [discounted(s, gamma) for s in shaped]
        pool = [x for ret in rets for x in ret]
        return [
            [(x - statistics.fmean(pool)) / (statistics.stdev(pool) + EPS) for x in ret]
            for ret in rets
        ]
    out = []
    for i, r in enumerate(rows):
        group = [j for j, s in enumerate(rows) if s.group == r.group]
        if normalize == "group_returns":
            firsts = [discounted(shaped[j], gamma)[0] for j in group]
            out.append(
                [
                    zscore(x, firsts)
                    if False
                    else (x - statistics.fmean(firsts)) / (statistics.stdev(firsts) + EPS)
                    for x in discounted(shaped[i], gamma)
                ]
            )
            continue
        normed = []
        for k in range(r.num_turns):
            if normalize == "group_rewards":
                pool = [x for j in group for x in shaped[j]]
            else:
                pool = [shaped[j][k] for j in group if rows[j].num_turns > k]
            normed.append(zscore(shaped[i][k], pool))
        out.append(discounted(normed, gamma))
    return out


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("terminal", ["zero", "last"])
@pytest.mark.parametrize(
    "normalize", ["none", "batch_returns", "group_returns", "group_rewards", "index_rewards"]
)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_turn_potential_matches_reference(
    seed: int, terminal: str, normalize: str, gamma: float
) -> None:
    rows = random_rows(seed, group_size=5)
    batch = to_batch(rows)
    out = run(f"turn_potential:terminal={terminal};normalize={normalize};gamma={gamma}", batch)
    close(
        out.advantages,
        per_token(rows, ref_potential(rows, gamma, terminal, normalize), batch.mask.shape[1]),
    )


def test_options_declare_what_they_need() -> None:
    assert get_estimator("turn_potential").requires == {"turns", "turn_potentials"}
    assert get_estimator("turn_potential:normalize=group_rewards").requires == {
        "turns",
        "turn_potentials",
        "group_ids",
    }
    assert get_estimator("turn_potential:source=reference").requires == {
        "turns",
        "ref_turn_potentials",
    }


def test_reference_potentials_are_read_from_their_own_field() -> None:
    rows = random_rows(4)
    batch = to_batch(rows)
    policy_phi = run("turn_potential", batch).advantages
    batch.ref_turn_potentials, batch.turn_potentials = batch.turn_potentials, None
    torch.testing.assert_close(run("turn_potential:source=reference", batch).advantages, policy_phi)
    with pytest.raises(TurnInputError, match=r"'turn_potential' needs turn_potentials"):
        run("turn_potential", batch)


def test_potential_kind_picks_its_field() -> None:
    assert get_estimator("turn_potential:kind=mean_prob").requires == {"turns", "turn_mean_probs"}
    assert get_estimator("turn_potential:kind=mean_prob;source=reference").requires == {
        "turns",
        "ref_turn_mean_probs",
    }
    rows = random_rows(6)
    batch = to_batch(rows)
    want = run("turn_potential", batch).advantages
    batch.turn_mean_probs, batch.turn_potentials = batch.turn_potentials, None
    torch.testing.assert_close(run("turn_potential:kind=mean_prob", batch).advantages, want)
    with pytest.raises(TurnInputError, match=r"needs ref_turn_mean_probs.*mean_prob of the gold"):
        run("turn_potential:kind=mean_prob;source=reference", batch)
    with pytest.raises(ValueError, match=r"turn_potential: kind='prob' is not valid"):
        get_estimator("turn_potential:kind=prob")


def test_igpo_and_trace_presets_read_their_potentials() -> None:
    from marlhf.algorithms.config import PRESETS

    igpo = get_estimator(PRESETS["igpo"].fixed["estimator"])
    trace = get_estimator(PRESETS["trace"].fixed["estimator"])
    assert "turn_mean_probs" in igpo.requires and "turn_potentials" not in igpo.requires
    assert "ref_turn_potentials" in trace.requires and "turn_potentials" not in trace.requires


# ------------------------------------------------------------------------------ layout, errors
def test_env_tokens_and_padding_get_no_credit() -> None:
    rows = random_rows(5)
    batch = to_batch(rows)
    assert batch.action_mask is not None
    for spec in (
        "turn_gae",
        "turn_gae:inner=gae",
        "gigpo",
        "mt_grpo",
        "mt_grpo_fixed",
        "rebn",
        "turn_mc",
        "turn_potential",
    ):
        out = run(spec, batch)
        assert bool((out.advantages[~batch.action_mask] == 0).all()), spec
        assert bool(out.advantages[batch.action_mask].abs().sum() > 0), spec


@pytest.mark.parametrize(
    "name",
    [
        "turn_gae",
        "gigpo",
        "gigpo_step",
        "mt_grpo",
        "mt_grpo_fixed",
        "rebn",
        "turn_mc",
        "turn_potential",
    ],
)
def test_one_turn_batch_without_turns_is_a_clear_error(name: str) -> None:
    rows = random_rows(0)
    batch = to_batch(rows)
    batch.turn_ids = None
    with pytest.raises(
        TurnInputError, match=rf"estimator {name!r} needs turns \(turn_ids\).*one-turn task"
    ):
        run(name, batch)


def test_missing_state_keys_names_gigpo_and_state_key() -> None:
    batch = to_batch(random_rows(0))
    batch.turn_state_keys = None
    with pytest.raises(
        TurnInputError, match=r"estimator 'gigpo' needs turn_state_keys.*state_key\(\)"
    ):
        run("gigpo", batch)


def test_monte_carlo_values_missing_at_a_turn_start_name_the_fix() -> None:
    batch = to_batch(random_rows(0))
    assert batch.mc_values is not None
    batch.mc_values = batch.mc_values.clone()
    batch.mc_values[2] = float("nan")  # row 2 was not branched at its turn starts
    with pytest.raises(TurnInputError, match=r"row 2 has none at turn 0: use termination='turn'"):
        run("turn_mc", batch)
    batch.mc_values = None
    with pytest.raises(TurnInputError, match=r"'turn_mc' needs mc_values"):
        run("turn_mc", batch)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("turn_gae:inner=token", r"inner='token' is not valid; choose one of \('uniform', 'gae'\)"),
        ("turn_gae:gamma_turn=1.5", r"gamma_turn=1.5 must be a number in \[0, 1\]"),
        ("gigpo:omega=nan", r"omega=nan must be a finite number"),
        ("gigpo:omega=x", r"option omega='x' must be float"),
        ("rebn:gamma=-0.1", r"gamma=-0.1 must be a number"),
        ("turn_potential:normalize=z", r"normalize='z' is not valid"),
        ("mt_grpo:lamda=1", r"unknown option 'lamda'; valid: \['lam', 'std', 'accumulate'\]"),
    ],
)
def test_bad_options_name_the_estimator_and_the_option(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_estimator(spec)


def test_turn_ids_beyond_num_turns_are_an_error() -> None:
    batch = to_batch(random_rows(1))
    assert batch.num_turns is not None
    batch.num_turns = batch.num_turns.clone()
    row = int(torch.argmax(batch.num_turns))
    batch.num_turns[row] -= 1
    with pytest.raises(
        ValueError, match=rf"row {row} has an action token with turn id >= num_turns"
    ):
        run("rebn", batch)


def test_all_finite() -> None:
    for seed in SEEDS:
        batch = to_batch(random_rows(seed))
        out = run("gigpo", batch)
        assert math.isfinite(float(out.advantages.abs().sum()))
