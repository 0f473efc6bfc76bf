"""One iteration as three collaborators, each built alone (no algorithm object) and checked
against the algorithm's own path with the same seeds: the collector's buffer, the credit
pipeline's advantages and the updater's parameters are bitwise the algorithm's."""

from __future__ import annotations

import copy
import math
from typing import Any

import gymnasium as gym
import pytest
import torch

from marlhf.algorithms import MAPPO, PPO, pipeline
from marlhf.algorithms.buffer import LMRolloutBuffer
from marlhf.algorithms.collector import RolloutCollector
from marlhf.algorithms.config import LossConfig, PPOConfig, resolve_config
from marlhf.algorithms.updater import PPOUpdater
from marlhf.credit.estimators import get_estimator
from marlhf.credit.kl import make_kl_controller
from marlhf.models import tiny_gpt2
from marlhf.options import make_termination
from marlhf.parallel import distributed as dist_utils
from tests.agents.conftest import CueEnv, tiny_model

SEED = 3
#: name -> (algorithm class, env factory, keyword arguments). The cases cover a critic (GAE),
#: macro starts, groups, masked actions and the two baseline rollouts (greedy, Monte-Carlo).
CASES: dict[str, tuple[type[PPO], str, dict[str, Any]]] = {
    "ppo": (PPO, "cue", {"preset": "ppo", "batch_size": 4, "n_epochs": 2}),
    "mappo": (MAPPO, "cue", {"termination": "ngram:2", "batch_size": 4, "n_epochs": 2}),
    "grpo": (PPO, "cue", {"preset": "grpo", "group_size": 2, "batch_size": 4}),
    "remax": (PPO, "delayed", {"preset": ["toy", "remax"], "batch_size": 4, "mask_actions": True}),
    "vineppo": (
        PPO,
        "delayed",
        {
            "preset": ["toy", "vineppo"],
            "batch_size": 4,
            "mc_rollouts": 2,
            "mc_max_starts": 3,
            "mask_actions": True,
        },
    ),
}
#: Buffer fields each collaborator fills, compared bitwise.
COLLECTED = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "task_rewards")
CREDITED = (*COLLECTED, "logprobs", "ref_logprobs", "values", "rewards", "starts")
ESTIMATED = (*CREDITED, "advantages", "returns", "keep")


def _env(kind: str) -> Any:
    if kind == "cue":
        return CueEnv(num_envs=8, max_new_tokens=5)
    return gym.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=8,
        horizon=4,
        num_choices=2,
        vectorization_mode="vector_entry_point",
    )


def _model(env: Any) -> Any:
    if isinstance(env, CueEnv):
        return tiny_model(env.codec, seed=0)
    return tiny_gpt2(env.codec, n_layer=1, n_embd=32, n_head=2, seed=0)


def _drift(algo: Any) -> Any:
    """Move the policy's weights away from its reference (seeded): a fresh agent's policy equals
    its reference, so every KL would be 0, and with CueEnv's rewards all 0 at SEED so would
    every advantage; the comparisons below would then hold whatever the stages did with them.
    (With this drift some CueEnv rows are rewarded, so GRPO's groups differ too.)"""
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for p in algo.policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return algo


def _agent(case: str) -> Any:
    cls, env_kind, kwargs = CASES[case]
    env = _env(env_kind)
    return _drift(cls(_model(env), env, seed=SEED, device="cpu", **kwargs))


def _config(case: str) -> PPOConfig:
    cls, _, kwargs = CASES[case]
    kw = dict(kwargs)
    preset = kw.pop("preset", None)
    return resolve_config(cls.config_class, preset, kw)


def _collector(case: str, policy: Any) -> tuple[RolloutCollector, Any]:
    """A collector alone, on a fresh env, with the streams an algorithm seeded with SEED has."""
    env = _env(CASES[case][1])
    world = dist_utils.world()
    seed = dist_utils.rank_seed(SEED, world)
    collector = RolloutCollector(
        policy,
        _config(case),
        device=torch.device("cpu"),
        world=world,
        seed=SEED,
        generator=torch.Generator().manual_seed(seed),
        mc_generator=torch.Generator().manual_seed(seed + 4),
    )
    buffer = LMRolloutBuffer(
        env.num_envs, env.max_prompt_len, env.max_new_tokens, torch.device("cpu")
    )
    collector.attach(env, buffer)
    return collector, env


def _same(a: LMRolloutBuffer, b: LMRolloutBuffer, fields: tuple[str, ...]) -> None:
    for name in fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _collect(collector: RolloutCollector) -> int:
    tokens: list[int] = []
    assert collector.collect(None, tokens.append)
    return sum(tokens)


