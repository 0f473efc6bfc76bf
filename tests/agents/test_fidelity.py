"""Method fidelity (issue 21): every estimator and every KL path against a per-sample float64
reference written from its source's formula (``tests/agents/source_refs.py``, which never calls
marlhf), on random ragged groups with ``beta > 0`` (where the sources' forms differ), plus the
refusals of combinations that have no defined meaning.

``make mutants`` (tools/mutants.py) checks that these tests kill the named mutations of the
credit maths."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from marlhf.algorithms import PPO, PPOConfig
from marlhf.algorithms.config import resolve_config
from marlhf.algorithms.losses import aggregate, kl_loss, policy_loss
from marlhf.credit.estimators import EstimatorBatch, get_estimator, prob_mask, uniform_groups
from marlhf.credit.kl import kl_penalty, shaped_rewards
from tests.agents import source_refs as ref
from tests.agents.conftest import CueEnv, tiny_model

SEEDS = [0, 1, 2, 3]
BETA = 0.3
REL = ABS = 2e-5


@dataclass
class Case:
    """A random ragged batch: ``groups`` of ``G`` rows, responses of 1..``T`` tokens."""

    lengths: list[int]
    groups: list[int]
    T: int
    task: list[list[float]]
    logp: list[list[float]]
    ref_logp: list[list[float]]
    old: list[list[float]]
    values: list[list[float]]
    greedy: list[float]

    @property
    def mask(self) -> torch.Tensor:
        return torch.arange(self.T)[None, :] < torch.tensor(self.lengths)[:, None]

    def tensor(self, rows: list[list[float]]) -> torch.Tensor:
        out = torch.zeros(len(rows), self.T, dtype=torch.float64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        return out

    def rows(self, x: torch.Tensor) -> list[list[float]]:
        return [x[i, :n].tolist() for i, n in enumerate(self.lengths)]

    def scores(self) -> list[float]:
        return [sum(row) for row in self.task]


def random_case(seed: int, n_groups: int = 3, G: int = 4, T: int = 7, dense: bool = True) -> Case:
    rng = random.Random(seed)
    lengths, groups, task = [], [], []
    for g in range(n_groups):
        uniform = g == 0  # one group every member of which scores the same (DAPO drops it)
        for _ in range(G):
            n = rng.randint(1, T)
            row = [rng.choice([0.0, 0.05, -0.1]) if dense else 0.0 for _ in range(n)]
            row[-1] = 1.0 if uniform else rng.choice([0.0, 1.0, 2.0, -1.5, 3.5])
            if uniform:
                row = [0.0] * (n - 1) + [1.0]
            lengths.append(n)
            groups.append(g)
            task.append(row)

    def draw(low: float, high: float) -> list[list[float]]:
        return [[rng.uniform(low, high) for _ in range(n)] for n in lengths]

    logp = draw(-2.5, -0.01)
    return Case(
        lengths=lengths,
        groups=groups,
        T=T,
        task=task,
        logp=logp,
        ref_logp=draw(-2.5, -0.01),
        old=[[x + rng.uniform(-0.3, 0.3) for x in row] for row in logp],
        values=draw(-1.0, 1.0),
        greedy=[rng.choice([0.0, 1.0, 3.5, -3.0]) for _ in lengths],
    )


def _batch(case: Case, shaped: list[list[float]], **extra: Any) -> EstimatorBatch:
    mask = case.mask
    return EstimatorBatch(
        rewards=case.tensor(shaped).float(),
        task_rewards=case.tensor(case.task).float(),
        mask=mask,
        starts=mask.clone(),
        group_ids=torch.tensor(case.groups),
        **extra,
    )


def _advantages(name: str, batch: EstimatorBatch, **cfg: Any) -> torch.Tensor:
    spec = get_estimator(name)
    config = PPOConfig(estimator=name, group_size=2 if spec.needs_groups else 1, **cfg)
    return spec.fn(batch, config).advantages


def _assert_rows(case: Case, got: torch.Tensor, want: list[list[float]]) -> None:
    for i, (g, w) in enumerate(zip(case.rows(got), want, strict=True)):
        assert g == pytest.approx(w, rel=REL, abs=ABS), f"row {i}"
    assert bool((got[~case.mask] == 0).all())  # padding stays 0


def _shaped(case: Case, estimator: str = "k1", clip: float | None = None) -> list[list[float]]:
    return [
        ref.shaped_row(t, a, b, BETA, estimator, clip)
        for t, a, b in zip(case.task, case.logp, case.ref_logp, strict=True)
    ]


# ------------------------------------------------------------------------ KL in the reward
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("clamp", [None, 0.4])
def test_kl_in_the_reward_matches_the_definition(
    seed: int, estimator: str, clamp: float | None
) -> None:
    case = random_case(seed)
    mask = case.mask
    kl = kl_penalty(case.tensor(case.logp), case.tensor(case.ref_logp), estimator, clamp)
    shaped = shaped_rewards(case.tensor(case.task), kl, mask, BETA, reward_clip=2.5)
    want = [
        ref.shaped_row(t, a, b, BETA, estimator, clip=2.5, clamp=clamp)
        for t, a, b in zip(case.task, case.logp, case.ref_logp, strict=True)
    ]
    _assert_rows(case, shaped, want)


# ------------------------------------------------------------------------------ estimators
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("group_std", [True, False])
def test_grpo_and_dr_grpo(seed: int, group_std: bool) -> None:
    case = random_case(seed)
    shaped = _shaped(case)
    got = _advantages("grpo", _batch(case, shaped), group_std=group_std)
    adv = ref.grpo([sum(r) for r in shaped], case.groups, std=group_std)
    _assert_rows(case, got, [[a] * n for a, n in zip(adv, case.lengths, strict=True)])


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo(seed: int) -> None:
    case = random_case(seed)
    shaped = _shaped(case)  # the KL is summed into the sequence reward
    got = _advantages("rloo", _batch(case, shaped))
    adv = ref.rloo([sum(r) for r in shaped], case.groups)
    _assert_rows(case, got, [[a] * n for a, n in zip(adv, case.lengths, strict=True)])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp(seed: int, gamma: float) -> None:
    case = random_case(seed)
    shaped = _shaped(case)
    got = _advantages("reinforce_pp", _batch(case, shaped), gamma=gamma)
    _assert_rows(case, got, ref.reinforce_pp(shaped, gamma))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_baseline_openrlhf_form(seed: int, gamma: float) -> None:
    case = random_case(seed)
    shaped = _shaped(case, clip=2.5)
    scores = [sum(min(max(x, -2.5), 2.5) for x in row) for row in case.task]
    got = _advantages(
        "reinforce_pp_baseline", _batch(case, shaped), gamma=gamma, reward_clip=2.5
    )  # the default form
    _assert_rows(case, got, ref.reinforce_pp_baseline_openrlhf(shaped, scores, case.groups, gamma))


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_baseline_verl_form(seed: int) -> None:
    case = random_case(seed)
    shaped = _shaped(case)
    batch = _batch(case, shaped)
    got = _advantages("reinforce_pp_baseline", batch, reinforce_pp_form="verl")
    _assert_rows(case, got, ref.reinforce_pp_baseline_verl(shaped, case.groups))
    # With a KL in the reward the two forms differ; the default is OpenRLHF's.
    other = _advantages("reinforce_pp_baseline", batch, reinforce_pp_form="openrlhf")
    assert float((other - got).abs().max()) > 1e-3
    assert PPOConfig().credit.reinforce_pp_baseline.reinforce_pp_form == "openrlhf"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip", [None, 2.5])
def test_remax(seed: int, clip: float | None) -> None:
    case = random_case(seed)
    shaped = _shaped(case, clip=clip)
    greedy = torch.tensor(case.greedy)
    got = _advantages("remax", _batch(case, shaped, greedy_rewards=greedy), reward_clip=clip)
    _assert_rows(case, got, ref.remax(shaped, case.greedy, clip))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0)])
def test_token_gae_with_kl_shaping(seed: int, gamma: float, lam: float) -> None:
    case = random_case(seed)
    shaped = _shaped(case, "k3")
    batch = _batch(case, shaped, values=case.tensor(case.values).float())
    got = _advantages("gae", batch, gamma=gamma, gae_lambda=lam)
    want = [ref.gae_tokens(r, v, gamma, lam) for r, v in zip(shaped, case.values, strict=True)]
    _assert_rows(case, got, want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reward_agg", ["sum", "mean"])
@pytest.mark.parametrize("value_agg", ["mean", "first", "last"])
def test_macro_action_gae_with_kl_shaping(seed: int, reward_agg: str, value_agg: str) -> None:
    case = random_case(seed)
    shaped = _shaped(case, "k1", clip=2.5)  # the released MA-RLHF code: k1, score clip 2.5
    rng = random.Random(seed + 7)
    starts = [[t == 0 or t == n - 1 or rng.random() < 0.35 for t in range(n)] for n in case.lengths]
    batch = _batch(case, shaped, values=case.tensor(case.values).float())
    batch.starts = case.tensor([[float(b) for b in row] for row in starts]) > 0.5
    got = _advantages("gae", batch, gamma=0.95, gae_lambda=0.9, reward_agg=reward_agg,
                      value_agg=value_agg)  # fmt: skip
    want = [
        ref.segment_gae(r, v, s, 0.95, 0.9, reward_agg, value_agg)
        for r, v, s in zip(shaped, case.values, starts, strict=True)
    ]
    _assert_rows(case, got, want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_vine_monte_carlo_values(seed: int, gamma: float) -> None:
    case = random_case(seed)
    rng = random.Random(seed + 100)
    branch = [[t == 0 or rng.random() < 0.4 for t in range(n)] for n in case.lengths]
    mc = torch.full((len(case.lengths), case.T), float("nan"))
    for i, row in enumerate(branch):
        for t, b in enumerate(row):
            if b:
                mc[i, t] = case.values[i][t]
    rewards = [[min(max(x, -2.5), 2.5) for x in row] for row in case.task]  # KL in the loss
    got = _advantages("mc", _batch(case, rewards, mc_values=mc), gamma=gamma, kl_coef=0.0)
    want = [ref.vine(r, b, v, gamma) for r, b, v in zip(rewards, branch, case.values, strict=True)]
    _assert_rows(case, got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_dapo_filters_on_the_task_score(seed: int) -> None:
    case = random_case(seed)
    batch = _batch(case, _shaped(case))  # beta > 0: the shaped totals of group 0 all differ
    totals = batch.rewards.double().sum(dim=1)
    assert len(set(totals[:4].tolist())) == 4
    assert uniform_groups(batch).tolist() == ref.dapo_dropped(case.scores(), case.groups)
    assert uniform_groups(batch)[:4].all()


# ------------------------------------------------------------------------------- the losses
def _loss_tensors(case: Case) -> tuple[torch.Tensor, ...]:
    rng = random.Random(len(case.lengths))
    adv = [[rng.uniform(-2, 2)] * n for n in case.lengths]
    return case.tensor(case.logp), case.tensor(case.old), case.tensor(adv), case.mask


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-sum-constant"])
# A dual clip of 1.2 binds inside the cases' ratios (about e^-0.3 to e^0.3) where A < 0.
@pytest.mark.parametrize("dual", [None, 1.2])
def test_token_ratio_loss_and_aggregations(seed: int, loss_agg: str, dual: float | None) -> None:
    case = random_case(seed)
    new, old, adv, mask = _loss_tensors(case)
    if dual is not None:  # some token's loss is the dual bound's, not the clipped surrogate's
        rows = zip(case.logp, case.old, case.rows(adv), strict=True)
        tokens = [t for r in rows for t in zip(*r, strict=True)]
        assert any(a < 0 and math.exp(n - o) > dual for n, o, a in tokens)
    got, _ = policy_loss(new, old, adv, mask, mask, clip_range=0.1, clip_range_high=0.15,
                         loss_agg=loss_agg, dual_clip=dual)  # fmt: skip
    adv_rows = case.rows(adv)
    token = [
        [ref.ppo_token_loss(n, o, a, 0.1, 0.15, dual) for n, o, a in zip(*r, strict=True)]
        for r in zip(case.logp, case.old, adv_rows, strict=True)
    ]
    want = ref.aggregate(token, loss_agg, len(case.lengths), case.T)
    assert float(got) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_dual_clip_bounds_negative_advantages(seed: int) -> None:
    case = random_case(seed)
    new, old, adv, mask = _loss_tensors(case)
    big = new + 2.0  # ratios e^2 > 3: the dual clip binds where A < 0
    plain, _ = policy_loss(big, old, adv, mask, mask, clip_range=0.2)
    dual, _ = policy_loss(big, old, adv, mask, mask, clip_range=0.2, dual_clip=3.0)
    assert float(dual) < float(plain)
    token = [
        [ref.ppo_token_loss(n + 2.0, o, a, 0.2, 0.2, 3.0) for n, o, a in zip(*r, strict=True)]
        for r in zip(case.logp, case.old, case.rows(adv), strict=True)
    ]
    # Every token with A < 0 is held at -3 A exactly (its ratio is above 3).
    assert all(t == -3.0 * a for row, ar in zip(token, case.rows(adv), strict=True)
               for t, a in zip(row, ar, strict=True) if a < 0)  # fmt: skip
    want = ref.aggregate(token, "token-mean", len(case.lengths), case.T)
    assert float(dual) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_gspo_is_one_term_per_response(seed: int) -> None:
    case = random_case(seed)
    new, old, adv, mask = _loss_tensors(case)
    got, _ = policy_loss(new, old, adv, mask, mask, clip_range=0.05, clip_range_high=0.08,
                         ratio_level="sequence", loss_agg="seq-mean-token-mean")  # fmt: skip
    per_response = [row[0] for row in case.rows(adv)]
    want = ref.gspo_loss(case.logp, case.old, per_response, 0.05, 0.08)
    assert float(got) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-sum-constant"])
@pytest.mark.parametrize(("estimator", "clamp"), [("k3", None), ("k3", 0.5), ("k2", None)])
def test_kl_in_the_loss_is_aggregated_like_the_policy_loss(
    seed: int, loss_agg: str, estimator: str, clamp: float | None
) -> None:
    case = random_case(seed)
    mask = case.mask
    got = kl_loss(case.tensor(case.logp), case.tensor(case.ref_logp), mask,
                  estimator=estimator, loss_agg=loss_agg, clamp=clamp)  # fmt: skip
    rows = [
        [ref.kl_token(x, y, estimator, clamp) for x, y in zip(a, b, strict=True)]
        for a, b in zip(case.logp, case.ref_logp, strict=True)
    ]
    assert float(got) == pytest.approx(ref.aggregate(rows, loss_agg, len(rows), case.T), rel=1e-9)


def test_kl_in_the_loss_regularises() -> None:
    """On-policy, the k1 term has zero expected gradient; k3's is KL(ref || pi)'s, k2's is
    KL(pi || ref)'s (both non-zero). Exact expectations over a 5-token softmax."""
    logits = torch.tensor([0.3, -1.0, 2.0, 0.1, -0.4], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([1.0, 0.0, 0.0, -1.0, 0.5]), 0).double()

    def expected_grad(estimator: str) -> torch.Tensor:
        logp = torch.log_softmax(logits, 0)
        p = logp.exp().detach()  # the sampling distribution: the expectation's weights
        (grad,) = torch.autograd.grad((p * kl_penalty(logp, ref_logp, estimator)).sum(), logits)
        return grad

    assert float(expected_grad("k1").abs().max()) < 1e-12
    reverse = (ref_logp.exp() * (ref_logp - torch.log_softmax(logits, 0))).sum()
    (rev,) = torch.autograd.grad(reverse, logits)  # grad KL(ref || pi)
    logp = torch.log_softmax(logits, 0)
    (fwd,) = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), logits)  # KL(pi||ref)
    torch.testing.assert_close(expected_grad("k3"), rev)
    torch.testing.assert_close(expected_grad("k2"), fwd)


