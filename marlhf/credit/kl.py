"""KL regularisation towards the reference model: per-token estimators, coefficient control and
the shaped reward ``r_t = clip(task_reward_t) - beta * kl_t`` (docs/method.md, step 2).

The KL is the agent's business, not the environment's: the env returns task rewards only (its
terminal score already on each row's last real token), and the agent shapes them here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from marlhf.credit.advantages import check_choice

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1", clamp: float | None = None
) -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the log-probs of the sampled tokens.

    With ``log r = ref_logp - logp`` (J. Schulman, "Approximating KL divergence", 2020):

    - ``"k1"``: ``logp - ref_logp`` (default; unbiased, can be negative per token);
    - ``"k2"``: ``0.5 * (logp - ref_logp) ** 2`` (biased, non-negative);
    - ``"k3"``: ``(r - 1) - log r`` (unbiased, non-negative, lower variance).

    :param logprobs: ``float[...]`` policy log-probs of the taken tokens (nats).
    :param ref_logprobs: ``float[...]`` reference log-probs of the same tokens, same shape.
    :param estimator: one of ``KL_ESTIMATORS``, default ``"k1"``.
    :param clamp: clamp each estimate to ``[-clamp, clamp]`` (verl clamps k3 at 10; the k2 and
        k3 estimates are non-negative, so for them this is VinePPO's ``[0, clamp]``); ``None``
        (default): no clamp.
    :return: ``float[...]`` per-token KL estimates (nats), same shape.
    """
    check_choice("kl_penalty", "estimator", estimator, KL_ESTIMATORS)
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"kl_penalty: logprobs has shape {tuple(logprobs.shape)} but ref_logprobs has "
            f"{tuple(ref_logprobs.shape)}; they must match"
        )
    if clamp is not None:
        _check_nonnegative("kl_penalty", "clamp", clamp, strict=True)
    diff = logprobs - ref_logprobs
    if estimator == "k1":
        out = diff
    elif estimator == "k2":
        out = 0.5 * diff * diff
    else:
        log_ratio = -diff
        # expm1 keeps (r - 1) accurate when r is close to 1, where the two terms nearly cancel.
        out = torch.expm1(log_ratio) - log_ratio
    return out if clamp is None else out.clamp(-clamp, clamp)


class KLController(ABC):
    """Holds the KL coefficient ``beta`` (``value``) and adapts it after each rollout."""

    value: float

    @abstractmethod
    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt ``value`` after a rollout.

        :param current_kl: mean KL per sequence measured in the rollout (nats).
        :param n_steps: samples (sequences) in that rollout.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (JSON-serialisable)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items() if k != "type")
        return f"{type(self).__name__}({fields})"


def _check_nonnegative(where: str, name: str, value: float, *, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{where}: {name}={value!r} must be a finite number {bound}")
    return float(value)


def _check_state_type(where: str, state: dict[str, Any], expected: str) -> None:
    if state.get("type") != expected:
        raise ValueError(
            f"{where}.load_state_dict: state type {state.get('type')!r} does not match {expected!r}"
        )


class FixedKLController(KLController):
    """A constant coefficient (the released MA-RLHF code: 0.05).

    :param coef: ``beta >= 0``.
    """

    def __init__(self, coef: float) -> None:
        self.value = _check_nonnegative("FixedKLController", "coef", coef, strict=False)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state_type("FixedKLController", state, "fixed")
        self.value = _check_nonnegative("FixedKLController", "value", state["value"], strict=False)


class AdaptiveKLController(KLController):
    """Proportional control of ``beta`` towards a target KL (Ziegler et al. 2019, arXiv 1909.08593).

    After a rollout, ``e = clip(kl / target - 1, -0.2, 0.2)`` and
    ``beta <- beta * (1 + e * n_steps / horizon)``: beta rises when the KL is above the target
    and falls when below, by at most 20% per ``horizon`` samples.

    :param init_coef: initial ``beta > 0``.
    :param target: target KL per sequence (nats), ``> 0``.
    :param horizon: samples over which the error is corrected, ``> 0``.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        where = "AdaptiveKLController"
        self.value = _check_nonnegative(where, "init_coef", init_coef, strict=True)
        self.target = _check_nonnegative(where, "target", target, strict=True)
        self.horizon = _check_nonnegative(where, "horizon", horizon, strict=True)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            raise ValueError(
                f"AdaptiveKLController.update: current_kl={current_kl!r} is not finite"
            )
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(
                f"AdaptiveKLController.update: n_steps={n_steps!r} must be an int >= 0"
            )
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"type": "adaptive", "value": self.value, "target": self.target,
                "horizon": self.horizon}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        where = "AdaptiveKLController"
        _check_state_type(where, state, "adaptive")
        self.value = _check_nonnegative(where, "value", state["value"], strict=True)
        self.target = _check_nonnegative(where, "target", state["target"], strict=True)
        self.horizon = _check_nonnegative(where, "horizon", state["horizon"], strict=True)


def make_kl_controller(
    kl_coef: float, kl_target: float | None = None, kl_horizon: int = 10000
) -> KLController:
    """A fixed controller, or an adaptive one when ``kl_target`` is given.

    :param kl_coef: the (initial) coefficient beta.
    :param kl_target: target KL per sequence (nats); ``None`` (default) keeps beta fixed.
    :param kl_horizon: samples for the adaptive controller's correction, default 10000.
    """
    if kl_target is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, kl_target, kl_horizon)


def shaped_rewards(
    task_rewards: Tensor,
    kl: Tensor,
    mask: Tensor,
    kl_coef: float,
    reward_clip: float | None = None,
) -> Tensor:
    """Per-token reward ``clip(task_reward_t) - kl_coef * kl_t`` on real tokens, 0 on padding.

    The env already puts a terminal score on each row's last real token (and dense rewards
    wherever they occur); the clip applies to those task rewards, never to the KL term.

    :param task_rewards: ``float[B, T]`` task rewards per token.
    :param kl: ``float[B, T]`` per-token KL estimates (see :func:`kl_penalty`).
    :param mask: ``bool[B, T]`` real response tokens.
    :param kl_coef: ``beta >= 0``.
    :param reward_clip: clip task rewards to ``[-c, c]`` (the released code: 2.5); ``None``
        (default) leaves them unclipped.
    :return: ``float[B, T]`` shaped rewards.
    """
    where = "shaped_rewards"
    beta = _check_nonnegative(where, "kl_coef", kl_coef, strict=False)
    if reward_clip is not None:
        reward_clip = _check_nonnegative(where, "reward_clip", reward_clip, strict=True)
    if not (task_rewards.shape == kl.shape == mask.shape):
        raise ValueError(
            f"{where}: task_rewards {tuple(task_rewards.shape)}, kl {tuple(kl.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"{where}: mask must have dtype torch.bool, got {mask.dtype}")
    scores = task_rewards
    if reward_clip is not None:
        scores = scores.clamp(-reward_clip, reward_clip)
    out = scores - beta * kl
    return torch.where(mask, out, torch.zeros_like(out))
