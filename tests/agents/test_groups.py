"""Group rollouts: the env repeats each prompt K times, the policy samples every row on its own."""

from __future__ import annotations

from marlhf.algorithms import PPO
from tests.agents.conftest import CueEnv, tiny_model


def test_group_rows_share_their_prompt_and_sample_independently() -> None:
    env = CueEnv(num_envs=8, max_new_tokens=6, eos=False)
    algo = PPO(tiny_model(env.codec), env, group_size=4, n_epochs=1, seed=0, device="cpu")
    algo.learn(1)  # one rollout
    buf = algo.rollout_buffer
    assert buf is not None and buf.group_ids is not None
    assert buf.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    for g in range(2):
        rows = slice(4 * g, 4 * g + 4)
        prompts, responses = buf.prompt_ids[rows], buf.response_ids[rows]
        assert bool((prompts == prompts[0]).all())  # one prompt per group
        # six tokens from a near-uniform 7-token policy: identical rows would mean shared draws
        assert len({tuple(r) for r in responses.tolist()}) == 4
