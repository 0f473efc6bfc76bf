"""The exact multi-turn truth on ToolLookup against values computed by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from marlhf.credit.truth_base import Sampling
from marlhf.credit.truth_multiturn import (
    check_exact_turns,
    exact_turn_advantages,
    mc_turn_advantages,
    turn_true_advantages,
)
from marlhf.envs.core.tasks import Prompt
from marlhf.envs.multiturn import TextEnvError
from marlhf.envs.multiturn.tool import ToolLookupEnv, ToolLookupTask

CALL, A0, R, DIGIT0 = 2, 3, 7, 8  # ToolLookup's ids: call, a0 a1 a2, q, r, 0 1 2


class ScriptedPolicy(nn.Module):
    """Before the tool answered: call 1/2, each answer 1/6. After ``r x``: call 0.1, the right
    answer 0.7, each wrong one 0.1 (logits = log-probabilities, so ``softmax`` gives them)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        b, n = input_ids.shape
        logits = torch.full((b, n, 11), -1e9)
        for i in range(b):
            x = None
            for t in range(n):
                token = int(input_ids[i, t])
                if DIGIT0 <= token < DIGIT0 + 3:
                    x = token - DIGIT0
                probs = {CALL: 0.5, A0: 1 / 6, A0 + 1: 1 / 6, A0 + 2: 1 / 6}
                if x is not None:
                    probs = {CALL: 0.1, **{A0 + k: 0.7 if k == x else 0.1 for k in range(3)}}
                for a, p in probs.items():
                    logits[i, t, a] = float(np.log(p))
        return type("Out", (), {"logits": logits + 0 * self.dummy})()


def _seed_with_answer(x: int) -> int:
    return next(s for s in range(100) if ToolLookupEnv(3, 0.1).reset(seed=s) and _x(s) == x)


def _x(seed: int) -> int:
    env = ToolLookupEnv(3, 0.1)
    env.reset(seed=seed)
    return env.x


