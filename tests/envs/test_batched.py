"""BatchedTokenEnv semantics: layout, flags, masking of finished rows, determinism, lockstep."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from marlhf.envs import (
    BatchedTokenEnv,
    DelayedChoiceTask,
    Prompt,
    ReverseDenseTask,
    ReverseTask,
    RewardBatch,
    RewardFunction,
    Task,
    TokenEnv,
)
from marlhf.envs.core.tasks import RewardMode
from marlhf.tokenization import SymbolCodec

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_actions(env: BatchedTokenEnv, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(env.action_masks().float(), 1, generator=gen)[:, 0]


def _rollout(env: BatchedTokenEnv, seed: int) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    trace: list[tuple] = [(obs["input_ids"].clone(), obs["attention_mask"].clone())]
    while not bool(env.done.all()):
        obs, r, term, trunc, _ = env.step(_random_actions(env, gen))
        trace.append((obs["input_ids"].clone(), r.clone(), term.clone(), trunc.clone()))
    return trace


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) for x, y in zip(s, t, strict=True)) for s, t in zip(a, b, strict=True)
    )


def test_reset_layout_left_padded() -> None:
    env = BatchedTokenEnv("Reverse", num_envs=5, seed=0)
    obs, info = env.reset()
    P, N = env.max_prompt_len, env.max_new_tokens
    ids, mask = obs["input_ids"], obs["attention_mask"]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert ids.shape == (5, P + N)
    for i, p in enumerate(info["prompts"]):
        n = len(p.ids)
        assert ids[i, -n:].tolist() == p.ids
        assert (ids[i, :-n] == env.pad_token_id).all()
        assert mask[i].tolist() == [0] * (P + N - n) + [1] * n
    assert info["prompt_text"][0] == env.codec.decode(info["prompts"][0].ids)


def test_step_shifts_and_appends_and_finished_rows_are_frozen() -> None:
    env = BatchedTokenEnv("Reverse", num_envs=3, seed=1)
    eos = env.eos_token_id
    assert eos is not None
    obs0, _ = env.reset()
    a = torch.tensor([2, eos, 3])
    obs1, _, term1, trunc1, info1 = env.step(a)
    assert torch.equal(obs1["input_ids"][:, :-1], obs0["input_ids"][:, 1:])
    assert obs1["input_ids"][:, -1].tolist() == a.tolist()
    assert obs1["attention_mask"][:, -1].tolist() == [1, 1, 1]
    assert term1.tolist() == [False, True, False] and not trunc1.any()
    assert info1["active"].tolist() == [True, True, True]
    # Row 1 is done: its action is ignored, its window frozen, reward 0, flags False.
    obs2, r2, term2, trunc2, info2 = env.step(torch.tensor([4, 5, 4]))
    assert info2["active"].tolist() == [True, False, True]
    assert torch.equal(obs2["input_ids"][1], obs1["input_ids"][1])
    assert r2[1] == 0.0 and not term2[1] and not trunc2[1]
    assert env.response_ids[1].tolist() == [eos] + [env.pad_token_id] * (env.max_new_tokens - 1)
    assert env.response_mask[1].sum() == 1
    assert env.lengths.tolist() == [2, 1, 2]


def test_flags_once_and_terminal_score_on_last_token() -> None:
    env = BatchedTokenEnv("Reverse", num_envs=16, seed=2)
    gen = torch.Generator().manual_seed(0)
    env.reset()
    ends = torch.full((16,), -1)
    reward_steps = torch.full((16,), -1)
    t = 0
    info: dict = {}
    while not bool(env.done.all()):
        _, r, term, trunc, info = env.step(_random_actions(env, gen))
        fin = term | trunc
        assert (ends[fin] == -1).all(), "a row finished twice"
        ends[fin] = t
        reward_steps[r != 0] = t
        t += 1
    assert (ends >= 0).all()
    assert env.all_done
    assert torch.equal(ends + 1, env.lengths)  # the finishing step is the last real token
    scored = reward_steps >= 0
    assert torch.equal(reward_steps[scored], ends[scored])
    assert set(info) >= {"prompt_text", "response_text", "episode_return", "active"}
    assert len(info["response_text"]) == 16
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(16, dtype=torch.int64))


def test_truncation_at_horizon_without_eos() -> None:
    env = BatchedTokenEnv(DelayedChoiceTask(horizon=5), num_envs=2, seed=0)
    env.reset()
    flags = []
    for _ in range(5):
        _, _, term, trunc, _ = env.step(torch.full((2,), 5))
        flags.append((term.tolist(), trunc.tolist()))
    assert flags[-1] == ([False, False], [True, True])
    assert all(f == ([False, False], [False, False]) for f in flags[:-1])


def test_action_masks_done_rows_only_pad() -> None:
    env = BatchedTokenEnv("Reverse", num_envs=2, seed=0)
    env.reset()
    eos = env.eos_token_id
    env.step(torch.tensor([eos, 2]))
    m = env.action_masks()
    assert m.shape == (2, env.vocab_size)
    assert m[0].tolist() == [i == env.pad_token_id for i in range(env.vocab_size)]
    assert torch.equal(m[1], torch.as_tensor(env.task.action_mask()))


@pytest.mark.parametrize("task", ["Reverse", "ExprTarget", "DelayedChoice", "ReverseDense"])
def test_seeded_determinism(task: str) -> None:
    a = _rollout(BatchedTokenEnv(task, num_envs=8), seed=7)
    b = _rollout(BatchedTokenEnv(task, num_envs=8), seed=7)
    c = _rollout(BatchedTokenEnv(task, num_envs=8), seed=8)
    assert _same(a, b)
    assert not _same(a, c)
    # constructor seed == reset seed; reset(seed=None) continues the stream
    e1 = BatchedTokenEnv(task, num_envs=8, seed=7)
    e2 = BatchedTokenEnv(task, num_envs=8)
    p1 = [p.ids for p in e1.reset()[1]["prompts"] + e1.reset()[1]["prompts"]]
    p2 = [p.ids for p in e2.reset(seed=7)[1]["prompts"] + e2.reset()[1]["prompts"]]
    assert p1 == p2


@pytest.mark.parametrize("task", ["Reverse", "ReverseDense", "ExprTarget", "DelayedChoice"])
def test_batched_equals_single_envs_in_lockstep(task: str) -> None:
    B = 6
    batched = BatchedTokenEnv(task, num_envs=B, seed=11)
    obs_b, info = batched.reset()
    singles = [TokenEnv(task) for _ in range(B)]
    obs_s = [
        s.reset(options={"prompt": p})[0] for s, p in zip(singles, info["prompts"], strict=True)
    ]
    gen = torch.Generator().manual_seed(3)
    live = [True] * B
    for _ in range(batched.max_new_tokens):
        for i in range(B):
            for key in ("input_ids", "attention_mask"):
                assert obs_b[key][i].tolist() == obs_s[i][key].tolist()
        if not any(live):
            break
        actions = _random_actions(batched, gen)
        obs_b, r_b, te_b, tr_b, _ = batched.step(actions)
        for i in range(B):
            if not live[i]:
                assert r_b[i] == 0 and not te_b[i] and not tr_b[i]
                continue
            obs_s[i], r, te, tr, _ = singles[i].step(int(actions[i]))
            assert r == pytest.approx(float(r_b[i]), abs=1e-7)
            assert (te, tr) == (bool(te_b[i]), bool(tr_b[i]))
            live[i] = not (te or tr)
    assert not any(live)


def test_single_env_matches_batched_of_one_under_same_seed() -> None:
    single, batched = TokenEnv("Reverse"), BatchedTokenEnv("Reverse", num_envs=1, seed=5)
    o1, _ = single.reset(seed=5)
    o2, _ = batched.reset()
    assert o1["input_ids"].tolist() == o2["input_ids"][0].tolist()


def test_dense_twin_pays_the_terminal_score_per_token() -> None:
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    term = BatchedTokenEnv(ReverseTask(), num_envs=64, seed=4)
    dense = BatchedTokenEnv(ReverseDenseTask(), num_envs=64, seed=4)
    term.reset()
    dense.reset()
    dense_sum = torch.zeros(64)
    info_t: dict = {}
    while not bool(term.done.all()):
        a = _random_actions(term, gen_a)
        assert torch.equal(a, _random_actions(dense, gen_b))
        *_, info_t = term.step(a)
        _, r, *_ = dense.step(a)
        dense_sum += r
    assert torch.allclose(dense_sum, info_t["episode_return"], atol=1e-6)
    assert info_t["episode_return"].std() > 0  # partial credit varies


# ------------------------------------------------------------------ bad inputs
class _Const(RewardFunction):
    mode: ClassVar[RewardMode] = "terminal"

    def __init__(self, out: object, mode: RewardMode = "terminal") -> None:
        self.out = out
        self.mode = mode  # type: ignore[misc]

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return self.out(batch) if callable(self.out) else self.out  # type: ignore[return-value]


class _TinyTask(Task):
    def __init__(self, reward_fn: RewardFunction, prompt_len: int = 2) -> None:
        self.name = "Tiny"
        self.codec = SymbolCodec(["x", "y"])
        self.max_prompt_len = 3
        self.max_new_tokens = 2
        self.reward_fn = reward_fn
        self.prompt_len = prompt_len
        self.optimal_return = self.random_return = 0.0

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[Prompt]:
        return [Prompt([2] * self.prompt_len) for _ in range(n)]


def _ok(batch: RewardBatch) -> torch.Tensor:
    return torch.zeros(len(batch.prompts))


def test_bad_actions_raise_naming_env_and_valid_values() -> None:
    env = BatchedTokenEnv("Reverse", num_envs=4, seed=0)
    env.reset()
    V = env.vocab_size
    with pytest.raises(ValueError, match=rf"Reverse.*outside the vocabulary.*0\.\.{V - 1}"):
        env.step(torch.tensor([2, V, 2, 2]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(torch.tensor([2, 2, -1, 2]))
    assert env.lengths.sum() == 0  # nothing was appended by the rejected steps
    with pytest.raises(ValueError, match=r"shape \(3,\); expected \(4,\)"):
        env.step(torch.tensor([2, 2, 2]))
    with pytest.raises(TypeError, match=r"dtype torch\.float32"):
        env.step(torch.tensor([2.0, 2.0, 2.0, 2.0]))
    with pytest.raises(TypeError, match=r"torch\.Tensor.*or a numpy integer array"):
        env.step([2, 2, 2, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"numpy actions dtype float64"):  # ints are accepted
        env.step(np.array([2.0, 2.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="device meta"):
        env.step(torch.tensor([2, 2, 2, 2], device="meta"))
    env.step(torch.tensor([2, 2, 2, 2], dtype=torch.int32))  # int32 is accepted


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        BatchedTokenEnv("Reverse", num_envs=2).step(torch.zeros(2, dtype=torch.int64))


def test_prompt_longer_than_context_raises() -> None:
    env = BatchedTokenEnv(_TinyTask(_Const(_ok), prompt_len=4), num_envs=2)
    with pytest.raises(ValueError, match=r"Tiny.*4 tokens \(Prompt.ids\).*1\.\.3"):
        env.reset(seed=0)
    env = BatchedTokenEnv(_TinyTask(_Const(_ok)), num_envs=2)
    with pytest.raises(ValueError, match="valid ids"):
        env.reset(options={"prompts": [Prompt([2, 99]), Prompt([2])]})
    with pytest.raises(ValueError, match="list of 2 Prompts"):
        env.reset(options={"prompts": [Prompt([2])]})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"prompt": Prompt([2])})


@pytest.mark.parametrize("mode", ["terminal", "dense"])
@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [
        (float("nan"), ValueError, "non-finite"),
        (float("inf"), ValueError, "non-finite"),
        ("shape", ValueError, r"shape .*expected"),
        ("list", TypeError, "torch.Tensor"),
    ],
)
def test_bad_reward_outputs_raise(mode: str, value: object, error: type, pattern: str) -> None:
    def out(batch: RewardBatch) -> object:
        n = len(batch.prompts)
        if value == "shape":
            return torch.zeros(n + 1)
        if value == "list":
            return [0.0] * n
        assert isinstance(value, float)
        return torch.full((n,), value)

    env = BatchedTokenEnv(_TinyTask(_Const(out, mode)), num_envs=3)  # type: ignore[arg-type]
    env.reset(seed=0)
    with pytest.raises(error, match=pattern) as exc:
        for _ in range(2):
            env.step(torch.full((3,), 2))
    assert "Tiny" in str(exc.value)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.full((3,), 2))


def test_group_reset_repeats_each_prompt_k_times() -> None:
    env = BatchedTokenEnv("DelayedChoice", num_envs=6, seed=0)
    obs, info = env.reset(seed=3, options={"group_size": 3})
    assert info["group_ids"].dtype == torch.int64
    assert info["group_ids"].tolist() == [0, 0, 0, 1, 1, 1]
    assert info["prompts"][0] is info["prompts"][2] and info["prompts"][3] is info["prompts"][5]
    assert torch.equal(obs["input_ids"][0], obs["input_ids"][1])
    _, plain = env.reset(seed=3)
    assert "group_ids" not in plain
    fixed = [Prompt(p.ids) for p in info["prompts"][::3]]
    _, again = env.reset(options={"group_size": 3, "prompts": fixed})
    assert [p.ids for p in again["prompts"]] == [p.ids for p in info["prompts"]]


def test_bad_group_size_names_the_field_and_the_valid_values() -> None:
    env = BatchedTokenEnv("DelayedChoice", num_envs=6)
    with pytest.raises(
        ValueError, match=r"group_size=4 does not divide num_envs=6; valid: \[1, 2, 3, 6\]"
    ):
        env.reset(options={"group_size": 4})
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="group_size"):
            env.reset(options={"group_size": bad})
    with pytest.raises(ValueError, match="list of 3 Prompts"):
        env.reset(options={"group_size": 2, "prompts": [Prompt([2])] * 6})


def test_prefix_reset_continues_where_the_prefix_left_off() -> None:
    env = BatchedTokenEnv(_TinyTask(_Const(_ok)), num_envs=2)  # max_new_tokens = 2
    prompts = [Prompt([2]), Prompt([3, 2])]
    obs, info = env.reset(options={"prompts": prompts, "prefixes": [[3], []]})
    assert [p.ids for p in info["prompts"]] == [[2], [3, 2]]
    assert obs["input_ids"].tolist()[0][-2:] == [2, 3] and obs["attention_mask"][0].sum() == 2
    assert env.lengths.tolist() == [1, 0] and env.response_mask.tolist()[0][:2] == [True, False]
    assert obs["input_ids"].tolist()[1][-2:] == [3, 2]
    # row 0 has one token left (the prefix counts against max_new_tokens), row 1 two
    _, _, terminated, truncated, info = env.step(torch.tensor([2, 2]))
    assert truncated.tolist() == [True, False] and not terminated.any()
    assert env.any_done and not env.all_done
    *_, info = env.step(torch.tensor([0, 3]))
    assert info["active"].tolist() == [False, True] and env.all_done
    assert info["response_text"] == ["yx", "xy"]  # prefix + continuation


def test_bad_prefixes_name_the_field() -> None:
    env = BatchedTokenEnv(_TinyTask(_Const(_ok)), num_envs=2)
    prompts = [Prompt([2]), Prompt([2])]
    n = env.max_new_tokens
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prefixes": [[], []]}, "prefixes needs option prompts"),
        ({"prompts": prompts, "prefixes": [[]]}, r"prefixes: 1 entries; expected 2"),
        (
            {"prompts": prompts, "prefixes": [[2] * n, []]},
            rf"prefixes\[0\]: {n} tokens; valid lengths are 0\.\.{n - 1}",
        ),
        (
            {"prompts": prompts, "prefixes": [[], [99]]},
            r"prefixes\[1\]: token ids must be ints in \[0, ",
        ),
        ({"prompts": prompts, "prefixes": [[], [2.5]]}, r"prefixes\[1\]: token ids must be ints"),
    ]
    if env.eos_token_id is not None:
        cases.append(({"prompts": prompts, "prefixes": [[env.eos_token_id], []]}, "holds EOS"))
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            env.reset(options=options)
    with pytest.raises(TypeError, match="prefixes must be a list"):
        env.reset(options={"prompts": prompts, "prefixes": "ab"})
