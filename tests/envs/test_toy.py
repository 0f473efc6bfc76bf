"""Toy tasks: documented optimal/random returns, reward grading, safe expression evaluation."""

from __future__ import annotations

import ast
import random

import numpy as np
import pytest
import torch

from marlhf.envs import (
    BatchedTokenEnv,
    DelayedChoiceTask,
    ExprTargetTask,
    Prompt,
    ReverseDenseTask,
    ReverseTask,
    random_returns,
    scripted_returns,
)
from marlhf.envs.builtin.safe_expr import evaluate
from marlhf.envs.builtin.toy import EXPR_SYMBOLS, ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = [
    lambda: DelayedChoiceTask(horizon=16),
    lambda: DelayedChoiceTask(horizon=64, num_choices=3),
    lambda: ReverseTask(),
    lambda: ReverseTask(num_symbols=3, min_len=1, max_len=4, horizon=9),
    lambda: ReverseDenseTask(),
    lambda: ExprTargetTask(),
]


@pytest.mark.parametrize("make", TASKS)
def test_scripted_optimal_policy_reaches_documented_optimum(make) -> None:
    task: ToyTask = make()
    returns = scripted_returns(task, task.optimal_response, episodes=256, seed=1)
    assert returns.min() == pytest.approx(task.optimal_return, abs=1e-6)


# ExprTarget's random return has no closed form: it is itself a Monte-Carlo run of this env, so
# checking it against another would pass whatever the reward did. It is checked against a
# simulation that shares no code with the env (the next test) instead.
@pytest.mark.parametrize("make", TASKS[:-1])
def test_random_rollouts_match_documented_random_return(make) -> None:
    task: ToyTask = make()
    assert not isinstance(task, ExprTargetTask)
    returns = random_returns(task, episodes=2048, seed=123)
    stderr = returns.std() / np.sqrt(len(returns))
    assert abs(returns.mean() - task.random_return) < 4 * stderr + 1e-3
    assert task.random_return < task.optimal_return


def _independent_expr_score(text: str, target: int) -> float:
    """ExprTarget's documented score, written apart from safe_expr: Python's own ``eval`` on a
    tree whose every node is checked first (no ``**``, no unary ``+``, integers only)."""
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.USub)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return 0.0
    nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        if not isinstance(node, allowed):
            return 0.0
    # 12 characters bound every value far below safe_expr's 10**12 limit: eval is safe here.
    value = eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}})
    if value != target:
        return 0.1 + 0.4 / (1 + abs(value - target))
    return 1.0 if any(isinstance(n, ast.BinOp) for n in nodes) else 0.6


def test_expr_target_random_return_against_an_independent_simulation() -> None:
    """The documented random return (a Monte-Carlo estimate through the batched env) agrees with
    a plain-Python simulation of the uniform policy that shares no code with the env or reward."""
    task = ExprTargetTask()
    rng = random.Random(2024)
    alphabet = [*EXPR_SYMBOLS, None]  # None: EOS (the task's action mask: symbols and EOS)
    scores = []
    for _ in range(20_000):
        target = rng.randint(0, task.max_target)
        chars = []
        for _ in range(task.max_new_tokens):
            c = rng.choice(alphabet)
            if c is None:
                break
            chars.append(c)
        text = "".join(chars)
        scores.append(_independent_expr_score(text, target) if text.strip() else 0.0)
    sim = np.asarray(scores)
    documented = task.random_return
    # stderr of both estimates (the documented one uses 4096 episodes)
    stderr = sim.std() * np.sqrt(1 / len(sim) + 1 / 4096)
    assert abs(sim.mean() - documented) < 4 * stderr, (sim.mean(), documented, stderr)
    assert 0.005 < sim.mean() < 0.05  # "about 0.017 at the defaults"


def test_random_return_formulas() -> None:
    assert DelayedChoiceTask(num_choices=5).random_return == pytest.approx(0.2)
    q = 3 / 4  # K = 3 symbols plus EOS
    expected = np.mean([(1 - q ** (m + 1)) / (m + 1) for m in (1, 2)])
    assert ReverseTask(num_symbols=3, min_len=1, max_len=2).random_return == pytest.approx(expected)


