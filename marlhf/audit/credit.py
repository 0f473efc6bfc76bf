"""The credit audit: each estimator's advantages against the true ones, on the same samples.

For one batch of scored episodes (:class:`~marlhf.checkpoint.rollout_io.Rollouts`) and its truth
(:mod:`marlhf.credit.truth`), every :class:`Scheme` (an estimator, a termination, knobs)
re-segments the same responses, re-estimates advantages from the same task rewards and values,
and is scored against the truth:

- per token (``A_hat_t`` against ``A(s_t, a_t)``, over real tokens): ``bias`` = mean error,
  ``error_var`` = variance of the error, ``rmse``, ``corr`` (Pearson; scale-free, so estimators
  that normalise are not penalised for their scale), ``sign_agreement`` (over tokens whose true
  advantage is not 0) and ``null_abs`` (mean ``|A_hat|`` where the true advantage is 0: credit
  given to tokens that changed nothing);
- the same per token position (``per_position``: one list entry per column);
- per segment of the scheme's own segmentation: the true advantage of a macro action
  ``omega = a_t .. a_{t+n-1}`` is ``Q(s_t, omega) - V(s_t) = sum_k gamma**k A(s_{t+k},
  a_{t+k})`` (a telescoping sum), compared with the mean of ``A_hat`` over the segment (every
  token of a segment carries the same advantage under segment GAE); per segment index in
  ``per_segment``.
- multi-turn rollouts (``rollouts.turn_starts``): the same per turn (``turns``; per turn index in
  ``per_turn``): a turn's true advantage is the discounted sum of its actions' (env tokens are
  not actions: the rollouts are in the action layout).

Rewards are the task's (no KL shaping), because the truth is of the task's return.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback

from marlhf.algorithms.config import PPOConfig, flat_values, knob_types
from marlhf.checkpoint.rollout_io import Rollouts, resegment
from marlhf.credit.estimators import EstimatorBatch, check_estimate, get_estimator, prob_mask
from marlhf.credit.truth import Sampling, TrueAdvantages, true_advantages
from marlhf.credit.truth_multiturn import turn_true_advantages
from marlhf.options import make_termination
from marlhf.options.segments import position_in_segment, segment_ids

ZERO_TOL = 1e-9
#: PPOConfig fields a scheme cannot set: they are the scheme's own parts or not about credit.
_NOT_KNOBS = ("termination", "estimator")


def _knob_types() -> dict[str, Any]:
    return {k: v for k, v in knob_types().items() if k not in _NOT_KNOBS}


def _parse_value(key: str, text: str) -> Any:
    """``"1"`` -> 1.0 for a float knob, ``"true"`` -> True, ``"mean"`` -> ``"mean"``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    hint = _knob_types()[key]
    takes_float = hint is float or float in typing.get_args(hint)
    if takes_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class Scheme:
    """One credit-assignment scheme: an estimator over a segmentation with its knobs.

    :param estimator: a registered estimator (``marlhf.credit.estimators``).
    :param termination: a termination spec (``"ngram:5"``), or ``None`` for every token.
    :param params: :class:`~marlhf.algorithms.PPOConfig` fields that differ from their defaults
        (``gamma``, ``gae_lambda``, ``value_agg``, ...).
    """

    estimator: str = "gae"
    termination: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``estimator[@termination][ key=value ...]``: what :meth:`parse` reads back."""
        text = self.estimator + ("" if self.termination is None else f"@{self.termination}")
        pairs = (
            f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
            for k, v in sorted(self.params.items())
        )
        return " ".join([text, *pairs])

    @classmethod
    def parse(cls, text: str) -> Scheme:
        """Read ``"gae"``, ``"gae@ngram:5"`` or ``"gae@ngram:5 gae_lambda=1.0 gamma=0.99"``."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"scheme {text!r}: expected 'estimator[@termination] [key=value ...]'")
        head, *pairs = text.split()
        estimator, _, termination = head.partition("@")
        knobs = _knob_types()
        params: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in knobs:
                raise ValueError(
                    f"scheme {text!r}: {pair!r} is not key=value with a PPOConfig field as key "
                    f"(e.g. gamma, gae_lambda, value_agg; valid: {sorted(knobs)})"
                )
            params[key] = _parse_value(key, value)
        get_estimator(estimator)  # an unknown name fails here, listing the registered ones
        if termination:
            make_termination(termination)  # likewise for the rule
        scheme = cls(estimator, termination or None, params)
        try:
            scheme.config()
        except (TypeError, ValueError) as err:
            raise ValueError(f"scheme {text!r}: {err}") from None
        return scheme

    def config(self) -> PPOConfig:
        """The estimator's config: PPOConfig's defaults with this scheme's knobs."""
        return PPOConfig(**self.params)


