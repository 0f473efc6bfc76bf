"""Your own multi-turn task: a text env in ~20 lines, trained by PPO and by MAPPO over turns.

The env shows a letter; the agent must answer it twice and end its turn (``aa<eot>``); the env
says ``ok`` or ``no`` (reward 1 or 0) and shows the next letter, three turns in all. Each turn is
up to three agent tokens; the env's words are forced tokens (context, never actions).

Run the walk-through (a short PPO run and a MAPPO run with macros nested in turns)::

    python examples/multiturn_task.py

or train and compare from the command line (``--import`` registers the task for ``marlhf`` and
its worker processes)::

    marlhf train --import examples/multiturn_task.py -s task.id=marlhf/EchoTwice-v0 \\
        -s agent.mask_actions=true -s total_timesteps=20000 -s output_dir=runs/echo
    marlhf compare --import examples/multiturn_task.py -s task.id=marlhf/EchoTwice-v0 \\
        -s agent.mask_actions=true -s 'terminations=[turn, turn > ngram:2]' \\
        -s 'agents=[grpo, gigpo, turn-gae]' -s output_dir=runs/echo-compare
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from marlhf import MAPPO, PPO
from marlhf.envs import register_task
from marlhf.envs.multiturn import MultiTurnTask
from marlhf.envs.multiturn.env import MultiTurnTokenEnv
from marlhf.models import tiny_gpt2
from marlhf.tokenization import SymbolCodec

LETTERS = "abcd"


class EchoTwiceEnv:
    """The text env: ``reset(seed)`` and ``step(text)``, plus the optional ``state_key``."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.rng = np.random.default_rng(seed)
        self.turn, self.letter = 0, str(self.rng.choice(list(LETTERS)))
        return self.letter, {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        right = action == self.letter * 2
        self.turn += 1
        self.letter = str(self.rng.choice(list(LETTERS)))
        verdict = "ok" if right else "no"
        return f"{verdict} {self.letter}", float(right), self.turn >= 3, False, {}

    def state_key(self) -> tuple[int, str]:
        return self.turn, self.letter


class EchoTwiceTask(MultiTurnTask):
    """Token-level facts: codec, end-of-turn token, limits, documented returns."""

    def __init__(self) -> None:
        self.name = "EchoTwice"
        self.codec = SymbolCodec([*LETTERS, "ok", "no", " "], eos="<eot>")
        self.end_of_turn_id = 1  # the codec's EOS ends a turn
        self.max_turns, self.max_turn_tokens = 3, 3
        self.max_prompt_len, self.max_obs_tokens = 1, 3
        self.optimal_return = 3.0  # every turn right
        # Uniform over the 4 letters and <eot>: a turn is right iff it is x, x, <eot>: 1/125.
        self.random_return = 3 / 125

    def make_env(self) -> EchoTwiceEnv:
        return EchoTwiceEnv()

    def action_mask(self) -> np.ndarray:
        mask = np.zeros(self.codec.vocab_size, dtype=bool)
        mask[1 : 2 + len(LETTERS)] = True  # <eot> and the letters
        return mask


register_task("EchoTwice", EchoTwiceTask, multiturn=True)


def main() -> None:
    small = os.environ.get("MARLHF_SMALL") == "1"
    budget = 1500 if small else 20000
    task = EchoTwiceTask()
    schemes: list[tuple[str, type[PPO], dict[str, Any]]] = [
        ("PPO (token level)", PPO, {}),
        ("MAPPO (turn > ngram:2)", MAPPO, {"termination": "turn > ngram:2"}),
    ]
    for name, cls, kwargs in schemes:
        env = MultiTurnTokenEnv(task, num_envs=32, seed=0)
        model = tiny_gpt2(task.codec, n_layer=1, n_embd=64, seed=0)
        algo = cls(model, env, seed=0, mask_actions=True, learning_rate=3e-3, **kwargs)
        algo.learn(budget)
        buf = algo.rollout_buffer
        assert buf is not None and buf.turns is not None
        mean_return = float(buf.turns.turn_rewards.sum(dim=1).mean())
        print(
            f"{name}: mean return {mean_return:.3f} after {algo.num_timesteps} agent tokens "
            f"(random {task.random_return:.3f}, optimal {task.optimal_return})"
        )
        sample = buf.response_ids[0][buf.response_mask[0]].tolist()
        print("  an episode (agent and env tokens):", repr(task.codec.decode(sample)))


if __name__ == "__main__":
    main()