def test_delayed_choice_rewards_only_the_first_token() -> None:
    task = DelayedChoiceTask(horizon=8, num_choices=3)
    env = BatchedTokenEnv(task, num_envs=1, seed=0)
    cue_a = task.codec.encode("A")
    b, c = task.codec.encode("b")[0], task.codec.encode("c")[0]
    for first, rest, expected in [(b, c, 1.0), (c, b, 0.0)]:
        env.reset(options={"prompts": [Prompt(cue_a)]})
        rewards = [float(env.step(torch.tensor([first]))[1][0])]
        for _ in range(7):
            rewards.append(float(env.step(torch.tensor([rest]))[1][0]))
        assert rewards[:-1] == [0.0] * 7  # the score waits for the horizon
        assert rewards[-1] == expected
    assert task.action_mask().sum() == 3  # the choices only


def _expr_score(task: ExprTargetTask, text: str, target: int) -> float:
    env = BatchedTokenEnv(task, num_envs=1)
    env.reset(options={"prompts": [Prompt(task.codec.encode(f"{target}="), {"target": target})]})
    ids = [*task.codec.encode(text), task.codec.eos_token_id] if text else [task.codec.eos_token_id]
    info: dict = {}
    for tok in ids:
        *_, info = env.step(torch.tensor([tok]))
        if bool(env.done.all()):
            break
    return float(info["episode_return"][0])


def test_expr_target_graded_reward() -> None:
    task = ExprTargetTask(horizon=12)
    unparseable = _expr_score(task, "3+*(", 7)
    empty = _expr_score(task, "", 7)
    far = _expr_score(task, "2*9", 7)
    near = _expr_score(task, "2*4", 7)
    literal = _expr_score(task, "7", 7)
    correct = _expr_score(task, "(2+5)*1", 7)
    negative = _expr_score(task, "-3+10", 7)
    assert unparseable == empty == 0.0
    assert 0.1 < far < near <= 0.5
    assert near < literal < correct == negative == 1.0
    assert _expr_score(ExprTargetTask(require_operator=False), "7", 7) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "1.5",
        "True",
        "x",
        "2**10",
        "9//2",
        "[1]",
        "1 if 1 else 2",
        "(" * 40 + "1" + ")" * 40,
        "9" * 13,
        "999999*999999*999999",
        " 1",
        "",
        "1" * 100,
    ],
)
def test_safe_evaluate_rejects_outside_grammar(text: str) -> None:
    result = evaluate(text)
    assert not result.valid
    assert result.value is None
    assert result.reason


def test_safe_evaluate_accepts_grammar() -> None:
    assert evaluate("3*(4-1)").value == 9
    assert evaluate("-(2+3) * -2").value == 10
    assert evaluate("12").num_operators == 0
    assert evaluate("1+2*3").num_operators == 2


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (DelayedChoiceTask, {"horizon": 1}, "horizon"),
        (DelayedChoiceTask, {"horizon": 513}, "horizon"),
        (DelayedChoiceTask, {"num_choices": 1}, "num_choices"),
        (DelayedChoiceTask, {"horizon": 3.0}, "horizon"),
        (ReverseTask, {"max_len": 6, "horizon": 6}, "horizon"),
        (ReverseTask, {"min_len": 5, "max_len": 4}, "min_len"),
        (ExprTargetTask, {"max_target": 1000, "horizon": 5}, "horizon"),
        (ExprTargetTask, {"max_target": -1}, "max_target"),
    ],
)
def test_bad_task_parameters_name_the_field(cls, kwargs, field) -> None:
    with pytest.raises(ValueError, match=rf"{cls(**{}).name}.*{field}=.*valid"):
        cls(**kwargs)


def test_prompts_are_seeded_and_carry_metadata() -> None:
    for task in (DelayedChoiceTask(), ReverseTask(), ExprTargetTask()):
        a = task.sample_prompts(np.random.default_rng(3), 20)
        b = task.sample_prompts(np.random.default_rng(3), 20)
        assert [p.ids for p in a] == [p.ids for p in b]
        assert all(p.metadata and 1 <= len(p.ids) <= task.max_prompt_len for p in a)
        assert all(task.codec.decode(p.ids) == p.text for p in a)
