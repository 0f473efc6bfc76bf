"""The README's "Use it from Python": MAPPO with 5-token macros on delayed credit.

    python examples/quickstart.py      # about 0.9 mean score, ~1 min on 2 cores

``MARLHF_SMALL=1`` shrinks it to a smoke test.
"""

from __future__ import annotations

import os

import gymnasium as gym

from marlhf import MAPPO  # importing marlhf registers the marlhf/ env ids
from marlhf.models import tiny_gpt2


def main() -> None:
    small = os.environ.get("MARLHF_SMALL") == "1"
    horizon, iterations = (8, 2) if small else (32, 60)
    env = gym.make_vec("marlhf/DelayedChoice-v0", num_envs=32, horizon=horizon,
                       vectorization_mode="vector_entry_point")  # fmt: skip
    model = MAPPO(tiny_gpt2(env.codec, n_embd=64), env, termination="ngram:5",
                  learning_rate=1e-3, batch_size=16, kl_coef=0.0, seed=0)  # fmt: skip
    # verbose=1 in MAPPO(...) also prints SB3's table of metrics after every iteration
    model.learn(total_timesteps=32 * horizon * iterations, progress_bar=True)
    model.save("runs/mappo_delayed")  # zip + save_pretrained weights beside it
    print(f"trained on {model.num_timesteps} tokens; saved runs/mappo_delayed.zip")


if __name__ == "__main__":
    main()
