"""SB3's own logger and callbacks work unchanged with PPO/MAPPO."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.logger import configure

from marlhf.algorithms import MAPPO, PPO
from tests.agents.conftest import CueEnv, tiny_model

B, N = 4, 3


def _algo(cls: Any = PPO, **kwargs: Any) -> Any:
    env = CueEnv(B, N, eos=False)
    return cls(tiny_model(env.codec), env, learning_rate=1e-3, seed=0, device="cpu", **kwargs)


class Recorder(BaseCallback):
    """Counts the hooks SB3 calls and keeps what ``self.locals`` held."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.events: list[str] = []
        self.seen_keys: set[str] = set()

    def _on_training_start(self) -> None:
        self.events.append("training_start")

    def _on_rollout_start(self) -> None:
        self.events.append("rollout_start")

    def _on_step(self) -> bool:
        self.seen_keys |= set(self.locals)
        return self.stop_after is None or self.n_calls < self.stop_after

    def _on_rollout_end(self) -> None:
        self.events.append("rollout_end")

    def _on_training_end(self) -> None:
        self.events.append("training_end")


class LastStepWeights(BaseCallback):
    """Keeps a copy of the policy's trainable weights as they are at each env step."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] = []

    def _on_step(self) -> bool:
        policy: Any = self.model.policy  # (marlhf's CausalLMActorCritic)
        self.weights = [p.detach().clone() for p in policy.trainable_parameters()]
        return True


def test_logger_formats_write_files(tmp_path) -> None:
    algo = _algo(MAPPO, termination="ngram:2")
    algo.set_logger(configure(str(tmp_path), ["stdout", "csv", "json", "tensorboard"]))
    algo.learn(2 * B * N)
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for key in (
        "train/policy_loss",
        "train/value_loss",
        "train/entropy",
        "train/approx_kl",
        "train/clip_fraction",
        "train/explained_variance",
        "rollout/kl_ref",
        "rollout/kl_coef",
        "rollout/score_mean",
        "rollout/ep_len_mean",
        "credit/macro_len_mean",
        "credit/segments_per_episode",
        "credit/adv_var_early",
        "credit/adv_var_late",
        "credit/explained_variance_segment",
        "credit/termination_fallbacks",
    ):
        assert key in header, key
    rows = [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["time/total_timesteps"] == 2 * B * N
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_tensorboard_log_argument(tmp_path) -> None:
    algo = _algo(tensorboard_log=str(tmp_path))
    algo.learn(B * N, tb_log_name="ppo")
    assert list(tmp_path.glob("ppo_1/events.out.tfevents.*"))


def test_callbacks_fire_like_sb3_and_checkpoint_loads(tmp_path) -> None:
    recorder, at_step = Recorder(), LastStepWeights()
    checkpoint = CheckpointCallback(save_freq=N, save_path=str(tmp_path), name_prefix="ck")
    algo = _algo()
    callbacks = CallbackList([recorder, checkpoint, at_step])
    algo.learn(2 * B * N, callback=callbacks, progress_bar=True)
    assert recorder.n_calls == 2 * N
    assert recorder.events == ["training_start"] + ["rollout_start", "rollout_end"] * 2 + [
        "training_end"
    ]
    assert {"actions", "rewards", "done", "self"} <= recorder.seen_keys
    saved = sorted(tmp_path.glob("ck_*_steps.zip"))
    assert [p.name for p in saved] == [f"ck_{B * N}_steps.zip", f"ck_{2 * B * N}_steps.zip"]
    loaded = PPO.load(saved[-1], env=CueEnv(B, N, eos=False), device="cpu")
    # The last checkpoint is taken on the last env step, before the last update: it holds the
    # weights of that step, which the update then moved.
    weights = list(loaded.policy.trainable_parameters())
    assert len(weights) == len(at_step.weights)
    assert all(torch.equal(q, w) for q, w in zip(weights, at_step.weights, strict=True))
    final = list(algo.policy.trainable_parameters())
    assert any(not torch.equal(q, p) for q, p in zip(weights, final, strict=True))
    assert loaded.num_timesteps == 2 * B * N


def test_callback_returning_false_stops_before_any_update() -> None:
    algo = _algo()
    before = [p.detach().clone() for p in algo.policy.trainable_parameters()]
    recorder = Recorder(stop_after=2)
    algo.learn(10 * B * N, callback=recorder)
    assert recorder.n_calls == 2 and algo.num_timesteps == 2 * B
    assert recorder.events[-1] == "training_end"
    after = list(algo.policy.trainable_parameters())
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))


def test_function_callback_is_converted() -> None:
    calls: list[int] = []

    def on_step(locals_: dict[str, Any], globals_: dict[str, Any]) -> bool:
        calls.append(int(locals_["self"].num_timesteps))
        return True

    _algo().learn(B * N, callback=on_step)
    assert calls == [B * (k + 1) for k in range(N)]


def test_progress_bar_counts_generated_tokens(monkeypatch) -> None:
    from marlhf.algorithms.base import TokenProgressBar

    seen: list[tuple[int, int]] = []
    original = TokenProgressBar._on_training_end

    def record(self: TokenProgressBar) -> None:
        seen.append((int(self.pbar.n), int(self.pbar.total)))
        original(self)

    monkeypatch.setattr(TokenProgressBar, "_on_training_end", record)
    env = CueEnv(8, 6, eos=True)  # rows end early at EOS: fewer tokens than 8 x 6 a rollout
    algo = PPO(tiny_model(env.codec), env, n_epochs=1, batch_size=8, seed=0, device="cpu")
    algo.learn(200, progress_bar=True)
    assert seen == [(algo.num_timesteps, 200)]


# ------------------------------------------------------------------ SB3's own tools
def _delayed(num_envs: int = 8, horizon: int = 4, seed: int = 0) -> Any:
    import gymnasium

    return gymnasium.make_vec(
        "marlhf/DelayedChoice-v0",
        num_envs=num_envs,
        horizon=horizon,
        seed=seed,
        vectorization_mode="vector_entry_point",
    )


def _delayed_algo(cls: Any = PPO, **kwargs: Any) -> Any:
    env = _delayed()
    return cls(tiny_model(env.codec), env, batch_size=4, seed=0, device="cpu", **kwargs)


def test_evaluate_policy_on_get_env() -> None:
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecEnv

    algo = _delayed_algo(MAPPO, termination="ngram:2")
    assert isinstance(algo.get_env(), VecEnv) and algo.get_env() is algo.get_env()
    returns, lengths = evaluate_policy(
        algo, algo.get_env(), n_eval_episodes=16, deterministic=True, return_episode_rewards=True
    )
    assert isinstance(returns, list) and isinstance(lengths, list)
    assert len(returns) == 16 and lengths == [4] * 16  # DelayedChoice never ends early
    assert set(returns) <= {0.0, 1.0}  # the cue's partner first, or not
    mean, std = evaluate_policy(algo, algo.get_env(), n_eval_episodes=8, warn=True)
    assert not isinstance(mean, list) and not isinstance(std, list)
    assert 0.0 <= float(mean) <= 1.0 and float(std) >= 0.0
    algo.learn(8 * 4)  # the view shares the env; training resets it and goes on
    assert algo.num_timesteps == 32


def test_eval_callback_during_learn(tmp_path) -> None:
    from stable_baselines3.common.callbacks import EvalCallback

    from marlhf.envs.core.sb3_vec import sb3_vec_env

    algo = _delayed_algo()
    callback = EvalCallback(
        sb3_vec_env(_delayed(seed=7)),
        n_eval_episodes=8,
        eval_freq=4,  # every rollout (a rollout is 4 env steps)
        log_path=str(tmp_path),
        best_model_save_path=str(tmp_path / "best"),
        warn=True,
    )
    algo.learn(2 * 8 * 4, callback=callback)
    saved = np.load(tmp_path / "evaluations.npz")
    assert list(saved["timesteps"]) == [32, 64]
    assert saved["results"].shape == (2, 8) and saved["ep_lengths"].tolist() == [[4] * 8] * 2
    assert np.isfinite(callback.best_mean_reward)
    assert (tmp_path / "best" / "best_model.zip").is_file()
    PPO.load(tmp_path / "best" / "best_model", device="cpu")


def test_predict_returns_sb3s_tuple_and_the_cache_on_request() -> None:
    algo = _delayed_algo()
    env = algo.env
    obs, _ = env.reset(seed=3)
    actions, state = algo.predict(obs, deterministic=True)
    assert state is None  # SB3's convention: a policy without recurrent state
    assert isinstance(actions, torch.Tensor) and actions.shape == (8,)
    single, none = algo.predict({k: v[0].numpy() for k, v in obs.items()}, deterministic=True)
    assert none is None and isinstance(single, np.ndarray) and single.shape == ()
    # The cache (return_state=True) and the whole window read each step decode alike.
    cached, stateless, state = [], [], None
    window = obs
    while not env.all_done:
        a, state = algo.predict(window, state, deterministic=True, return_state=True)
        b, none = algo.predict(window, deterministic=True)
        assert none is None and state is not None
        cached.append(a)
        stateless.append(b)
        window, *_ = env.step(a)
    assert all(torch.equal(a, b) for a, b in zip(cached, stateless, strict=True))