def estimate(
    scheme: Scheme, rollouts: Rollouts, *, codec: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages float[B, T], starts bool[B, T])`` of ``scheme`` on ``rollouts``.

    The estimator reads the task rewards (no KL shaping: the truth is of the task's return) and
    what it declares of the saved values, group ids, Monte-Carlo values (at the branch points
    the collecting agent chose), greedy rewards and token probabilities.
    """
    spec = get_estimator(scheme.estimator)
    starts = resegment(rollouts, scheme.termination, codec=codec)
    held = {"token_probs"} | {
        name
        for name in ("values", "group_ids", "mc_values", "greedy_rewards")
        if getattr(rollouts, name) is not None
    }
    missing = sorted(spec.requires - held)
    if missing:
        raise ValueError(
            f"scheme {scheme.name!r}: estimator {scheme.estimator!r} needs {missing}, which "
            "these rollouts do not hold (values come from an agent with a critic, group ids "
            "from a rollout collected with group_size > 1, mc_values and greedy_rewards from "
            "an agent whose estimator computed them)"
        )
    batch = EstimatorBatch(
        rewards=rollouts.task_rewards,
        task_rewards=rollouts.task_rewards,
        mask=rollouts.response_mask,
        starts=starts,
        **{
            name: getattr(rollouts, name)
            for name in ("values", "group_ids", "mc_values", "greedy_rewards")
            if name in spec.requires
        },
        token_probs=rollouts.logprobs.exp() if "token_probs" in spec.requires else None,
    )
    config = scheme.config()
    result = spec.fn(batch, config)
    check_estimate(spec.name, result, batch)
    advantages = result.advantages
    if config.loss.prob_mask_threshold is not None:  # SPO: the agent's rule (no update, no credit)
        kept = prob_mask(rollouts.logprobs, rollouts.response_mask, config.loss.prob_mask_threshold)
        advantages = torch.where(kept, advantages, 0.0)
    return advantages, starts


# ----------------------------------------------------------------------------- metrics
def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.numel() < 2:
        return math.nan
    xc, yc = x - x.mean(), y - y.mean()
    denom = float((xc.square().sum() * yc.square().sum()).sqrt())
    return float((xc * yc).sum()) / denom if denom > 0 else math.nan


def error_metrics(est: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Bias, error variance, RMSE, correlation, sign agreement and null credit of 1-D tensors."""
    n = est.numel()
    if n == 0:
        return {k: math.nan for k in ("bias", "error_var", "rmse", "corr", "sign", "null_abs")}
    err = est - true
    nonzero = true.abs() > ZERO_TOL
    zero = ~nonzero
    return {
        "bias": float(err.mean()),
        "error_var": float(err.var()) if n > 1 else math.nan,
        "rmse": float(err.square().mean().sqrt()),
        "corr": _pearson(est, true),
        "sign": float((est[nonzero].sign() == true[nonzero].sign()).double().mean())
        if bool(nonzero.any())
        else math.nan,
        "null_abs": float(est[zero].abs().mean()) if bool(zero.any()) else math.nan,
    }


def segment_truth(
    true: torch.Tensor, est: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(true_seg, est_seg, seg_mask)`` ``[B, S]``: each segment's true advantage
    ``sum_k gamma**k A_{t+k}`` and the mean estimate over its tokens."""
    ids = segment_ids(starts, mask).clamp(min=0)  # padding joins segment 0 with weight 0
    S = max(int(starts.sum(dim=1).max()) if starts.numel() else 0, 1)
    B = true.shape[0]
    offset = position_in_segment(starts, mask).double()
    weights = torch.where(mask, torch.pow(float(gamma), offset), torch.zeros_like(offset))
    zeros = torch.zeros((B, S), dtype=torch.float64)
    true_seg = zeros.scatter_add(1, ids, weights * true)
    est_sum = zeros.scatter_add(1, ids, torch.where(mask, est, 0.0))
    count = zeros.scatter_add(1, ids, mask.double())
    seg_mask = count > 0
    est_seg = torch.where(seg_mask, est_sum / count.clamp(min=1), 0.0)
    return true_seg, est_seg, seg_mask


def _per_index(est: torch.Tensor, true: torch.Tensor, mask: torch.Tensor) -> dict[str, list]:
    keys = ("bias", "rmse", "corr", "sign", "count")
    out: dict[str, list] = {k: [] for k in keys}
    for j in range(est.shape[1]):
        m = mask[:, j]
        row = error_metrics(est[m, j], true[m, j])
        row["count"] = int(m.sum())
        for k in keys:
            out[k].append(row[k])
    return out


def _turn_figures(
    true: torch.Tensor, est: torch.Tensor, mask: torch.Tensor, turns: torch.Tensor, gamma: float
) -> dict[str, Any]:
    """Per turn, as per segment: ``turns`` (summary) and ``per_turn`` (by turn index)."""
    true_turn, est_turn, turn_mask = segment_truth(true, est, mask, turns & mask, gamma)
    summary = error_metrics(est_turn[turn_mask], true_turn[turn_mask])
    summary["count"] = int(turn_mask.sum())
    return {"turns": summary, "per_turn": _per_index(est_turn, true_turn, turn_mask)}


@dataclass
class AuditResult:
    """Every scheme's figures (see the module docstring), JSON-ready."""

    schemes: dict[str, dict[str, Any]]
    truth: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"truth": self.truth, "schemes": self.schemes}

    def table(self) -> str:
        """A markdown table of the per-token and per-segment summary of every scheme."""
        head = (
            "| scheme | bias | error var | RMSE | corr | sign agree | abs(A_hat) where A=0 "
            "| segment corr |\n|---|---|---|---|---|---|---|---|"
        )
        rows = []
        for name, s in self.schemes.items():
            t = s["tokens"]
            rows.append(
                f"| `{name}` | {t['bias']:.3f} | {t['error_var']:.4f} | {t['rmse']:.3f} | "
                f"{t['corr']:.3f} | {t['sign']:.3f} | {t['null_abs']:.3f} | "
                f"{s['segments']['corr']:.3f} |"
            )
        return "\n".join([head, *rows])


def audit(
    rollouts: Rollouts,
    truth: TrueAdvantages,
    schemes: list[Scheme],
    *,
    codec: Any = None,
) -> AuditResult:
    """Score every scheme's advantages against ``truth`` on ``rollouts`` (module docstring)."""
    mask = rollouts.response_mask
    if truth.advantages.shape != mask.shape:
        raise ValueError(
            f"audit: truth has shape {tuple(truth.advantages.shape)} but the rollouts "
            f"{tuple(mask.shape)}; compute the truth on these rollouts"
        )
    if not schemes:
        raise ValueError("audit: schemes is empty; give at least one (e.g. Scheme.parse('gae'))")
    true = truth.advantages.double()
    out: dict[str, dict[str, Any]] = {}
    for scheme in schemes:
        est, starts = estimate(scheme, rollouts, codec=codec)
        est = est.double()
        gamma = float(scheme.config().credit.gamma)
        true_seg, est_seg, seg_mask = segment_truth(true, est, mask, starts, gamma)
        segments = error_metrics(est_seg[seg_mask], true_seg[seg_mask])
        segments["count"] = int(seg_mask.sum())
        tokens = error_metrics(est[mask], true[mask])
        tokens["count"] = int(mask.sum())
        out[scheme.name] = {
            "estimator": scheme.estimator,
            "termination": scheme.termination,
            "params": scheme.params,
            "tokens": tokens,
            "segments": segments,
            "per_position": _per_index(est, true, mask),
            "per_segment": _per_index(est_seg, true_seg, seg_mask),
        }
        if rollouts.turn_starts is not None:
            out[scheme.name].update(_turn_figures(true, est, mask, rollouts.turn_starts, gamma))
    info: dict[str, Any] = {"method": truth.method, **truth.stats}
    nonzero = (true.abs() > ZERO_TOL) & mask
    info["nonzero_fraction"] = float(nonzero.sum()) / max(int(mask.sum()), 1)
    info["abs_mean"] = float(true[mask].abs().mean()) if bool(mask.any()) else math.nan
    if truth.stderr is not None:
        info["stderr_mean"] = float(truth.stderr[mask].mean())
    return AuditResult(out, info)


def plot_audit(result: AuditResult, path: str | Path, title: str = "") -> Path:
    """Per-position RMSE and correlation of each scheme against the truth, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rmse, ax_corr) = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in result.schemes.items():
        pos = s["per_position"]
        xs = range(len(pos["rmse"]))
        ax_rmse.plot(xs, pos["rmse"], label=name)
        ax_corr.plot(xs, pos["corr"], label=name)
    ax_rmse.set(xlabel="response token position", ylabel="RMSE of A_hat vs true A")
    ax_corr.set(xlabel="response token position", ylabel="corr(A_hat, true A) across episodes")
    ax_corr.axhline(0.0, color="grey", lw=0.5)
    ax_rmse.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- during training
def scheme_of(algo: Any) -> Scheme:
    """The scheme an agent trains with: its estimator, termination and credit knobs."""
    config = algo.config
    termination = getattr(algo, "termination", None)
    knobs = ("gamma", "gae_lambda", "reward_agg", "value_agg", "discount")
    defaults = PPOConfig()
    have, default = flat_values(config), flat_values(defaults)
    params = {k: have[k] for k in knobs if have[k] != default[k]}
    return Scheme(
        config.credit.estimator, None if termination is None else termination.spec, params
    )


class CreditAuditCallback(BaseCallback):
    """Log the audit as ``credit/<scheme>/<figure>`` every ``every`` rollouts of training.

    It runs at the end of a rollout, after the agent scored and estimated it and before the
    update, so the truth is that of the policy that sampled the episodes. Figures logged per
    scheme: ``rmse``, ``corr``, ``sign``, ``null_abs``, ``segment_corr`` (multi-turn tasks:
    ``turn_corr``, against :mod:`marlhf.credit.truth_multiturn`'s truth); and
    ``credit/truth_abs_mean``, ``credit/truth_seconds``. Each audit is also kept in
    :attr:`records` (``{"num_timesteps", "figures"}``).

    :param every: audit every this many rollouts: those that start iteration 0, ``every``,
        ``2 * every``, ... of the agent (counted by the agent, so a resumed run keeps the cadence).
    :param schemes: schemes to audit besides the agent's own (``scheme_of(algo)``).
    :param method: ``"exact"`` or ``"mc"`` (see :func:`marlhf.credit.truth.true_advantages`).
    :param mc_samples: continuations per prefix for ``"mc"``.
    """

    def __init__(
        self,
        every: int = 10,
        schemes: list[str] | None = None,
        method: str = "exact",
        mc_samples: int = 16,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"CreditAuditCallback: every={every!r} must be an int >= 1")
        if method not in ("exact", "mc"):
            raise ValueError(f"CreditAuditCallback: method={method!r}; valid: 'exact', 'mc'")
        self.every = every
        self.extra = [Scheme.parse(s) for s in schemes or []]
        self.method = method
        self.mc_samples = mc_samples
        self.records: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        algo: Any = self.model
        iteration = int(algo._iteration)  # iterations finished before this rollout's update
        if iteration % self.every:
            return
        rollouts = Rollouts.from_algorithm(algo)
        multiturn = rollouts.turn_starts is not None  # the action layout: the turn truth
        truth = (turn_true_advantages if multiturn else true_advantages)(
            algo.policy,
            algo.env.task,
            rollouts.prompts,
            rollouts.response_ids,
            rollouts.response_mask,
            method=self.method,
            sampling=Sampling.of(algo),
            samples=self.mc_samples,
            seed=iteration,
        )
        by_name = {s.name: s for s in [scheme_of(algo), *self.extra]}
        schemes = list(by_name.values())
        result = audit(rollouts, truth, schemes, codec=algo.env.codec)
        figures: dict[str, float] = {
            "credit/truth_abs_mean": result.truth["abs_mean"],
            "credit/truth_seconds": truth.stats["seconds"],
        }
        for name, s in result.schemes.items():
            key = "credit/" + name.replace(" ", ",")
            for figure in ("rmse", "corr", "sign", "null_abs"):
                figures[f"{key}/{figure}"] = s["tokens"][figure]
            figures[f"{key}/segment_corr"] = s["segments"]["corr"]
            if "turns" in s:
                figures[f"{key}/turn_corr"] = s["turns"]["corr"]
        for k, v in figures.items():
            self.logger.record(k, v)
        self.records.append({"num_timesteps": int(algo.num_timesteps), "figures": figures})