def test_aggregate_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match=r"loss_agg='sum' is not valid; choose one of"):
        aggregate(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), "sum")


# -------------------------------------------------------------------------- the SPO mask
@pytest.mark.parametrize("seed", SEEDS)
def test_prob_mask_rule(seed: int) -> None:
    case = random_case(seed)
    kept = prob_mask(case.tensor(case.logp), case.mask, 0.4)
    assert case.rows(kept.double()) == [
        [float(k) for k in ref.spo_kept(row, 0.4)] for row in case.logp
    ]
    assert not bool(kept[~case.mask].any())
    assert torch.equal(prob_mask(case.tensor(case.logp), case.mask, None), case.mask)


# ---------------------------------------------------------------------- through the agent
def _collected(**config: Any) -> Any:
    env = CueEnv(num_envs=8, max_new_tokens=5)
    algo = PPO(tiny_model(env.codec, seed=0), env, seed=3, batch_size=8, **config)
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect(algo._init_callback(None, False))
    buf: Any = algo.rollout_buffer
    buf.task_rewards.zero_()
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.25, 0.75])
    buf.task_rewards[torch.arange(8), buf.lengths - 1] = scores
    algo.finish_rollout()
    gen = torch.Generator().manual_seed(0)
    # A reference that differs from the policy, so the KL in the loss is not 0.
    buf.ref_logprobs = torch.where(
        buf.response_mask, buf.logprobs - 0.5 * torch.rand(buf.logprobs.shape, generator=gen), 0
    )
    return algo


