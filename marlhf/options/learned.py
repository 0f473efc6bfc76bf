"""A learned termination: a tiny model scores each position as a cut point, within a budget.

Macro actions do not change what is sampled, so the return does not depend on where the cuts
are and an option-critic termination gradient is zero. What does depend on them is the error of
the agent's advantage estimate. :class:`Learned` scores every response position with a small
separate model and keeps the best positions under a :class:`~marlhf.options.budget.CutBudget`
(``learned:budget=4``); the agents train it between policy updates, towards the cut sets that
minimise the estimator's error against the true advantage (see
:mod:`marlhf.algorithms.termination_training` and ``docs/learned_terminations.md``).

The model (:class:`CutScorer`) is not a head on the policy's hidden states but a separate
~3k-parameter convolution over per-position features the agent already has after its scoring
forward: the sampled token's log-prob, the entropy of its distribution, the critic's value and
its change, the token (hashed into buckets) and its position. Why: it sees exactly what every
heuristic sees (so it can represent entropy, surprisal, value change and n-grams, and learn
their mix), it costs no extra forward, its inputs keep their meaning while the policy it serves
changes (hidden states drift under every policy update), and it saves as a few thousand numbers
of checkpoint data. What it cannot do is read the prompt.

A trained termination saves as data (``termination_config`` / ``build_termination``: its
weights are the ``state`` argument) with the fingerprint of the policy it was trained for
(``arch``, ``vocab_size``); binding it to another policy is an error naming the field. Its spec
(``learned:budget=4;...;trained=<digest>``) names the weights by digest and rebuilds them only
in the process that holds them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from marlhf.options.base import SegmentationBatch
from marlhf.options.budget import ScoredTermination, require, select_batch
from marlhf.options.registry import register_termination

TARGETS = ("auto", "exact", "mc")
PER = ("episode", "batch")
#: token ids are hashed into this many embedding rows (the model's size does not grow with the
#: vocabulary)
TOKEN_BUCKETS = 32
#: positions past this share the last position embedding
MAX_POSITIONS = 512
EMBED = 4
#: scalar features per position (see :meth:`CutScorer.features`)
N_SCALARS = 7

#: weights of trained terminations built in this process, by digest (what their spec names);
#: the most recent :data:`_KEEP_TRAINED` only (specs may be taken after every training round)
_TRAINED: dict[str, dict[str, list[float]]] = {}
_KEEP_TRAINED = 32


class CutScorer(nn.Module):
    """``scores[B, T]`` from per-position features: embeddings and scalars, a width-3
    convolution (each position sees its neighbours), a ReLU and a linear read-out.

    :param hidden: channels of the hidden layer.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(TOKEN_BUCKETS, EMBED)
        self.positions = nn.Embedding(MAX_POSITIONS, EMBED)
        self.conv = nn.Conv1d(2 * EMBED + N_SCALARS, hidden, kernel_size=3, padding=1)
        self.out = nn.Conv1d(hidden, 1, kernel_size=1)

    @staticmethod
    def features(
        batch: SegmentationBatch, use_entropy: bool, use_values: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(token buckets int64[B, T], positions int64[B, T], scalars float[B, T, 7])``.

        Scalars: log-prob, entropy, value, next value minus value, its absolute value, the
        position over the response length, and 1 on the response's last token. A feature the
        termination does not use is 0.
        """
        mask = batch.mask
        b, t = mask.shape
        zeros = torch.zeros(b, t, device=mask.device)
        logp = require(batch, "logprobs", "learned").float()
        ent = require(batch, "entropy", "learned").float() if use_entropy else zeros
        val = require(batch, "values", "learned").float() if use_values else zeros
        dv = torch.zeros_like(val)
        if t > 1:
            dv[:, :-1] = val[:, 1:] - val[:, :-1]
        lengths = mask.sum(dim=1, keepdim=True)
        cols = torch.arange(t, device=mask.device)[None, :].expand(b, t)
        rel = cols.float() / lengths.clamp(min=1).float()
        last = (cols == lengths - 1).float()
        scalars = torch.stack([logp, ent, val, dv, dv.abs(), rel, last], dim=-1)
        scalars = torch.where(mask[..., None], scalars, 0.0)
        scalars = torch.nan_to_num(scalars, nan=0.0, posinf=0.0, neginf=0.0)
        buckets = batch.response_ids.long().remainder(TOKEN_BUCKETS)
        return buckets, cols.clamp(max=MAX_POSITIONS - 1), scalars

    def forward(
        self, buckets: torch.Tensor, positions: torch.Tensor, scalars: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([self.tokens(buckets), self.positions(positions), scalars], dim=-1)
        h = torch.relu(self.conv(x.transpose(1, 2)))
        return self.out(h).squeeze(1)


@register_termination("learned")
class Learned(ScoredTermination):
    """Cut at the positions a small trained model scores highest, within a cut budget.

    Budget (as every scored termination): ``budget`` (default 4), ``length``, ``threshold``, ``q``.
    Training (read by :func:`marlhf.algorithms.termination_training.train_termination`, which the
    agents call after each rollout):

    :param per: ``"episode"`` (default: every response gets ``budget`` cuts) or ``"batch"``
        (a batch of ``B`` responses gets ``budget * B`` cuts, placed at the best-scoring
        candidates wherever they are; the same mean number of cuts; trained towards the batch
        oracle). With ``"batch"`` an episode's cuts depend on the rest of its batch; only
        ``budget`` sets the count.
    :param target: the advantages it is trained against: ``"exact"`` (enumerated truth; needs a
        task with a decisive depth), ``"mc"`` (Monte-Carlo, with standard errors) or ``"auto"``
        (default: exact where the task declares a decisive depth, else mc).
    :param steps: gradient steps per training rollout (default 20).
    :param every: train after every ``every``-th rollout (default 1).
    :param lr: Adam learning rate of the model's own optimizer (default 0.01).
    :param rows: episodes per rollout whose truth is computed (default 16; bounds the cost).
    :param mc_samples: continuations per prefix for ``target="mc"`` (default 4).
    :param hidden: hidden channels of the model (default 16).
    :param use_entropy: read the entropy feature (default True).
    :param use_values: read the critic's values (default True; False for critic-free agents).
    :param seed: seeds the model's initial weights.
    :param state: the model's weights by parameter name (flat lists), as saved.
    :param arch: the fingerprint of the policy it was trained for (set on first training).
    :param vocab_size: that policy's vocabulary size (set with ``arch``).
    :param trained: the digest of weights held in this process (what :attr:`spec` writes).
    :param optimizer: the state of the model's own Adam optimizer, as saved by
        :meth:`optimizer_state` (``step`` and both moments by parameter name): with it, training
        resumes exactly where it stopped. Without it the optimizer starts afresh.
    :param updates: optimizer steps taken so far (a counter the agents log; saved with it).
    :param truth_tokens: tokens its truth has cost so far (saved with it).
    """

    trainable: ClassVar[bool] = True

    def __init__(
        self,
        budget: int | None = None,
        length: float | None = None,
        threshold: float | None = None,
        q: float | None = None,
        *,
        per: str = "episode",
        target: str = "auto",
        steps: int = 20,
        every: int = 1,
        lr: float = 0.01,
        rows: int = 16,
        mc_samples: int = 4,
        hidden: int = 16,
        use_entropy: bool = True,
        use_values: bool = True,
        seed: int = 0,
        state: Mapping[str, list[float]] | None = None,
        arch: str | None = None,
        vocab_size: int | None = None,
        trained: str | None = None,
        optimizer: Mapping[str, Any] | None = None,
        updates: int = 0,
        truth_tokens: int = 0,
    ) -> None:
        super().__init__(budget, length, threshold, q)
        if per not in PER:
            raise ValueError(f"learned: per={per!r} is not one of {PER}")
        if per == "batch" and (budget is None or length is not None or q is not None):
            raise ValueError(
                f"learned: per='batch' needs budget= (cuts per episode on average) and no "
                f"length or q; got budget={budget!r}, length={length!r}, q={q!r}"
            )
        if target not in TARGETS:
            raise ValueError(f"learned: target={target!r} is not one of {TARGETS}")
        for field, value, low in (
            ("steps", steps, 0),
            ("every", every, 1),
            ("rows", rows, 1),
            ("mc_samples", mc_samples, 2),
            ("hidden", hidden, 1),
            ("updates", updates, 0),
            ("truth_tokens", truth_tokens, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"learned: {field}={value!r} must be an integer >= {low}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"learned: lr={lr!r} must be a positive number")
        for field, flag in (("use_entropy", use_entropy), ("use_values", use_values)):
            if not isinstance(flag, bool):
                raise ValueError(f"learned: {field}={flag!r} must be true or false")
        if arch is not None and not isinstance(arch, str):
            raise ValueError(f"learned: arch={arch!r} must be a string or None")
        if vocab_size is not None and (
            isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
        ):
            raise ValueError(f"learned: vocab_size={vocab_size!r} must be an integer or None")
        self.per = per
        self.target, self.steps, self.every, self.lr = target, steps, every, float(lr)
        self.rows, self.mc_samples, self.hidden, self.seed = rows, mc_samples, hidden, seed
        self.use_entropy, self.use_values = use_entropy, use_values
        self.arch, self.vocab_size = arch, vocab_size
        self.requires = frozenset(
            {"logprobs"}
            | ({"entropy"} if use_entropy else set())
            | ({"values"} if use_values else set())
        )
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.model = CutScorer(hidden)
        torch.random.set_rng_state(gen_state)
        self.model.requires_grad_(False)
        if trained is not None:
            if state is not None:
                raise ValueError("learned: give state= or trained=, not both")
            if trained not in _TRAINED:
                raise ValueError(
                    f"learned: trained={trained!r} names weights this process does not hold; "
                    "a trained termination loads from its checkpoint data (build_termination), "
                    "not from its spec"
                )
            state = _TRAINED[trained]
        self.is_trained = state is not None
        if state is not None:
            self.load_state(state)
        self._optimizer: torch.optim.Optimizer | None = None
        if optimizer is not None:
            if not self.is_trained:
                raise ValueError(
                    "learned: optimizer given without the weights it belongs to (state=)"
                )
            self.load_optimizer_state(optimizer)
        #: training counters (read by the agents' logs and the benchmarks)
        self.updates = updates
        self.truth_tokens = truth_tokens

    # ------------------------------------------------------------------ weights as data
    def state(self) -> dict[str, list[float]]:
        """The model's weights by parameter name, as flat lists of floats."""
        return {
            k: v.detach().flatten().double().tolist() for k, v in self.model.state_dict().items()
        }

    def load_state(self, state: Mapping[str, list[float]]) -> None:
        """Load weights written by :meth:`state`; raises naming ``state`` on a mismatch."""
        own = self.model.state_dict()
        if not isinstance(state, Mapping) or set(state) != set(own):
            names = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"learned: state has parameters {names}; a model with hidden={self.hidden} "
                f"has {sorted(own)}"
            )
        loaded = {}
        for name, ref in own.items():
            flat = torch.as_tensor(list(state[name]), dtype=ref.dtype)
            if flat.numel() != ref.numel():
                raise ValueError(
                    f"learned: state[{name!r}] has {flat.numel()} numbers; hidden={self.hidden} "
                    f"needs {ref.numel()} (shape {tuple(ref.shape)})"
                )
            loaded[name] = flat.reshape(ref.shape)
        self.model.load_state_dict(loaded)

    def _adam(self) -> torch.optim.Optimizer:
        """The model's own optimizer (made on first use)."""
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        return self._optimizer

    def optimizer_state(self) -> dict[str, Any] | None:
        """The Adam optimizer's state as plain data, or None before its first step:
        ``{"step": n, "exp_avg": {name: [...]}, "exp_avg_sq": {name: [...]}}`` (the moments as
        flat lists, by parameter name). Its learning rate is not part of it (``lr`` is)."""
        if self._optimizer is None:
            return None
        out: dict[str, Any] = {"step": 0, "exp_avg": {}, "exp_avg_sq": {}}
        for name, param in self.model.named_parameters():
            slot = self._optimizer.state.get(param)
            if not slot:
                return None
            out["step"] = int(float(slot["step"]))
            for key in ("exp_avg", "exp_avg_sq"):
                out[key][name] = slot[key].detach().flatten().double().tolist()
        return out

    def load_optimizer_state(self, data: Mapping[str, Any]) -> None:
        """Restore what :meth:`optimizer_state` wrote; raises naming ``optimizer`` on a
        mismatch (another model size, missing moments, a step below 1)."""
        names = dict(self.model.named_parameters())
        keys = ("step", "exp_avg", "exp_avg_sq")
        if not isinstance(data, Mapping) or set(data) != set(keys):
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"learned: optimizer has keys {got}; expected {sorted(keys)}")
        step = data["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"learned: optimizer['step']={step!r} must be an integer >= 1")
        for key in ("exp_avg", "exp_avg_sq"):
            moments = data[key]
            if not isinstance(moments, Mapping) or set(moments) != set(names):
                have = sorted(moments) if isinstance(moments, Mapping) else type(moments).__name__
                raise ValueError(
                    f"learned: optimizer[{key!r}] has parameters {have}; a model with "
                    f"hidden={self.hidden} has {sorted(names)}"
                )
        adam = self._adam()
        for index, (name, param) in enumerate(names.items()):
            slot = {"step": torch.tensor(float(step))}
            for key in ("exp_avg", "exp_avg_sq"):
                flat = torch.as_tensor(list(data[key][name]), dtype=param.dtype)
                if flat.numel() != param.numel():
                    raise ValueError(
                        f"learned: optimizer[{key!r}][{name!r}] has {flat.numel()} numbers; "
                        f"hidden={self.hidden} needs {param.numel()}"
                    )
                slot[key] = flat.reshape(param.shape).to(param.device)
            adam.state[param] = slot
            assert adam.param_groups[0]["params"][index] is param

    def digest(self) -> str:
        """A short digest of the weights (what the spec names)."""
        text = json.dumps(self.state(), sort_keys=True)
        return "w" + hashlib.sha256(text.encode()).hexdigest()[:11]  # never reads as a number

    def config_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.cut_budget.kwargs())
        defaults = Learned.__init__.__kwdefaults__ or {}
        knobs = {
            "per": self.per,
            "target": self.target,
            "steps": self.steps,
            "every": self.every,
            "lr": self.lr,
            "rows": self.rows,
            "mc_samples": self.mc_samples,
            "hidden": self.hidden,
            "use_entropy": self.use_entropy,
            "use_values": self.use_values,
            "seed": self.seed,
            "arch": self.arch,
            "vocab_size": self.vocab_size,
            "updates": self.updates,
            "truth_tokens": self.truth_tokens,
        }
        out.update({k: v for k, v in knobs.items() if v != defaults.get(k)})
        if self.is_trained:
            out["state"] = self.state()
            moments = self.optimizer_state()
            if moments is not None:
                out["optimizer"] = moments
        return out

    @property
    def spec(self) -> str:
        kwargs = self.config_kwargs()
        state = kwargs.pop("state", None)
        # the spec names weights only: counters and optimizer state travel as data
        for key in ("optimizer", "updates", "truth_tokens"):
            kwargs.pop(key, None)
        parts = [f"{k}={_spec_text(v)}" for k, v in kwargs.items()]
        if state is not None:
            digest = self.digest()
            _TRAINED.pop(digest, None)
            _TRAINED[digest] = state
            while len(_TRAINED) > _KEEP_TRAINED:
                _TRAINED.pop(next(iter(_TRAINED)))
            parts.append(f"trained={digest}")
        return f"{self.name}:" + ";".join(parts)

    # ------------------------------------------------------------------ use and training
    def bind(self, arch: str, vocab_size: int) -> None:
        """Tie the termination to a policy (on first use) or check it is the one it was trained
        for: raises naming ``arch`` or ``vocab_size`` when they differ."""
        if self.arch is None and self.vocab_size is None:
            self.arch, self.vocab_size = arch, int(vocab_size)
            return
        self.check_policy(arch, vocab_size)

    def check_policy(self, arch: str, vocab_size: int) -> None:
        """Raise naming ``arch`` or ``vocab_size`` when the termination is tied to a policy
        other than ``(arch, vocab_size)``; an untied one fits any policy (nothing is tied)."""
        if self.arch is not None and self.arch != arch:
            raise ValueError(
                f"learned: arch={self.arch!r}: this termination was trained for another "
                f"policy architecture than {arch!r} (valid: {self.arch!r} only); train a new "
                "one (learned:budget=...)"
            )
        if self.vocab_size is not None and self.vocab_size != vocab_size:
            raise ValueError(
                f"learned: vocab_size={self.vocab_size}: this termination was trained for a "
                f"policy with another vocabulary than this one ({vocab_size} tokens); valid: "
                f"{self.vocab_size} only"
            )

    def _inputs(self, batch: SegmentationBatch) -> tuple[torch.Tensor, ...]:
        buckets, positions, scalars = CutScorer.features(batch, self.use_entropy, self.use_values)
        device = next(self.model.parameters()).device
        return buckets.to(device), positions.to(device), scalars.to(device)

    def scores(self, batch: SegmentationBatch) -> torch.Tensor:
        if batch.mask.shape[1] == 0:  # (a convolution needs at least one column)
            return torch.zeros(batch.mask.shape, dtype=torch.float64, device=batch.mask.device)
        with torch.no_grad():
            out = self.model(*self._inputs(batch))
        return out.to(batch.mask.device).double()

    def starts(self, batch: SegmentationBatch) -> torch.Tensor:
        if self.per == "episode":
            return super().starts(batch)
        mask = batch.mask
        scores = self.scores(batch).to(mask.device)
        if self.cut_budget.threshold is not None:
            scores = scores.masked_fill(~(scores > self.cut_budget.threshold), math.nan)
        total = int(self.cut_budget.budget or 0) * mask.shape[0]
        out = select_batch(scores, self.cut_budget.candidates(mask), total)
        if mask.shape[1]:
            out[:, 0] = mask[:, 0]
        return out

    def fit_step(self, batch: SegmentationBatch, targets: torch.Tensor) -> float:
        """One Adam step of the model's own optimizer towards the cut set ``targets``.

        The loss is the cross-entropy of a softmax over each row's candidate positions against
        the uniform distribution on its target cuts (rows without targets are skipped), so the
        model's top-``k`` positions become the target set. With ``per="batch"`` the softmax is
        over the whole batch's candidates (the batch's top ``k * B`` become the target set).

        :param targets: ``bool[B, T]`` the cut points to learn (a subset of the candidates).
        :return: the loss before the step.
        """
        cand = self.cut_budget.candidates(batch.mask).to(targets.device)
        targets = targets & cand
        rows = targets.any(dim=1)
        if not bool(rows.any()):
            return math.nan
        optimizer = self._adam()
        self.model.requires_grad_(True)
        try:
            with torch.enable_grad():
                logits = self.model(*self._inputs(batch)).to(targets.device)
                logits = logits.masked_fill(~cand, -1e9)
                if self.per == "batch":
                    logp = logits.flatten().log_softmax(dim=0).reshape(logits.shape)
                    loss = -(logp * targets).sum() / targets.sum()
                else:
                    logp = logits.log_softmax(dim=1)
                    per_row = -(logp * targets).sum(dim=1) / targets.sum(dim=1).clamp(min=1)
                    loss = per_row[rows].mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        finally:
            self.model.requires_grad_(False)
        self.is_trained = True
        self.updates += 1
        return float(loss.detach())


def _spec_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