@pytest.mark.parametrize("case", ["ppo", "grpo", "vineppo"])
def test_collector_alone_fills_the_buffer_the_algorithm_fills(case: str) -> None:
    algo = _agent(case)
    collector, _ = _collector(case, copy.deepcopy(algo.policy))
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect(algo._init_callback(None, False))
    tokens = _collect(collector)
    assert collector.buffer is not None and algo.rollout_buffer is not None
    _same(collector.buffer, algo.rollout_buffer, COLLECTED)
    assert tokens == algo.num_timesteps > 0
    assert collector.prompts == algo._rollout_prompts and collector.env_seeded
    # the KV cache is kept only for an estimator that forks it (Monte-Carlo values)
    assert (collector.cache is not None) == (case == "vineppo")
    if CASES[case][2].get("group_size"):
        mine, theirs = collector.buffer.group_ids, algo.rollout_buffer.group_ids
        assert mine is not None and theirs is not None and torch.equal(mine, theirs)
    # a second rollout continues the env's seed stream (no reseed) as the algorithm's does
    assert algo.collect(algo._init_callback(None, False))
    _collect(collector)
    _same(collector.buffer, algo.rollout_buffer, COLLECTED)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_alone_gives_the_algorithms_advantages(case: str) -> None:
    algo = _agent(case)
    policy = copy.deepcopy(algo.policy)
    collector, env = _collector(case, policy)
    config = _config(case)
    term = (
        None if config.credit.termination is None else make_termination(config.credit.termination)
    )
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect_rollouts(algo._init_callback(None, False))
    _collect(collector)
    buf = collector.buffer
    assert buf is not None
    spec = get_estimator(config.credit.estimator)
    world = dist_utils.world()
    with torch.no_grad():
        pipeline.score(policy, buf, config, termination=term, world=world)
        kl = pipeline.shape(buf, config, config.kl.kl_coef)
        starts = pipeline.segment(
            buf,
            term,
            codec=env.codec,
            generator=torch.Generator().manual_seed(SEED + 3),
            isolate_last=config.credit.isolate_last,
        )
        greedy = mc = None
        if "greedy_rewards" in spec.requires:
            greedy, tokens = collector.greedy_rewards()
            assert tokens > 0
        if "mc_values" in spec.requires:
            mc, tokens = collector.mc_values()
            assert tokens > 0 and collector.cache is None  # the cache is released
        estimate = pipeline.estimate(
            buf, spec, config, greedy_rewards=greedy, mc_values=mc, policy=policy, env=env
        )
    ref = algo.rollout_buffer
    assert ref is not None and not ref.logprobs_deferred
    assert bool((kl != 0).any()) and bool((ref.advantages != 0).any())  # (nothing vacuous)
    _same(buf, ref, ESTIMATED)
    assert buf.has_values == ref.has_values == spec.needs_critic
    assert torch.equal(starts, ref.starts) and torch.equal(estimate.advantages, ref.advantages)
    for name in ("greedy_rewards", "mc_values"):
        mine, theirs = getattr(buf, name), getattr(ref, name)
        assert (mine is None) == (theirs is None)
        if mine is not None:  # (NaN where no branch point was chosen)
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0, equal_nan=True)
    # what the algorithm logged from the pipeline's products
    assert algo.rollout_stats["rollout/kl_ref"] == pytest.approx(float(kl.sum(dim=1).mean()))
    assert algo.rollout_stats["rollout/mc_tokens"] == algo.mc_tokens
    assert (algo.mc_tokens > 0) == (greedy is not None or mc is not None)