def _current_logp(algo: Any, mb: Any, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logp, _, _ = algo.policy.evaluate_actions(
            mb.input_ids, mb.attention_mask, mask, temperature=1.0, with_values=False
        )
    return logp.double()


def _rows(x: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    return [x[i][mask[i]].tolist() for i in range(x.shape[0])]


@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "seq-sum-constant"])
def test_agent_adds_the_kl_aggregated_like_the_policy_loss(loss_agg: str) -> None:
    algo = _collected(preset="grpo", group_size=2, kl_coef=0.2, loss_agg=loss_agg, ent_coef=0.0)
    buf = algo.rollout_buffer
    mb = buf.rows(torch.arange(8))
    mask = mb.response_mask
    loss, pg, _, _, _ = algo._minibatch_loss(mb)
    logp = _current_logp(algo, mb, mask)
    kl_rows = [
        [ref.kl_token(a, b, "k3") for a, b in zip(x, y, strict=True)]
        for x, y in zip(_rows(logp, mask), _rows(mb.ref_logprobs.double(), mask), strict=True)
    ]
    want_kl = ref.aggregate(kl_rows, loss_agg, 8, mask.shape[1])
    assert float(loss.detach()) == pytest.approx(float(pg.detach()) + 0.2 * want_kl, rel=1e-5)


