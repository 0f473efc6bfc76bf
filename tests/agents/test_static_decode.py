"""decode="static" / "compiled": a preallocated KV cache (and a compiled step) equal to eager."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from marlhf.algorithms import PPO
from marlhf.credit.vine import fork_state
from marlhf.models import tiny_gpt2
from marlhf.policy import static_decode
from marlhf.policy.actor_critic import CausalLMActorCritic, GenerationState
from tests.agents.conftest import CueEnv, tiny_model

VOCAB = 40


def _policy(decode: str = "eager") -> CausalLMActorCritic:
    torch.manual_seed(0)
    model = tiny_gpt2(VOCAB, n_layer=2, n_embd=32, n_head=2, n_positions=128)
    return CausalLMActorCritic(model, reference=None, decode=decode)


def _window(room: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged left-padded prompts behind ``room`` columns that are padding in every row (the
    env's window: ``start`` drops them, the static cache keeps their width)."""
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    ids = torch.zeros(3, room + 4, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, -len(p) :] = torch.tensor(p)
        mask[i, -len(p) :] = 1
    return ids, mask


def _decode(
    policy: CausalLMActorCritic, ids: torch.Tensor, mask: torch.Tensor, steps: int
) -> tuple[torch.Tensor, list[torch.Tensor], GenerationState]:
    """Sample ``steps`` tokens with a seeded generator: the tokens, every step's logits and
    the last state (its last token pending)."""
    gen = torch.Generator().manual_seed(1)
    state, tokens, logits = None, [], []
    obs = {"input_ids": ids, "attention_mask": mask}
    for _ in range(steps):
        actions, state = policy.act(obs, state, generator=gen)
        tokens.append(actions)
        logits.append(state.next_logits)
    assert state is not None
    return torch.stack(tokens, 1), logits, state


def _assert_same_decoding(a: CausalLMActorCritic, b: CausalLMActorCritic, room: int, n: int) -> Any:
    ids, mask = _window(room)
    tokens_a, logits_a, _ = _decode(a, ids, mask, n)
    tokens_b, logits_b, state_b = _decode(b, ids, mask, n)
    for step, (x, y) in enumerate(zip(logits_a, logits_b, strict=True)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0, msg=f"step {step}")
    assert torch.equal(tokens_a, tokens_b)
    return state_b


def test_bad_decode_names_the_valid_values() -> None:
    with pytest.raises(ValueError, match=r"decode='fast'.*'eager', 'static', 'compiled'"):
        _policy("fast")


def test_static_decoding_equals_eager() -> None:
    state = _assert_same_decoding(_policy(), _policy("static"), room=16, n=16)
    assert static_decode.is_static(state.cache)
    # The window's width was allocated once: 4 prompt columns + 16 of room (15 tokens fed).
    assert static_decode.width(state.cache) == 20
    assert static_decode.used_columns(state.cache) == 4 + 15


def test_a_cache_without_room_grows_and_stays_equal() -> None:
    # No room in the window: the cache starts MIN_ROOM columns past the prompt and widens.
    n = static_decode.MIN_ROOM + 10
    state = _assert_same_decoding(_policy(), _policy("static"), room=0, n=n)
    assert static_decode.width(state.cache) == 2 * (4 + static_decode.MIN_ROOM)
    assert static_decode.used_columns(state.cache) == 4 + n - 1


def test_forced_tokens_equal_eager() -> None:
    """A multi-turn env's observations fed after the sampled token (some rows shorter)."""
    ids, mask = _window(room=12)
    forced = torch.tensor([[20, 21, 22], [23, 0, 0], [24, 25, 0]])
    lengths = torch.tensor([3, 1, 2])
    out = []
    for policy in (_policy(), _policy("static")):
        state = policy.start(ids, mask)
        state = policy.advance(state, torch.tensor([1, 2, 3]), forced, lengths)
        state = policy.advance(state, torch.tensor([4, 5, 6]))
        out.append(state)
    assert [static_decode.is_static(s.cache) for s in out] == [False, True]
    torch.testing.assert_close(out[0].next_logits, out[1].next_logits, atol=1e-5, rtol=0)
    assert torch.equal(out[0].next_position, out[1].next_position)


def test_a_static_cache_forks_like_a_dynamic_one() -> None:
    ids, mask = _window(room=8)
    response = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(2))
    rows, starts = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 3, 5, 1, 4])
    forks, states = [], []
    for policy in (_policy(), _policy("static")):
        state = policy.start(ids, mask)
        for t in range(5):
            state = policy.advance(state, response[:, t])
        assert static_decode.is_static(state.cache) == (policy.decode == "static")
        forks.append(fork_state(policy, state, ids, mask, response, rows, starts))
        # The rollout's own cache is untouched by the fork and continues.
        states.append(policy.advance(state, response[:, 5]))
    torch.testing.assert_close(forks[0].next_logits, forks[1].next_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(states[0].next_logits, states[1].next_logits, atol=1e-5, rtol=0)


def test_ppo_with_a_static_cache_samples_the_same_rollout() -> None:
    runs = []
    caches: dict[str, set[bool]] = {}
    for decode in ("eager", "static"):
        env = CueEnv(4, 6, eos=False)
        algo = PPO(
            tiny_model(env.codec),
            env,
            seed=3,
            batch_size=4,
            device="cpu",
            policy_kwargs={"decode": decode},
        )
        advance, seen = algo.policy.advance, caches.setdefault(decode, set())

        def spy(state: Any, *args: Any, _advance: Any = advance, _seen: Any = seen) -> Any:
            _seen.add(static_decode.is_static(state.cache))  # the cache collection fed
            return _advance(state, *args)

        algo.policy.advance = spy  # type: ignore[method-assign,assignment]
        algo.learn(4 * 6)
        assert algo.policy.decode == decode
        runs.append(algo)
    assert caches == {"eager": {False}, "static": {True}}
    a, b = (r.rollout_buffer for r in runs)
    assert a is not None and b is not None
    assert torch.equal(a.action_ids, b.action_ids)
    # Scoring and the update never read the sampling cache: the same tokens, the same result.
    assert torch.equal(a.logprobs, b.logprobs)
    for x, y in zip(runs[0].policy.parameters(), runs[1].policy.parameters(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.slow  # torch.compile builds the step: about a minute on a 2-core machine
def test_compiled_decoding_equals_eager() -> None:
    state = _assert_same_decoding(_policy(), _policy("compiled"), room=16, n=16)
    assert static_decode.is_static(state.cache)
    # A second rollout (another cache of the same shape) reuses the compiled graph.
    _assert_same_decoding(_policy(), _policy("compiled"), room=16, n=16)


def test_the_model_section_passes_decode_to_the_policy() -> None:
    from marlhf.config.parse import ConfigError, from_dict
    from marlhf.config.sections import ModelConfig

    assert from_dict(ModelConfig, {"decode": "compiled"}).policy_kwargs() == {"decode": "compiled"}
    assert "decode" not in from_dict(ModelConfig, {}).policy_kwargs()
    with pytest.raises(ConfigError, match=r"decode.*'eager', 'static', 'compiled'"):
        from_dict(ModelConfig, {"decode": "fast"}, prefix="model.")
