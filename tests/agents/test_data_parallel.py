"""Data parallelism end to end: PPO and MAPPO on 2 gloo ranks (B/2 envs each) against one
process with B envs, on the same prompts and samples; decisions taken by both ranks together;
a 2-rank checkpoint that resumes exactly.

Every estimator is compared. The rollout itself is replayed (one process's prompts, samples and
scores), because sampling draws from one random stream per process: which numbers a row gets
depends on the layout. The baseline rollouts run for real on each rank where that is exact:
ReMax's greedy rollout uses no random numbers, so each rank's greedy rollout of its prompts
gives one process's baseline for those rows. VinePPO's Monte-Carlo continuations cannot match
by construction, for the same reason as the rollout: one process draws every branch's
continuations from its one stream (``mc_generator``), in chunks of ``num_envs`` branches sorted
by depth over all its rows, while each rank draws its own rows' from its own stream (seed +
1000 x rank) in its own chunks; equal draws would need a random stream per episode for every
sampler. So the ``mc`` update is compared with the one process's Monte-Carlo values replayed,
and the continuations run on 2 ranks are checked for what does hold (see
:func:`test_monte_carlo_continuations_on_two_ranks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from marlhf.algorithms import MAPPO, PPO
from marlhf.credit.estimators import available_estimators, get_estimator
from tests.agents.conftest import CueEnv, assert_same_gradients, gradients_at_clipping, tiny_model
from tests.agents.ranks import run_ranks

B, N = 4, 3
SETTINGS = {"n_epochs": 2, "batch_size": 2, "learning_rate": 0.002, "kl_coef": 0.1}
#: Every estimator but ``gae`` (that is "ppo").
# Turn-level estimators need a multi-turn task (CueEnv has one turn); they have their own tests.
ESTIMATORS = [
    name
    for name in available_estimators()
    if name != "gae" and "turns" not in get_estimator(name).requires
]
#: Terminal scores replayed on every layout (the tiny random policy rarely earns CueEnv's 1).
SCORES = torch.tensor([1.0, -0.5, 0.25, 0.75])


class GradedCueEnv(CueEnv):
    """CueEnv whose terminal score also grades the first response token and the cue (the
    tiny random policy's greedy rollouts would all score 0 there): baselines that vary."""

    def step(self, actions: torch.Tensor) -> tuple[Any, ...]:
        obs, _, terminated, truncated, info = super().step(actions)
        cue_b = torch.tensor([p.metadata["cue"] == "b" for p in self.prompts]).float()
        score = self.response_ids[:, 0].float() / self.codec.vocab_size + cue_b
        finished = (terminated | truncated).cpu()
        rewards = torch.where(finished, score, 0.0).to(self.device)
        return obs, rewards, terminated, truncated, info


def _configs() -> dict[str, tuple[type, dict[str, Any]]]:
    out: dict[str, tuple[type, dict[str, Any]]] = {
        "ppo": (PPO, {}),
        "mappo": (MAPPO, {"termination": "ngram:2", "ratio_level": "macro"}),
    }
    for name in ESTIMATORS:
        # No minibatch whitening: a per-rank normaliser inside the estimator would show.
        extra: dict[str, Any] = {"estimator": name, "normalize_advantage": False}
        if get_estimator(name).needs_groups:
            extra["group_size"] = 2  # a group never straddles the two ranks' shards
        if "mc_values" in get_estimator(name).requires:
            extra.update(mc_rollouts=2, mc_max_starts=2, kl_in="loss", kl_estimator="k3")
        out[f"ppo-{name}"] = (PPO, extra)
    return out


def _algo(kind: str, num_envs: int, lm: Any = None, **overrides: Any) -> Any:
    """``kind``'s algorithm on ``num_envs`` envs; ``lm(codec)`` builds the model (default: the
    tiny GPT-2)."""
    cls, extra = _configs()[kind]
    baseline = {"remax", "mc"} & {extra.get("estimator")}
    env = (GradedCueEnv if baseline else CueEnv)(num_envs=num_envs, max_new_tokens=N)
    kwargs = {**SETTINGS, **extra, **overrides}
    model = tiny_model(env.codec, seed=0) if lm is None else lm(env.codec)
    return cls(model, env, seed=0, **kwargs)


def _rollout(kind: str) -> dict[str, torch.Tensor]:
    """One process's rollout of B episodes: the prompts and samples every layout replays."""
    algo = _algo(kind, B)
    algo._setup_learn(1, None, True, "run", False)
    assert algo.collect(algo._init_callback(None, False))
    buf = algo.rollout_buffer
    out = {
        "prompt_ids": buf.prompt_ids,
        "prompt_mask": buf.prompt_mask,
        "response_ids": buf.response_ids,
        "response_mask": buf.response_mask,
        "task_rewards": buf.task_rewards,
    }
    last = buf.lengths - 1
    out["task_rewards"] = torch.zeros_like(buf.task_rewards)
    out["task_rewards"][torch.arange(B), last] = SCORES
    if buf.group_ids is not None:
        out["group_ids"] = buf.group_ids
    out["window_ids"], out["window_mask"] = algo._prefill  # the reset window (baseline rollouts)
    data: dict[str, Any] = {k: v.clone() for k, v in out.items()}
    data["prompts"] = list(algo._rollout_prompts)
    if "mc_values" in algo.estimator_spec.requires:  # one process's, replayed on every layout
        one = _update(kind, data, 0, 1, train=False)
        data["mc_values"] = one.rollout_buffer.mc_values.clone()
    return data


def _replay(algo: Any, data: dict[str, Any], rows: slice) -> None:
    """Fill the buffer with ``rows`` of a recorded rollout, step by step as ``collect`` does."""
    buf = algo.rollout_buffer
    buf.reset()
    ids = torch.cat([data["prompt_ids"][rows], data["response_ids"][rows]], 1)
    mask = torch.cat([data["prompt_mask"][rows], torch.zeros_like(data["response_ids"][rows])], 1)
    buf.set_prompts(ids[:, : buf.prompt_len], mask[:, : buf.prompt_len])
    for t in range(N):
        buf.add(
            data["response_ids"][rows, t],
            data["task_rewards"][rows, t],
            data["response_mask"][rows, t],
        )
    if "group_ids" in data:
        buf.group_ids = data["group_ids"][rows] - data["group_ids"][rows].min()
    # What collect leaves for the baseline rollouts: the rows' prompts, the reset window, and
    # the KV cache after the last fed token (the last sampled one is pending, as in collect).
    algo._rollout_prompts = data["prompts"][rows]
    window = (data["window_ids"][rows], data["window_mask"][rows])
    algo._prefill = window
    if "mc_values" in algo.estimator_spec.requires:
        state = algo.policy.start(*window)
        steps = int(data["response_mask"][rows].sum(dim=1).max())
        for t in range(steps - 1):
            state = algo.policy.advance(state, data["response_ids"][rows, t])
        algo._rollout_state = state
    if "mc_values" in data:
        algo._mc_values = lambda: data["mc_values"][rows]


def _update(
    kind: str,
    data: dict[str, Any],
    rank: int,
    world_size: int,
    train: bool = True,
    **overrides: Any,
) -> Any:
    share = B // world_size
    algo = _algo(kind, share, **overrides)
    algo._setup_learn(1, None, True, "run", False)
    _replay(algo, data, slice(rank * share, (rank + 1) * share))
    algo.finish_rollout()
    if train:
        algo.train()
    return algo


def _params(algo: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in algo.policy.named_parameters() if p.requires_grad}


def _updates_on_ranks(rank: int, world_size: int, rollouts: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for kind, data in rollouts.items():
        algo = _update(kind, data, rank, world_size)
        buf = algo.rollout_buffer
        baselines = {"greedy": buf.greedy_rewards, "mc": buf.mc_values}
        out[kind] = {"params": _params(algo), "stats": dict(algo.train_stats), **baselines}
    return out


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_two_ranks_update_like_one_process_with_every_row() -> None:
    rollouts = {kind: _rollout(kind) for kind in _configs()}
    results = run_ranks(_updates_on_ranks, 2, rollouts)
    for kind, data in rollouts.items():
        one = _update(kind, data, 0, 1)
        want = _params(one)
        start = _params(_algo(kind, B))
        moved = max(float((want[n] - start[n]).abs().max()) for n in want)
        assert moved > 1e-3, kind  # the update did something to compare
        if kind == "ppo-mc":
            assert bool(torch.isfinite(data["mc_values"]).any())
        if kind == "ppo-remax":  # each rank's own greedy rollouts: one process's baseline
            greedy = torch.cat([got[kind]["greedy"] for got in results])
            torch.testing.assert_close(greedy, one.rollout_buffer.greedy_rewards, atol=0, rtol=0)
            assert len(set(greedy.tolist())) > 1, greedy  # a baseline that varies by prompt
        for rank, got in enumerate(results):
            for name, value in want.items():
                torch.testing.assert_close(
                    got[kind]["params"][name], value, atol=1e-6, rtol=0, msg=f"{kind} {name}"
                )
            for key in ("train/policy_loss", "train/approx_kl", "train/clip_fraction"):
                assert got[kind]["stats"][key] == pytest.approx(one.train_stats[key], abs=1e-5), (
                    kind,
                    rank,
                    key,
                )


def _continuations(rank: int, world_size: int, data: dict[str, Any]) -> dict[str, Any]:
    algo = _update("ppo-mc", data, rank, world_size)
    buf = algo.rollout_buffer
    return {"mc": buf.mc_values, "params": _params(algo), "timesteps": algo.num_timesteps}


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_monte_carlo_continuations_on_two_ranks() -> None:
    """Each rank samples its own rows' continuations (so the draws differ from one process's,
    see the module docstring); what holds: the same branch points, every value that the prefix
    decides equal to one process's (GradedCueEnv's score depends on the cue and the first
    response token only, so continuations from a later token all return the same score),
    first-token values that are means of draws for the row's own cue, and both ranks ending
    with the same parameters and token count."""
    data = _rollout("ppo-mc")
    data.pop("mc_values")  # sampled for real below
    results = run_ranks(_continuations, 2, data)
    want = _update("ppo-mc", data, 0, 1).rollout_buffer.mc_values
    got = torch.cat([r["mc"] for r in results])
    branch = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), branch)
    later = branch.clone()
    later[:, 0] = False
    assert bool(later.any())
    torch.testing.assert_close(got[later], want[later], atol=0, rtol=0)
    cue_b = torch.tensor([p.metadata["cue"] == "b" for p in data["prompts"]]).float()
    assert bool(branch[:, 0].all())
    assert bool(((got[:, 0] >= cue_b) & (got[:, 0] < cue_b + 1)).all()), (got[:, 0], cue_b)
    assert results[0]["timesteps"] == results[1]["timesteps"]
    for name, value in results[0]["params"].items():
        torch.testing.assert_close(results[1]["params"][name], value, atol=0, rtol=0)


