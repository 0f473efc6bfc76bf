"""The PPO updater: stage 6 of an iteration (the loss and the optimizer steps over a buffer).

:class:`PPOUpdater` runs ``n_epochs`` of minibatch PPO updates (CleanRL-style) on a scored and
estimated :class:`~marlhf.algorithms.buffer.LMRolloutBuffer`: the clipped policy loss, the value
loss, the entropy bonus and the KL in the loss (:mod:`marlhf.algorithms.losses`), gradient
accumulation over micro-batches, the data-parallel and sharded (FSDP) reductions, and the
learning-rate schedule. It holds the optimizer and the count of optimizer steps; the policy, the
config and the KL controller are its owner's (docs/design.md, "One iteration").
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import torch

from marlhf.algorithms.buffer import LMRolloutBuffer, RolloutSamples
from marlhf.algorithms.collector import autocast_for
from marlhf.algorithms.config import PPOConfig
from marlhf.algorithms.losses import entropy_loss, kl_loss, policy_loss, value_loss
from marlhf.algorithms.pipeline import fill_policy_scores, together
from marlhf.credit.advantages import explained_variance, global_whiten, whiten
from marlhf.credit.kl import KLController
from marlhf.parallel import distributed as dist_utils
from marlhf.parallel.fsdp import local, whole
from marlhf.policy.actor_critic import CausalLMActorCritic


class PPOUpdater:
    """One PPO update per :meth:`update` call.

    :param policy: the policy to train (its ``trainable_parameters`` are the optimizer's).
    :param optimizer: the optimizer over them.
    :param config: the algorithm's config; the owner replaces it when its config changes.
    :param kl_ctl: the KL controller (its coefficient weights the KL in the loss).
    :param world: this process's place among the ranks.
    :param device: where the policy and the buffer live.
    :param shuffle_generator: the minibatch order (drawn alike on every rank).
    :param verbose: 1 prints the early stops.
    """

    def __init__(
        self,
        policy: CausalLMActorCritic,
        optimizer: torch.optim.Optimizer,
        config: PPOConfig,
        kl_ctl: KLController,
        *,
        world: dist_utils.WorldInfo,
        device: torch.device,
        shuffle_generator: torch.Generator,
        verbose: int = 0,
    ) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.config = config
        self.kl_ctl = kl_ctl
        self.world = world
        self.device = device
        self.shuffle_generator = shuffle_generator
        self.verbose = verbose
        #: Optimizer steps taken (saved with the algorithm).
        self.n_updates = 0
        #: The KL to the reference of the log-probs the last update filled in for a rollout
        #: whose scoring deferred them (``None`` when it deferred none): the rollout's logged
        #: ``rollout/kl_ref``.
        self.kl_ref: float | None = None
        #: The rows of the update's one minibatch, in its order, while the scores are deferred.
        self._deferred_rows: torch.Tensor | None = None

    def _autocast(self) -> Any:
        return autocast_for(self.config, self.device)

    def update(self, buf: LMRolloutBuffer, progress: float) -> dict[str, float]:
        """Stage 6: ``n_epochs`` of minibatch PPO updates on ``buf`` (scored and estimated).

        :param progress: the fraction of the training budget done (the learning-rate schedule).
        :return: the update's logged values (``train/...``).
        """
        sharded = self.policy.fsdp
        self.kl_ref = None
        with sharded.update() if sharded is not None else contextlib.nullcontext():
            return self._train(buf, progress)

    def _train(self, buf: LMRolloutBuffer, progress: float) -> dict[str, float]:
        self._update_learning_rate(progress)
        self.policy.train()
        logs: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "ent", "clip", "kl")}
        continue_training = True
        # Several ranks: each minibatch is the same episodes as one process would draw, every
        # mean is over all ranks' normalisers, the gradients are summed over ranks before
        # clipping, and the early-stop and non-finite decisions are taken together. Each rank's
        # loss is weighted by its part of the global normaliser of each term, as micro-batches
        # are (_accumulate; a token share alone is wrong for the per-response aggregations), so
        # without micro-batches each rank's rows are one chunk.
        distributed = self.world.distributed
        micro = self.config.optim.micro_batch_size
        if micro is None and distributed:
            micro = max(1, buf.num_envs)
        for epoch in range(self.config.optim.n_epochs):
            for mb in self._minibatches(buf):
                if micro is not None:
                    # Gradients accumulated over micro-batches; the decisions come after them.
                    parts, kl = self._accumulate(buf, mb, micro)
                    logs["kl"].append(kl)
                    if self._early_stop(epoch, kl):
                        self.optimizer.zero_grad(set_to_none=True)
                        continue_training = False
                        break
                    self._step()
                    for key, value in zip(("pg", "vf", "ent", "clip"), parts, strict=True):
                        logs[key].append(value)
                    continue
                # One process, the whole minibatch at once.
                loss, pg_loss, vf_loss, ent_loss, stats = self.minibatch_loss(buf, mb)
                self._check_loss(loss, pg_loss, vf_loss, ent_loss)
                logs["kl"].append(float(stats["approx_kl"]))
                if self._early_stop(epoch, logs["kl"][-1]):
                    continue_training = False
                    break

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._step()
                for key, value in (
                    ("pg", pg_loss.item()),
                    ("vf", vf_loss.item()),
                    ("ent", ent_loss.item()),
                    ("clip", stats["clip_fraction"]),
                ):
                    logs[key].append(float(value))
            if not continue_training:
                break
        if distributed:  # each rank holds its parts of the global values: sum them
            for key in ("pg", "vf", "ent", "clip"):
                logs[key] = dist_utils.global_sums(logs[key])

        return {
            "train/policy_loss": _mean(logs["pg"]),
            "train/value_loss": _mean(logs["vf"]) if buf.has_values else float("nan"),
            "train/entropy": -_mean(logs["ent"]),
            "train/approx_kl": _mean(logs["kl"]),
            "train/clip_fraction": _mean(logs["clip"]),
            "train/explained_variance": (
                explained_variance(buf.values, buf.returns, buf.credit_mask)
                if buf.has_values
                else float("nan")
            ),
            "train/learning_rate": self.optimizer.param_groups[0]["lr"],
        }

    def _early_stop(self, epoch: int, kl: float) -> bool:
        """Whether ``target_kl`` stops the epochs at this minibatch's ``approx_kl``."""
        if self.config.optim.target_kl is None or not kl > 1.5 * self.config.optim.target_kl:
            return False
        if self.verbose >= 1 and self.world.is_main:
            print(f"Early stop at epoch {epoch}: approx_kl {kl:.4f}")
        return True

    def _step(self) -> None:
        """Sum the gradients over ranks, clip them, and take one optimizer step."""
        if self.policy.fsdp is None:  # (FSDP has reduce-scattered them in the backward)
            dist_utils.all_reduce_gradients(self.policy.trainable_parameters())
        if self.config.optim.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                list(self.policy.trainable_parameters()), self.config.optim.max_grad_norm
            )
            self._check_loss(whole(grad_norm), names=("gradient norm",))
        self.optimizer.step()
        # Free the gradients now rather than at the next minibatch: they would otherwise stay
        # resident through the next rollout (a model's size; FSDP: its shard).
        self.optimizer.zero_grad(set_to_none=True)
        self._check_parameters()
        self.n_updates += 1

    def _accumulate(
        self, buf: LMRolloutBuffer, mb: RolloutSamples, size: int
    ) -> tuple[list[float], float]:
        """Forward and backward ``mb`` in chunks of at most ``size`` rows (gradient accumulation).

        The advantages are whitened over the whole (global) minibatch first. Each chunk's loss
        is weighted by its part of the global minibatch's normaliser, so the chunks' gradients
        sum to the whole minibatch's: the policy loss by its ``loss_agg`` (token-mean: real
        tokens; seq-mean-token-mean: responses with a real token; seq-sum-constant: rows x
        columns), every other term (value, entropy, KL in the loss, the statistics) by real
        tokens. With several ranks, the same weights make each rank's sum its part of the global
        values, which the caller adds over ranks as for the whole-minibatch path.

        :return: this rank's parts of the minibatch's ``[policy, value, entropy, clip fraction]``
            and the global ``approx_kl``.
        """
        mask = _update_mask(mb)
        advantages = self._advantages(mb, mask)
        totals = dist_utils.global_sums(
            [float(mask.sum()), float(mask.any(dim=1).sum()), float(mask.numel())]
        )
        # This rank's parts of the minibatch's total, policy, value and entropy losses (tensors,
        # for the non-finite check), then of its clip fraction and approx_kl.
        losses = [torch.zeros((), dtype=torch.float64, device=mask.device) for _ in range(4)]
        clip = kl = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        begins = list(range(0, mask.shape[0], size))
        if self.policy.fsdp is not None:
            # Every rank makes as many forward and backward calls as the busiest one (each
            # gathers parameters collectively): the others run a row at weight 0.
            most = int(dist_utils.all_reduce_max(torch.tensor(len(begins))))
            for _ in range(most - len(begins)):
                self._idle_chunk(buf)
        for begin in begins:
            rows = slice(begin, begin + size)
            sliced = {f.name: getattr(mb, f.name) for f in dataclasses.fields(RolloutSamples)}
            micro = dataclasses.replace(
                mb, **{k: v[rows] for k, v in sliced.items() if v is not None}
            )
            micro.advantages = advantages[rows]
            m = mask[rows]
            counts = (float(m.sum()), float(m.any(dim=1).sum()), float(m.numel()))
            shares = [c / t if t > 0 else 0.0 for c, t in zip(counts, totals, strict=True)]
            pg_w, tok_w = shares[_AGG_SHARE[self.config.loss.loss_agg]], shares[0]
            loss, pg_loss, vf_loss, ent_loss, stats = self.minibatch_loss(
                buf, micro, whitened=True, weights=(pg_w, tok_w)
            )
            for i, (value, w) in enumerate(
                ((loss, 1.0), (pg_loss, pg_w), (vf_loss, tok_w), (ent_loss, tok_w))
            ):
                losses[i] = losses[i] + value.detach().double() * w
            clip += float(stats["clip_fraction"]) * tok_w
            kl += float(stats["approx_kl"]) * tok_w
            loss.backward()  # frees this chunk's activations before the next one's forward
        together(self.world, self._check_loss, *losses)
        return [float(x) for x in losses[1:]] + [clip], dist_utils.global_token_mean(kl, 1.0)

    def _idle_chunk(self, buf: LMRolloutBuffer) -> None:
        """A forward and backward of one rollout row at weight 0: no gradient, but this rank
        takes part in the sharded update's collectives (FSDP)."""
        row = buf.rows(torch.zeros(1, dtype=torch.long, device=self.device))
        row.advantages = torch.zeros_like(row.advantages)
        loss = self.minibatch_loss(buf, row, whitened=True, weights=(0.0, 0.0))[0]
        (loss * 0.0).backward()

    def _advantages(self, mb: RolloutSamples, mask: torch.Tensor) -> torch.Tensor:
        """The minibatch's advantages, whitened over its global tokens when configured."""
        if not self.config.loss.normalize_advantage:
            return mb.advantages
        distributed = self.world.distributed
        return (global_whiten if distributed else whiten)(mb.advantages, mask)

    def minibatch_loss(
        self,
        buf: LMRolloutBuffer,
        mb: RolloutSamples,
        *,
        whitened: bool = False,
        weights: tuple[float, float] = (1.0, 1.0),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The loss of one minibatch ``mb`` of ``buf``: ``(total, policy, value, entropy,
        stats)``. When ``buf``'s scoring deferred the policy's log-probs, this forward's are the
        old ones, and are stored in ``buf`` (their KL to the reference in :attr:`kl_ref`).

        :param whitened: ``mb.advantages`` are already whitened (by :meth:`_accumulate`).
        :param weights: ``(policy, tokens)``: the total weights the policy loss by the first and
            the token-mean terms by the second (1.0 each: the plain sum, bitwise).
        """
        mask = _update_mask(mb)
        advantages = mb.advantages if whitened else self._advantages(mb, mask)
        if mask.shape[0] == 0:  # this rank holds none of the minibatch's episodes
            zero = torch.zeros((), device=mask.device)
            return zero, zero, zero, zero, {"approx_kl": 0.0, "clip_fraction": 0.0}
        with_values = buf.has_values
        with self._autocast():
            logp, entropy, values = self.policy.evaluate_actions(
                mb.input_ids,
                mb.attention_mask,
                mb.response_mask,
                temperature=self.config.sampling.scoring_temperature,
                action_mask=mb.action_mask,
                with_values=with_values,
                # No graph for an entropy the loss does not weight (it is only logged).
                entropy="grad" if self.config.loss.ent_coef != 0 else "no_grad",
            )
        if mb.action_index is not None:  # multi-turn: the actions only, as the advantages
            logp, entropy = mb.to_actions(logp), mb.to_actions(entropy)
            values = None if values is None else mb.to_actions(values)
        old_logprobs = mb.old_logprobs
        if buf.logprobs_deferred:  # one epoch of one minibatch: the rollout's own log-probs
            old_logprobs = logp.detach().float()
            if self._deferred_rows is None:
                raise ValueError(
                    "minibatch_loss: the buffer's policy log-probs were deferred to the update; "
                    "run update(buf, ...) (its one minibatch fills them) or score without defer"
                )
            self.kl_ref = fill_policy_scores(buf, self._deferred_rows, old_logprobs, self.config)
        pg_loss, stats = policy_loss(
            logp.float(),
            old_logprobs,
            advantages,
            mask,
            mb.starts,
            clip_range=self.config.loss.clip_range,
            ratio_level=self.config.loss.ratio_level,
            clip_range_high=self.config.loss.clip_range_high,
            loss_agg=self.config.loss.loss_agg,
            dual_clip=self.config.loss.dual_clip,
        )
        if values is None:  # an estimator without a critic: no value loss at all
            vf_loss = torch.zeros((), device=pg_loss.device)
        else:
            vf_loss = value_loss(
                values.float(),
                mb.old_values,
                mb.returns,
                mask,
                clip_range_vf=self.config.loss.clip_range_vf,
            )
        ent_loss = entropy_loss(entropy.float(), mask)
        pg_w, tok_w = weights
        loss = pg_w * pg_loss + tok_w * (self.config.loss.ent_coef * ent_loss)
        if self.config.kl.kl_in == "loss" and self.kl_ctl.value > 0:
            # The KL to the reference as a loss term (GRPO: k3), on the current log-probs,
            # aggregated (and so weighted) like the policy loss.
            kl = kl_loss(
                logp.float(),
                mb.ref_logprobs,
                mask,
                estimator=self.config.kl.kl_estimator,
                loss_agg=self.config.loss.loss_agg,
                clamp=self.config.kl.kl_clamp,
            )
            loss = loss + pg_w * (float(self.kl_ctl.value) * kl)
        if values is not None:
            loss = loss + tok_w * (self.config.loss.vf_coef * vf_loss)
        return loss, pg_loss, vf_loss, ent_loss, stats

    def _minibatches(self, buf: LMRolloutBuffer) -> Any:
        """The rollout's minibatches; with several ranks, this rank's rows of each global one."""
        if buf.logprobs_deferred:  # one minibatch (of the rows in buf.get's order)
            order = torch.randperm(buf.num_envs, generator=self.shuffle_generator)
            self._deferred_rows = order.to(buf.device)
            return iter([buf.rows(self._deferred_rows)])
        if not self.world.distributed:
            return buf.get(self.config.optim.batch_size, self.shuffle_generator)
        return (
            buf.rows(idx.to(buf.device))
            for idx in dist_utils.shard_minibatches(
                buf.num_envs, self.config.optim.batch_size, self.shuffle_generator, self.world
            )
        )

    def _update_learning_rate(self, done: float) -> None:
        """Warm-up then constant or linear decay, by the fraction ``done`` of the budget."""
        cfg = self.config
        if cfg.optim.lr_schedule == "constant" and cfg.optim.warmup_fraction == 0.0:
            return
        scale = 1.0
        if cfg.optim.warmup_fraction > 0.0 and done < cfg.optim.warmup_fraction:
            scale = done / cfg.optim.warmup_fraction
        elif cfg.optim.lr_schedule == "linear":
            span = max(1.0 - cfg.optim.warmup_fraction, 1e-12)
            scale = max(0.0, 1.0 - (done - cfg.optim.warmup_fraction) / span)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.learning_rate * scale

    def _check_parameters(self) -> None:
        # One reduction per tensor: cheap next to the update, and it stops training before a
        # corrupted model samples, is evaluated or is saved.
        # Sharded (FSDP), each rank checks its shards and all decide together.
        params = list(self.policy.trainable_parameters())
        total = torch.stack([local(p).detach().float().sum() for p in params]).sum()
        error = None
        if not bool(torch.isfinite(total)):
            bad = next(
                n for n, p in self.policy.named_parameters() if not local(p).isfinite().all()
            )
            error = FloatingPointError(
                f"non-finite parameter {bad!r} after update {self.n_updates} "
                f"(learning_rate={self.config.optim.learning_rate}); training stopped before the "
                "model is used or saved"
            )
        if self.policy.fsdp is not None:
            dist_utils.raise_together(error)
        elif error is not None:
            raise error

    def _check_loss(
        self,
        *losses: torch.Tensor,
        names: tuple[str, ...] = ("total loss", "policy loss", "value loss", "entropy loss"),
    ) -> None:
        # The components first, so the message names where the non-finite value came from.
        for name, value in list(zip(names, losses, strict=False))[::-1]:
            if not bool(torch.isfinite(value)):
                raise FloatingPointError(
                    f"non-finite {name} ({value.item()}) at update {self.n_updates}; "
                    "training stopped before the optimizer step"
                )


#: Which of ``(real tokens, responses with a real token, rows x columns)`` each ``loss_agg``
#: divides the policy loss by (:func:`marlhf.algorithms.losses.policy_loss`).
_AGG_SHARE = {"token-mean": 0, "seq-mean-token-mean": 1, "seq-sum-constant": 2}


def _update_mask(mb: RolloutSamples) -> torch.Tensor:
    """``bool[b, T]``: the tokens the update learns from: real response tokens (multi-turn: the
    actions, in the action layout) of kept rows, less the tokens a per-token rule took out
    (``keep`` is ``bool[b]`` or ``bool[b, T]``)."""
    keep = mb.keep if mb.keep.dim() == 2 else mb.keep[:, None]
    return mb.loss_mask & keep


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