def test_agent_removes_confident_tokens_from_every_denominator() -> None:
    algo = _collected(
        estimator="grpo", group_size=2, kl_coef=0.2, kl_in="loss", kl_estimator="k3",
        prob_mask_threshold=0.5, normalize_advantage=True, ent_coef=0.0,
    )  # fmt: skip
    buf = algo.rollout_buffer
    # A threshold inside the rollout's probabilities (a tiny model's are all alike), then
    # the estimate stage again under it.
    probs_sorted = buf.logprobs[buf.response_mask].double().exp().sort().values
    k = len(probs_sorted) // 2  # half-way between two probabilities: no ties with rounding
    threshold = float(probs_sorted[k - 1] + probs_sorted[k]) / 2
    algo.config = algo.config.replace(prob_mask_threshold=threshold)
    algo.estimate()
    probs = _rows(buf.logprobs.double(), buf.response_mask)
    kept = [ref.spo_kept(row, threshold) for row in probs]
    got = _rows(buf.keep.to(torch.float64), buf.response_mask)
    assert got == [[float(k) for k in row] for row in kept]
    assert 0 < sum(map(sum, kept)) < sum(map(len, kept))  # some tokens in, some out
    mb = buf.rows(torch.arange(8))
    mask = mb.response_mask
    logp = _current_logp(algo, mb, mask)
    adv, new, old, refl = (
        _rows(x, mask) for x in (mb.advantages.double(), logp, mb.old_logprobs.double(),
                                 mb.ref_logprobs.double())
    )  # fmt: skip

    def only_kept(rows: list[list[float]]) -> list[list[float]]:
        pairs = zip(rows, kept, strict=True)
        return [[x for x, k in zip(r, kr, strict=True) if k] for r, kr in pairs]

    white = ref.whiten_tokens([r for r in only_kept(adv) if r])
    it = iter(white)
    white_rows = [next(it) if r else [] for r in only_kept(adv)]
    token = [
        [ref.ppo_token_loss(n, o, a, 0.2, 0.2) for n, o, a in zip(*r, strict=True)]
        for r in zip(only_kept(new), only_kept(old), white_rows, strict=True)
    ]
    kl_rows = [
        [ref.kl_token(a, b, "k3") for a, b in zip(x, y, strict=True)]
        for x, y in zip(only_kept(new), only_kept(refl), strict=True)
    ]
    want = ref.aggregate(token, "token-mean", 8, 5) + 0.2 * ref.aggregate(
        kl_rows, "token-mean", 8, 5
    )
    loss, _, _, _, _ = algo._minibatch_loss(mb)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------- bad input
