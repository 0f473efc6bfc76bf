"""The credit audit: offline estimates reproduce the agent's; the true critic scores perfectly."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import pytest
import torch

from marlhf.algorithms import MAPPO, PPO
from marlhf.audit.credit import Scheme, audit, error_metrics, estimate, plot_audit
from marlhf.checkpoint.rollout_io import Rollouts, collect
from marlhf.credit.truth import Sampling, exact_advantages
from marlhf.models import tiny_gpt2


def _env():
    return gym.make_vec(
        "marlhf/CreditSum-v0",
        num_envs=8,
        horizon=6,
        num_symbols=2,
        num_decisions=2,
        vectorization_mode="vector_entry_point",
    )


def _algo(cls=PPO, **kwargs):
    env = _env()
    model = tiny_gpt2(env.codec, n_layer=1, n_embd=16, n_head=2, n_positions=16, seed=0)
    return cls(model, env, batch_size=4, kl_coef=0.0, seed=0, mask_actions=True, **kwargs)


@pytest.fixture(scope="module")
def scored():
    algo = _algo()
    rollouts = collect(algo)
    truth = exact_advantages(
        algo.policy,
        algo.env.task,
        rollouts.prompts,
        rollouts.response_ids,
        rollouts.response_mask,
        sampling=Sampling.of(algo),
    )
    return algo, rollouts, truth


@pytest.mark.parametrize(
    ("cls", "kwargs", "scheme"),
    [
        (PPO, {}, "gae"),
        (MAPPO, {"termination": "ngram:2"}, "gae@ngram:2"),
        (PPO, {"estimator": "grpo", "group_size": 4}, "grpo"),
        (PPO, {"estimator": "rloo", "group_size": 4}, "rloo"),
        (PPO, {"estimator": "reinforce_pp"}, "reinforce_pp"),
        (PPO, {"estimator": "remax"}, "remax"),
        (
            MAPPO,
            {"estimator": "mc", "termination": "ngram:2", "mc_rollouts": 2},
            "mc@ngram:2",
        ),
        (
            MAPPO,
            {
                "estimator": "mc",
                "termination": "ngram:2",
                "mc_rollouts": 2,
                "prob_mask_threshold": 0.5,
            },
            "mc@ngram:2 prob_mask_threshold=0.5",
        ),
    ],
)
def test_offline_estimates_reproduce_the_agents_online_ones(cls, kwargs, scheme, tmp_path) -> None:
    algo = _algo(cls, **kwargs)
    rollouts = Rollouts.load(collect(algo).save(tmp_path / "r.safetensors"))
    advantages, starts = estimate(Scheme.parse(scheme), rollouts)
    assert rollouts.starts is not None and rollouts.advantages is not None
    assert torch.equal(starts, rollouts.starts)
    torch.testing.assert_close(advantages.float(), rollouts.advantages, rtol=0, atol=1e-6)
    assert float(rollouts.advantages.abs().max()) > 0


def test_the_true_critic_makes_td0_exact(scored) -> None:
    _, rollouts, truth = scored
    with_true_values = dataclasses.replace(rollouts, values=truth.values.float())
    result = audit(
        with_true_values,
        truth,
        [
            Scheme.parse("gae gae_lambda=0.0"),
            Scheme.parse("gae@ngram:2 gae_lambda=0.0 value_agg=first"),
            Scheme.parse("gae"),
        ],
    )
    td0 = result.schemes["gae gae_lambda=0.0"]
    assert td0["tokens"]["rmse"] < 1e-6 and td0["tokens"]["corr"] > 1 - 1e-6
    assert td0["tokens"]["sign"] == 1.0 and td0["tokens"]["null_abs"] < 1e-6
    macro = result.schemes["gae@ngram:2 gae_lambda=0.0 value_agg=first"]
    assert macro["segments"]["rmse"] < 1e-6  # a macro's advantage is the sum of its tokens'
    assert macro["tokens"]["rmse"] > 1e-3  # ... which is not each token's own advantage
    lam = result.schemes["gae"]
    assert lam["tokens"]["rmse"] > td0["tokens"]["rmse"]
    assert len(lam["per_position"]["rmse"]) == rollouts.response_ids.shape[1]
    assert lam["per_position"]["count"][0] == rollouts.num_rows
    assert result.truth["method"] == "exact"
    assert 0 < result.truth["nonzero_fraction"] <= 2 / 6


def test_a_zero_critic_credits_the_filler(scored) -> None:
    _, rollouts, truth = scored
    zero_critic = dataclasses.replace(rollouts, values=torch.zeros_like(rollouts.values))
    result = audit(zero_critic, truth, [Scheme.parse("gae gae_lambda=1.0")])
    tokens = result.schemes["gae gae_lambda=1.0"]["tokens"]
    # with V = 0 every token's advantage is the episode's score, where the truth is 0
    assert tokens["null_abs"] == pytest.approx(float(rollouts.task_rewards.sum(1).mean()))
    assert tokens["bias"] > 0.1


def test_error_metrics_by_hand() -> None:
    est = torch.tensor([1.0, -1.0, 0.5, 0.2], dtype=torch.float64)
    true = torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    m = error_metrics(est, true)
    assert m["bias"] == pytest.approx((-1 - 2 + 0.5 + 0.2) / 4)
    assert m["sign"] == 0.5  # over the two tokens whose true advantage is not 0
    assert m["null_abs"] == pytest.approx(0.35)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4 + 0.25 + 0.04) / 4))
    assert math.isnan(error_metrics(est[:0], true[:0])["corr"])


def test_schemes_parse_and_name_round_trip() -> None:
    s = Scheme.parse("gae@random_ngram:sizes=1,2;repeat=2 gae_lambda=1 value_agg=last")
    assert s.termination == "random_ngram:sizes=1,2;repeat=2"
    assert s.params == {"gae_lambda": 1.0, "value_agg": "last"}
    assert Scheme.parse(s.name) == s
    assert Scheme.parse("gae gamma=1").params == {"gamma": 1.0}
    for bad, match in (
        ("", "expected"),
        ("gae lam=1", "gae_lambda"),
        ("oracle", "unknown"),
        ("gae value_agg=median", "value_agg"),
        ("gae@bogus:2", "bogus"),
    ):
        with pytest.raises(ValueError, match=match):
            Scheme.parse(bad)


def test_audit_rejects_mismatched_truth_and_plots(scored, tmp_path) -> None:
    _, rollouts, truth = scored
    with pytest.raises(ValueError, match="schemes is empty"):
        audit(rollouts, truth, [])
    short = dataclasses.replace(truth, advantages=truth.advantages[:, :2])
    with pytest.raises(ValueError, match="compute the truth on these rollouts"):
        audit(rollouts, short, [Scheme()])
    no_critic = dataclasses.replace(rollouts, values=None)
    with pytest.raises(ValueError, match=r"needs \['values'\]"):
        audit(no_critic, truth, [Scheme()])
    result = audit(rollouts, truth, [Scheme(), Scheme(termination="ngram:3")])
    assert "| `gae@ngram:3` |" in result.table()
    png = plot_audit(result, tmp_path / "audit.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_credit_callback_logs_at_its_cadence(tmp_path) -> None:
    import json

    from stable_baselines3.common.logger import configure

    from marlhf.audit.credit import CreditAuditCallback, scheme_of

    algo = _algo(MAPPO, termination="ngram:2", gae_lambda=0.9)
    assert scheme_of(algo) == Scheme("gae", "ngram:2", {"gae_lambda": 0.9})
    algo.set_logger(configure(str(tmp_path), ["json"]))
    callback = CreditAuditCallback(every=2, schemes=["gae gae_lambda=0.0"])
    algo.learn(3 * 8 * 6, callback=callback)  # three rollouts of 8 episodes x 6 tokens
    assert [r["num_timesteps"] for r in callback.records] == [48, 144]
    figures = callback.records[0]["figures"]
    own = "credit/gae@ngram:2,gae_lambda=0.9"
    assert {f"{own}/rmse", f"{own}/segment_corr", "credit/gae,gae_lambda=0.0/corr"} <= set(figures)
    assert figures[f"{own}/rmse"] > 0
    logged = [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]
    assert logged[0][f"{own}/rmse"] == pytest.approx(figures[f"{own}/rmse"])
    assert f"{own}/rmse" not in logged[1]  # the second rollout was not audited
    with pytest.raises(ValueError, match="every=0"):
        CreditAuditCallback(every=0)