def test_exact_advantages_match_the_hand_computed_tree() -> None:
    # Hidden answer 0. After the tool answered, at the last turn (R2): V = 0.1 * -0.1 + 0.7.
    v_r2 = 0.1 * -0.1 + 0.7
    v_r1 = 0.1 * (-0.1 + v_r2) + 0.7  # revealed, one more turn left after this one
    q_call = -0.1 + v_r1
    v_root = 0.5 * q_call + 1 / 6
    seed = _seed_with_answer(0)
    prompts = [Prompt(ids=[6], metadata={"seed": seed})] * 3
    actions = torch.tensor([[CALL, A0, 0], [CALL, CALL, A0], [A0 + 1, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    task = ToolLookupTask()
    sampling = Sampling(action_mask=torch.as_tensor(task.action_mask()))
    truth = exact_turn_advantages(ScriptedPolicy(), task, prompts, actions, mask, sampling=sampling)
    expected = [
        [q_call - v_root, 1 - v_r1, 0.0],
        [q_call - v_root, -0.1 + v_r2 - v_r1, 1 - v_r2],
        [-v_root, 0.0, 0.0],
    ]
    assert truth.method == "exact" and truth.stderr is None
    torch.testing.assert_close(truth.advantages, torch.tensor(expected, dtype=torch.float64))
    assert truth.values[1].tolist() == pytest.approx([v_root, v_r1, v_r2])
    assert truth.q_values[0, 0] == pytest.approx(q_call)
    assert v_root == pytest.approx(0.49616666, abs=1e-7)  # the number worked out on paper
    assert truth.stats["episode_starts"] == 1.0 and truth.stats["decision_points"] == 3.0


def test_the_expected_advantage_under_the_policy_is_zero_at_every_node() -> None:
    task = ToolLookupTask()
    sampling = Sampling(action_mask=torch.as_tensor(task.action_mask()))
    seed = _seed_with_answer(2)
    prompts = [Prompt(ids=[6], metadata={"seed": seed})] * 4
    # Every first action: sum_a pi(a) A(root, a) = 0.
    actions = torch.tensor([[CALL], [A0], [A0 + 1], [A0 + 2]])
    truth = exact_turn_advantages(
        ScriptedPolicy(),
        task,
        prompts,
        actions,
        torch.ones(4, 1, dtype=torch.bool),
        sampling=sampling,
    )
    probs = torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6], dtype=torch.float64)
    assert float((probs * truth.advantages[:, 0]).sum()) == pytest.approx(0.0, abs=1e-6)  # float32


class _BadClone(ToolLookupEnv):
    def clone(self) -> ToolLookupEnv:
        copy = ToolLookupEnv(self.n_answers, self.tool_cost)
        copy.reset(seed=0)  # a fresh episode, not this state
        copy.turn = self.turn + 1
        return copy


class _BadCloneTask(ToolLookupTask):
    def make_env(self) -> ToolLookupEnv:
        return _BadClone(self.n_answers, self.tool_cost)


def test_a_clone_that_does_not_reproduce_the_state_is_named() -> None:
    prompts = [Prompt(ids=[6], metadata={"seed": 3})]
    with pytest.raises(TextEnvError, match=r"_BadClone|ToolLookupEnv.*clone\(\) does not"):
        exact_turn_advantages(
            ScriptedPolicy(),
            _BadCloneTask(),
            prompts,
            torch.tensor([[CALL]]),
            torch.ones(1, 1, dtype=torch.bool),
        )


def test_truth_of_an_agent_rollout() -> None:
    from marlhf import PPO
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from tests.agents.conftest import tiny_model

    task = ToolLookupTask()
    env = MultiTurnTokenEnv(task, num_envs=8, seed=0)
    algo = PPO(tiny_model(task.codec), env, seed=0, batch_size=8, mask_actions=True)
    algo.learn(8)
    buf, prompts = algo.rollout_buffer, algo._rollout_prompts
    assert buf is not None and prompts is not None
    truth = exact_turn_advantages(
        algo.policy, task, prompts, buf.action_ids, buf.credit_mask, sampling=Sampling.of(algo)
    )
    real = buf.credit_mask.cpu()
    assert torch.isfinite(truth.advantages).all() and (truth.advantages[~real] == 0).all()
    # Q of an episode's last action is its turn reward (nothing follows).
    last = real.sum(1) - 1
    rows = torch.arange(8)
    torch.testing.assert_close(
        truth.q_values[rows, last], buf.task_rewards.cpu()[rows, last].double()
    )


def test_the_audit_reports_per_turn_on_multiturn_rollouts(tmp_path: Any) -> None:
    from marlhf import PPO
    from marlhf.audit.credit import Scheme, audit
    from marlhf.checkpoint.rollout_io import Rollouts
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from tests.agents.conftest import tiny_model

    task = ToolLookupTask()
    env = MultiTurnTokenEnv(task, num_envs=8, seed=1)
    algo = PPO(tiny_model(task.codec), env, seed=0, batch_size=8, mask_actions=True, group_size=4)
    algo.learn(8)
    rollouts = Rollouts.load(Rollouts.from_algorithm(algo).save(tmp_path / "r.safetensors"))
    assert rollouts.turn_starts is not None
    buf = algo.rollout_buffer
    assert buf is not None and buf.turns is not None
    assert torch.equal(rollouts.response_ids, buf.action_ids.cpu())
    truth = exact_turn_advantages(
        algo.policy,
        task,
        rollouts.prompts,
        rollouts.response_ids,
        rollouts.response_mask,
        sampling=Sampling.of(algo),
    )
    result = audit(rollouts, truth, [Scheme.parse("gae"), Scheme("grpo", "turn")])
    for name, figures in result.schemes.items():
        n_turns = int(buf.turns.num_turns.sum())
        assert figures["turns"]["count"] == n_turns, name
        assert len(figures["per_turn"]["count"]) == int(buf.turns.num_turns.max())
    # One-token turns: a turn is its action, so per-turn and per-token figures agree.
    gae = result.schemes["gae"]
    assert gae["turns"]["rmse"] == pytest.approx(gae["tokens"]["rmse"])


# ----------------------------------------------------------------------------- Monte Carlo
def test_monte_carlo_agrees_with_the_exact_truth_within_its_standard_errors() -> None:
    task = ToolLookupTask()
    sampling = Sampling(action_mask=torch.as_tensor(task.action_mask()))
    prompts = [Prompt(ids=[6], metadata={"seed": _seed_with_answer(0)})] * 3
    actions = torch.tensor([[CALL, A0, 0], [CALL, CALL, A0], [A0 + 1, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    exact = exact_turn_advantages(ScriptedPolicy(), task, prompts, actions, mask, sampling=sampling)
    mc = mc_turn_advantages(
        ScriptedPolicy(), task, prompts, actions, mask, sampling=sampling, samples=100, seed=0
    )
    assert mc.method == "mc" and mc.stderr is not None
    assert (mc.stderr[mask] > 0).all() and (mc.stderr[~mask] == 0).all()
    assert (mc.advantages[~mask] == 0).all() and (mc.values[~mask] == 0).all()
    z = (mc.advantages - exact.advantages)[mask] / mc.stderr[mask]
    assert z.abs().max() < 4, z
    v_se = mc.stderr[mask].max()  # a value's SE is below its advantage's
    assert (mc.values - exact.values)[mask].abs().max() < 4 * v_se
    # Q of an episode's last action is its reward exactly (nothing follows).
    assert mc.q_values[0, 1] == pytest.approx(1.0) and mc.q_values[2, 0] == pytest.approx(0.0)
    assert mc.stats["states"] == 6.0 and mc.stats["mc_tokens"] > 0


def test_monte_carlo_is_seeded() -> None:
    task = ToolLookupTask()
    prompts = [Prompt(ids=[6], metadata={"seed": 5})]
    actions, mask = torch.tensor([[CALL, A0]]), torch.ones(1, 2, dtype=torch.bool)
    runs = [
        mc_turn_advantages(ScriptedPolicy(), task, prompts, actions, mask, samples=8, seed=s)
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0].advantages, runs[1].advantages)
    assert not torch.equal(runs[0].values, runs[2].values)


@pytest.mark.parametrize(
    ("actions", "mask", "message"),
    [
        ([[CALL, A0, A0]], [[1, 1, 1]], "row 0 has 3 actions but its episode ended after 2"),
        ([[CALL, 0]], [[1, 0]], "row 0's actions end after 1 tokens"),
    ],
)
def test_monte_carlo_needs_whole_episodes(actions: Any, mask: Any, message: str) -> None:
    prompts = [Prompt(ids=[6], metadata={"seed": 5})]
    with pytest.raises(ValueError, match=message):
        mc_turn_advantages(
            ScriptedPolicy(),
            ToolLookupTask(),
            prompts,
            torch.tensor(actions),
            torch.tensor(mask, dtype=torch.bool),
            samples=2,
        )


def test_monte_carlo_bad_settings_are_named() -> None:
    prompts = [Prompt(ids=[6], metadata={"seed": 5})]
    args = (ScriptedPolicy(), ToolLookupTask(), prompts, torch.tensor([[A0]]))
    with pytest.raises(ValueError, match="samples=1"):
        mc_turn_advantages(*args, torch.ones(1, 1, dtype=torch.bool), samples=1)
    with pytest.raises(ValueError, match="gamma=2"):
        mc_turn_advantages(*args, torch.ones(1, 1, dtype=torch.bool), gamma=2)
    with pytest.raises(ValueError, match="method='guess'"):
        turn_true_advantages(*args, torch.ones(1, 1, dtype=torch.bool), method="guess")


def test_monte_carlo_on_guess_the_number_rollouts() -> None:
    from marlhf import PPO
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from marlhf.envs.multiturn.tasks.guess_number import GuessTheNumberTask
    from tests.agents.conftest import tiny_model

    task = GuessTheNumberTask()
    env = MultiTurnTokenEnv(task, num_envs=2, seed=0)
    algo = PPO(tiny_model(task.codec), env, seed=0, batch_size=2, mask_actions=True)
    algo.learn(2)
    buf, prompts = algo.rollout_buffer, algo._rollout_prompts
    assert buf is not None and prompts is not None
    truth = turn_true_advantages(
        algo.policy,
        task,
        prompts,
        buf.action_ids,
        buf.credit_mask,
        method="mc",
        sampling=Sampling.of(algo),
        samples=3,
    )
    real = buf.credit_mask.cpu()
    assert truth.stderr is not None
    for x in (truth.advantages, truth.values, truth.q_values, truth.stderr):
        assert x.shape == real.shape and x.dtype == torch.float64
        assert torch.isfinite(x).all() and (x[~real] == 0).all()
    assert (truth.stderr[real] >= 0).all()
    torch.testing.assert_close(truth.advantages, truth.q_values - truth.values)
    # Q of an episode's last action is its turn reward (nothing follows).
    last = real.sum(1) - 1
    rows = torch.arange(2)
    torch.testing.assert_close(
        truth.q_values[rows, last], buf.task_rewards.cpu()[rows, last].double()
    )
    assert truth.stats["states"] == float(real.sum())


def test_exact_check_counts_the_toy_tree_and_names_the_limit() -> None:
    task = ToolLookupTask()
    sampling = Sampling(action_mask=torch.as_tensor(task.action_mask()))
    # The root, and two more turns after the tool answered (fixed by the task, not the seed).
    assert check_exact_turns(task, sampling) == 3
    with pytest.raises(ValueError, match="max_nodes=2 decision points"):
        check_exact_turns(task, sampling, max_nodes=2)


def test_the_training_audit_callback_runs_on_a_multiturn_task() -> None:
    from marlhf import PPO
    from marlhf.audit.credit import CreditAuditCallback
    from marlhf.envs.multiturn.env import MultiTurnTokenEnv
    from tests.agents.conftest import tiny_model

    task = ToolLookupTask()
    env = MultiTurnTokenEnv(task, num_envs=8, seed=0)
    algo = PPO(tiny_model(task.codec), env, seed=0, batch_size=8, mask_actions=True)
    callback = CreditAuditCallback(every=1, method="mc", mc_samples=2)
    algo.learn(8, callback=callback)
    figures = callback.records[0]["figures"]
    assert {"credit/gae/rmse", "credit/gae/turn_corr"} <= set(figures)
    assert np.isfinite(figures["credit/gae/rmse"])
