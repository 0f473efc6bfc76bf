"""The batched-env contract for multi-turn envs, and :func:`check_multiturn_env`.

A multi-turn env (:class:`~marlhf.envs.multiturn.env.MultiTurnTokenEnv`) keeps the single-turn
contract (:mod:`marlhf.envs.core.contract`) where it applies - shapes, ``info["active"]``, frozen
finished rows, done flags, seeded determinism, group resets - and changes two rules:

- **Window.** An active row appends its action and then, when its turn ended and the episode
  goes on, the environment's answer: ``info["forced_ids"][b, :info["forced_lengths"][b]]``
  (forced tokens, not actions). Its window shifts left by ``1 + forced_lengths[b]``.
- **Groups.** ``reset(options={"group_size": K})`` starts the ``K`` rows of a group from one env
  seed: same first observation and prompt, ``info["group_ids"] == arange(B) // K``,
  ``info["prompts"]`` one per row (as the single-turn env's).
- **Rewards.** ``reward_mode == "env"``: the text env's reward of a turn arrives on the step that
  ends the turn, so nonzero rewards may come before the end; they must be finite. A row finishes
  once, terminated (the env said so) or truncated (a limit), never both.

Prefix resets (continuations from a partial response) are the single-turn env's; multi-turn
continuations replay the text env or ``clone()`` it instead, so they are not checked here.
"""

from __future__ import annotations

from typing import Any

import torch

from marlhf.envs.core.contract import (
    Episode,
    _check_attributes,
    _check_reset_window,
    _cpu,
    _draw_actions,
    _fail,
    _group_size,
    _run,
    _same,
)


def _forced(info: dict[str, Any], B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forced_ids int64[B, F], forced_lengths int64[B])`` of one step (zero-length if none)."""
    if "forced_ids" not in info:
        return torch.zeros(B, 0, dtype=torch.int64), torch.zeros(B, dtype=torch.int64)
    return _cpu(info["forced_ids"]).long(), _cpu(info["forced_lengths"]).long()


def _check_multiturn_episode(
    env: Any, ep: Episode, actions: torch.Tensor, prefix_lengths: list[int]
) -> None:
    """Every per-step rule of a multi-turn episode, given the actions sent."""
    B = env.num_envs
    _check_reset_window(env, ep.obs[0], prefix_lengths)
    done = torch.zeros(B, dtype=torch.bool)
    for t, active in enumerate(ep.active):
        if not torch.equal(active, ~done):
            raise _fail(env, "info['active']", f"step {t}: {active.tolist()} != not-finished rows")
        term, trunc, reward = ep.terminated[t], ep.truncated[t], ep.rewards[t]
        if bool((term & trunc).any()):
            raise _fail(env, "termination", f"step {t}: a row both terminated and truncated")
        if bool(((term | trunc) & ~active).any()):
            raise _fail(env, "finished rows frozen", f"step {t}: a finished row finished again")
        forced_ids, forced_lengths = _forced(ep.infos[t], B)
        before, after = ep.obs[t], ep.obs[t + 1]
        for b in range(B):
            if not bool(active[b]):
                same = all(torch.equal(after[k][b], before[k][b]) for k in after)
                if not same or float(reward[b]) != 0.0:
                    raise _fail(env, "finished rows frozen", f"step {t}: row {b} changed")
                continue
            n = int(forced_lengths[b])
            new = torch.cat([actions[t][b : b + 1].long(), forced_ids[b, :n]])
            want_ids = torch.cat([before["input_ids"][b, 1 + n :], new])
            want_mask = torch.cat(
                [before["attention_mask"][b, 1 + n :], torch.ones(1 + n, dtype=torch.int64)]
            )
            if not torch.equal(after["input_ids"][b], want_ids) or not torch.equal(
                after["attention_mask"][b], want_mask
            ):
                raise _fail(
                    env,
                    "window",
                    f"step {t}: row {b} must append its action and {n} forced tokens",
                )
        if not bool(torch.isfinite(reward).all()):
            raise _fail(env, "rewards", f"step {t}: non-finite rewards {reward.tolist()}")
        done = done | term | trunc
        if ep.any_done[t] != bool(done.any()) or ep.all_done[t] != bool(done.all()):
            raise _fail(env, "done flags", f"step {t}: any_done/all_done disagree with the flags")


def check_multiturn_env(env: Any, seed: int = 0) -> None:
    """Run the multi-turn contract on ``env`` (it is reset several times).

    :param env: a batched multi-turn env (``reward_mode == "env"``).
    :param seed: seeds the resets and the checker's random actions.
    :raises ContractError: naming the first rule broken, the step and the rows.
    """
    _check_attributes(env, reward_modes=("env",))
    actions = _draw_actions(env, seed)
    first = _run(env, seed, None, actions)
    _check_multiturn_episode(env, first, actions, [0] * env.num_envs)
    _same(env, first, _run(env, seed, None, actions), f"reset(seed={seed})")
    _check_multiturn_groups(env, seed, actions)


def _check_multiturn_groups(env: Any, seed: int, actions: torch.Tensor) -> None:
    B = env.num_envs
    K = _group_size(B)
    a = _run(env, seed, {"group_size": K}, actions)
    _check_multiturn_episode(env, a, actions, [0] * B)
    _same(env, a, _run(env, seed, {"group_size": K}, actions), f"reset(group_size={K})")
    ids = a.info.get("group_ids")
    if not isinstance(ids, torch.Tensor) or not torch.equal(_cpu(ids), torch.arange(B) // K):
        raise _fail(env, "group resets", f"info['group_ids'] is {ids!r:.80}; expected arange//{K}")
    prompts = a.info.get("prompts")
    if not isinstance(prompts, list | tuple) or len(prompts) != B:
        raise _fail(env, "group resets", f"info['prompts'] needs {B} prompts (one a row)")
    first = a.obs[0]["input_ids"]
    for b in range(B):
        lead = b - b % K
        if prompts[b].ids != prompts[lead].ids or not torch.equal(first[b], first[lead]):
            raise _fail(env, "group resets", f"row {b} does not share row {lead}'s start")
