"""``MacroActionWrapper``: the online semi-MDP view of a token environment.

One wrapper step is one macro action (an option). The wrapper's action is the macro's *first
token*; a fixed intra-option policy (for example the language model itself, or a scripted
policy) then proposes the following tokens one by one, and the macro runs until the termination
puts a boundary at the proposed token, or the episode ends. The proposal that would open the next
macro is discarded: the next wrapper action chooses that token.

The step returns the in-macro rewards summed with discount ``gamma`` per token
(``sum_k gamma^k r_{s+k}``), and ``info["macro_len"]`` (tokens in the macro),
``info["macro_tokens"]`` (their ids) and ``info["discount"]`` (``gamma ** macro_len``, the
factor an SMDP learner applies to the next value).

Semantics of the boundary test: a macro ends before the proposal ``p`` when the termination,
run on the response so far plus ``p``, puts a boundary at ``p`` (a state-dependent, possibly
stochastic termination in the options sense). Two consequences, both tested:

- when the agent's actions are what the intra-option policy would propose, the online macros
  equal the batch segmentation (``compute_starts``) of the whole response, for every rule whose
  decision at token ``t`` depends on tokens ``<= t`` (all built-ins except the released
  perplexity rule, which looks one token ahead);
- for any actions, they are equal when the decision at ``t`` depends only on tokens before
  ``t`` (fixed and randomized n-grams and their combinators). Rules that look at token ``t``
  itself (the paper's perplexity rule reads its perplexity) decide with the proposal, which the
  next action then replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, SupportsFloat, SupportsInt

import gymnasium
import numpy as np
import torch

from marlhf.options.base import SegmentationBatch, Termination, compute_starts
from marlhf.options.registry import make_termination
from marlhf.tokenization import TokenCodec

Obs = Any
IntraOptionPolicy = Callable[[Obs], SupportsInt]
LogProbFn = Callable[[Obs, int], SupportsFloat]

SUPPORTED = frozenset({"text", "generator", "logprobs", "ref_logprobs"})


class MacroActionWrapper(
    gymnasium.Wrapper[Obs, Any, Obs, Any], gymnasium.utils.RecordConstructorArgs
):
    """Run macro actions on a single token environment (e.g. :class:`marlhf.envs.TokenEnv`).

    :param env: a Gymnasium env whose actions are token ids (``Discrete(vocab)``); for rules
        that need text, ``env.unwrapped.codec`` (a :class:`~marlhf.tokenization.TokenCodec`) or
        the ``codec`` argument.
    :param termination: a :class:`~marlhf.options.Termination` or a spec (``"ngram:5"``).
    :param intra_option_policy: ``policy(obs) -> token id``: proposes each token after the
        macro's first one.
    :param gamma: per-token discount inside a macro, in ``[0, 1]``. Default 1 (the paper's).
    :param codec: overrides ``env.unwrapped.codec`` for text-based terminations.
    :param logprob_fn: ``fn(obs, token) -> log-prob`` under the policy, for terminations that
        require ``logprobs``.
    :param ref_logprob_fn: the same under the reference, for ``ref_logprobs`` (perplexity).
    :param seed: seeds the per-episode generator of randomised terminations; ``reset(seed=...)``
        reseeds it. Default 0.
    """

    def __init__(
        self,
        env: gymnasium.Env[Obs, Any],
        termination: Termination | str,
        intra_option_policy: IntraOptionPolicy,
        gamma: float = 1.0,
        *,
        codec: TokenCodec | None = None,
        logprob_fn: LogProbFn | None = None,
        ref_logprob_fn: LogProbFn | None = None,
        seed: int = 0,
    ) -> None:
        gymnasium.utils.RecordConstructorArgs.__init__(
            self,
            termination=termination,
            intra_option_policy=intra_option_policy,
            gamma=gamma,
            codec=codec,
            logprob_fn=logprob_fn,
            ref_logprob_fn=ref_logprob_fn,
            seed=seed,
        )
        gymnasium.Wrapper.__init__(self, env)
        if not isinstance(env.action_space, gymnasium.spaces.Discrete):
            raise TypeError(
                f"MacroActionWrapper: env.action_space must be Discrete (token ids), "
                f"got {env.action_space}"
            )
        if not callable(intra_option_policy):
            raise TypeError(
                "MacroActionWrapper: intra_option_policy must be callable obs -> token id, "
                f"got {intra_option_policy!r}"
            )
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 <= gamma <= 1:
            raise ValueError(f"MacroActionWrapper: gamma={gamma!r} must be a number in [0, 1]")
        self.termination = make_termination(termination)
        self.intra_option_policy = intra_option_policy
        self.gamma = float(gamma)
        self.codec = codec if codec is not None else getattr(env.unwrapped, "codec", None)
        self.logprob_fn = logprob_fn
        self.ref_logprob_fn = ref_logprob_fn
        need = self.termination.requires
        unsupported = set(need) - SUPPORTED
        missing = [
            arg
            for req, arg, have in (
                ("text", "codec", self.codec),
                ("logprobs", "logprob_fn", logprob_fn),
                ("ref_logprobs", "ref_logprob_fn", ref_logprob_fn),
            )
            if req in need and have is None
        ]
        if unsupported or missing:
            raise ValueError(
                f"MacroActionWrapper: termination {self.termination.display_name()!r} requires "
                f"{sorted(need)}; unsupported {sorted(unsupported)}, missing arguments {missing}"
            )
        self._rng = np.random.default_rng(seed)
        self._episode_seed = 0
        self._response: list[int] = []
        self._logprobs: list[float] = []
        self._ref_logprobs: list[float] = []
        self._obs: Obs = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Reset the env; ``seed`` also reseeds the randomised termination's draws."""
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._episode_seed = int(self._rng.integers(2**62))
        self._response, self._logprobs, self._ref_logprobs = [], [], []
        self._obs = obs
        return obs, info

    @property
    def episode_seed(self) -> int:
        """Seed of this episode's ``batch.generator`` (the same for every boundary check), so a
        randomised termination's online macros can be reproduced offline."""
        return self._episode_seed

    def _scores(self, obs: Obs, token: int) -> tuple[float, float]:
        lp = float(self.logprob_fn(obs, token)) if self.logprob_fn is not None else 0.0
        ref = float(self.ref_logprob_fn(obs, token)) if self.ref_logprob_fn is not None else 0.0
        return lp, ref

    def _append(self, token: int) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        lp, ref = self._scores(self._obs, token)
        obs, reward, terminated, truncated, info = self.env.step(token)
        self._response.append(token)
        self._logprobs.append(lp)
        self._ref_logprobs.append(ref)
        self._obs = obs
        return obs, float(reward), bool(terminated), bool(truncated), info

    def _starts_macro(self, token: int) -> bool:
        """Would ``token``, appended to the response, open a new macro?"""
        lp, ref = self._scores(self._obs, token)
        ids = torch.tensor([[*self._response, token]], dtype=torch.long)
        batch = SegmentationBatch.build(
            ids,
            torch.ones_like(ids, dtype=torch.bool),
            self.termination.requires,
            codec=self.codec,
            logprobs=torch.tensor([[*self._logprobs, lp]], dtype=torch.float64),
            ref_logprobs=torch.tensor([[*self._ref_logprobs, ref]], dtype=torch.float64),
            # A fresh generator with the episode's seed: every check sees the same draw.
            generator=torch.Generator().manual_seed(self._episode_seed),
        )
        return bool(compute_starts(self.termination, batch)[0, -1])

    def step(self, action: Any) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        """Run one macro action whose first token is ``action``.

        :returns: ``(obs, discounted reward sum, terminated, truncated, info)`` with
            ``info["macro_len"]``, ``info["macro_tokens"]``, ``info["discount"]`` and the
            info of the macro's last env step.
        """
        first = int(action.item() if isinstance(action, np.ndarray) else action)
        obs, total, terminated, truncated, info = self._append(first)
        tokens = [first]
        while not (terminated or truncated):
            proposal = int(self.intra_option_policy(obs))
            if self._starts_macro(proposal):
                break
            obs, reward, terminated, truncated, info = self._append(proposal)
            total += self.gamma ** len(tokens) * reward
            tokens.append(proposal)
        info = {
            **info,
            "macro_len": len(tokens),
            "macro_tokens": tokens,
            "discount": self.gamma ** len(tokens),
        }
        return obs, total, terminated, truncated, info