def test_k1_in_the_loss_is_refused() -> None:
    with pytest.raises(ValueError, match=r"kl_estimator='k1' cannot regularise.*\('k2', 'k3'\)"):
        PPOConfig(kl_in="loss")
    with pytest.raises(ValueError, match=r"estimator='k1' cannot regularise"):
        kl_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool),
                estimator="k1")  # fmt: skip
    assert PPOConfig(kl_in="loss", kl_estimator="k2").kl.kl_estimator == "k2"


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-sum-constant"])
def test_sequence_ratio_refuses_undefined_aggregations(loss_agg: str) -> None:
    with pytest.raises(ValueError, match=r"loss_agg=.* ratio_level='sequence'.*valid: loss_agg="):
        PPOConfig(ratio_level="sequence", loss_agg=loss_agg)
    with pytest.raises(ValueError, match=r"preset='gspo' fixes loss_agg='seq-mean-token-mean'"):
        resolve_config(PPOConfig, "gspo", {"loss_agg": loss_agg})


def test_other_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"prob_mask_threshold=0.9 .* ratio_level='macro'"):
        PPOConfig(prob_mask_threshold=0.9, ratio_level="macro")
    with pytest.raises(ValueError, match=r"dual_clip=1.0 must be a finite number > 1"):
        PPOConfig(dual_clip=1.0)
    with pytest.raises(ValueError, match=r"kl_clamp=0 must be a positive"):
        PPOConfig(kl_clamp=0)
    with pytest.raises(ValueError, match=r"reinforce_pp_form='trl' is not one of"):
        PPOConfig(reinforce_pp_form="trl")
    with pytest.raises(ValueError, match=r"preset='vineppo' fixes kl_estimator='k3'"):
        resolve_config(PPOConfig, "vineppo", {"kl_estimator": "k1"})


def test_every_preset_with_a_kl_in_the_loss_regularises() -> None:
    from marlhf.algorithms.config import PRESETS

    for name, preset in PRESETS.items():
        values = preset.values()
        if values.get("kl_in") == "loss":
            assert values.get("kl_estimator") in ("k2", "k3"), name
    for name in ("vineppo", "spo-chain"):
        cfg = resolve_config(PPOConfig, name)
        assert (cfg.kl.kl_in, cfg.kl.kl_estimator, cfg.kl.kl_clamp) == ("loss", "k3", 10.0)
        assert cfg.kl.kl_coef == 1e-4 and cfg.loss.normalize_advantage
    gspo = resolve_config(PPOConfig, "gspo")
    assert gspo.kl.kl_coef == 0.0 and gspo.loss.loss_agg == "seq-mean-token-mean"
    assert math.isclose(resolve_config(PPOConfig, ["toy", "gspo"]).kl.kl_coef, 0.0)
