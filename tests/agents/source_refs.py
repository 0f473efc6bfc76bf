"""Per-sample float64 references of the credit and loss formulas, written from the sources'
definitions (the papers, verl's ``core_algos.py``, OpenRLHF, TRL, VinePPO, SPO) with Python
floats and loops: nothing here calls marlhf, so a test comparing marlhf with these compares it
with the definition, not with itself (issue 21).

Rows are Python lists holding a response's real tokens only (ragged by construction).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

Row = list[float]


# ----------------------------------------------------------------------------------- the KL
def kl_token(logp: float, ref: float, estimator: str, clamp: float | None = None) -> float:
    """Schulman's estimators of KL(pi || ref) from one sampled token (verl's kl_penalty:
    k1 ``kl``, k2 ``mse``, k3 ``low_var_kl``), clamped to ``[-clamp, clamp]`` when given."""
    if estimator == "k1":
        out = logp - ref
    elif estimator == "k2":
        out = 0.5 * (logp - ref) ** 2
    elif estimator == "k3":
        log_r = ref - logp
        out = math.exp(log_r) - 1.0 - log_r
    else:
        raise ValueError(estimator)
    if clamp is not None:
        out = min(max(out, -clamp), clamp)
    return out


def shaped_row(
    task: Row,
    logp: Row,
    ref: Row,
    beta: float,
    estimator: str,
    clip: float | None = None,
    clamp: float | None = None,
) -> Row:
    """The KL in the reward (InstructGPT, TRL, OpenRLHF): ``clip(task_t) - beta * kl_t``."""
    out = []
    for x, a, b in zip(task, logp, ref, strict=True):
        score = x if clip is None else min(max(x, -clip), clip)
        out.append(score - beta * kl_token(a, b, estimator, clamp))
    return out


# --------------------------------------------------------------------------- the estimators
def return_to_go(rewards: Row, gamma: float = 1.0) -> Row:
    out, running = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def whiten_tokens(rows: Sequence[Row], eps: float = 1e-8) -> list[Row]:
    """Whitening over every real token of the batch (verl's masked_whiten: unbiased variance)."""
    flat = [x for row in rows for x in row]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)
    scale = 1.0 / math.sqrt(var + eps)
    return [[(x - mean) * scale for x in row] for row in rows]


def _members(groups: Sequence[int], i: int) -> list[int]:
    return [j for j, g in enumerate(groups) if g == groups[i]]


def grpo(outcomes: Row, groups: Sequence[int], std: bool = True, eps: float = 1e-6) -> Row:
    """DeepSeekMath's outcome supervision: ``(R_i - mean_g) / (std_g + eps)``, the std with
    Bessel's correction (verl: torch.std; TRL: .std()); Dr. GRPO drops the division."""
    out = []
    for i, r in enumerate(outcomes):
        group = [outcomes[j] for j in _members(groups, i)]
        adv = r - statistics.fmean(group)
        if std:
            adv /= statistics.stdev(group) + eps
        out.append(adv)
    return out


def rloo(outcomes: Row, groups: Sequence[int]) -> Row:
    """Ahmadian et al.: ``R_i - mean of the other samples of the prompt``."""
    out = []
    for i, r in enumerate(outcomes):
        others = [outcomes[j] for j in _members(groups, i) if j != i]
        out.append(r - sum(others) / len(others))
    return out


def reinforce_pp(shaped: Sequence[Row], gamma: float = 1.0) -> list[Row]:
    """REINFORCE++: the return-to-go of the KL-shaped reward, whitened over the batch."""
    return whiten_tokens([return_to_go(row, gamma) for row in shaped])


def reinforce_pp_baseline_openrlhf(
    shaped: Sequence[Row], scores: Row, groups: Sequence[int], gamma: float = 1.0
) -> list[Row]:
    """OpenRLHF's ``reinforce_baseline``: the score minus its group's mean score goes on the
    last token, the per-token KL penalty stays on every token, then the return-to-go,
    whitened over the batch."""
    rows = []
    for i, row in enumerate(shaped):
        mean = statistics.fmean(scores[j] for j in _members(groups, i))
        centred = list(row)
        centred[-1] -= mean
        rows.append(return_to_go(centred, gamma))
    return whiten_tokens(rows)


def reinforce_pp_baseline_verl(shaped: Sequence[Row], groups: Sequence[int]) -> list[Row]:
    """verl's ``reinforce_plus_plus_baseline``: the KL-inclusive total minus its group's mean,
    the same value on every token of the response, whitened over the batch."""
    totals = [sum(row) for row in shaped]
    rows = []
    for i, row in enumerate(shaped):
        centred = totals[i] - statistics.fmean(totals[j] for j in _members(groups, i))
        rows.append([centred] * len(row))
    return whiten_tokens(rows)