def _updater(algo: Any) -> tuple[PPOUpdater, LMRolloutBuffer]:
    """An updater alone on copies of the algorithm's policy, buffer and streams (before its
    update), with an optimizer built as the algorithm builds its own."""
    cfg = algo.config
    policy = copy.deepcopy(algo.policy)
    optimizer = torch.optim.Adam(
        list(policy.trainable_parameters()), lr=cfg.optim.learning_rate, eps=1e-5
    )
    updater = PPOUpdater(
        policy,
        optimizer,
        cfg,
        copy.deepcopy(algo.kl_ctl),
        world=dist_utils.world(),
        device=torch.device("cpu"),
        shuffle_generator=torch.Generator().manual_seed(SEED + 1),
    )
    return updater, copy.deepcopy(algo.rollout_buffer)


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("ppo", {}),
        ("mappo", {"micro_batch_size": 3}),  # gradient accumulation in uneven chunks
        ("grpo", {"n_epochs": 1, "batch_size": None}),  # exactly on-policy: scores deferred
    ],
)
def test_updater_alone_takes_the_algorithms_steps(case: str, overrides: dict[str, Any]) -> None:
    cls, env_kind, kwargs = CASES[case]
    env = _env(env_kind)
    algo = _drift(cls(_model(env), env, seed=SEED, device="cpu", **{**kwargs, **overrides}))
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect_rollouts(algo._init_callback(None, False))
    buf = algo.rollout_buffer
    assert buf is not None
    deferred = buf.logprobs_deferred
    assert deferred == (case == "grpo")  # the deferred path is the one under test there
    updater, mine = _updater(algo)
    before = [p.detach().clone() for p in algo.policy.parameters()]
    algo.train()
    moved = [not torch.equal(p, q) for p, q in zip(algo.policy.parameters(), before, strict=True)]
    assert any(moved)  # the update did something for the two paths to agree on
    stats = updater.update(mine, progress=algo.num_timesteps / algo._total_timesteps)
    assert stats.keys() == algo.train_stats.keys()
    for key, value in stats.items():  # (NaN: a value loss without a critic)
        assert value == algo.train_stats[key] or (
            math.isnan(value) and math.isnan(algo.train_stats[key])
        ), key
    assert updater.n_updates == algo._n_updates > 0
    params = dict(updater.policy.named_parameters())
    for name, p in algo.policy.named_parameters():
        assert torch.equal(p, params[name]), name
    if deferred:  # the update's forward filled the log-probs the scoring left to it
        assert not mine.logprobs_deferred and torch.equal(mine.logprobs, buf.logprobs)
        assert updater.kl_ref == algo.rollout_stats["rollout/kl_ref"]
        assert bool((mine.logprobs[mine.credit_mask] != 0).all())
    else:
        assert updater.kl_ref is None


def test_deferred_scores_are_filled_once_by_the_update_or_on_request() -> None:
    algo = _agent("grpo")
    collector, _ = _collector("grpo", copy.deepcopy(algo.policy))
    _collect(collector)
    buf = collector.buffer
    assert buf is not None
    config = _config("grpo").replace(n_epochs=1, batch_size=None)
    assert pipeline.can_defer_policy_scores(
        config,
        buf,
        policy=collector.policy,
        termination=None,
        kl_ctl=make_kl_controller(config.kl.kl_coef),
        world=dist_utils.world(),
    )
    pipeline.score(collector.policy, buf, config, defer=True)
    assert buf.logprobs_deferred and bool((buf.logprobs == 0).all())
    full = copy.deepcopy(buf)
    pipeline.score(collector.policy, full, config)
    kl_ref = pipeline.ensure_policy_scores(collector.policy, buf, config)
    assert kl_ref is not None and kl_ref != 0
    assert kl_ref == pipeline.reference_kl(full, config)
    assert torch.allclose(buf.logprobs, full.logprobs, atol=1e-6)
    assert not buf.logprobs_deferred
    assert pipeline.ensure_policy_scores(collector.policy, buf, config) is None  # nothing left


def test_config_changes_reach_the_collaborators() -> None:
    algo = _agent("ppo")
    algo.config = algo.config.replace(temperature=0.5)
    algo.config = algo.config.replace(loss=LossConfig(clip_range=0.1))
    assert algo.collector.config is algo.config is algo.updater.config
    assert algo.collector.sampling()["temperature"] == 0.5
    assert algo.updater.config.loss.clip_range == 0.1
    assert algo.optimizer is algo.updater.optimizer


def test_parts_refuse_what_they_cannot_do() -> None:
    algo = _agent("ppo")
    lone = RolloutCollector(
        algo.policy,
        algo.config,
        device=torch.device("cpu"),
        world=dist_utils.world(),
        seed=0,
        generator=torch.Generator(),
        mc_generator=torch.Generator(),
    )
    with pytest.raises(ValueError, match=r"no env; call set_env\(env\) first"):
        lone.collect()
    with pytest.raises(ValueError, match=r"mc_values: no rollout KV cache"):
        lone.mc_values()
    collector, _ = _collector("ppo", algo.policy)
    _collect(collector)
    buf = collector.buffer
    assert buf is not None
    mc = get_estimator("mc")
    with pytest.raises(ValueError, match=r"estimator='mc' declares 'mc_values'; pass mc_values="):
        pipeline.estimate(buf, mc, algo.config)
    config = algo.config.replace(n_epochs=1, batch_size=None)
    pipeline.score(algo.policy, buf, config, defer=True)
    updater, _ = _updater(algo)
    with pytest.raises(ValueError, match=r"deferred to the update; run update"):
        updater.minibatch_loss(buf, buf.rows(torch.arange(2)))