def _failures(
    rank: int, world_size: int, data: dict[str, torch.Tensor], more: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What stops both ranks together; ``more``: settings for every algorithm (``fsdp``)."""
    more = more or {}
    out: dict[str, Any] = {}
    # A NaN task reward on rank 1 only: both stop in the score stage with rank 1's message.
    algo = _algo("ppo", 2, **more)
    if rank == 1:
        algo.env.reward_override = float("nan")
    try:
        algo.learn(8)
    except FloatingPointError as exc:
        out["reward"] = str(exc)
    # A NaN advantage on rank 1 reaches its loss: both stop before any optimizer step.
    algo = _algo("ppo", 2, normalize_advantage=False, batch_size=None, **more)
    algo._setup_learn(1, None, True, "run", False)
    _replay(algo, data, slice(rank * 2, rank * 2 + 2))
    algo.finish_rollout()
    if rank == 1:
        algo.rollout_buffer.advantages[0, 0] = float("nan")
    before = _params(algo)
    try:
        algo.train()
    except FloatingPointError as exc:
        out["loss"] = str(exc)
        out["unchanged"] = all(torch.equal(p, before[n]) for n, p in _params(algo).items())
    # target_kl: every rank stops at the same minibatch (the global approx_kl decides).
    algo = _algo("ppo", 2, target_kl=1e-4, n_epochs=4, batch_size=1, learning_rate=0.2, **more)
    algo._setup_learn(1, None, True, "run", False)
    _replay(algo, data, slice(rank * 2, rank * 2 + 2))
    algo.finish_rollout()
    algo.train()
    out["n_updates"] = algo._n_updates
    return out


def check_failures(results: list[dict[str, Any]], data: dict[str, Any]) -> None:
    """Both ranks stopped with rank 1's error, before any step, and at ``target_kl`` at the
    minibatch one process stops at."""
    for got in results:
        assert got["reward"].startswith("rank 1: non-finite task reward")
        assert got["loss"].startswith("rank 1: non-finite") and got["unchanged"]
    # The same minibatch on both ranks, and the one a single process stops at.
    one = _algo("ppo", B, target_kl=1e-4, n_epochs=4, batch_size=1, learning_rate=0.2)
    one._setup_learn(1, None, True, "run", False)
    _replay(one, data, slice(0, B))
    one.finish_rollout()
    one.train()
    assert 0 < one._n_updates < 4 * B  # it stopped early, after some steps
    assert results[0]["n_updates"] == results[1]["n_updates"] == one._n_updates


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_a_nan_or_target_kl_on_one_rank_stops_every_rank_together() -> None:
    data = _rollout("ppo")
    check_failures(run_ranks(_failures, 2, data), data)


def _resume(rank: int, world_size: int, folder: str) -> dict[str, Any]:
    path = Path(folder) / "ckpt"
    algo = _algo("mappo", 2)
    algo.learn(2 * B * N)
    algo.save(path)
    algo.learn(2 * B * N, reset_num_timesteps=False)
    straight = _params(algo)
    again = MAPPO.load(path, env=CueEnv(num_envs=2, max_new_tokens=N), device="cpu")
    again.learn(2 * B * N, reset_num_timesteps=False)
    return {
        "straight": straight,
        "resumed": _params(again),
        "timesteps": (algo.num_timesteps, again.num_timesteps),
    }


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_two_rank_checkpoint_resumes_exactly_and_refuses_one_rank(tmp_path: Path) -> None:
    results = run_ranks(_resume, 2, str(tmp_path))
    for got in results:
        assert got["timesteps"][0] == got["timesteps"][1]
        for name, value in got["straight"].items():
            torch.testing.assert_close(got["resumed"][name], value, atol=1e-6, rtol=0, msg=name)
    # Both ranks hold the same parameters (gradients were all-reduced).
    for name, value in results[0]["straight"].items():
        torch.testing.assert_close(results[1]["straight"][name], value, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"saved by 2 rank\(s\) but this run has world size 1"):
        MAPPO.load(tmp_path / "ckpt", env=CueEnv(num_envs=2, max_new_tokens=N), device="cpu")


def _update_and_gradients(data: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """PPO's update of ``data`` (this rank's part), with each step's gradients as the clipping
    reads them: summed over ranks, not yet clipped (clipping and Adam would hide a wrong scale
    of the gradients from the parameters)."""
    with gradients_at_clipping() as grads:
        algo = _update("ppo", data, rank, world_size)
    return {"params": _params(algo), "grads": grads}


def _small_buckets(rank: int, world_size: int, data: dict[str, Any]) -> dict[str, Any]:
    from marlhf.parallel import distributed

    distributed.BUCKET_BYTES = 200  # a bucket per parameter or two (a 1 KB matrix: its own)
    return _update_and_gradients(data, rank, world_size)


@pytest.mark.slow  # two processes (gloo ranks), each building and training a model
def test_gradients_all_reduced_in_many_buckets_update_like_one_process() -> None:
    data = _rollout("ppo")
    one = _update_and_gradients(data, 0, 1)
    for got in run_ranks(_small_buckets, 2, data):
        for name, value in one["params"].items():
            torch.testing.assert_close(got["params"][name], value, atol=1e-6, rtol=0, msg=name)
        assert_same_gradients(got["grads"], one["grads"], rtol=1e-5)