def remax(shaped: Sequence[Row], greedy: Row, clip: float | None, gamma: float = 1.0) -> list[Row]:
    """verl's ``compute_remax_outcome_advantage``: return-to-go minus the greedy response's
    score (clipped as the sample's score is)."""
    out = []
    for row, b in zip(shaped, greedy, strict=True):
        base = b if clip is None else min(max(b, -clip), clip)
        out.append([g - base for g in return_to_go(row, gamma)])
    return out


def gae_tokens(rewards: Row, values: Row, gamma: float, lam: float) -> Row:
    """Token-level GAE (Schulman et al. 2016) of one response; terminal after its last token."""
    n = len(rewards)
    adv, running = [0.0] * n, 0.0
    for t in range(n - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


def segment_gae(
    rewards: Row,
    values: Row,
    starts: Sequence[bool],
    gamma: float,
    lam: float,
    reward_agg: str,
    value_agg: str,
) -> Row:
    """MA-PPO (arXiv 2410.02743; METHOD.md step 4-6): GAE over macro actions, the segment's
    reward the sum (paper) or mean (released code) of its token rewards, its value the mean
    (released code), first or last token value, one discount per macro step; every token of
    a segment carries the segment's advantage."""
    bounds = [t for t, b in enumerate(starts) if b] + [len(rewards)]
    seg_r, seg_v = [], []
    for a, b in itertools.pairwise(bounds):
        r, v = rewards[a:b], values[a:b]
        seg_r.append(sum(r) if reward_agg == "sum" else sum(r) / len(r))
        seg_v.append({"mean": sum(v) / len(v), "first": v[0], "last": v[-1]}[value_agg])
    seg_adv = gae_tokens(seg_r, seg_v, gamma, lam)
    out = []
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        out += [seg_adv[k]] * (b - a)
    return out


def vine(rewards: Row, branch: Sequence[bool], values: Row, gamma: float = 1.0) -> Row:
    """VinePPO: Monte-Carlo values ``V`` at the step starts (``branch``), the TD(0) advantage
    of each step ``sum of its rewards + gamma * V(next step) - V(step)`` on all its tokens."""
    starts = [t for t, b in enumerate(branch) if b]
    out = [0.0] * len(rewards)
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(rewards)
        next_value = values[end] if end < len(rewards) else 0.0
        adv = sum(rewards[s:end]) + gamma * next_value - values[s]
        for t in range(s, end):
            out[t] = adv
    return out


def dapo_dropped(scores: Row, groups: Sequence[int]) -> list[bool]:
    """DAPO's dynamic sampling: a group whose task scores (accuracies) are all equal goes."""
    return [len({scores[j] for j in _members(groups, i)}) == 1 for i in range(len(scores))]


def spo_kept(logp: Row, threshold: float) -> list[bool]:
    """SPO-chain's probability mask: tokens sampled with probability above the threshold are
    removed from the update."""
    return [math.exp(x) <= threshold for x in logp]


# ------------------------------------------------------------------------------- the losses
def ppo_token_loss(
    new: float, old: float, adv: float, low: float, high: float, dual: float | None = None
) -> float:
    """``max(-A r, -A clip(r, 1 - low, 1 + high))``; verl's dual clip bounds it by ``-A c``
    when ``A < 0``."""
    r = math.exp(new - old)
    loss = max(-adv * r, -adv * min(max(r, 1.0 - low), 1.0 + high))
    if dual is not None and adv < 0:
        loss = min(loss, -adv * dual)
    return loss


def aggregate(rows: Sequence[Row], mode: str, n_rows: int, n_cols: int) -> float:
    """verl's ``agg_loss``: token-mean over every token; seq-mean-token-mean (each response's
    mean, then the mean over responses); seq-sum-constant (Dr. GRPO: the sum divided by rows x
    the generation budget)."""
    rows = [row for row in rows if row]
    if mode == "token-mean":
        return sum(x for row in rows for x in row) / sum(len(row) for row in rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(row) / len(row) for row in rows) / len(rows)
    if mode == "seq-sum-constant":
        return sum(x for row in rows for x in row) / (n_rows * n_cols)
    raise ValueError(mode)


def gspo_loss(new: Sequence[Row], old: Sequence[Row], adv: Row, low: float, high: float) -> float:
    """GSPO (arXiv 2507.18071, eq. 5-7): ``s_i = exp(mean_t log(pi/pi_old))``, the clipped
    objective ``min(s_i A_i, clip(s_i) A_i)`` once per response, averaged over responses."""
    terms = []
    for n_row, o_row, a in zip(new, old, adv, strict=True):
        s = math.exp(sum(x - y for x, y in zip(n_row, o_row, strict=True)) / len(n_row))
        terms.append(max(-a * s, -a * min(max(s, 1.0 - low), 1.0 + high)))
    return sum(terms) / len(terms)
